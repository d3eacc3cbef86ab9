"""The rules between config keys (``detr_d2.config_rules``): each fires alone on a config that
breaks it, with its keys and fix named, at ``build_model`` (model rules) and before training
(``DetrTrainer``, ``tools/train_net.py`` setup); every shipped config passes; the docs table lists
every rule; renamed keys point to the new name; no two detr_d2 keys share a leaf name."""

import collections
import os
import re
from types import SimpleNamespace

import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import detr_d2
from detr_d2.config import RENAMED_KEYS, get_detr_cfg
from detr_d2.config_rules import CONFIG_RULES, config_problems, validate_detr_config
from detr_d2.engine import DetrTrainer, setup
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import ROOT


def _mask_off(cfg):
    cfg.MODEL.MASK_ON = False
    cfg.TEST.PANOPTIC_ON, cfg.TEST.INSTANCE_ON = False, True


def _set(**kv):
    def apply(cfg):
        for key, value in kv.items():
            node = cfg
            *path, leaf = key.split("__")
            for p in path:
                node = node[p]
            node[leaf] = value

    return apply


def _both(*fs):
    def apply(cfg):
        for f in fs:
            f(cfg)

    return apply


# one config breaking each rule of CONFIG_RULES (same order), and nothing else
BREAKS = [
    _set(MODEL__DETR__GROUP_DETR__NUM_QUERY_GROUPS=0),
    _set(MODEL__DETR__IN_FEATURES=["res4", "res5"]),
    _set(MODEL__DETR__HIDDEN_DIM=192),
    _both(_mask_off, _set(TEST__PANOPTIC_ON=True)),
    _set(TEST__PANOPTIC_ON=False, TEST__INSTANCE_ON=False, TEST__SEMANTIC_ON=False),
    _set(MODEL__DETR__FROZEN_WEIGHTS="stage1.pth", MODEL__DETR__DEEP_SUPERVISION=True),
    _set(
        MODEL__DETR__FROZEN_WEIGHTS="stage1.pth",
        MODEL__DETR__DEEP_SUPERVISION=False,
        MODEL__DETR__DUPLICATE_SUPPRESSION__ENABLED=True,
    ),
    _both(_mask_off, _set(MODEL__DETR__MASK_HEAD_WEIGHTS="panoptic.pth")),
    _set(TEST__PANOPTIC_WRITE_PREDICTIONS=True, TEST__PANOPTIC_EVALUATOR="panopticapi"),
    _set(TEST__PANOPTIC_ERROR_ANALYSIS=True, TEST__PANOPTIC_EVALUATOR="panopticapi"),
    _set(
        MODEL__DETR__DUPLICATE_SUPPRESSION__ENABLED=True,
        MODEL__DETR__DUPLICATE_SUPPRESSION__IOU_THRESHOLD=1.5,
    ),
    _set(SOLVER__AMP__ENABLED=True, MODEL__DEVICE="cpu"),
    _set(SOLVER__CLIP_GRADIENTS__ENABLED=True, SOLVER__CLIP_GRADIENTS__CLIP_TYPE="full_model"),
    _set(SOLVER__FULL_MODEL_CLIP_GRADIENTS__MAX_NORM=0.0),
]


def test_one_breaking_config_per_rule():
    assert len(BREAKS) == len(CONFIG_RULES)


@pytest.mark.parametrize("i", range(len(CONFIG_RULES)))
def test_rule_fires_alone_naming_its_keys_and_fix(i):
    rule = CONFIG_RULES[i]
    good = tiny_detr_cfg()
    assert config_problems(good, training=True) == []
    cfg = good.clone()
    BREAKS[i](cfg)
    problems = config_problems(cfg, training=True)
    assert problems == [rule.check(cfg)], problems
    for key in rule.keys:
        assert key.split(".", 1)[-1] in problems[0], (key, problems[0])
    assert re.search(r"\b(set|list)\b", problems[0]), f"no fix in: {problems[0]}"
    with pytest.raises(ValueError, match=re.escape(problems[0])):
        validate_detr_config(cfg, training=True)
    if rule.training:  # not a model rule: the model builds (e.g. a CPU demo of an AMP config)
        assert config_problems(cfg) == []
        build_model(cfg)
        with pytest.raises(ValueError, match=re.escape(problems[0])):
            DetrTrainer(cfg)
    else:  # fires when the model is built, before anything is read or loaded
        with pytest.raises(ValueError, match=re.escape(problems[0])):
            build_model(cfg)


@pytest.mark.parametrize(
    "enabled, iou, weight, ok",
    [
        (True, 0.5, 0.5, True),
        (True, 1.0, 0.0, True),  # only exact copies of a target box; a weight of 0 ignores them
        (True, 0.0, 0.5, False),  # IoU >= 0 holds for every query
        (True, -0.1, 0.5, False),
        (True, 1.01, 0.5, False),  # IoU never exceeds 1: no query would be a duplicate
        (True, 0.5, -1.0, False),
        (False, 1.5, -1.0, True),  # off: the values are not used
    ],
)
def test_duplicate_suppression_values(enabled, iou, weight, ok):
    cfg = tiny_detr_cfg()
    ds = cfg.MODEL.DETR.DUPLICATE_SUPPRESSION
    ds.ENABLED, ds.IOU_THRESHOLD, ds.DUPLICATE_CLASS_WEIGHT = enabled, iou, weight
    problems = config_problems(cfg, training=True)
    if ok:
        assert problems == []
    else:
        assert (
            len(problems) == 1
            and f"(got {iou};" in problems[0]
            and f"(got {weight})" in problems[0]
        )


def test_every_broken_rule_is_listed():
    cfg = tiny_detr_cfg()
    BREAKS[4](cfg)
    BREAKS[5](cfg)
    with pytest.raises(ValueError, match="breaks 2 rules") as e:
        validate_detr_config(cfg)
    assert "all False" in str(e.value) and "DEEP_SUPERVISION False" in str(e.value)


def test_train_net_setup_checks_before_writing(tmp_path):
    out = tmp_path / "run"
    args = SimpleNamespace(
        config_file=os.path.join(ROOT, "configs", "quickstart", "detr_r18_quickstart.yaml"),
        opts=["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)],
        eval_only=False,
        resume=False,
        num_gpus=1,
        register_dataset=None,
    )
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED needs a CUDA model"):
        setup(args)
    assert not out.exists()


def _shipped_configs():
    out = []
    for d, _, files in os.walk(os.path.join(ROOT, "configs")):
        out += [os.path.join(d, f) for f in files if f.endswith(".yaml") and "stuff_map" not in f]
    return sorted(out)


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_configs_pass(path):
    cfg = get_detr_cfg(path)
    cfg.MODEL.DEVICE = "cuda"  # the AMP rule holds on a GPU machine; checked for CPU above
    assert config_problems(cfg, training=True) == []


def test_docs_table_lists_every_rule():
    with open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `")]
    for rule in CONFIG_RULES:
        keys = ", ".join(f"`{k}`" for k in rule.keys)
        when = "training" if rule.training else "model"
        assert f"| {keys} | {rule.statement} | {when} |\n" in rows, rule
    for old, new in RENAMED_KEYS.items():
        assert any(r.startswith(f"| `{old}` | `{new}` |") for r in rows), old


@pytest.mark.parametrize("old", sorted(RENAMED_KEYS))
def test_renamed_key_names_the_new_one(old, tmp_path):
    new = RENAMED_KEYS[old]
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    with pytest.raises(KeyError, match=re.escape(f"{old} was renamed to {new}")):
        cfg.clone().merge_from_list([old, "1"])
    *path, leaf = old.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(path))
    text += f"{'  ' * len(path)}{leaf}: 1\n"
    (tmp_path / "old.yaml").write_text(text)
    with pytest.raises(KeyError, match=re.escape(f"{old} was renamed to {new}")):
        get_detr_cfg(str(tmp_path / "old.yaml"))
    cfg.merge_from_list([new, repr(_leaves(cfg)[new])])  # the new key is a key


def _leaves(node, prefix=""):
    out = {}
    for k, v in node.items():
        if hasattr(v, "items"):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_no_leaf_name_with_two_meanings():
    """detr_d2's keys have leaf names of their own, except where the meaning is Detectron2's
    (``ENABLED``: the node's switch; ``NUM_CLASSES`` / ``IN_FEATURES``: a head's classes and
    backbone inputs, as ``MODEL.ROI_HEADS.*``)."""
    same_meaning = {"ENABLED", "NUM_CLASSES", "IN_FEATURES"}
    base = _leaves(get_cfg())
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    every = _leaves(cfg)
    by_leaf = collections.defaultdict(list)
    for key in every:
        by_leaf[key.rsplit(".", 1)[-1]].append(key)
    ours = [k for k in every if k not in base]
    clashes = {
        k: by_leaf[k.rsplit(".", 1)[-1]]
        for k in ours
        if len(by_leaf[k.rsplit(".", 1)[-1]]) > 1 and k.rsplit(".", 1)[-1] not in same_meaning
    }
    assert not clashes, clashes
