#!/usr/bin/env python
"""Make a small subset of a COCO panoptic split (JSON + PNG folder), e.g. for quick evaluation.

Detectron2 registers ``coco_2017_val_100_panoptic``, which expects
``coco/annotations/panoptic_val2017_100.json`` and ``coco/panoptic_val2017_100/``. This script
makes them from the full val split (the first N images by image id; the PNGs are copied). The
outputs are written all or nothing (the PNG folder under a temporary name, renamed when complete,
then the JSON); existing outputs are refused unless ``--overwrite``:

    # 100 images of $DETECTRON2_DATASETS/coco (default datasets/coco):
    python datasets/prepare_coco_panoptic_subset.py
    python datasets/prepare_coco_panoptic_subset.py \\
        --panoptic-json tests/data/coco_panoptic_sample/panoptic_examples.json \\
        --panoptic-root tests/data/coco_panoptic_sample/panoptic_examples \\
        --output-json output/sample_1/panoptic.json --output-root output/sample_1/panoptic -n 1
"""

import argparse
import json
import os
import shutil
import sys
from typing import Optional

from detr_d2.data.panoptic_io import check_panoptic_ids, join_under, read_json, require_keys
from detr_d2.utils.atomic_io import atomic_directory, atomic_file, check_new_outputs
from detr_d2.utils.cli import run_tool, tool_parser


def make_subset(
    panoptic_json: str,
    panoptic_root: str,
    output_json: str,
    output_root: str,
    num_images: int,
    overwrite: bool = False,
) -> int:
    """Write the first ``num_images`` annotations (by image id) and their PNGs, all or nothing;
    returns how many."""
    if os.path.realpath(output_root) == os.path.realpath(panoptic_root):
        raise ValueError(f"refusing to write into the input PNG folder {panoptic_root}")
    replace_root = check_new_outputs(output_json, output_root, overwrite, [panoptic_json])
    data = read_json(panoptic_json, "panoptic JSON")
    require_keys(data, ["annotations", "categories"], panoptic_json)
    check_panoptic_ids(data, panoptic_json)  # repeated ids / PNG names: refused, named
    anns = sorted(data["annotations"], key=lambda a: a["image_id"])[:num_images]
    keep = {a["image_id"] for a in anns}
    for ann in anns:
        where = f"{panoptic_json}: annotation of image_id {ann['image_id']!r} 'file_name'"
        src = join_under(panoptic_root, ann["file_name"], where)  # never outside the roots
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{panoptic_json}: panoptic PNG not found (file_name): {src}")
    out = dict(data, annotations=anns)
    if "images" in data:
        out["images"] = [img for img in data["images"] if img["id"] in keep]
    with atomic_file(output_json, overwrite, [panoptic_json]) as json_tmp:
        with atomic_directory(
            output_root, replace_root, [panoptic_json, panoptic_root]
        ) as root_tmp:
            for ann in anns:
                name = ann["file_name"]
                shutil.copyfile(os.path.join(panoptic_root, name), os.path.join(root_tmp, name))
            with open(json_tmp, "w", encoding="utf-8") as f:
                json.dump(out, f)
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
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs (the whole PNG folder)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    n = make_subset(
        args.panoptic_json,
        args.panoptic_root,
        args.output_json,
        args.output_root,
        args.num_images,
        args.overwrite,
    )
    print(f"wrote {n} images: {args.output_json}, {args.output_root}")
    return 0


def main(argv: Optional[list] = None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
