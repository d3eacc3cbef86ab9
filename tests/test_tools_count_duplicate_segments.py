"""tools/count_duplicate_segments.py: the matched / duplicate decisions on hand-made maps, and the command on
the COCO sample with a tiny random model (counts equal to the dataset's and the predictor's)."""
import json
import os
import re

import numpy as np
import pytest

from conftest import COCO_SAMPLE
from tests.utils.scripts import load_script
from test_demo_predictor import NAME, sample_cfg  # noqa: F401  (fixture)

tool = load_script("count_duplicate_segments")


def _square(ids, value, y0, y1, x0, x1):
    ids[y0:y1, x0:x1] = value
    return ids


def test_split_object_is_one_match_and_one_duplicate():
    gt = _square(np.zeros((20, 20), np.int64), 7, 0, 10, 0, 10)  # one thing of 100 px, stuff 0 elsewhere
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
    # stuff predictions are not counted
    assert tool.match_and_duplicates(pred, [1], gt, [7]) == (1, 0)
    with pytest.raises(ValueError, match="differ in size"):
        tool.match_and_duplicates(pred[:10], [1], gt, [7])


def test_command_on_coco_sample(sample_cfg, capsys):  # noqa: F811
    cfg, path = sample_cfg
    assert tool.main(["--config-file", path, "--dataset", NAME, "--first", "1", "--per-image"]) == 0
    out = capsys.readouterr().out
    gt = json.load(open(os.path.join(COCO_SAMPLE, "panoptic_examples.json")))
    thing_ids = {c["id"] for c in gt["categories"] if c["isthing"]}
    gt_things = sum(s["category_id"] in thing_ids and not s.get("iscrowd", 0) for a in gt["annotations"] for s in a["segments_info"])
    m = re.search(r"^all: 2 images, ground-truth things (\d+), predicted things (\d+), matched \(IoU > 0.5\) (\d+), "
                  r"duplicates (\d+) \(in (\d+) images\)$", out, re.M)
    assert m, out
    assert int(m.group(1)) == gt_things
    assert re.search(r"^first 1: 1 images, ", out, re.M)


def test_unknown_dataset_is_an_error(sample_cfg, capsys):  # noqa: F811
    _, path = sample_cfg
    assert tool.main(["--config-file", path, "--dataset", "no_such_dataset"]) == 1
    assert "error: --dataset 'no_such_dataset' is not registered" in capsys.readouterr().err
