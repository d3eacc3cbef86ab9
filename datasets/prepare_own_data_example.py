#!/usr/bin/env python
"""Write a small example of "your own" panoptic dataset, for the "Train on your own data" recipe.

The images are the synthetic quickstart shapes, but the classes are those of a custom project:
6 classes (COCO panoptic has 133), named partly as in COCO and partly not:

    id  name          isthing   COCO class it takes a checkpoint row from (by name)
    1   sports ball   1         sports ball (a COCO thing: detection and panoptic checkpoints)
    2   crate         1         - (new)
    3   warning sign  1         - (new)
    4   sky           0         sky-other-merged (panoptic checkpoints only)
    5   grass         0         grass-merged
    6   water         0         water-other

Layout under --root (default datasets/own_data_example), as a user's dataset would be:

    train/*.jpg  panoptic_train/*.png  panoptic_train.json  instances_train.json   (and the same for
    val) datasets.yaml     the two datasets, own_example_train / own_example_val, in the format of
                      the config key DATASETS.REGISTER_FILES (paths relative to the file)

instances_*.json hold the things only (COCO instances, RLE), as a project with thing annotations
only has them (the input of tools/add_stuff_from_model.py; also the box AP ground truth).

    python datasets/prepare_own_data_example.py                       # 100 train + 20 val, 128x128
    python datasets/prepare_own_data_example.py --num-train 8 --num-val 4 --image-size 64
"""

import argparse
import os
import sys

from detr_d2.annotation import convert_panoptic_to_detection
from detr_d2.data.datasets.quickstart import QUICKSTART_CATEGORIES, generate_quickstart_dataset
from detr_d2.data.panoptic_io import read_json
from detr_d2.utils.atomic_io import atomic_write_bytes, atomic_write_json
from detr_d2.utils.cli import run_tool, tool_parser

# quickstart category id -> the example project's name for it
EXAMPLE_NAMES = {1: "sports ball", 2: "crate", 3: "warning sign", 4: "sky", 5: "grass", 6: "water"}
EXAMPLE_DATASETS = {"train": "own_example_train", "val": "own_example_val"}

DATASETS_YAML = """\
# The example's datasets, for DATASETS.REGISTER_FILES / --register-file (paths relative to here).
# Fields: the arguments of detr_d2.data.datasets.register_panoptic_dataset.
- name: own_example_train
  image_root: train                     # the images
  panoptic_root: panoptic_train         # the panoptic PNGs
  panoptic_json: panoptic_train.json
  json_file: instances_train.json       # optional: COCO instances JSON of the things (box AP)
- name: own_example_val
  image_root: val
  panoptic_root: panoptic_val
  panoptic_json: panoptic_val.json
  json_file: instances_val.json
"""


def example_categories():
    """The quickstart categories under the example project's names."""
    return [
        dict(c, name=EXAMPLE_NAMES[c["id"]], supercategory="example") for c in QUICKSTART_CATEGORIES
    ]


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument(
        "--root", default=os.path.join("datasets", "own_data_example"), help="output folder"
    )
    p.add_argument("--num-train", type=int, default=100)
    p.add_argument("--num-val", type=int, default=20)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument(
        "--overwrite", action="store_true", help="write over an existing example in --root"
    )
    return p


def run(args: argparse.Namespace) -> int:
    yaml_path = os.path.join(args.root, "datasets.yaml")
    if os.path.exists(yaml_path) and not args.overwrite:
        raise FileExistsError(
            f"{yaml_path} exists (the example is there); pass --overwrite to write it again"
        )
    for seed, (split, num) in enumerate((("train", args.num_train), ("val", args.num_val))):
        json_path = generate_quickstart_dataset(
            args.root, split, num, image_size=args.image_size, seed=seed
        )
        data = read_json(json_path, "panoptic JSON")
        data["categories"] = example_categories()
        data["info"] = {
            "description": f"detr_d2 own-data example ({split}): quickstart images, custom classes"
        }
        atomic_write_json(json_path, data)
        instances = os.path.join(args.root, f"instances_{split}.json")
        convert_panoptic_to_detection(
            json_path, os.path.join(args.root, f"panoptic_{split}"), instances
        )
        print(f"{EXAMPLE_DATASETS[split]}: {num} images, {json_path}, {instances}")
    atomic_write_bytes(yaml_path, DATASETS_YAML.encode("utf-8"))
    print(f"wrote {yaml_path}")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
