#!/usr/bin/env python
"""Make a small subset of a COCO panoptic split (JSON + PNG folder), e.g. for quick evaluation.

Detectron2 registers ``coco_2017_val_100_panoptic``, which expects
``coco/annotations/panoptic_val2017_100.json`` and ``coco/panoptic_val2017_100/``. This script
makes them from the full val split (the first N images by image id; the PNGs are copied):

    # 100 images of $DETECTRON2_DATASETS/coco (default datasets/coco):
    python datasets/prepare_coco_panoptic_subset.py
    python datasets/prepare_coco_panoptic_subset.py \\
        --panoptic-json tests/data/coco_panoptic_sample/panoptic_examples.json \\
        --panoptic-root tests/data/coco_panoptic_sample/panoptic_examples \\
        --output-json output/sample_1/panoptic.json --output-root output/sample_1/panoptic -n 1
"""

import argparse
import os
import shutil
import sys
from typing import Optional

from detr_d2.data.panoptic_io import read_json, require_keys
from detr_d2.utils.atomic_io import atomic_write_json, refuse_overwrite
from detr_d2.utils.cli import run_tool, tool_parser


def make_subset(
    panoptic_json: str, panoptic_root: str, output_json: str, output_root: str, num_images: int
) -> int:
    """Write the first ``num_images`` annotations (by image id) and their PNGs; returns how many."""
    refuse_overwrite(output_json, [panoptic_json])
    if os.path.realpath(output_root) == os.path.realpath(panoptic_root):
        raise ValueError(f"refusing to write into the input PNG folder {panoptic_root}")
    data = read_json(panoptic_json, "panoptic JSON")
    require_keys(data, ["annotations", "categories"], panoptic_json)
    anns = sorted(data["annotations"], key=lambda a: a["image_id"])[:num_images]
    keep = {a["image_id"] for a in anns}
    os.makedirs(output_root, exist_ok=True)
    for ann in anns:
        src = os.path.join(panoptic_root, ann["file_name"])
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{panoptic_json}: panoptic PNG not found (file_name): {src}")
        dst = os.path.join(output_root, ann["file_name"])
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
    out = dict(data, annotations=anns)
    if "images" in data:
        out["images"] = [img for img in data["images"] if img["id"] in keep]
    atomic_write_json(output_json, out)
    return len(anns)


def build_parser() -> argparse.ArgumentParser:
    coco = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco")
    p = tool_parser(__doc__)
    p.add_argument(
        "--panoptic-json", default=os.path.join(coco, "annotations", "panoptic_val2017.json")
    )
    p.add_argument("--panoptic-root", default=os.path.join(coco, "panoptic_val2017"))
    p.add_argument(
        "--output-json", default=os.path.join(coco, "annotations", "panoptic_val2017_100.json")
    )
    p.add_argument("--output-root", default=os.path.join(coco, "panoptic_val2017_100"))
    p.add_argument("-n", "--num-images", type=int, default=100)
    return p


def run(args: argparse.Namespace) -> int:
    n = make_subset(args.panoptic_json, args.panoptic_root, args.output_json, args.output_root, args.num_images)
    print(f"wrote {n} images: {args.output_json}, {args.output_root}")
    return 0


def main(argv: Optional[list] = None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
