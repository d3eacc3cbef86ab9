"""Panoptic fusion inputs built from the real COCO panoptic sample
(tests/data/coco_panoptic_sample), shared by tests/test_modeling_fusion_twins.py and
benchmarks/fusion.py."""

import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from panopticapi.utils import rgb2id
from PIL import Image

from tests.utils.paths import COCO_SAMPLE


def coco_sample_fusion_inputs(index: int):
    """(logits, masks, image_size, output_size, is_thing, label_map) for the panoptic fusion, built
    from the real annotation of sample image ``index``: one query per segment (its
    category's slot, the official layout's dataset-id slots), two duplicated stuff queries and
    no-object queries; mask logits +-6 from the segment's real shape on the stride-4 grid of the
    800-pixel test input, with noise."""
    with open(os.path.join(COCO_SAMPLE, "panoptic_examples.json")) as f:
        data = json.load(f)
    ann, info = data["annotations"][index], data["images"][index]
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_map = torch.full((250,), -1, dtype=torch.int64)
    for i, c in enumerate(categories):
        label_map[c["id"]] = i
    is_thing = torch.tensor([bool(c["isthing"]) for c in categories])
    png = os.path.join(COCO_SAMPLE, "panoptic_examples", ann["file_name"])
    seg_ids = torch.from_numpy(rgb2id(np.asarray(Image.open(png).convert("RGB"))).astype(np.int64))
    orig = (info["height"], info["width"])
    scale = 800 / min(orig)
    h, w = int(orig[0] * scale + 0.5), int(orig[1] * scale + 0.5)
    grid = (-(-h // 4), -(-w // 4))
    segments = list(ann["segments_info"])
    stuff = [s for s in segments if not categories[int(label_map[s["category_id"]])]["isthing"]]
    segments += stuff[:2]  # duplicated stuff queries: merged into the first one
    g = torch.Generator().manual_seed(index)
    logits = torch.randn(len(segments) + 5, 251, generator=g)
    logits[:, 250] += 12  # no object, but for the segments' queries
    masks = torch.randn(len(segments) + 5, *grid, generator=g)
    for q, s in enumerate(segments):
        logits[q, 250] -= 12
        logits[q, s["category_id"]] += 12
        shape = F.interpolate((seg_ids == s["id"]).float()[None, None], size=grid, mode="area")[
            0, 0
        ]
        masks[q] += 12 * shape - 6
    return logits, masks, (h, w), orig, is_thing, label_map
