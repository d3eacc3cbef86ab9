#!/usr/bin/env python
"""COCO panoptic format -> COCO instances JSON (RLE masks) of the thing segments.

For Detectron2's instance tools (``register_coco_instances``, ``COCOEvaluator``) or box-only
training. ``--include-stuff`` also exports stuff segments. Boxes and areas come from the PNG;
crowd segments keep ``iscrowd=1``. See ``detr_d2.data.panoptic_conversion``.

Example (the COCO sample shipped with the tests)::

    python tools/convert_panoptic_to_detection.py \\
        --panoptic-json tests/data/coco_panoptic_sample/panoptic_examples.json \\
        --panoptic-root tests/data/coco_panoptic_sample/panoptic_examples \\
        --output-json output/sample_instances.json
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--panoptic-json",
        required=True,
        help="COCO panoptic JSON (images, annotations, categories)",
    )
    p.add_argument("--panoptic-root", required=True, help="folder of the panoptic PNGs")
    p.add_argument("--output-json", required=True, help="instances JSON to write")
    p.add_argument("--include-stuff", action="store_true", help="export stuff segments too")
    p.add_argument("--workers", type=int, default=1, help="processes reading PNGs (default 1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from detr_d2.data.panoptic_conversion import convert_panoptic_to_detection

    try:
        report = convert_panoptic_to_detection(
            args.panoptic_json,
            args.panoptic_root,
            args.output_json,
            include_stuff=args.include_stuff,
            workers=args.workers,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{report.summary()}\nwrote {args.output_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
