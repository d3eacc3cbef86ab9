"""Detectron2 config options for detr_d2 (``add_detr_config``).

All model options live under ``cfg.MODEL.DETR``; input/augmentation extras under ``cfg.INPUT``;
optimiser extras under ``cfg.SOLVER``. Defaults reproduce the official DETR panoptic recipe.
"""
from detectron2.config import CfgNode as CN


def add_detr_config(cfg: CN) -> None:
    """Add detr_d2's options to a Detectron2 config (in place). Safe to call once per config."""
    cfg.MODEL.DETR = CN()
    # Number of real classes (contiguous ids 0..NUM_CLASSES-1); the classifier has NUM_CLASSES + 1
    # outputs, the last one is "no object". With CLASS_SLOTS == "dataset_id" the logit index is the
    # dataset category id (official checkpoints: 250 slots) and NUM_CLASSES is the number of slots.
    cfg.MODEL.DETR.NUM_CLASSES = 133
    cfg.MODEL.DETR.CLASS_SLOTS = "contiguous"  # "contiguous" | "dataset_id"
    # Transformer
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    cfg.MODEL.DETR.NHEADS = 8
    cfg.MODEL.DETR.DROPOUT = 0.1
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048
    cfg.MODEL.DETR.ENC_LAYERS = 6
    cfg.MODEL.DETR.DEC_LAYERS = 6
    cfg.MODEL.DETR.PRE_NORM = False
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.DETR.DEEP_SUPERVISION = True  # auxiliary decoding losses
    # Loss weights (set criterion) and matcher costs
    cfg.MODEL.DETR.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.DETR.CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.L1_WEIGHT = 5.0
    cfg.MODEL.DETR.GIOU_WEIGHT = 2.0
    cfg.MODEL.DETR.MASK_WEIGHT = 1.0  # sigmoid focal loss on masks
    cfg.MODEL.DETR.DICE_WEIGHT = 1.0
    cfg.MODEL.DETR.FOCAL_ALPHA = 0.25
    cfg.MODEL.DETR.FOCAL_GAMMA = 2.0
    cfg.MODEL.DETR.COST_CLASS = 1.0
    cfg.MODEL.DETR.COST_BBOX = 5.0
    cfg.MODEL.DETR.COST_GIOU = 2.0
    # Two-stage training: a detection checkpoint loaded and frozen; only the mask head trains.
    cfg.MODEL.DETR.FROZEN_WEIGHTS = ""
    # For training from scratch (not in the official model): the projected features entering the mask
    # head are scaled to unit RMS per position and the attention maps so a uniform map is 1, so each
    # query's attention map keeps its weight against the image features.
    cfg.MODEL.DETR.MASK_HEAD_FEATURE_NORM = False
    # Zero the padded region after every backbone conv: an image gives the same result alone and in a
    # padded batch. Single images are unaffected (official checkpoints are reproduced either way).
    cfg.MODEL.DETR.BATCH_INVARIANT_BACKBONE = True
    # Inference
    cfg.MODEL.DETR.TEST = CN()
    cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = 0.85  # keep queries with score > threshold
    cfg.MODEL.DETR.TEST.MIN_SEGMENT_AREA = 4  # segments with area <= this are dropped
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    cfg.MODEL.DETR.TEST.INSTANCE_ON = False
    cfg.MODEL.DETR.TEST.SEMANTIC_ON = False
    # "d2": crop the batch padding, resize masks to the image size (correct for batches).
    # "official": DETR's post-processor as published (no padding crop), for comparison.
    cfg.MODEL.DETR.TEST.POSTPROCESS = "d2"

    # Input pipeline
    cfg.INPUT.DATASET_MAPPER_NAME = "detr_panoptic"
    # DETR's optional "resize then random crop" branch, applied with probability PROB.
    cfg.INPUT.DETR_CROP = CN()
    cfg.INPUT.DETR_CROP.ENABLED = True
    cfg.INPUT.DETR_CROP.PROB = 0.5
    cfg.INPUT.DETR_CROP.RESIZE_SHORT = (400, 500, 600)
    cfg.INPUT.DETR_CROP.MIN_SIZE = 384
    cfg.INPUT.DETR_CROP.MAX_SIZE = 600
    # "d2": ResizeShortestEdge (long side rounded); "detr": long side truncated exactly as DETR.
    cfg.INPUT.RESIZE_ROUNDING = "d2"

    # Panoptic evaluator: "fast" (in-process PQ, same numbers as panopticapi) or "d2"
    # (Detectron2's COCOPanopticEvaluator + per-class results).
    cfg.TEST.PANOPTIC_EVALUATOR = "fast"
    # "fast" only: also write the standard predictions.json + predictions/*.png to the output dir.
    cfg.TEST.PANOPTIC_WRITE_PREDICTIONS = False
    # "fast" only: threads computing each image's PQ statistics while the model runs (0: in process()).
    cfg.TEST.PANOPTIC_EVAL_WORKERS = 2

    # Optimiser
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
