#!/usr/bin/env python
"""Plot a training run's curves from Detectron2's ``OUTPUT_DIR/metrics.json`` (also while it runs).

    python tools/plot_training.py output/quickstart

Writes ``OUTPUT_DIR/training_curves.png`` (or ``--output``): the losses (total and each term,
smoothed, log scale), the learning rate, and PQ / SQ / RQ (All, Things, Stuff) at each evaluation.
A resumed run (``--resume``) is plotted as one run. ``train_net`` draws the same PNG at the end of
training.
"""

import argparse
import os
import sys

from detr_d2.engine.training_curves import METRICS_JSON, write_training_curves
from detr_d2.utils.atomic_io import refuse_overwrite
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("output_dir", metavar="OUTPUT_DIR", help="a train_net OUTPUT_DIR")
    p.add_argument("--output", default=None, help="PNG to write (default OUTPUT_DIR/...)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.output:
        refuse_overwrite(args.output, [os.path.join(args.output_dir, METRICS_JSON)])
    print(f"wrote {write_training_curves(args.output_dir, args.output)}")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
