"""Class-head transfer by class name (issue 14): matched rows are copied, new rows are a fresh
``nn.Linear`` init, no-object is kept, nothing ambiguous is guessed, class-map files override."""

import json
import logging
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from torch import nn

from detr_d2.checkpoint import (
    convert_official_detr,
    dataset_class_names,
    load_class_map,
    transfer_class_head,
)
from detr_d2.checkpoint.class_names import (
    class_match_key,
    coco_detection_class_names,
    coco_panoptic_class_names,
    normalize_class_name,
)
from detr_d2.checkpoint.class_transfer import fresh_class_head, match_classes
from detr_d2.checkpoint.official_layout import OfficialDETRLayout, official_state_dict_spec
from detr_d2.data.datasets.panoptic_metadata import build_panoptic_metadata
from tests.utils.configs import tiny_detr_cfg
from tests.utils.scripts import load_script

HIDDEN = 128
TARGET = ["person", "Car", "wall", "sky", "excavator", "rebar", "traffic_light", "Dining-Table"]
# COCO panoptic ids of the matched names; None = new row
PANOPTIC_ROWS = [1, 3, 199, 187, None, None, 10, 67]
DETECTION_ROWS = [1, 3, None, None, None, None, 10, 67]  # no stuff classes in detection checkpoints


def classifier(num_logits: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        "class_embed.weight": torch.randn(num_logits, HIDDEN, generator=g),
        "class_embed.bias": torch.randn(num_logits, generator=g),
        "query_embed.weight": torch.randn(3, HIDDEN, generator=g),
    }


def expected_fresh(num_logits: int, seed: int):
    torch.manual_seed(seed)
    return nn.Linear(HIDDEN, num_logits)


def test_name_normalisation_and_coco_names():
    assert class_match_key("wall-other-merged") == class_match_key("Wall") == "wall"
    assert class_match_key("sky-other-merged") == "sky" and class_match_key("door-stuff") == "door"
    assert class_match_key("Traffic_Light") == class_match_key("traffic light") == "traffic light"
    assert class_match_key("other") == "other" and class_match_key("wall-brick") == "wall brick"
    assert normalize_class_name("  Potted--Plant ") == "potted plant"
    panoptic, detection = coco_panoptic_class_names(), coco_detection_class_names()
    assert len(panoptic) == 250 and sum(n is not None for n in panoptic) == 133
    assert len(detection) == 91 and sum(n is not None for n in detection) == 80
    assert (
        panoptic[199] == "wall-other-merged"
        and panoptic[12] is None
        and detection[92 - 2] == "toothbrush"
    )
    keys = [class_match_key(n) for n in panoptic if n]
    assert len(set(keys)) == 133  # COCO's own names never collide after normalisation


@pytest.mark.parametrize(
    "num_logits, names, rows",
    [
        (251, coco_panoptic_class_names(), PANOPTIC_ROWS),
        (92, coco_detection_class_names(), DETECTION_ROWS),
    ],
    ids=["official_panoptic", "official_detection"],
)
def test_transfer_copies_matched_rows_and_fresh_inits_the_rest(num_logits, names, rows, caplog):
    src = classifier(num_logits)
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    with caplog.at_level(logging.INFO):
        out, matches = transfer_class_head(src, names, TARGET, seed=7, source="detr.pth")
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    k = len(TARGET)
    assert out["class_embed.weight"].shape == (k + 1, HIDDEN) and out["class_embed.bias"].shape == (
        k + 1,
    )
    fresh = expected_fresh(k + 1, seed=7)
    for c, row in enumerate(rows):
        assert (
            matches[c].source_row == row
            and matches[c].contiguous_id == c
            and matches[c].target_name == TARGET[c]
        )
        want_w = fresh.weight[c] if row is None else src["class_embed.weight"][row]
        want_b = fresh.bias[c] if row is None else src["class_embed.bias"][row]
        assert torch.equal(out["class_embed.weight"][c], want_w.detach()), c
        assert torch.equal(out["class_embed.bias"][c], want_b.detach()), c
    assert torch.equal(
        out["class_embed.weight"][k], src["class_embed.weight"][-1]
    )  # no-object kept
    assert torch.equal(out["class_embed.bias"][k], src["class_embed.bias"][-1])
    assert out["query_embed.weight"] is src["query_embed.weight"]  # everything else untouched
    # the logged table: target class, contiguous id, source class, source row or 'new'
    lines = caplog.text.splitlines()
    assert any(
        line.split() == ["target", "class", "id", "source", "class", "source", "row"]
        for line in lines
    )
    if num_logits == 251:
        assert any(line.split() == ["wall", "2", "wall-other-merged", "199"] for line in lines)
    assert any(line.split() == ["rebar", "5", "-", "new"] for line in lines)


def test_new_rows_are_what_detr_panoptic_gives_a_fresh_class_head():
    """DetrPanoptic's class_embed is a plain nn.Linear with PyTorch's default init (U(+-1/sqrt(d)))
    and nothing re-initialises it: the transfer's fresh rows follow the same distribution."""
    cfg = tiny_detr_cfg(num_classes=len(TARGET))
    model = build_model(cfg)
    assert (
        type(model.class_embed) is nn.Linear and model.class_embed.out_features == len(TARGET) + 1
    )
    bound = 1 / HIDDEN**0.5
    assert (
        model.class_embed.weight.abs().max() <= bound
        and model.class_embed.bias.abs().max() <= bound
    )
    assert (
        model.class_embed.weight.abs().max() > 0.9 * bound
    )  # uniform over the whole range, not a special init
    weight, bias = fresh_class_head(HIDDEN, len(TARGET) + 1, seed=3)
    assert (
        weight.abs().max() <= bound
        and weight.abs().max() > 0.9 * bound
        and bias.abs().max() <= bound
    )
    out, _ = transfer_class_head(classifier(251), coco_panoptic_class_names(), TARGET)
    result = model.load_state_dict(
        {k: v for k, v in out.items() if k.startswith("class_embed")}, strict=False
    )
    assert not result.unexpected_keys


def test_ambiguous_and_shared_matches_are_errors():
    names = ["wall", "person", "wall-other-merged", None]  # e.g. a Hugging Face id2label
    with pytest.raises(ValueError) as e:
        match_classes(names, ["Wall", "person"], source="hf-model")
    msg = str(e.value)
    assert msg.startswith(
        "hf-model: cannot transfer the class head by name: ambiguous class names: "
    )
    assert (
        "'Wall' matches 'wall' (row 0), 'wall-other-merged' (row 2)" in msg and "class-map" in msg
    )
    with pytest.raises(
        ValueError,
        match=r"several target classes match the same source class: "
        r"'wall-other-merged' \(row 199\) <- 'wall', 'Wall-Other'",
    ):
        match_classes(coco_panoptic_class_names(), ["wall", "Wall-Other"])
    # a class map settles both
    matches = match_classes(names, ["Wall", "person"], {"wall": "wall-other-merged"})
    assert [(m.source_row, m.rule) for m in matches] == [(2, "class map"), (1, "name")]


def test_class_map_files_override_and_unknown_names_are_errors(tmp_path):
    yaml_map = tmp_path / "map.yaml"
    yaml_map.write_text("excavator: truck\nwall: null\nTraffic-Light: traffic_light\n")
    json_map = tmp_path / "map.json"
    json_map.write_text(
        json.dumps({"excavator": "truck", "wall": None, "Traffic-Light": "traffic_light"})
    )
    assert load_class_map(str(yaml_map)) == load_class_map(str(json_map))
    src = classifier(251)
    out, matches = transfer_class_head(
        src, coco_panoptic_class_names(), TARGET, class_map=load_class_map(str(yaml_map))
    )
    by_name = {m.target_name: m for m in matches}
    assert (by_name["excavator"].source_row, by_name["excavator"].rule) == (8, "class map")
    assert torch.equal(out["class_embed.weight"][4], src["class_embed.weight"][8])
    assert by_name["wall"].source_row is None and by_name["wall"].rule == "new (class map)"
    assert torch.equal(
        out["class_embed.weight"][2], expected_fresh(len(TARGET) + 1, 0).weight[2].detach()
    )
    assert by_name["traffic_light"].source_row == 10

    with pytest.raises(
        ValueError, match=r"^m\.yaml: target classes crane are not classes of the dataset"
    ):
        match_classes(
            coco_panoptic_class_names(), TARGET, {"crane": "truck"}, class_map_source="m.yaml"
        )
    with pytest.raises(ValueError, match=r"source classes bulldozer are not classes of detr\.pth"):
        match_classes(
            coco_panoptic_class_names(), TARGET, {"rebar": "bulldozer"}, source="detr.pth"
        )
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: expected an object"):
        load_class_map(str(tmp_path / "bad.yaml"))
    with pytest.raises(ValueError, match="4 source class names for a classifier with 251 rows"):
        transfer_class_head(src, ["a", "b", "c", "d"], TARGET)


@pytest.fixture
def construction_dataset():
    """A registered panoptic dataset whose classes partly overlap COCO's by name."""
    name = "test_checkpoint_construction_site"
    categories = [
        {"id": i + 1, "name": n, "isthing": int(i < 5)}
        for i, n in enumerate(
            ["person", "Car", "excavator", "rebar", "traffic_light", "wall", "sky", "gravel-pile"]
        )
    ]
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(**build_panoptic_metadata(categories))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_dataset_class_names_from_registered_metadata(construction_dataset):
    assert dataset_class_names(construction_dataset)[:3] == ["person", "Car", "excavator"]
    assert len(dataset_class_names("coco_2017_val_panoptic")) == 133
    assert dataset_class_names("coco_2017_val")[:2] == ["person", "bicycle"]  # detection metadata
    with pytest.raises(ValueError, match="not registered"):
        dataset_class_names("no_such_dataset_xyz")


@pytest.mark.parametrize("masks", [True, False], ids=["official_panoptic", "official_detection"])
def test_tool_dataset_option_transfers_by_name(tmp_path, capsys, construction_dataset, masks):
    lay = OfficialDETRLayout(masks, 18, HIDDEN, 8, 1, 1, 64, False, 5, 250 if masks else 91)
    g = torch.Generator().manual_seed(0)
    src = {k: torch.randn(s, generator=g) for k, s in official_state_dict_spec(lay).items()}
    source, output = str(tmp_path / "detr.pth"), str(tmp_path / "out.pth")
    torch.save({"model": src}, source)
    (tmp_path / "map.yaml").write_text("excavator: truck\n")
    tool = load_script("convert_detr_checkpoint")
    argv = ["--source", source, "--output", output, "--dataset", construction_dataset]
    assert tool.main(argv + ["--class-map", str(tmp_path / "map.yaml"), "--init-seed", "5"]) == 0
    out = torch.load(output, weights_only=True)["model"]
    names = coco_panoptic_class_names() if masks else coco_detection_class_names()
    expected, _ = transfer_class_head(
        convert_official_detr(src),
        names,
        construction_dataset,
        class_map={"excavator": "truck"},
        seed=5,
    )
    assert out.keys() == expected.keys() and all(torch.equal(out[k], expected[k]) for k in out)
    w = src[f"{lay.prefix}class_embed.weight"]
    assert torch.equal(out["class_embed.weight"][2], w[8]) and torch.equal(
        out["class_embed.weight"][8], w[-1]
    )
    printed = capsys.readouterr().out
    copied = 6 if masks else 4  # detection checkpoints have no 'wall' / 'sky'
    assert (
        f"{copied} of 8 classes of test_checkpoint_construction_site copied from the checkpoint"
        in printed
    )
    assert "MODEL.DETR.NUM_CLASSES 8 MODEL.DETR.CLASS_SLOTS contiguous" in printed

    assert (
        tool.main(
            ["--source", source, "--output", str(tmp_path / "o2.pth"), "--class-map", "x.yaml"]
        )
        == 1
    )
    assert "error: --class-map needs --dataset" in capsys.readouterr().err
    assert tool.main(argv[:4] + ["--dataset", "no_such_dataset_xyz", "--overwrite"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: dataset 'no_such_dataset_xyz' is not registered"
    )
    assert sorted(os.listdir(tmp_path)) == ["detr.pth", "map.yaml", "out.pth"]
