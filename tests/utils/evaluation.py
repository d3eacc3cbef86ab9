"""Helpers shared by the evaluation tests.

Registers the real COCO sample (``tests/data/coco_panoptic_sample``) and synthetic panoptic datasets
with Detectron2, and provides a model that returns the ground truth as its panoptic output.
"""

import contextlib
import copy
import io
import json
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from torch import nn

from detr_d2.data.datasets.panoptic_metadata import build_panoptic_metadata
from detr_d2.data.panoptic_io import read_panoptic_ids, save_panoptic_png
from tests.utils.paths import COCO_SAMPLE, ROOT  # noqa: F401  (ROOT: for the importers)
from tests.utils.synthetic_panoptic import (
    make_synthetic_panoptic_gt,
    perturb_prediction,
    write_panoptic_json,
)

COCO_SAMPLE_JSON = os.path.join(COCO_SAMPLE, "panoptic_examples.json")
COCO_SAMPLE_PNGS = os.path.join(COCO_SAMPLE, "panoptic_examples")
COCO_SAMPLE_DATASET = "detr_d2_test_evaluation_coco_sample"


def register_panoptic(name: str, json_path: str, png_root: str, image_root: str) -> str:
    """Register a COCO-panoptic JSON + PNG folder with Detectron2 under ``name`` (idempotent)."""
    if name not in DatasetCatalog.list():
        with open(json_path) as f:
            categories = json.load(f)["categories"]
        register_coco_panoptic(
            name, build_panoptic_metadata(categories, json_path), image_root, png_root, json_path
        )
    return name


def register_coco_sample() -> str:
    return register_panoptic(
        COCO_SAMPLE_DATASET,
        COCO_SAMPLE_JSON,
        COCO_SAMPLE_PNGS,
        os.path.join(COCO_SAMPLE, "input_images"),
    )


def coco_sample() -> Tuple[Dict[str, Any], Dict[int, Dict[str, Any]]]:
    """(GT JSON dict, {dataset category id: category}) of the COCO sample."""
    with open(COCO_SAMPLE_JSON) as f:
        gt = json.load(f)
    return gt, {c["id"]: c for c in gt["categories"]}


def synthetic_categories(num_things: int = 12, num_stuff: int = 6) -> List[Dict[str, Any]]:
    """Categories with non-contiguous ids; most of them never appear in small synthetic sets."""
    cats = [
        {"id": 3 * i + 1, "name": f"thing{i}", "isthing": 1, "color": [i, 0, 0]}
        for i in range(num_things)
    ]
    cats += [
        {"id": 200 + 2 * i, "name": f"stuff{i}", "isthing": 0, "color": [0, i, 0]}
        for i in range(num_stuff)
    ]
    return cats


def write_synthetic_dataset(
    root: str,
    rng: np.random.Generator,
    num_images: int,
    categories: Sequence[Dict[str, Any]],
    height: int = 48,
    width: int = 64,
    **gt_kwargs,
) -> Tuple[str, str]:
    """Write a synthetic COCO-panoptic GT set (PNG folder + JSON) to ``root``; returns both
    paths."""
    png_root = os.path.join(root, "panoptic")
    os.makedirs(png_root, exist_ok=True)
    annotations = []
    for i in range(num_images):
        id_map, segments = make_synthetic_panoptic_gt(rng, height, width, categories, **gt_kwargs)
        file_name = f"{i:04d}.png"
        save_panoptic_png(os.path.join(png_root, file_name), id_map)
        annotations.append(
            {"image_id": 1000 + i, "file_name": file_name, "segments_info": segments}
        )
    json_path = os.path.join(root, "panoptic.json")
    write_panoptic_json(json_path, annotations, categories)
    return json_path, png_root


def contiguous_output(
    id_map: np.ndarray, segments_info: Sequence[Dict[str, Any]], metadata: Any
) -> Dict[str, Any]:
    """A model output ``{"panoptic_seg": (int32 tensor, segments with contiguous ids + isthing)}``
    from a prediction with dataset category ids."""
    things = metadata.thing_dataset_id_to_contiguous_id
    stuff = metadata.stuff_dataset_id_to_contiguous_id
    segments = []
    for s in segments_info:
        isthing = s["category_id"] in things
        contiguous = (things if isthing else stuff)[s["category_id"]]
        segments.append({"id": int(s["id"]), "category_id": contiguous, "isthing": isthing})
    return {
        "panoptic_seg": (torch.from_numpy(np.ascontiguousarray(id_map, dtype=np.int32)), segments)
    }


class GroundTruthEchoModel(nn.Module):
    """Returns each input's ground truth (``pan_seg_file_name`` + ``segments_info`` of a Detectron2
    panoptic dataset dict) as its ``panoptic_seg`` output: a perfect model for eval-only tests."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        outputs = []
        for x in batched_inputs:
            ids = read_panoptic_ids(x["pan_seg_file_name"]).astype(np.int32)
            segments = [
                {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                for s in x["segments_info"]
            ]
            outputs.append({"panoptic_seg": (torch.from_numpy(ids), segments)})
        return outputs


def quiet_pq_compute(*args, **kwargs):
    from panopticapi.evaluation import pq_compute

    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute(*args, **kwargs)


def assert_same_pq(ours: Dict[str, Any], ref: Dict[str, Any], tol: float = 1e-9) -> None:
    """Compare two panopticapi-style results (All/Things/Stuff + per_class) to ``tol``."""
    for group in ("All", "Things", "Stuff"):
        assert ours[group]["n"] == ref[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(ours[group][key] - ref[group][key]) <= tol, (
                group,
                key,
                ours[group],
                ref[group],
            )
    assert set(ours["per_class"]) == set(ref["per_class"])
    for cat, values in ref["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][cat][key] - values[key]) <= tol, (cat, key)


def run_evaluator(evaluator, inputs, outputs):
    """``evaluator``'s result on (inputs, outputs) fed one image at a time."""
    evaluator.reset()
    for x, y in zip(inputs, outputs):
        evaluator.process([x], [copy.deepcopy(y)])  # D2's evaluator mutates segments_info
    return evaluator.evaluate()


def perturbed_outputs(dataset_name, gt_json, png_root, rng, ops=None, category_ids=None):
    """Inputs (file_name, image_id) and model-style outputs (contiguous ids) for every GT image;
    relabelled / extra segments take ``category_ids`` (default: all categories)."""
    metadata = MetadataCatalog.get(dataset_name)
    with open(gt_json) as f:
        gt = json.load(f)
    category_ids = category_ids or [c["id"] for c in gt["categories"]]
    inputs, outputs = [], []
    for ann in gt["annotations"]:
        gt_map = read_panoptic_ids(os.path.join(png_root, ann["file_name"]))
        pred, segments = perturb_prediction(gt_map, ann["segments_info"], category_ids, rng, ops)
        inputs.append(
            {
                "file_name": os.path.splitext(ann["file_name"])[0] + ".jpg",
                "image_id": ann["image_id"],
            }
        )
        outputs.append(contiguous_output(pred, segments, metadata))
    return inputs, outputs
