"""A tiny quickstart-format dataset and a DETR config that trains on it in seconds on a CPU (used by
the train_net, output-folder and checkpoint-trust tests)."""

import os

from detectron2.data import DatasetCatalog

from detr_d2.data.datasets import register_panoptic_dataset
from detr_d2.data.datasets.quickstart import QUICKSTART_CATEGORIES, generate_quickstart_dataset
from tests.utils.configs import tiny_detr_cfg

TRAIN, VAL = "_detr_test_tiny_train", "_detr_test_tiny_val"


def make_tiny_data(root: str) -> str:
    """6 training and 3 validation images of 64x64 under ``root``, registered as TRAIN / VAL."""
    generate_quickstart_dataset(root, "train", num_images=6, image_size=64, seed=0, workers=1)
    generate_quickstart_dataset(root, "val", num_images=3, image_size=64, seed=1, workers=1)
    register_tiny_data(root)
    return root


def register_tiny_data(root: str) -> None:
    """Register TRAIN / VAL (once per process) from the folders of :func:`make_tiny_data`."""
    for name, split in ((TRAIN, "train"), (VAL, "val")):
        if name not in DatasetCatalog.list():
            register_panoptic_dataset(
                name,
                os.path.join(root, split),
                os.path.join(root, f"panoptic_{split}"),
                os.path.join(root, f"panoptic_{split}.json"),
                QUICKSTART_CATEGORIES,
            )


def tiny_train_cfg(out_dir, max_iter: int = 4, period: int = 2):
    """``tiny_detr_cfg`` training on TRAIN (64 px, batch 2, no workers) into ``out_dir``."""
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TRAIN = (TRAIN,)
    cfg.DATASETS.TEST = (VAL,)
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (64,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.INPUT.CROP.ENABLED = False
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (max_iter - 1,)
    cfg.SOLVER.CHECKPOINT_PERIOD = period
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(out_dir)
    return cfg


def write_cfg(cfg, path) -> str:
    """``cfg`` dumped to the YAML file ``path``."""
    with open(path, "w") as f:
        f.write(cfg.dump())
    return str(path)
