#!/usr/bin/env python
"""Thing-only annotations + a panoptic model's stuff -> a COCO panoptic dataset (PNGs + JSON).

Thing segments come from the annotations exactly (polygons or RLE, rasterised and their overlaps
resolved as tools/convert_detection_to_panoptic.py does); every other pixel gets the model's stuff
prediction; a pixel the model calls a thing that no annotation covers becomes void (0), never an
invented instance. Stuff categories: the model's own stuff classes, or a coarser set declared in a
--stuff-map file (YAML/JSON):

    categories:                        # the output stuff categories (ids must differ from the thing
    ids)
      - {id: 101, name: sky}
      - {id: 102, name: vegetation, color: [60, 140, 50]}
    map:                               # model stuff class -> output category (null or unlisted:
      void) sky-other-merged: sky
      grass-merged: vegetation
      tree-merged: vegetation

Writes, all or nothing (a temporary sibling folder renamed at the end), into --output:
  panoptic/<image stem>.png   the panoptic PNGs panoptic.json               COCO panoptic JSON: the
  images, annotations, thing + stuff categories coverage.json               per-image and overall
  pixel shares: annotated things, model stuff, void
and prints the summary. Register the result with image_root = --image-root, panoptic_root =
<output>/panoptic, panoptic_json = <output>/panoptic.json. Inputs are never modified.

    python tools/add_stuff_from_model.py --instances-json my/instances_train.json \\
        --image-root my/train --config-file configs/coco_panoptic/detr_r50_official.yaml \\
        --output my/panoptic_train_model_stuff \\
        --stuff-map my/stuff_map.yaml --workers 2 --opts MODEL.WEIGHTS \\
        weights/detr_r50_panoptic_coco.pth
"""

import argparse
import os
import sys

from detr_d2.annotation import add_stuff_from_model
from detr_d2.config import get_detr_cfg
from detr_d2.predictor import DetrPanopticPredictor
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument(
        "--instances-json",
        required=True,
        help="COCO instances JSON of the things (polygons or RLE)",
    )
    p.add_argument(
        "--image-root",
        required=True,
        help="folder of the images (images[].file_name is relative to it)",
    )
    p.add_argument(
        "--config-file", required=True, metavar="FILE", help="config of the panoptic model"
    )
    p.add_argument(
        "--output", required=True, help="output folder (must not exist unless --overwrite)"
    )
    p.add_argument(
        "--stuff-map",
        default=None,
        help="YAML/JSON: output stuff categories + model class -> category",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes writing the PNGs while the model runs (default 1)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument(
        "--overlap", choices=("resolve", "error"), default="resolve",
        help="overlapping thing annotations: resolve by rule (default) or stop",
    )  # fmt: skip
    p.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides KEY VALUE ... (MODEL.WEIGHTS)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    cfg = get_detr_cfg(args.config_file, args.opts)
    if not (cfg.MODEL.MASK_ON and cfg.TEST.PANOPTIC_ON):
        raise ValueError(
            f"{args.config_file}: the model must be panoptic (MODEL.MASK_ON True, "
            "TEST.PANOPTIC_ON True)"
        )
    if not cfg.MODEL.WEIGHTS:
        raise ValueError(
            f"{args.config_file}: MODEL.WEIGHTS is empty; pass the model with --opts "
            "MODEL.WEIGHTS <file>"
        )
    if "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint not found: {cfg.MODEL.WEIGHTS}")
    cfg.freeze()
    # check the inputs against an existing output before building the model
    if os.path.lexists(args.output) and not args.overwrite:
        raise FileExistsError(
            f"{os.path.abspath(args.output)} exists; pass --overwrite to replace it"
        )
    predictor = DetrPanopticPredictor(cfg)
    summary = add_stuff_from_model(
        args.instances_json,
        args.image_root,
        args.output,
        predictor,
        predictor.metadata,
        stuff_map=args.stuff_map,
        workers=args.workers,
        overwrite=args.overwrite,
        overlap=args.overlap,
        protected=[args.config_file, cfg.MODEL.WEIGHTS],
    )
    print(summary.text())
    print(
        f"wrote {args.output}: panoptic/ ({summary.images} PNGs), panoptic.json, "
        "coverage.json; register with "
        f"image_root {args.image_root}, panoptic_root {os.path.join(args.output, 'panoptic')}, "
        f"panoptic_json {os.path.join(args.output, 'panoptic.json')}"
    )
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
