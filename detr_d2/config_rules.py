"""Every rule between detr_d2's config keys, in one place: :func:`validate_detr_config`.

Called when the model is built (``DetrPanoptic.from_config``) and by ``tools/train_net.py`` /
``DetrTrainer`` before training (``training=True`` adds the rules that only matter for a
training run). Each rule names its keys and the fix; ``docs/configuration.md`` lists them (a
test keeps that table and :data:`CONFIG_RULES` in step).

Rules that need more than the config are checked where that is read: ``MODEL.DETR.NUM_CLASSES`` /
``CLASS_SLOTS`` against the datasets' metadata (``data/datasets/panoptic_metadata.class_slots``),
``MODEL.DETR.IN_FEATURES`` against the backbone's outputs (``DetrPanoptic.__init__``), and the
stage-1 checkpoint's Group DETR queries against ``GROUP_DETR.NUM_QUERY_GROUPS`` (when
``FROZEN_WEIGHTS`` is loaded).
"""

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch

__all__ = ["ConfigRule", "CONFIG_RULES", "config_problems", "validate_detr_config"]


@dataclass(frozen=True)
class ConfigRule:
    """One rule: ``keys`` it relates, ``statement`` (one line, for the docs table), ``check``
    (config -> the error naming the keys and the fix, or None), ``training`` (only checked for a
    training run)."""

    keys: Tuple[str, ...]
    statement: str
    check: Callable[[Any], Optional[str]]
    training: bool = False


def _num_groups(cfg) -> Optional[str]:
    k = cfg.MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return (
            f"MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS must be an integer >= 1, got {k!r}: set it "
            "to 1 (Group DETR off) or the number of query groups"
        )
    return None


def _mask_features(cfg) -> Optional[str]:
    feats = list(cfg.MODEL.DETR.IN_FEATURES)
    if cfg.MODEL.MASK_ON and len(feats) != 4:
        return (
            "MODEL.DETR.IN_FEATURES: the mask head (MODEL.MASK_ON True) needs 4 backbone features "
            f"(strides 4..32), got {feats}; list four, e.g. [res2, res3, res4, res5]"
        )
    return None


def _mask_head_widths(cfg) -> Optional[str]:
    d = cfg.MODEL.DETR
    if cfg.MODEL.MASK_ON and (d.HIDDEN_DIM % 128 or (d.HIDDEN_DIM + d.NHEADS) % 8):
        return (
            f"MODEL.DETR.HIDDEN_DIM ({d.HIDDEN_DIM}) must be a multiple of 128 and HIDDEN_DIM + "
            f"MODEL.DETR.NHEADS ({d.HIDDEN_DIM + d.NHEADS}) a multiple of 8 with MODEL.MASK_ON: "
            "the mask head's GroupNorm(8) layers have HIDDEN_DIM + NHEADS, HIDDEN_DIM/2 ... "
            "HIDDEN_DIM/16 channels; set e.g. HIDDEN_DIM 256, NHEADS 8"
        )
    return None


def _outputs_need_masks(cfg) -> Optional[str]:
    t = cfg.TEST
    if not cfg.MODEL.MASK_ON and (t.PANOPTIC_ON or t.SEMANTIC_ON):
        return (
            "MODEL.MASK_ON False (detection only) has no masks: set TEST.PANOPTIC_ON False and "
            "TEST.SEMANTIC_ON False (the model then outputs instances with boxes; "
            "TEST.INSTANCE_ON True)"
        )
    return None


def _some_output(cfg) -> Optional[str]:
    t = cfg.TEST
    if not (t.PANOPTIC_ON or t.INSTANCE_ON or t.SEMANTIC_ON):
        return (
            "TEST.PANOPTIC_ON, TEST.INSTANCE_ON and TEST.SEMANTIC_ON are all False: no output; "
            "set one of them True"
        )
    return None


def _frozen_deep_supervision(cfg) -> Optional[str]:
    d = cfg.MODEL.DETR
    if d.FROZEN_WEIGHTS and d.DEEP_SUPERVISION:
        return (
            "MODEL.DETR.FROZEN_WEIGHTS freezes the decoder, so the auxiliary decoding losses of "
            "MODEL.DETR.DEEP_SUPERVISION would train nothing: set "
            "MODEL.DETR.DEEP_SUPERVISION False"
        )
    return None


def _frozen_duplicate_suppression(cfg) -> Optional[str]:
    d = cfg.MODEL.DETR
    if d.FROZEN_WEIGHTS and d.DUPLICATE_SUPPRESSION.ENABLED:
        return (
            "MODEL.DETR.FROZEN_WEIGHTS freezes the class head, so "
            "MODEL.DETR.DUPLICATE_SUPPRESSION (a class loss weight) would train nothing: set "
            "MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED False"
        )
    return None


def _duplicate_suppression_values(cfg) -> Optional[str]:
    ds = cfg.MODEL.DETR.DUPLICATE_SUPPRESSION
    if ds.ENABLED and not (0 < ds.IOU_THRESHOLD <= 1 and ds.DUPLICATE_CLASS_WEIGHT >= 0):
        return (
            "MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED needs "
            "MODEL.DETR.DUPLICATE_SUPPRESSION.IOU_THRESHOLD in (0, 1] (got "
            f"{ds.IOU_THRESHOLD}; <= 0 would count every unmatched query as a duplicate, > 1 "
            "none) and MODEL.DETR.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT >= 0 (got "
            f"{ds.DUPLICATE_CLASS_WEIGHT}): set e.g. IOU_THRESHOLD 0.5, DUPLICATE_CLASS_WEIGHT 0.5"
        )
    return None


def _mask_head_weights(cfg) -> Optional[str]:
    if cfg.MODEL.DETR.MASK_HEAD_WEIGHTS and not cfg.MODEL.MASK_ON:
        return (
            "MODEL.DETR.MASK_HEAD_WEIGHTS initialises the mask head, which needs "
            "MODEL.MASK_ON True: set MODEL.MASK_ON True or MODEL.DETR.MASK_HEAD_WEIGHTS ''"
        )
    return None


def _write_predictions(cfg) -> Optional[str]:
    t = cfg.TEST
    if t.PANOPTIC_WRITE_PREDICTIONS and t.PANOPTIC_EVALUATOR != "in_process":
        return (
            "TEST.PANOPTIC_WRITE_PREDICTIONS is an option of TEST.PANOPTIC_EVALUATOR "
            f"'in_process' (got {t.PANOPTIC_EVALUATOR!r}); Detectron2's evaluator "
            "('panopticapi') writes predictions.json to output_dir but deletes the PNGs: set "
            "TEST.PANOPTIC_EVALUATOR in_process or TEST.PANOPTIC_WRITE_PREDICTIONS False"
        )
    return None


def _error_analysis(cfg) -> Optional[str]:
    t = cfg.TEST
    if t.PANOPTIC_ERROR_ANALYSIS and t.PANOPTIC_EVALUATOR != "in_process":
        return (
            "TEST.PANOPTIC_ERROR_ANALYSIS is an option of TEST.PANOPTIC_EVALUATOR 'in_process' "
            f"(got {t.PANOPTIC_EVALUATOR!r}), which it shares the per-image matching with: set "
            "TEST.PANOPTIC_EVALUATOR in_process or TEST.PANOPTIC_ERROR_ANALYSIS False"
        )
    return None


def _amp_needs_cuda(cfg) -> Optional[str]:
    if cfg.SOLVER.AMP.ENABLED and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        return (
            "SOLVER.AMP.ENABLED needs a CUDA model (Detectron2's AMPTrainer); MODEL.DEVICE is "
            f"{cfg.MODEL.DEVICE}: set SOLVER.AMP.ENABLED False or MODEL.DEVICE cuda"
        )
    return None


def _clip_type(cfg) -> Optional[str]:
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.CLIP_TYPE == "full_model":
        return (
            "SOLVER.CLIP_GRADIENTS.CLIP_TYPE 'full_model' is not a Detectron2 clip type (its "
            "build_optimizer rejects it); full-model clipping has its own key: set "
            "SOLVER.CLIP_GRADIENTS.ENABLED False, SOLVER.CLIP_GRADIENTS.CLIP_TYPE value and "
            f"SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED True, MAX_NORM {clip.CLIP_VALUE}"
        )
    return None


def _full_model_max_norm(cfg) -> Optional[str]:
    full = cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS
    if full.ENABLED and not full.MAX_NORM > 0:
        return (
            "SOLVER.FULL_MODEL_CLIP_GRADIENTS.MAX_NORM must be > 0 with "
            f"SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED, got {full.MAX_NORM}: set MAX_NORM (DETR: "
            "0.1) or ENABLED False"
        )
    return None


CONFIG_RULES: Tuple[ConfigRule, ...] = (
    ConfigRule(
        ("MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS",),
        "an integer >= 1 (1 = Group DETR off)",
        _num_groups,
    ),
    ConfigRule(
        ("MODEL.MASK_ON", "MODEL.DETR.IN_FEATURES"),
        "with masks, four backbone features (strides 4, 8, 16, 32)",
        _mask_features,
    ),
    ConfigRule(
        ("MODEL.MASK_ON", "MODEL.DETR.HIDDEN_DIM", "MODEL.DETR.NHEADS"),
        "with masks, HIDDEN_DIM a multiple of 128 and HIDDEN_DIM + NHEADS of 8 (GroupNorm(8))",
        _mask_head_widths,
    ),
    ConfigRule(
        ("MODEL.MASK_ON", "TEST.PANOPTIC_ON", "TEST.SEMANTIC_ON"),
        "without masks (detection only), no panoptic or semantic output",
        _outputs_need_masks,
    ),
    ConfigRule(
        ("TEST.PANOPTIC_ON", "TEST.INSTANCE_ON", "TEST.SEMANTIC_ON"),
        "at least one output on",
        _some_output,
    ),
    ConfigRule(
        ("MODEL.DETR.FROZEN_WEIGHTS", "MODEL.DETR.DEEP_SUPERVISION"),
        "stage 2 (frozen detector) without deep supervision: the frozen decoder cannot learn",
        _frozen_deep_supervision,
    ),
    ConfigRule(
        ("MODEL.DETR.FROZEN_WEIGHTS", "MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED"),
        "stage 2 without duplicate suppression: the frozen class head cannot learn",
        _frozen_duplicate_suppression,
    ),
    ConfigRule(
        ("MODEL.DETR.MASK_HEAD_WEIGHTS", "MODEL.MASK_ON"),
        "mask-head weights need a model with masks",
        _mask_head_weights,
    ),
    ConfigRule(
        ("TEST.PANOPTIC_WRITE_PREDICTIONS", "TEST.PANOPTIC_EVALUATOR"),
        "writing prediction PNGs is an option of the 'in_process' evaluator",
        _write_predictions,
    ),
    ConfigRule(
        ("TEST.PANOPTIC_ERROR_ANALYSIS", "TEST.PANOPTIC_EVALUATOR"),
        "error analysis is an option of the 'in_process' evaluator",
        _error_analysis,
    ),
    ConfigRule(
        (
            "MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED",
            "MODEL.DETR.DUPLICATE_SUPPRESSION.IOU_THRESHOLD",
            "MODEL.DETR.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT",
        ),
        "duplicate suppression needs an IoU threshold in (0, 1] and a class weight >= 0",
        _duplicate_suppression_values,
        training=True,
    ),
    ConfigRule(
        ("SOLVER.AMP.ENABLED", "MODEL.DEVICE"),
        "mixed precision (Detectron2's AMPTrainer) needs a CUDA device",
        _amp_needs_cuda,
        training=True,
    ),
    ConfigRule(
        ("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED"),
        "Detectron2's clip types only (value, norm); DETR's full-model clipping is its own key",
        _clip_type,
        training=True,
    ),
    ConfigRule(
        ("SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED", "SOLVER.FULL_MODEL_CLIP_GRADIENTS.MAX_NORM"),
        "full-model clipping needs a positive maximum norm",
        _full_model_max_norm,
        training=True,
    ),
)


def config_problems(cfg: Any, training: bool = False) -> List[str]:
    """The error of every rule of :data:`CONFIG_RULES` that ``cfg`` breaks (empty: fine); the
    ``training`` rules only when ``training``."""
    out = []
    for rule in CONFIG_RULES:
        if rule.training and not training:
            continue
        problem = rule.check(cfg)
        if problem:
            out.append(problem)
    return out


def validate_detr_config(cfg: Any, training: bool = False) -> None:
    """Raise ``ValueError`` listing every cross-key rule ``cfg`` breaks (one line each, naming the
    keys and the fix). ``training``: also the rules of a training run (e.g. AMP needs CUDA); the
    model's own rules are checked either way."""
    problems = config_problems(cfg, training)
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:
        raise ValueError(
            f"the config breaks {len(problems)} rules:\n" + "\n".join(f"- {p}" for p in problems)
        )
