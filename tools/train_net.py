#!/usr/bin/env python
"""Train / evaluate DETR panoptic with Detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/quickstart/detr_r18_quickstart.yaml
    python tools/train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS <checkpoint>
    python tools/train_net.py --config-file <yaml> --num-gpus 8            # multi-GPU via launch
    python tools/train_net.py --config-file <yaml> --resume                # continue from last_checkpoint
"""
from detectron2.engine import default_argument_parser, launch

from detr_d2.engine import main


def cli(argv=None) -> None:
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()
