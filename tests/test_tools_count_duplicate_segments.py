"""tools/count_duplicate_segments.py: the matched / duplicate decisions on hand-made maps, and the
command on the COCO sample with a tiny random model (counts equal to the dataset's and the
predictor's)."""

import json
import os
import re

import numpy as np
import pytest

from tests.utils.paths import COCO_SAMPLE, SAMPLE_DATASET
from tests.utils.scripts import load_script

tool = load_script("count_duplicate_segments")


def _square(ids, value, y0, y1, x0, x1):
    ids[y0:y1, x0:x1] = value
    return ids


def test_split_object_is_one_match_and_one_duplicate():
    gt = _square(
        np.zeros((20, 20), np.int64), 7, 0, 10, 0, 10
    )  # one thing of 100 px, stuff 0 elsewhere
    pred = _square(np.zeros((20, 20), np.int64), 1, 0, 10, 0, 7)  # 70 px of it: IoU 0.7
    pred = _square(pred, 2, 0, 10, 7, 10)  # the other 30 px: a duplicate
    pred = _square(pred, 3, 12, 18, 12, 18)  # on stuff: neither
    assert tool.match_and_duplicates(pred, [1, 2, 3], gt, [7]) == (1, 1)
    # half of the object each: neither matches (IoU 0.5 is not > 0.5), so neither is a duplicate
    half = _square(_square(np.zeros((20, 20), np.int64), 1, 0, 10, 0, 5), 2, 0, 10, 5, 10)
    assert tool.match_and_duplicates(half, [1, 2], gt, [7]) == (0, 0)
    # a segment with most of its pixels outside the matched object is not a duplicate
    spill = _square(_square(np.zeros((20, 20), np.int64), 1, 0, 10, 0, 8), 2, 0, 10, 8, 16)
    assert tool.match_and_duplicates(spill, [1, 2], gt, [7]) == (1, 0)
    # the part of the object a segment covers decides: 30 of its 70 pixels (43%) is not a duplicate,
    # 30 of 50 (60%) is
    for width, expected in ((4, (1, 0)), (2, (1, 1))):
        part = _square(
            _square(np.zeros((20, 20), np.int64), 1, 0, 10, 0, 7), 2, 0, 10, 7, 10 + width
        )
        assert tool.match_and_duplicates(part, [1, 2], gt, [7]) == expected, width
    # stuff predictions are not counted
    assert tool.match_and_duplicates(pred, [1], gt, [7]) == (1, 0)
    with pytest.raises(ValueError, match="differ in size"):
        tool.match_and_duplicates(pred[:10], [1], gt, [7])


def _brute_force(pred, pred_things, gt, gt_things):
    """The definitions with one boolean mask per segment (the tool counts pixels with the
    evaluator's pair_intersections instead)."""
    matched = {}
    for p in pred_things:
        for g in gt_things:
            pm, gm = pred == p, gt == g
            if (pm & gm).sum() / max(1, (pm | gm).sum()) > 0.5:
                matched[p] = g
    dup = sum(
        1
        for p in pred_things
        if p not in matched
        and any(((pred == p) & (gt == g)).sum() > 0.5 * (pred == p).sum() for g in matched.values())
    )
    return len(matched), dup


@pytest.mark.parametrize("seed", range(20))
def test_counts_equal_brute_force_on_random_maps(seed):
    """Blocky random maps, the prediction shifted so segments straddle ground-truth ones; segments
    split, merged and absent (ids listed but not in the map)."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 5, (5, 5))
    gt = np.kron(cells * 1000 + 7, np.ones((8, 8), np.int64))
    change, mixed = rng.random((5, 5)), rng.random((5, 5)) < 0.4
    split = np.where(
        mixed, rng.integers(11, 16, (5, 5)), 11 + cells
    )  # split-off cells: own label's or another
    pred_cells = np.where(change < 0.05, 0, np.where(change > 0.6, split, cells + 1))
    pred = np.roll(
        np.kron(pred_cells, np.ones((8, 8), np.int64)), tuple(rng.integers(0, 3, 2)), (0, 1)
    )
    gt_things, pred_things = [7, 1007, 2007, 99], [1, 2, 3, 11, 12, 13, 14, 50]
    assert tool.match_and_duplicates(pred, pred_things, gt, gt_things) == _brute_force(
        pred, pred_things, gt, gt_things
    )


def test_command_on_coco_sample(sample_cfg, capsys):
    cfg, path = sample_cfg
    assert (
        tool.main(
            ["--config-file", path, "--dataset", SAMPLE_DATASET, "--first", "1", "--per-image"]
        )
        == 0
    )
    out = capsys.readouterr().out
    gt = json.load(open(os.path.join(COCO_SAMPLE, "panoptic_examples.json")))
    thing_ids = {c["id"] for c in gt["categories"] if c["isthing"]}
    gt_things = sum(
        s["category_id"] in thing_ids and not s.get("iscrowd", 0)
        for a in gt["annotations"]
        for s in a["segments_info"]
    )
    m = re.search(
        r"^all: 2 images, ground-truth things (\d+), predicted things (\d+), matched \(IoU > "
        r"0.5\) (\d+), "
        r"duplicates (\d+) \(in (\d+) images\)$",
        out,
        re.M,
    )
    assert m, out
    assert int(m.group(1)) == gt_things
    assert re.search(r"^first 1: 1 images, ", out, re.M)


def test_unknown_dataset_is_an_error(sample_cfg, capsys):
    _, path = sample_cfg
    assert tool.main(["--config-file", path, "--dataset", "no_such_dataset"]) == 1
    assert "error: --dataset 'no_such_dataset' is not registered" in capsys.readouterr().err
