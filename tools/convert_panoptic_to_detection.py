#!/usr/bin/env python
"""COCO panoptic format -> COCO instances JSON (RLE masks) of the thing segments.

For Detectron2's instance tools (``register_coco_instances``, ``COCOEvaluator``) or box-only
training. ``--include-stuff`` also exports stuff segments. Boxes and areas come from the PNG;
crowd segments keep ``iscrowd=1``. The JSON is written atomically; an existing one is refused
unless ``--overwrite``. See ``detr_d2.annotation.panoptic_to_detection``.

Example (the COCO sample shipped with the tests)::

    python tools/convert_panoptic_to_detection.py \\
        --panoptic-json tests/data/coco_panoptic_sample/panoptic_examples.json \\
        --panoptic-root tests/data/coco_panoptic_sample/panoptic_examples \\
        --output-json output/sample_instances.json
"""

import argparse
import sys

from detr_d2.annotation import convert_panoptic_to_detection
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument(
        "--panoptic-json",
        required=True,
        help="COCO panoptic JSON (images, annotations, categories)",
    )
    p.add_argument("--panoptic-root", required=True, help="folder of the panoptic PNGs")
    p.add_argument("--output-json", required=True, help="instances JSON to write")
    p.add_argument("--include-stuff", action="store_true", help="export stuff segments too")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output JSON (refused without it)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes reading PNGs (default 1)")
    return p


def run(args: argparse.Namespace) -> int:
    report = convert_panoptic_to_detection(
        args.panoptic_json,
        args.panoptic_root,
        args.output_json,
        include_stuff=args.include_stuff,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    print(f"{report.summary()}\nwrote {args.output_json}")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
