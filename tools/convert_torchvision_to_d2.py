#!/usr/bin/env python
"""torchvision ImageNet ResNet-18/34/50/101/152 weights -> Detectron2 backbone initialisation.

Renames torchvision's keys to Detectron2's ResNet (``layer1.0.bn2.*`` -> ``res2.0.conv2.norm.*``,
``downsample`` -> ``shortcut``, ``conv1``/``bn1`` -> ``stem``), keeps all four buffers of every BN,
drops ``fc.*`` and ``num_batches_tracked``, and refuses a file that is not a complete torchvision
ResNet: the depth is read off the block names, then every tensor is checked against that ResNet and
the missing / unexpected / mis-shaped ones are listed (found vs expected shape) with the file name,
as one 'error: ...' line (exit code 1); nothing is written then. --output is written atomically and
is never --source; an existing --output is only replaced with --overwrite.

Output format, chosen by the extension of --output:
  .pkl  Detectron2 model-zoo form: {"model": numpy arrays with prefix-free names, "__author__":
        "torchvision", "matching_heuristics": True}. DetectionCheckpointer matches the names by
        suffix, so it initialises ``backbone.*`` of DetrPanoptic (or any Detectron2 model with a
        ResNet).
  .pth  exact names: every key is prefixed with --prefix (default "backbone.", where DetrPanoptic
        keeps its ResNet), "matching_heuristics": False.

Use the weights with MODEL.RESNETS.STRIDE_IN_1X1 False (torchvision puts the stride in the 3x3
conv), INPUT.FORMAT RGB and the ImageNet PIXEL_MEAN/PIXEL_STD in RGB order (configs/Base-DETR.yaml).

Example::

    python tools/convert_torchvision_to_d2.py --source resnet50-0676ba61.pth \\
        --output r50_torchvision.pkl
"""

import argparse
import os
import sys

from detr_d2.checkpoint import convert_torchvision_resnet, d2_checkpoint
from detr_d2.checkpoint.checkpoint_io import (
    check_output_path,
    extract_state_dict,
    load_torch_file,
    write_atomically,
)
from detr_d2.checkpoint.resnet_keys import infer_resnet_depth
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--source", required=True, help="torchvision ResNet state dict (.pth)")
    p.add_argument(
        "--output", required=True, help="converted weights to write: .pkl or .pth (see above)"
    )
    p.add_argument(
        "--prefix", default="backbone.", help="key prefix for .pth output (default: backbone.)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (never --source)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    ext = os.path.splitext(args.output)[1].lower()
    if ext not in (".pkl", ".pth"):
        raise ValueError(f"--output must end with .pkl or .pth, got {args.output}")
    check_output_path(args.output, sources=[args.source], overwrite=args.overwrite)
    state_dict = extract_state_dict(load_torch_file(args.source), args.source)
    if ext == ".pkl":
        converted = convert_torchvision_resnet(state_dict, prefix="", source=args.source)
        model = {k: v.numpy() for k, v in converted.items()}
        obj = d2_checkpoint(model, author="torchvision", matching_heuristics=True)
    else:
        converted = convert_torchvision_resnet(state_dict, prefix=args.prefix, source=args.source)
        obj = d2_checkpoint(converted, author="torchvision", matching_heuristics=False)
    write_atomically(
        obj, args.output, source=args.source, overwrite=args.overwrite, use_pickle=ext == ".pkl"
    )
    depth = infer_resnet_depth([k for k in state_dict if not k.startswith("fc.")])
    print(
        f"wrote {args.output}: ResNet-{depth}, {len(converted)} tensors\n"
        f"use with: MODEL.WEIGHTS {args.output} MODEL.RESNETS.DEPTH {depth} "
        "MODEL.RESNETS.STRIDE_IN_1X1 False"
        + (" MODEL.RESNETS.RES2_OUT_CHANNELS 64" if depth in (18, 34) else "")
    )
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
