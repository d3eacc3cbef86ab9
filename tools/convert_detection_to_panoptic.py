#!/usr/bin/env python
"""COCO detection-format annotations (polygons or RLE, things and stuff) -> COCO panoptic format.

Writes one panoptic PNG per image of the detection JSON and a panoptic JSON, all or nothing: the
PNG folder is filled under a temporary name and renamed when complete, the JSON last; on any error
nothing is left behind. Existing outputs are refused unless ``--overwrite``. Overlapping
annotations are resolved (things over stuff, then smaller over larger, then first listed) and
reported; ``--overlap error`` refuses them instead, as panopticapi's converter does. See
``detr_d2.annotation.detection_to_panoptic`` for all rules.

Example (the COCO sample shipped with the tests)::

    python tools/convert_detection_to_panoptic.py \\
        --detection-json tests/data/coco_panoptic_sample/panoptic_coco_detection_format.json \\
        --categories-json tests/data/coco_panoptic_sample/panoptic_coco_categories.json \\
        --output-json output/sample_panoptic/panoptic.json \\
        --output-root output/sample_panoptic/panoptic
"""

import argparse
import sys

from detr_d2.annotation import convert_detection_to_panoptic
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument(
        "--detection-json",
        required=True,
        help="COCO detection JSON (images, annotations with 'segmentation')",
    )
    p.add_argument(
        "--categories-json",
        required=True,
        help="categories with 'isthing': a list (e.g. panoptic_coco_categories.json) "
        "or a JSON with 'categories'",
    )
    p.add_argument("--output-json", required=True, help="panoptic JSON to write")
    p.add_argument(
        "--output-root", required=True, help="folder for the panoptic PNGs (<image stem>.png)"
    )
    p.add_argument(
        "--overlap",
        choices=["resolve", "error"],
        default="resolve",
        help="overlapping annotations: resolve by rule and report (default) or stop with an error",
    )
    p.add_argument(
        "--id-scheme",
        choices=["color", "sequential"],
        default="color",
        help="segment ids: panopticapi category colours (default) or 1, 2, ... per image",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the colour jitter of thing ids (default 0)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs (the whole PNG folder, which must hold only PNGs); "
        "without it they are refused",
    )
    p.add_argument("--workers", type=int, default=1, help="processes writing PNGs (default 1)")
    return p


def run(args: argparse.Namespace) -> int:
    report = convert_detection_to_panoptic(
        args.detection_json,
        args.categories_json,
        args.output_json,
        args.output_root,
        overlap=args.overlap,
        id_scheme=args.id_scheme,
        seed=args.seed,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(f"{report.summary()}\nwrote {args.output_json} and PNGs in {args.output_root}")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
