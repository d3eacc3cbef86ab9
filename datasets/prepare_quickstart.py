#!/usr/bin/env python
"""Generate the synthetic quickstart dataset ahead of time (otherwise it is generated lazily).

Writes ``detr_quickstart_train`` (1000 images) and ``detr_quickstart_val`` (100 images) under
``--root`` (default: ``$DETR_D2_QUICKSTART_ROOT`` or ``$DETECTRON2_DATASETS/detr_d2_quickstart``,
i.e. ``datasets/detr_d2_quickstart`` from the repository root). Splits already present are kept.
If you pass ``--root``, export ``DETR_D2_QUICKSTART_ROOT`` to the same folder for training.

    python datasets/prepare_quickstart.py
"""

import argparse
import sys
import time

from detr_d2.data.datasets import quickstart
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--root", default=None, help="output folder (default: see above)")
    return p


def run(args: argparse.Namespace) -> int:
    root = args.root or quickstart.quickstart_root()
    for name, (split, num_images, seed) in quickstart.QUICKSTART_SPLITS.items():
        start = time.perf_counter()
        json_path = quickstart.ensure_quickstart_split(root, split, num_images, seed)
        print(f"{name}: {num_images} images, {json_path} ({time.perf_counter() - start:.1f} s)")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
