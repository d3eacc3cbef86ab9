"""The in-process PQ computation equals panopticapi's, image by image and category by category."""

import contextlib
import io
import json
import os

import numpy as np
import pytest
from panopticapi.evaluation import PQStat, pq_compute_single_core
from panopticapi.utils import rgb2id
from PIL import Image

from detr_d2.data.panoptic_io import read_panoptic_ids, save_panoptic_png
from detr_d2.evaluation.panoptic_matching import image_pq_stats
from detr_d2.evaluation.panoptic_quality import (
    PQStats,
    RunLengthIdMap,
    categories_by_id,
    pair_intersections,
    summarize_pq_stats,
)
from tests.utils.evaluation import COCO_SAMPLE_PNGS, coco_sample, synthetic_categories
from tests.utils.synthetic_panoptic import (
    PERTURBATIONS,
    make_synthetic_panoptic_gt,
    perturb_prediction,
)


def _ours(gt_path, gt_segments, pred_map, pred_segments, categories, image_id=0) -> PQStats:
    gt = RunLengthIdMap.from_id_map(read_panoptic_ids(gt_path))
    gt_ids, pred_ids, counts = pair_intersections(gt, pred_map)
    return image_pq_stats(
        gt_ids, pred_ids, counts, gt_segments, pred_segments, categories, image_id
    )


def _panopticapi(gt_ann, gt_folder, pred_map, pred_segments, categories, tmp_path) -> PQStats:
    """panopticapi's statistics for one image, through its PNG + JSON round trip."""
    save_panoptic_png(os.path.join(tmp_path, "pred.png"), pred_map)
    pred_ann = json.loads(
        json.dumps(
            {
                "image_id": gt_ann["image_id"],
                "file_name": "pred.png",
                "segments_info": pred_segments,
            }
        )
    )
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, [(gt_ann, pred_ann)], gt_folder, str(tmp_path), categories)
    return PQStats.from_panopticapi(stat)


def _assert_same_stats(ours: PQStats, ref: PQStats) -> None:
    nonzero = lambda s: {c: v for c, v in s.to_dict().items() if v["tp"] or v["fp"] or v["fn"]}
    a, b = nonzero(ours), nonzero(ref)
    assert a.keys() == b.keys()
    for c in a:
        assert (a[c]["tp"], a[c]["fp"], a[c]["fn"]) == (b[c]["tp"], b[c]["fp"], b[c]["fn"]), c
        assert abs(a[c]["iou"] - b[c]["iou"]) <= 1e-12, c


def test_png_reader_equals_rgb2id():
    gt, _ = coco_sample()
    for ann in gt["annotations"]:
        path = os.path.join(COCO_SAMPLE_PNGS, ann["file_name"])
        ours = read_panoptic_ids(path)
        ref = rgb2id(np.array(Image.open(path), dtype=np.uint32))
        assert ours.dtype == np.uint32 and np.array_equal(ours, ref)
        rle = RunLengthIdMap.from_id_map(ours)
        assert np.array_equal(rle.to_id_map(), ours)
        assert set(rle.ids.tolist()) == set(np.unique(ref).tolist())


def test_pair_intersections_equal_dense_counts():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(7, 9)).astype(np.uint32) * 1000
    pred = rng.integers(-3, 5, size=(7, 9)).astype(np.int64)
    pred[0, 0] = 2**24 + 3  # ids are taken modulo 2**24 like id2rgb's PNG encoding
    gt_ids, pred_ids, counts = pair_intersections(RunLengthIdMap.from_id_map(gt), pred)
    pred_mod = pred % 2**24
    assert pred_ids.tolist() == np.unique(pred_mod).tolist()
    for i, g in enumerate(gt_ids):
        for j, p in enumerate(pred_ids):
            assert counts[i, j] == np.count_nonzero((gt == g) & (pred_mod == p))
    with pytest.raises(ValueError, match="does not match the ground truth"):
        pair_intersections(RunLengthIdMap.from_id_map(gt), pred[:, :5])


@pytest.mark.parametrize(
    "ops",
    [None, ("drop", "merge"), ("shift", "relabel"), ("void", "crowd_overlap"), ("extra", "noise")],
    ids=lambda o: "all" if o is None else "+".join(o),
)
def test_perturbed_coco_sample_equals_panopticapi(tmp_path, ops):
    gt, _ = coco_sample()
    categories = categories_by_id(gt["categories"])
    rng = np.random.default_rng(sum(map(ord, str(ops))))
    seen = {"tp": 0, "fp": 0, "fn": 0}
    for trial in range(12):
        ann = gt["annotations"][trial % 2]
        path = os.path.join(COCO_SAMPLE_PNGS, ann["file_name"])
        pred, segments = perturb_prediction(
            read_panoptic_ids(path), ann["segments_info"], list(categories), rng, ops
        )
        ref = _panopticapi(ann, COCO_SAMPLE_PNGS, pred, segments, categories, tmp_path)
        ours = _ours(path, ann["segments_info"], pred, segments, categories)
        _assert_same_stats(ours, ref)
        for v in ours.per_category.values():
            seen["tp"] += v[1]
            seen["fp"] += v[2]
            seen["fn"] += v[3]
    assert all(seen.values()), seen  # the perturbations exercised every kind of count


def test_crowd_ignore_rule_is_exercised(tmp_path):
    """A prediction lying on the GT crowd region of its category is ignored; of another category,
    it is a false positive: both agree with panopticapi."""
    gt, _ = coco_sample()
    categories = categories_by_id(gt["categories"])
    ann = gt["annotations"][0]
    path = os.path.join(COCO_SAMPLE_PNGS, ann["file_name"])
    gt_map = read_panoptic_ids(path)
    crowd = next(s for s in ann["segments_info"] if s["iscrowd"])
    pred = np.zeros(gt_map.shape, np.int32)
    pred[gt_map == crowd["id"]] = 1
    for category, expected_fp in ((crowd["category_id"], 0), (184, 1)):
        segments = [{"id": 1, "category_id": category}]
        ours = _ours(path, ann["segments_info"], pred, segments, categories)
        _assert_same_stats(
            ours, _panopticapi(ann, COCO_SAMPLE_PNGS, pred, segments, categories, tmp_path)
        )
        assert ours.get(category)[2] == expected_fp


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_crowd_unlisted_and_absent_segments_equal_panopticapi(tmp_path, seed):
    """Synthetic GT with several crowd regions per category, VOID, pixels of ids missing from
    segments_info, listed segments without pixels, JSON areas that differ from the pixel counts,
    and categories that never appear."""
    rng = np.random.default_rng(100 + seed)
    cats = synthetic_categories()
    categories = categories_by_id(cats)
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    for trial in range(8):
        gt_map, gt_segments = make_synthetic_panoptic_gt(
            rng,
            40,
            56,
            cats,
            num_things=10,
            crowd_prob=0.4,
            unlisted_id=trial % 2 == 0,
            absent_segment=trial % 3 == 0,
        )
        if trial % 4 == 1:  # panopticapi takes GT areas from the JSON, even when they are off
            for segment in gt_segments:
                segment["area"] = int(segment["area"] * 0.8) + 1
        save_panoptic_png(str(gt_dir / "gt.png"), gt_map)
        ann = {"image_id": trial, "file_name": "gt.png", "segments_info": gt_segments}
        pred, segments = perturb_prediction(gt_map, gt_segments, list(categories), rng)
        ref = _panopticapi(ann, str(gt_dir), pred, segments, categories, tmp_path)
        ours = _ours(str(gt_dir / "gt.png"), gt_segments, pred, segments, categories)
        _assert_same_stats(ours, ref)


def test_summary_matches_pq_average_and_survives_empty_groups():
    cats = synthetic_categories(num_things=3, num_stuff=2)
    categories = categories_by_id(cats)
    stats = PQStats()
    ref = PQStat()
    # Only things appear; thing 2 (id 7) and all stuff never do.
    for cat, iou, tp, fp, fn in ((1, 1.7, 2, 1, 0), (4, 0.6, 1, 0, 3), (1, 0.9, 1, 0, 1)):
        stats.add(cat, iou, tp, fp, fn)
        ref[cat].iou += iou
        ref[cat].tp += tp
        ref[cat].fp += fp
        ref[cat].fn += fn
    res = summarize_pq_stats(stats, categories)
    for name, isthing in (("All", None), ("Things", True)):
        expected, per_class = ref.pq_average(categories, isthing=isthing)
        assert res[name]["n"] == expected["n"] == 2
        for key in ("pq", "sq", "rq"):
            assert abs(res[name][key] - expected[key]) <= 1e-12
        if name == "All":
            assert res["per_class"] == per_class
    assert res["per_class"][7] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    # panopticapi divides by n == 0 for a group without categories; we report NaN instead.
    with pytest.raises(ZeroDivisionError):
        ref.pq_average(categories, isthing=False)
    assert res["Stuff"]["n"] == 0 and np.isnan(res["Stuff"]["pq"])


def test_prediction_consistency_errors_match_panopticapi():
    gt, _ = coco_sample()
    categories = categories_by_id(gt["categories"])
    ann = gt["annotations"][1]
    path = os.path.join(COCO_SAMPLE_PNGS, ann["file_name"])
    pred = np.zeros(read_panoptic_ids(path).shape, np.int32)
    pred[:10] = 1
    pred[10:20] = 2
    with pytest.raises(KeyError, match="segment with ID 2 is presented in the prediction map"):
        _ours(path, ann["segments_info"], pred, [{"id": 1, "category_id": 1}], categories, 7)
    with pytest.raises(KeyError, match=r"IDs \[3\] are presented in segments_info"):
        _ours(
            path,
            ann["segments_info"],
            pred,
            [{"id": i, "category_id": 1} for i in (1, 2, 3)],
            categories,
        )
    with pytest.raises(KeyError, match="unknown category_id 999"):
        _ours(
            path,
            ann["segments_info"],
            pred,
            [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 999}],
            categories,
        )


def test_perturbation_names_are_checked():
    with pytest.raises(ValueError, match="unknown perturbations"):
        perturb_prediction(np.zeros((2, 2), np.uint32), [], [1], np.random.default_rng(0), ["blur"])
    assert "crowd_overlap" in PERTURBATIONS


def test_rgba_and_palette_pngs_read_as_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    ref = rgb2id(np.array(Image.open(tmp_path / "a.png"), dtype=np.uint32))
    assert np.array_equal(read_panoptic_ids(str(tmp_path / "a.png")), ref)
    palette = Image.fromarray(rgba[..., :3], "RGB").convert("P", palette=Image.ADAPTIVE, colors=6)
    palette.save(tmp_path / "p.png")
    expected = rgb2id(np.array(palette.convert("RGB"), dtype=np.uint32))
    assert np.array_equal(read_panoptic_ids(str(tmp_path / "p.png")), expected)


def test_non_rgb_ground_truth_png_is_rejected(tmp_path):
    path = str(tmp_path / "gray.png")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(path)
    with pytest.raises(
        ValueError, match=r"gray.png \(pan_seg_file_name\): a panoptic PNG must be RGB"
    ):
        read_panoptic_ids(path)
