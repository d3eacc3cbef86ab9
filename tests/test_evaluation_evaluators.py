"""The panoptic evaluators: eval-only PQ = 100, equality with Detectron2's evaluator and pq_compute,
per-class outputs, written predictions, the label_divisor encoding, errors, and 2-process
gathering."""

import copy
import json
import os
import sys
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import COCOPanopticEvaluator, inference_on_dataset
from PIL import Image

from detr_d2.data.panoptic_io import read_panoptic_ids
from detr_d2.evaluation import (
    COCOPanopticEvaluatorWithPerClass,
    FastCOCOPanopticEvaluator,
    build_panoptic_evaluator,
)
from tests.utils.evaluation import (
    COCO_SAMPLE,
    COCO_SAMPLE_JSON,
    COCO_SAMPLE_PNGS,
    GroundTruthEchoModel,
    assert_same_pq,
    coco_sample,
    perturbed_outputs,
    quiet_pq_compute,
    register_coco_sample,
    register_panoptic,
    run_evaluator,
    synthetic_categories,
    write_synthetic_dataset,
)

D2_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st")


def _set_json_categories(json_path, categories):
    with open(json_path) as f:
        gt = json.load(f)
    gt["categories"] = categories
    with open(json_path, "w") as f:
        json.dump(gt, f)


def test_eval_only_ground_truth_gives_pq_100(tmp_path):
    """inference_on_dataset with a model that returns the GT of the real COCO sample (crowd
    regions included): Detectron2's evaluator and ours both give PQ = SQ = RQ = 100."""
    name = register_coco_sample()
    loader = build_detection_test_loader(
        DatasetCatalog.get(name), mapper=lambda d: d, num_workers=0
    )
    for evaluator in (
        COCOPanopticEvaluator(name, str(tmp_path / "d2")),
        FastCOCOPanopticEvaluator(name, str(tmp_path / "fast")),
        COCOPanopticEvaluatorWithPerClass(name, str(tmp_path / "d2pc")),
    ):
        results = inference_on_dataset(GroundTruthEchoModel(), loader, evaluator)
        for key in D2_KEYS:
            assert results["panoptic_seg"][key] == pytest.approx(100.0, abs=1e-9), (
                type(evaluator),
                key,
            )
    assert results["panoptic_seg"]["PQ-person"] == pytest.approx(100.0)


def test_fast_equals_d2_and_pq_compute_on_perturbed_coco_sample(tmp_path):
    """Several rounds of perturbed predictions: ours == Detectron2's evaluator (pq_compute) for
    All/Things/Stuff; its written predictions re-scored by pq_compute give the same per-class
    numbers; the per-class subclass agrees too."""
    name = register_coco_sample()
    rng = np.random.default_rng(7)
    for round_ in range(4):
        inputs, outputs = perturbed_outputs(name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, rng)
        out_dir = tmp_path / f"round{round_}"
        fast = run_evaluator(
            FastCOCOPanopticEvaluator(name, str(out_dir), write_predictions=True), inputs, outputs
        )
        d2 = run_evaluator(COCOPanopticEvaluator(name), inputs, outputs)
        per_class = run_evaluator(
            COCOPanopticEvaluatorWithPerClass(name, str(tmp_path / "pc")), inputs, outputs
        )
        for key in D2_KEYS:
            assert abs(fast["panoptic_seg"][key] - d2["panoptic_seg"][key]) <= 1e-9, key
        assert fast["panoptic_seg"] == pytest.approx(per_class["panoptic_seg"], abs=1e-9)
        ref = quiet_pq_compute(
            COCO_SAMPLE_JSON,
            str(out_dir / "predictions.json"),
            gt_folder=COCO_SAMPLE_PNGS,
            pred_folder=str(out_dir / "predictions"),
        )
        with open(out_dir / "panoptic_per_class.json") as f:
            report = json.load(f)
        ours = {
            "per_class": {
                r["category_id"]: {k.lower(): r[k] / 100 for k in ("PQ", "SQ", "RQ")}
                for r in report["per_class"]
            }
        }
        for group, values in report["summary"].items():
            ours[group] = {
                "pq": values["PQ"] / 100,
                "sq": values["SQ"] / 100,
                "rq": values["RQ"] / 100,
                "n": values["n"],
            }
        assert_same_pq(ours, ref)
        assert ref["All"]["pq"] < 1.0  # the perturbations did change the result


def test_synthetic_dataset_with_crowd_and_unused_categories(tmp_path):
    """Non-contiguous category ids, most never appearing, several crowd regions: ours equals
    pq_compute (All/Things/Stuff and per class) through written predictions."""
    cats = synthetic_categories()
    used = [c for i, c in enumerate(cats) if i % 3 != 1]  # a third of the categories never appear
    json_path, png_root = write_synthetic_dataset(
        str(tmp_path / "gt"), np.random.default_rng(3), 6, used, crowd_prob=0.4
    )
    _set_json_categories(json_path, cats)
    name = register_panoptic(
        f"detr_d2_test_eval_synth_{uuid.uuid4().hex}", json_path, png_root, str(tmp_path)
    )
    inputs, outputs = perturbed_outputs(
        name, json_path, png_root, np.random.default_rng(4), category_ids=[c["id"] for c in used]
    )
    out_dir = tmp_path / "out"
    results = run_evaluator(
        FastCOCOPanopticEvaluator(name, str(out_dir), write_predictions=True), inputs, outputs
    )
    ref = quiet_pq_compute(
        json_path,
        str(out_dir / "predictions.json"),
        gt_folder=png_root,
        pred_folder=str(out_dir / "predictions"),
    )
    assert ref["All"]["n"] < len(cats)  # some categories never appear
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)
    assert results["panoptic_seg"]["PQ_st"] == pytest.approx(100 * ref["Stuff"]["pq"], abs=1e-9)
    with open(out_dir / "panoptic_per_class.json") as f:
        report = json.load(f)
    present = {r["category_id"] for r in report["per_class"] if r["present"]}
    assert len(present) == ref["All"]["n"]
    for r in report["per_class"]:
        assert r["PQ"] == pytest.approx(100 * ref["per_class"][r["category_id"]]["pq"], abs=1e-9)


def test_category_group_absent_does_not_crash(tmp_path):
    """No stuff category appears: pq_compute raises ZeroDivisionError, both of our evaluators
    report Stuff as NaN with 0 categories and keep All/Things."""
    cats = synthetic_categories(num_things=4, num_stuff=3)
    things_only = [c for c in cats if c["isthing"]]
    json_path, png_root = write_synthetic_dataset(
        str(tmp_path / "gt"), np.random.default_rng(5), 2, things_only, crowd_prob=0.0
    )
    _set_json_categories(json_path, cats)  # stuff categories exist but never appear
    name = register_panoptic(
        f"detr_d2_test_eval_nostuff_{uuid.uuid4().hex}", json_path, png_root, str(tmp_path)
    )
    inputs, outputs = perturbed_outputs(
        name,
        json_path,
        png_root,
        np.random.default_rng(6),
        ops=("drop", "shift", "relabel"),
        category_ids=[c["id"] for c in things_only],
    )
    with pytest.raises(ZeroDivisionError):
        run_evaluator(COCOPanopticEvaluator(name), inputs, outputs)
    for evaluator in (
        FastCOCOPanopticEvaluator(name, str(tmp_path / "fast")),
        COCOPanopticEvaluatorWithPerClass(name, str(tmp_path / "d2")),
    ):
        res = run_evaluator(evaluator, inputs, outputs)["panoptic_seg"]
        assert np.isnan(res["PQ_st"]) and res["PQ"] == res["PQ_th"] and 0 < res["PQ"] <= 100
    with open(tmp_path / "fast" / "panoptic_per_class.json") as f:
        report = json.load(f)
    assert report["summary"]["Stuff"] == {"PQ": None, "SQ": None, "RQ": None, "n": 0}


def test_per_class_json_and_plot_are_written(tmp_path):
    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(1)
    )
    gt, categories = coco_sample()
    for cls in (FastCOCOPanopticEvaluator, COCOPanopticEvaluatorWithPerClass):
        out_dir = tmp_path / cls.__name__
        results = run_evaluator(cls(name, str(out_dir)), inputs, outputs)["panoptic_seg"]
        with open(out_dir / "panoptic_per_class.json") as f:
            report = json.load(f)
        assert report["units"] == "percent"
        assert [r["category_id"] for r in report["per_class"]] == [
            c["id"] for c in gt["categories"]
        ]
        present = [r for r in report["per_class"] if r["present"]]
        assert report["summary"]["All"]["n"] == len(present) < len(categories)
        assert report["summary"]["All"]["PQ"] == pytest.approx(results["PQ"])
        assert np.mean([r["PQ"] for r in present]) == pytest.approx(results["PQ"])
        for r in present:
            assert results["PQ-" + r["name"]] == pytest.approx(r["PQ"])
            assert r["tp"] + r["fp"] + r["fn"] > 0
        with Image.open(out_dir / "panoptic_per_class_pq.png") as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 400
        assert not [p for p in os.listdir(out_dir) if p.startswith(".")]  # no temp files left


def test_write_predictions_round_trip(tmp_path):
    """The written PNG + JSON are the standard format: pq_compute reads and scores them like ours,
    and the PNGs hold the predicted ids."""
    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(2)
    )
    results = run_evaluator(
        FastCOCOPanopticEvaluator(name, str(tmp_path), write_predictions=True), inputs, outputs
    )
    with open(tmp_path / "predictions.json") as f:
        written = json.load(f)
    assert {a["image_id"] for a in written["annotations"]} == {x["image_id"] for x in inputs}
    assert len(written["categories"]) == 133
    for x, y, ann in zip(inputs, outputs, written["annotations"]):
        assert ann["file_name"] == f"{x['image_id']}.png"  # by id: stems can repeat
        ids = read_panoptic_ids(str(tmp_path / "predictions" / ann["file_name"]))
        assert np.array_equal(ids, y["panoptic_seg"][0].numpy())
        assert {s["id"] for s in ann["segments_info"]} == set(np.unique(ids).tolist()) - {0}
    ref = quiet_pq_compute(COCO_SAMPLE_JSON, str(tmp_path / "predictions.json"))  # default folder
    assert results["panoptic_seg"]["PQ"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)
    assert results["panoptic_seg"]["RQ_th"] == pytest.approx(100 * ref["Things"]["rq"], abs=1e-9)
    with pytest.raises(ValueError, match="needs an output_dir"):
        FastCOCOPanopticEvaluator(name, None, write_predictions=True)


def test_label_divisor_outputs_match_detectron2(tmp_path):
    """``segments_info is None``: ids = contiguous category * label_divisor + instance, -1 =
    VOID."""
    name = register_coco_sample()
    metadata = MetadataCatalog.get(name)
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(9)
    )
    encoded = []
    for y in outputs:
        ids, segments = y["panoptic_seg"]
        ids = ids.numpy()
        out = np.full(ids.shape, -1, np.int32)
        for k, s in enumerate(segments):
            out[ids == s["id"]] = s["category_id"] * metadata.label_divisor + (
                k if s["isthing"] else 0
            )
        encoded.append({"panoptic_seg": (torch.from_numpy(out), None)})
    fast = run_evaluator(FastCOCOPanopticEvaluator(name), inputs, encoded)
    d2 = run_evaluator(COCOPanopticEvaluator(name), inputs, encoded)
    for key in D2_KEYS:
        assert fast["panoptic_seg"][key] == pytest.approx(d2["panoptic_seg"][key], abs=1e-9), key
    before = [y["panoptic_seg"][0].clone() for y in encoded]
    FastCOCOPanopticEvaluator(name).process(inputs, encoded)
    assert all(torch.equal(a, y["panoptic_seg"][0]) for a, y in zip(before, encoded))  # not mutated


def test_evaluator_errors_name_the_problem(tmp_path):
    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(0), ops=()
    )
    evaluator = FastCOCOPanopticEvaluator(name)
    evaluator.process(inputs[:1], outputs[:1])
    with pytest.raises(
        ValueError, match=r"no prediction for 1 of the 2 images .*image ids \[439180\]"
    ):
        evaluator.evaluate()
    small = {"panoptic_seg": (outputs[0]["panoptic_seg"][0][:100], outputs[0]["panoptic_seg"][1])}
    with pytest.raises(ValueError, match="image 142238 .* does not match the ground truth"):
        evaluator.process(inputs[:1], [small])
    ids, segments = outputs[0]["panoptic_seg"]
    bad = [dict(s, category_id=500) for s in segments]
    with pytest.raises(KeyError, match="contiguous category_id 500"):
        evaluator.process(inputs[:1], [{"panoptic_seg": (ids, bad)}])
    with pytest.raises(ValueError, match="unknown panoptic evaluator 'slow'"):
        build_panoptic_evaluator("slow", name)
    assert isinstance(build_panoptic_evaluator("in_process", name), FastCOCOPanopticEvaluator)
    assert build_panoptic_evaluator("in_process", name, num_workers=0)._num_workers == 0
    assert isinstance(
        build_panoptic_evaluator("panopticapi", name), COCOPanopticEvaluatorWithPerClass
    )
    MetadataCatalog.get(f"detr_d2_test_eval_nometa_{uuid.uuid4().hex}").set(
        thing_dataset_id_to_contiguous_id={}, stuff_dataset_id_to_contiguous_id={}
    )
    with pytest.raises(ValueError, match="metadata has no 'panoptic_json'"):
        FastCOCOPanopticEvaluator(MetadataCatalog.list()[-1])


def _distributed_eval(result_path):
    """Worker of the 2-process test: each rank evaluates one image of the COCO sample."""
    from detectron2.utils import comm

    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(11)
    )
    evaluator = FastCOCOPanopticEvaluator(name)
    rank = comm.get_rank()
    evaluator.process(inputs[rank::2], outputs[rank::2])
    results = evaluator.evaluate()
    if comm.is_main_process():
        with open(result_path, "w") as f:
            json.dump(results["panoptic_seg"], f)
    else:
        assert results is None
    # Tear the gloo group down, then leave without interpreter finalization: gloo's C++ threads
    # still holding Python objects at finalization abort a worker now and then (SIGABRT, "terminate
    # called without an active exception"; seen in a CI run of the full suite, not reproduced when
    # run alone).
    comm.synchronize()
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_process_gather_equals_single_process(tmp_path):
    from detectron2.engine import launch

    result_path = str(tmp_path / "ddp.json")
    launch(_distributed_eval, 2, dist_url="auto", args=(result_path,))
    with open(result_path) as f:
        distributed = json.load(f)
    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(11)
    )
    single = run_evaluator(FastCOCOPanopticEvaluator(name), inputs, outputs)["panoptic_seg"]
    assert distributed == pytest.approx(single, abs=1e-12)


def test_background_workers_equal_in_process_and_keep_order(tmp_path):
    """num_workers=2 (default) and 0 give identical results on 30 synthetic images processed in
    a shuffled order, each image predicted twice (the later prediction counts, as in pq_compute):
    more images than the queue holds, so collection order and back-pressure are exercised. The
    model's id-map tensors are overwritten after each process call: the queued work must not see
    it."""
    cats = synthetic_categories()
    json_path, png_root = write_synthetic_dataset(
        str(tmp_path / "gt"), np.random.default_rng(21), 30, cats, crowd_prob=0.3
    )
    name = register_panoptic(
        f"detr_d2_test_eval_async_{uuid.uuid4().hex}", json_path, png_root, str(tmp_path)
    )
    rng = np.random.default_rng(22)
    first_inputs, first = perturbed_outputs(name, json_path, png_root, rng)
    inputs, second = perturbed_outputs(name, json_path, png_root, rng)
    order = rng.permutation(len(inputs)).tolist()
    sequence = [(first_inputs[i], first[i]) for i in order] + [
        (inputs[i], second[i]) for i in order
    ]

    def run(num_workers, clobber):
        evaluator = FastCOCOPanopticEvaluator(name, num_workers=num_workers)
        evaluator.reset()
        for x, y in sequence:
            y = copy.deepcopy(y)
            evaluator.process([x], [y])
            if clobber:
                y["panoptic_seg"][0].fill_(0)
        return evaluator.evaluate()["panoptic_seg"]

    background = run(2, clobber=True)
    in_process = run(0, clobber=False)
    assert background == in_process
    only_second = run_evaluator(FastCOCOPanopticEvaluator(name, num_workers=0), inputs, second)[
        "panoptic_seg"
    ]
    assert background == only_second
    only_first = run_evaluator(FastCOCOPanopticEvaluator(name, num_workers=0), first_inputs, first)[
        "panoptic_seg"
    ]
    assert only_first != only_second  # the two rounds differ, so "the later one counts" is tested


def test_background_worker_errors_reach_the_caller(tmp_path):
    """An image's failure in a worker thread is raised (by process or evaluate) with its message,
    and the evaluator works again after reset."""
    name = register_coco_sample()
    inputs, outputs = perturbed_outputs(
        name, COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(0), ops=()
    )
    evaluator = FastCOCOPanopticEvaluator(name, num_workers=2)
    small = {"panoptic_seg": (outputs[0]["panoptic_seg"][0][:100], outputs[0]["panoptic_seg"][1])}
    with pytest.raises(ValueError, match="image 142238 .* does not match the ground truth"):
        evaluator.process(inputs[:1], [small])
        evaluator.process(inputs[1:], outputs[1:])
        evaluator.evaluate()
    results = run_evaluator(evaluator, inputs, outputs)["panoptic_seg"]
    assert results["PQ"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        FastCOCOPanopticEvaluator(name, num_workers=-1)


def test_dataset_registered_with_skipped_pngs_is_evaluated_on_its_images(tmp_path):
    """register_panoptic_dataset(missing="skip") leaves out the image whose GT PNG is missing: both
    evaluators then score the other images (with a warning) instead of failing after the whole
    inference, and give exactly pq_compute's numbers on a GT JSON that lists only those images."""
    import shutil

    from detr_d2.data.datasets import register_panoptic_dataset

    pngs = tmp_path / "pngs"
    shutil.copytree(COCO_SAMPLE_PNGS, pngs)
    os.remove(pngs / "000000439180.png")
    name = f"detr_d2_test_eval_skip_{uuid.uuid4().hex}"
    register_panoptic_dataset(
        name, os.path.join(COCO_SAMPLE, "input_images"), str(pngs), COCO_SAMPLE_JSON, missing="skip"
    )
    assert [d["image_id"] for d in DatasetCatalog.get(name)] == [142238]
    inputs, outputs = perturbed_outputs(
        register_coco_sample(), COCO_SAMPLE_JSON, COCO_SAMPLE_PNGS, np.random.default_rng(5)
    )
    with open(COCO_SAMPLE_JSON) as f:
        gt = json.load(f)
    gt["annotations"] = gt["annotations"][:1]
    one_image_json = str(tmp_path / "one.json")
    with open(one_image_json, "w") as f:
        json.dump(gt, f)
    reference = run_evaluator(
        FastCOCOPanopticEvaluator(
            register_panoptic(
                f"detr_d2_test_eval_one_{uuid.uuid4().hex}",
                one_image_json,
                str(pngs),
                str(tmp_path),
            )
        ),
        inputs[:1],
        outputs[:1],
    )["panoptic_seg"]
    assert 0 < reference["PQ"] < 100
    for evaluator in (
        FastCOCOPanopticEvaluator(name),
        COCOPanopticEvaluatorWithPerClass(name, str(tmp_path / "d2")),
    ):
        result = run_evaluator(evaluator, inputs[:1], outputs[:1])["panoptic_seg"]
        assert result.keys() == reference.keys()
        assert all(abs(result[k] - reference[k]) <= 1e-9 for k in reference), (result, reference)
    with pytest.raises(
        ValueError, match=r"no prediction for 1 of the 2 images"
    ):  # PNG present: still an error
        run_evaluator(FastCOCOPanopticEvaluator(register_coco_sample()), inputs[:1], outputs[:1])
