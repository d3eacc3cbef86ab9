#!/usr/bin/env python
"""DETR checkpoint (official facebookresearch/detr or Hugging Face transformers) -> detr_d2
checkpoint.

Reads, recognised by their tensor names:
  * official DETR checkpoints (.pth, weights under 'model'): panoptic
    (detr-r50-panoptic-00ce5173.pth, detr-r101-panoptic-40021d53.pth) and detection
    (detr-r50-e632da11.pth, ...);
  * Hugging Face transformers DetrForSegmentation / DetrForObjectDetection checkpoints: a folder
    written by save_pretrained (config.json + model.safetensors or pytorch_model.bin), or one of
    those files (config.json beside it is used when present); transformers 4.x and 5.x names, timm
    or native ResNet backbone.
Every tensor is mapped to DetrPanoptic's names (ResNet -> Detectron2 ResNet, q/k/v projections fused
back for HF). The configuration is read off the tensors; a file that does not match it is refused
with the list of missing / unexpected / mis-shaped tensors (found vs expected shape) and nothing is
written.

Options:
  --source PATH      the checkpoint to convert (file or HF folder); never overwritten.
  --output FILE      the detr_d2 checkpoint to write (.pth; written atomically: complete or not at
                     all).
  --overwrite        replace --output if it exists.
  --dataset NAME     re-target the class head to a registered dataset's classes BY NAME
                     (Detectron2's builtin datasets such as coco_2017_val_panoptic, detr_d2's such
                     as detr_quickstart_train): a class takes the checkpoint row of the class with
                     the same name (case, '-'/'_'/' ' and COCO panoptic suffixes
                     -merged/-other/-stuff ignored: "sky" takes "sky-other-merged"), other classes
                     get a fresh row, no-object is kept; the table of choices is logged. Output:
                     NUM_CLASSES = the dataset's class count, CLASS_SLOTS contiguous. Without
                     --dataset the classifier is kept as it is (official COCO checkpoints: logit
                     index = COCO category id, CLASS_SLOTS dataset_id).
  --class-map FILE   with --dataset: JSON or YAML {dataset class: checkpoint class, or null for a
                     fresh row}, overriding the name matching (needed when a name is ambiguous).
  --register-file F  a YAML file of your COCO-panoptic datasets (as for DATASETS.REGISTER_FILES),
                     registered first so that --dataset can name one of them.
  --init-seed N      seed of the fresh class rows (default 0): the rows of nn.Linear(hidden, K + 1)
                     built right after torch.manual_seed(N), PyTorch's default init as in
                     DetrPanoptic.
The tool prints what it read, what it wrote and the config options to load the result with
(on top of configs/Base-DETR.yaml, which sets STRIDE_IN_1X1 False, RGB input and ImageNet mean/std
as these weights need). Errors end it with one line 'error: ...' and exit code 1. DC5 checkpoints
convert but Detectron2's RES5_DILATION also dilates the first res5 block, so they are not reproduced
exactly.

Examples::

    python tools/convert_detr_checkpoint.py --source detr-r50-panoptic-00ce5173.pth \\
        --output detr_r50_panoptic_d2.pth
    python tools/convert_detr_checkpoint.py --source detr-resnet-50-panoptic \\
        --output detr_r50_quickstart_d2.pth --dataset detr_quickstart_train \\
        --class-map class_map.yaml

(the second: a Hugging Face folder; class_map.yaml could hold ``circle: sports ball``.)
"""

import argparse
import os
import sys

import detr_d2  # noqa: F401  (registers detr_d2's datasets for --dataset)
from detr_d2.checkpoint import (
    convert_detr_file,
    d2_checkpoint,
    dataset_class_names,
    load_class_map,
    retarget_classes,
)
from detr_d2.checkpoint.checkpoint_io import check_output_path, write_atomically
from detr_d2.checkpoint.hf_detr import hf_checkpoint_files
from detr_d2.data.datasets.register_from_file import register_dataset_file
from detr_d2.utils.cli import run_tool, tool_parser


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument(
        "--source", required=True, help="official DETR .pth, or Hugging Face folder / weight file"
    )
    p.add_argument("--output", required=True, help="converted checkpoint to write (.pth)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --output if it exists (never --source)"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="registered dataset whose classes the class head is mapped to by name",
    )
    p.add_argument(
        "--class-map",
        default=None,
        help="with --dataset: JSON/YAML {dataset class: checkpoint class or null}",
    )
    p.add_argument(
        "--register-file",
        default=None,
        help="YAML file of COCO-panoptic datasets to register first, so --dataset can name one "
        "(the format of "
        "the config key DATASETS.REGISTER_FILES)",
    )
    p.add_argument(
        "--init-seed", type=int, default=0, help="seed of the fresh class rows (default 0)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    if args.class_map and not args.dataset:
        raise ValueError("--class-map needs --dataset (the classes it maps to)")
    if args.register_file and not args.dataset:
        raise ValueError(
            "--register-file needs --dataset (the registered dataset whose classes to map to)"
        )
    inputs = hf_checkpoint_files(args.source) if os.path.isdir(args.source) else [args.source]
    inputs += [f for f in (args.class_map, args.register_file) if f]
    check_output_path(args.output, sources=inputs, overwrite=args.overwrite)
    if args.register_file:
        register_dataset_file(args.register_file)
    class_map = load_class_map(args.class_map) if args.class_map else None
    target = dataset_class_names(args.dataset) if args.dataset else None
    converted = convert_detr_file(args.source)
    if target is not None:
        converted = retarget_classes(
            converted,
            target,
            class_map=class_map,
            seed=args.init_seed,
            source=args.source,
            class_map_source=args.class_map or "class map",
        )
    write_atomically(
        d2_checkpoint(converted.model, author="detr_d2", matching_heuristics=False),
        args.output,
        overwrite=args.overwrite,
    )
    lines = [
        f"source: {converted.source_format}: {converted.layout.describe()}",
        f"wrote {args.output}: {len(converted.model)} tensors, {converted.num_classes} "
        "classes + no-object",
    ]
    if converted.matches is not None:
        copied = sum(m.source_row is not None for m in converted.matches)
        total = len(converted.matches)
        lines.append(
            f"class head: {copied} of {total} classes of {args.dataset} copied from the "
            "checkpoint, "
            f"{total - copied} new"
        )
    lines += [f"note: {n}" for n in converted.notes]
    lines.append(
        "use with configs/Base-DETR.yaml and: MODEL.WEIGHTS "
        + args.output
        + " "
        + " ".join(converted.config_options())
    )
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
