"""Small DETR configs for CPU tests."""

import os

from tests.utils.paths import ROOT


def tiny_detr_cfg(num_classes: int = 5, mask_on: bool = True):
    """A small DETR config for CPU tests (ResNet-18, hidden 128, 1+2 layers, 10 queries)."""
    from detectron2.config import get_cfg

    import detr_d2  # noqa: F401

    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-DETR.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.MASK_ON = mask_on
    if not mask_on:  # detection only: boxes as instances
        cfg.TEST.PANOPTIC_ON, cfg.TEST.INSTANCE_ON = False, True
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.DETR.HIDDEN_DIM = 128
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 128
    cfg.MODEL.DETR.ENC_LAYERS = 1
    cfg.MODEL.DETR.DEC_LAYERS = 2
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 10
    cfg.MODEL.DETR.NUM_CLASSES = num_classes
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = True  # no dataset: num_classes things
    return cfg
