"""``check_segment_ids_of_map`` (issue 25, the training mapper's integrity check without sorting
the pixels) decides exactly as the old computation, ``check_segment_ids(np.unique(ids), ...)``:
the same images pass, the others raise the same error, on random id maps with every kind of
mismatch and on the COCO sample's PNGs; the sort is skipped only when the ids agree."""

import json
import os

import numpy as np
import pytest

from detr_d2.data import panoptic_io
from detr_d2.data.panoptic_io import check_segment_ids_of_map, read_panoptic_ids
from tests.utils.evaluation import COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS
from tests.utils.mapper_oracles import check_segment_ids_sorting as _old


def _outcome(check, ids, segments_info):
    try:
        check(ids, segments_info, "pan.png", 7, "pan.json")
    except ValueError as e:
        return str(e)
    return "ok"


def _cases(seed):
    """(ids, segments_info, name): a consistent map and one variant per kind of mismatch."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 8))
    seg_ids = rng.choice(np.arange(1, 2**24), size=k, replace=False)
    palette = np.concatenate([[0], seg_ids]) if seed % 2 else seg_ids
    ids = palette[rng.integers(0, len(palette), size=(int(rng.integers(1, 40)), 33))]
    ids = ids.astype(np.uint32)
    present = [int(i) for i in np.unique(ids) if i != 0]
    info = [{"id": i, "category_id": 1} for i in present]
    absent = int(rng.choice(np.setdiff1d(np.arange(1, 2**12), present)))
    yield ids, info, "consistent"
    yield ids, info[::-1], "consistent, other order"
    yield ids, info[1:], "a PNG segment not listed"
    yield ids, info + [{"id": absent, "category_id": 1}], "a listed segment with no pixel"
    yield ids, info + [{"id": 0, "category_id": 1}], "id 0 listed"
    yield ids, info + info[:1], "a segment listed twice"
    yield ids, [], "nothing listed"
    yield np.zeros_like(ids), [], "all void, nothing listed"
    yield np.zeros_like(ids), info[:1], "all void, one listed"


@pytest.mark.parametrize("seed", range(12))
def test_same_outcome_as_unique_on_random_maps(seed):
    for ids, info, name in _cases(seed):
        assert _outcome(check_segment_ids_of_map, ids, info) == _outcome(_old, ids, info), name


def test_same_outcome_on_the_coco_sample_pngs():
    with open(COCO_SAMPLE_JSON) as f:
        annotations = json.load(f)["annotations"]
    for ann in annotations:
        ids = read_panoptic_ids(os.path.join(COCO_SAMPLE_PNGS, ann["file_name"]))
        info = ann["segments_info"]
        for variant in (info, info[1:], info + [{"id": 5, "category_id": 1}]):
            new = _outcome(check_segment_ids_of_map, ids, variant)
            assert new == _outcome(_old, ids, variant)
        assert _outcome(check_segment_ids_of_map, ids, info) == "ok"


def test_agreeing_ids_are_not_sorted(monkeypatch):
    calls = []
    monkeypatch.setattr(panoptic_io.np, "unique", lambda *a, **k: calls.append(a) or np.array([]))
    ids = np.array([[0, 5, 5], [9, 9, 0]], dtype=np.uint32)
    check_segment_ids_of_map(ids, [{"id": 9}, {"id": 5}], "pan.png")
    assert calls == []
    with pytest.raises(ValueError):  # disagreeing: np.unique decides (patched: finds no ids)
        check_segment_ids_of_map(ids, [{"id": 5}], "pan.png")
    assert len(calls) == 1


def test_many_segments_are_sorted_as_before(monkeypatch):
    """Past ``MAX_SEGMENTS_COMPARED`` listed segments ``np.unique`` decides alone (cheaper)."""
    n = panoptic_io.MAX_SEGMENTS_COMPARED + 1
    ids = np.arange(1, n + 1, dtype=np.uint32).reshape(1, n)
    info = [{"id": i} for i in range(1, n + 1)]
    calls = []
    unique = np.unique
    monkeypatch.setattr(panoptic_io.np, "unique", lambda a: calls.append(1) or unique(a))
    check_segment_ids_of_map(ids, info, "pan.png")
    check_segment_ids_of_map(ids[:, :-1], info[:-1], "pan.png")
    assert calls == [1]
    assert _outcome(check_segment_ids_of_map, ids, info[1:]) == _outcome(_old, ids, info[1:])
