#!/usr/bin/env python
"""Train / evaluate DETR panoptic with Detectron2's DefaultTrainer.

    python tools/train_net.py --config-file configs/quickstart/detr_r18_quickstart.yaml
    python tools/train_net.py --config-file <yaml> --eval-only MODEL.WEIGHTS <checkpoint>
    python tools/train_net.py --config-file <yaml> --num-gpus 8     # multi-GPU via launch
    python tools/train_net.py --config-file <yaml> --resume         # continue from last_checkpoint
    python tools/train_net.py --config-file <yaml> --overwrite-output  # start over in OUTPUT_DIR
    # a dataset from the command line:
    python tools/train_net.py --config-file <yaml> --register-dataset my_train my/images \\
        my/panoptic my/panoptic.json DATASETS.TRAIN "('my_train',)"
"""

import os
import sys

from detectron2.engine import default_argument_parser, launch

from detr_d2.engine import REFUSALS, main


def build_parser():
    """Detectron2's ``default_argument_parser`` + ``--register-dataset`` (before the ``KEY VALUE``
    overrides)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--register-dataset",
        nargs=4,
        action="append",
        default=[],
        metavar=("NAME", "IMAGE_ROOT", "PANOPTIC_ROOT", "PANOPTIC_JSON"),
        help="register a COCO-panoptic dataset (repeatable), checked as register_panoptic_dataset "
        "does; written "
        "to OUTPUT_DIR/registered_datasets.yaml and added to DATASETS.REGISTER_FILES (so the "
        "saved config.yaml "
        "registers it again). A YAML file of datasets: DATASETS.REGISTER_FILES "
        "\"('my_datasets.yaml',)\"",
    )
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="start a new training run in an OUTPUT_DIR that holds an earlier run's checkpoints: "
        "its model_*.pth, last_checkpoint, metrics.json and TensorBoard files are deleted first "
        "(without it such a run is refused; --resume continues the earlier run instead)",
    )
    return parser


def cli(argv=None) -> None:
    """Parse ``argv`` and ``launch`` :func:`detr_d2.engine.main`. A refusal (a checkpoint or
    config that holds code, an OUTPUT_DIR in use or holding checkpoints) ends the single-process
    run with one ``error:`` line and exit code 1 (``DETR_D2_DEBUG=1``: the traceback)."""
    args = build_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except REFUSALS as e:
        if os.environ.get("DETR_D2_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
