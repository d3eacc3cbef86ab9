#!/usr/bin/env python
"""Official DETR checkpoint (facebookresearch/detr) -> detr_d2 checkpoint for MODEL.WEIGHTS.

Maps every official key to DetrPanoptic's names (torchvision ResNet -> Detectron2 ResNet for the
backbone, ``detr.`` stripped elsewhere) and refuses with a list of the missing / unexpected /
mis-shaped tensors when the file is not an official DETR state dict. Works for the panoptic
checkpoints (detr-r50-panoptic-00ce5173.pth, detr-r101-panoptic-40021d53.pth) and the detection ones.

Class slots: by default the 251-way classifier is kept (logit index = COCO category id; use a config
with MODEL.DETR.CLASS_SLOTS dataset_id and NUM_CLASSES 250, e.g. configs/coco_panoptic/detr_r50_official.yaml:
this reproduces DETR's scores exactly). ``--dataset NAME`` instead keeps the rows of that registered
dataset's categories in contiguous-id order + no-object (CLASS_SLOTS contiguous, NUM_CLASSES = number
of classes, e.g. 133 for coco_2017_val_panoptic; scores then differ slightly from DETR's).

The backbone weights need MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB and the ImageNet
PIXEL_MEAN/PIXEL_STD in RGB order (configs/Base-DETR.yaml). The DC5 checkpoint converts but cannot
be reproduced exactly by Detectron2's ResNet (RES5_DILATION dilates every res5 block).

Example::

    python tools/convert_detr_checkpoint.py --source detr-r50-panoptic-00ce5173.pth \\
        --output detr_r50_panoptic_d2.pth
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="official DETR checkpoint (.pth, weights under 'model')")
    p.add_argument("--output", required=True, help="converted checkpoint to write (.pth)")
    p.add_argument(
        "--dataset",
        default=None,
        help="registered Detectron2 dataset whose contiguous ids the class head is remapped to "
        "(e.g. coco_2017_val_panoptic); default: keep all class slots",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists (never --source)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    import detr_d2  # noqa: F401  (registers detr_d2's datasets for --dataset)
    from detr_d2.checkpoint import (
        convert_official_detr,
        d2_checkpoint,
        dataset_class_mapping,
        extract_state_dict,
        infer_official_layout,
        load_torch_file,
        write_atomically,
    )

    try:
        if os.path.exists(args.output) and os.path.samefile(args.source, args.output):
            raise ValueError(f"--output is the --source file ({args.source}); refusing to overwrite the source")
        if os.path.exists(args.output) and not args.overwrite:
            raise FileExistsError(f"--output {args.output} already exists; pass --overwrite to replace it")
        state_dict = extract_state_dict(load_torch_file(args.source), args.source)
        layout = infer_official_layout(state_dict, args.source)
        class_slots = "keep" if args.dataset is None else dataset_class_mapping(args.dataset)
        converted = convert_official_detr(state_dict, class_slots=class_slots, source=args.source)
        write_atomically(
            d2_checkpoint(converted, author="detr_d2", matching_heuristics=False),
            args.output,
            source=args.source,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    num_logits = converted["class_embed.weight"].shape[0]
    if args.dataset is None:
        slots = f"MODEL.DETR.CLASS_SLOTS dataset_id, MODEL.DETR.NUM_CLASSES {num_logits - 1}"
    else:
        slots = f"MODEL.DETR.CLASS_SLOTS contiguous, MODEL.DETR.NUM_CLASSES {num_logits - 1} ({args.dataset})"
    print(
        f"source: {layout.describe()}\n"
        f"wrote {args.output}: {len(converted)} tensors\n"
        f"use with: MODEL.RESNETS.DEPTH {layout.depth}, MODEL.MASK_ON {layout.masks}, "
        f"MODEL.DETR.HIDDEN_DIM {layout.hidden_dim}, ENC_LAYERS {layout.enc_layers}, DEC_LAYERS {layout.dec_layers}, "
        f"NUM_OBJECT_QUERIES {layout.num_queries}, {slots}, MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
