"""Detectron2 config options for detr_d2 (``add_detr_config``).

Model options live under ``cfg.MODEL.DETR``; one process setting at the top level
(``CPU_REUSE_FREED_MEMORY``); test-time options (outputs, fusion, evaluator) under
Detectron2's own ``cfg.TEST``; input extras under ``cfg.INPUT`` (DETR's random crop is Detectron2's
``INPUT.CROP`` plus two keys); optimiser extras under ``cfg.SOLVER``. ``configs/Base-DETR.yaml``
sets the official DETR panoptic recipe.
"""

import os
from typing import Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .config_rules import validate_detr_config
from .utils.config_file import merge_config_file

__all__ = ["add_detr_config", "get_detr_cfg", "validate_detr_config", "RENAMED_KEYS"]


# old key -> new key
RENAMED_KEYS = {
    # the class-loss weight of duplicates, not a second meaning of MODEL.DETR.NO_OBJECT_WEIGHT
    "MODEL.DETR.DUPLICATE_SUPPRESSION.NO_OBJECT_WEIGHT": (
        "MODEL.DETR.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT"
    ),
    # query groups, not a second meaning of MODEL.RESNETS.NUM_GROUPS (ResNeXt's conv groups)
    "MODEL.DETR.GROUP_DETR.NUM_GROUPS": "MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS",
}


def add_detr_config(cfg: CN) -> None:
    """Add detr_d2's options to a Detectron2 config (in place). Safe to call once per config."""
    cfg.MODEL.DETR = CN()
    # Number of real classes (contiguous ids 0..NUM_CLASSES-1); the classifier has NUM_CLASSES + 1
    # outputs, the last one is "no object". With CLASS_SLOTS == "dataset_id" the logit index is the
    # dataset category id (official checkpoints: 250 slots) and NUM_CLASSES is the number of slots.
    # 0: derive it from the metadata of the datasets in DATASETS.TRAIN/TEST.
    cfg.MODEL.DETR.NUM_CLASSES = 133
    cfg.MODEL.DETR.CLASS_SLOTS = "contiguous"  # "contiguous" | "dataset_id"
    # When no dataset in DATASETS.TRAIN/TEST has panoptic metadata (none registered), building the
    # model is an error; True builds NUM_CLASSES classes that are all things instead (e.g. a model
    # built only to load or convert a checkpoint).
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = False
    # Backbone outputs the model reads, strides 4, 8, 16, 32 (the mask head uses all four, the
    # transformer the last); any Detectron2 backbone with these outputs works.
    cfg.MODEL.DETR.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    # Transformer
    cfg.MODEL.DETR.HIDDEN_DIM = 256
    cfg.MODEL.DETR.NHEADS = 8
    cfg.MODEL.DETR.DROPOUT = 0.1
    cfg.MODEL.DETR.DIM_FEEDFORWARD = 2048
    cfg.MODEL.DETR.ENC_LAYERS = 6
    cfg.MODEL.DETR.DEC_LAYERS = 6
    cfg.MODEL.DETR.PRE_NORM = False
    cfg.MODEL.DETR.NUM_OBJECT_QUERIES = 100
    # Auxiliary decoding losses. Must be False with FROZEN_WEIGHTS (the frozen decoder cannot
    # learn).
    cfg.MODEL.DETR.DEEP_SUPERVISION = True
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
    # Initialise the mask head (bbox_attention.*, mask_head.*: class-agnostic) from a panoptic
    # checkpoint, e.g. a converted COCO one, while the detector comes from FROZEN_WEIGHTS (stage 2
    # on your own data).
    cfg.MODEL.DETR.MASK_HEAD_WEIGHTS = ""
    # For training from scratch (not in the official model): the projected features entering the
    # mask head are scaled to unit RMS per position and the attention maps so a uniform map is 1, so
    # each query's attention map keeps its weight against the image features.
    cfg.MODEL.DETR.MASK_HEAD_FEATURE_NORM = False
    # An image gives the same outputs alone and in a padded batch: the padded region is zeroed after
    # every backbone conv, feature masks cover ceil(h/stride) cells and at inference the mask head
    # runs on each image's own region. Single images are unaffected (official checkpoints reproduce
    # either way).
    cfg.MODEL.DETR.BATCH_INVARIANT = True
    # Compute the masks of all queries, as official DETR (slower; for raw masks and comparison).
    # Default: only the masks that are used (the fusion's kept queries at inference, the matched
    # ones in training).
    cfg.MODEL.DETR.ALL_QUERY_MASKS = False
    # Group DETR (Chen et al., ICCV 2023), a training-only aid to convergence: NUM_QUERY_GROUPS
    # groups of NUM_OBJECT_QUERIES queries are decoded in training, self-attention kept within each
    # group, each group matched one-to-one to all targets, losses (incl. masks and deep
    # supervision) averaged over the groups. Inference decodes group 0 only: the same model and cost
    # as without groups. The extra groups' queries (group_query_embed.weight) are training-only: a
    # plain model ignores them in a checkpoint, and a grouped model initialises them from
    # query_embed when a checkpoint has none. 1 = off (DETR). With FROZEN_WEIGHTS (stage 2) the
    # frozen detector is decoded with its trained groups and the mask head learns from every
    # group's matched queries (needs a stage 1 trained with the same NUM_QUERY_GROUPS; a stage 1
    # trained with groups also feeds a plain stage 2). Training costs about K x the decoder,
    # matching and mask-head (matched queries) work.
    cfg.MODEL.DETR.GROUP_DETR = CN()
    cfg.MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS = 1
    # Duplicate suppression, a training-only aid (no parameter, inference unchanged): an unmatched
    # query whose predicted box overlaps a target box with IoU >= IOU_THRESHOLD (typically a second
    # prediction of that object) is pushed to "no object" with the class-loss weight
    # DUPLICATE_CLASS_WEIGHT instead of MODEL.DETR.NO_OBJECT_WEIGHT, in every decoder layer's (and
    # group's) classification loss. The quickstart uses 0.5; 1.0 slowed its things down. Not with
    # FROZEN_WEIGHTS (stage 2 trains no class head).
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION = CN()
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.ENABLED = False
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT = 1.0
    cfg.MODEL.DETR.DUPLICATE_SUPPRESSION.IOU_THRESHOLD = 0.5

    # Test-time outputs and panoptic fusion (DETR's post-processor)
    cfg.TEST.OBJECT_MASK_THRESHOLD = 0.85  # keep queries with score > threshold
    cfg.TEST.MIN_SEGMENT_AREA = 4  # segments with area <= this are dropped
    cfg.TEST.PANOPTIC_ON = True
    cfg.TEST.INSTANCE_ON = False
    cfg.TEST.SEMANTIC_ON = False
    # INSTANCE_ON: keep the thing queries whose class score is above this (0: all, as DETR's COCO
    # detection evaluation; a higher value computes fewer masks).
    cfg.TEST.INSTANCE_SCORE_THRESHOLD = 0.0
    # Crop each image's batch padding from the mask grid before resizing (correct for batches).
    # False: DETR's post-processor as published, for comparison.
    cfg.TEST.CROP_MASK_PADDING = True
    # True: panoptic_seg's segments_info is a dict of per-segment tensors (segment_ids,
    # category_ids, isthing, scores, areas) instead of Detectron2's list of dicts: the format under
    # torch.jit.trace, for Detectron2's tools/deploy/export_model.py --export-method tracing, whose
    # trace check also runs the model eagerly (docs/export.md). Evaluators, Visualizer need False.
    cfg.TEST.PANOPTIC_SEGMENTS_AS_TENSORS = False
    # Panoptic evaluator: "in_process" (same numbers as panopticapi, much faster) or "panopticapi"
    # (Detectron2's COCOPanopticEvaluator + per-class results).
    cfg.TEST.PANOPTIC_EVALUATOR = "in_process"
    # "in_process" only: also write the standard predictions.json + predictions/*.png to the output
    # dir.
    cfg.TEST.PANOPTIC_WRITE_PREDICTIONS = False
    # "in_process" only: threads computing each image's PQ statistics while the model runs (0:
    # inline).
    cfg.TEST.PANOPTIC_EVAL_WORKERS = 2
    # "in_process" only: panoptic error analysis after each evaluation (docs/error_analysis.md):
    # cause of every FP/FN, PQ gain per cause, chart and the N worst images drawn.
    cfg.TEST.PANOPTIC_ERROR_ANALYSIS = False
    cfg.TEST.PANOPTIC_ERROR_WORST_IMAGES = 8

    # YAML files of COCO-panoptic datasets (name, image_root, panoptic_root, panoptic_json[,
    # json_file, missing] per entry; detr_d2/data/datasets/register_from_file.py), so
    # DATASETS.TRAIN/TEST can name them. Registered (once) wherever the config builds something:
    # the model (its classes), DefaultPredictor, build_detr_train_loader / build_detr_test_loader,
    # build_detr_evaluator, tools/train_net.py. Paths of the files: relative to the working
    # directory.
    cfg.DATASETS.REGISTER_FILES = ()

    # Training data (the detr_panoptic mapper): a sample whose image or panoptic PNG cannot be used
    # (missing, truncated, not an image, size or segment ids not matching its JSON entry) stops
    # training with an error naming the file (False), or is skipped with a warning naming the file
    # and replaced by another sample (True; Detectron2's MapDataset draws another index when a
    # mapper returns None). Evaluation never skips.
    cfg.DATALOADER.SKIP_CORRUPT_SAMPLES = False
    # With SKIP_CORRUPT_SAMPLES: training stops with an error once one data-loader process (each
    # worker, or the main process when NUM_WORKERS is 0, counts the samples it reads) has skipped
    # more than MAX_CORRUPT_FRACTION x max(samples it has read, 1000) samples; a corrupt file counts
    # each time it is drawn.
    cfg.DATALOADER.MAX_CORRUPT_FRACTION = 0.01

    # Input pipeline
    cfg.INPUT.DATASET_MAPPER_NAME = "detr_panoptic"
    # DETR's optional "resize then random crop" branch is Detectron2's INPUT.CROP (ENABLED, TYPE,
    # SIZE; DETR: absolute_range 384..600), applied with probability PROB after resizing the short
    # side to one of RESIZE_SHORT_EDGE (no long-side cap).
    cfg.INPUT.CROP.PROB = 0.5
    cfg.INPUT.CROP.RESIZE_SHORT_EDGE = (400, 500, 600)
    # Long side of a shortest-edge resize: "round" (Detectron2's ResizeShortestEdge) or "truncate"
    # (DETR's resize, e.g. 480x640 -> 800x1066 instead of 800x1067).
    cfg.INPUT.RESIZE_ROUNDING = "round"

    # Optimiser
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # DETR's gradient clipping: the L2 norm of all gradients together clipped to MAX_NORM (DETR's
    # --clip_max_norm 0.1) by build_detr_optimizer. Detectron2's SOLVER.CLIP_GRADIENTS (per
    # parameter, CLIP_TYPE value / norm) keeps Detectron2's meaning; both may be on.
    cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS = CN()
    cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS.MAX_NORM = 0.1

    # Process-wide, like Detectron2's CUDNN_BENCHMARK: with MODEL.DEVICE cpu, glibc keeps freed
    # memory for the next tensors instead of returning it to the kernel and faulting it in again
    # at every pass (detr_d2/utils/cpu_memory.py; applied by tools/train_net.py and
    # DetrPanopticPredictor). Same results; the process keeps its peak CPU memory until it exits.
    cfg.CPU_REUSE_FREED_MEMORY = True

    # Keys renamed since an earlier release: a config that still uses one gets a KeyError naming
    # the new key (fvcore/yacs CfgNode.register_renamed_key).
    for old, new in RENAMED_KEYS.items():
        if not cfg.key_is_renamed(old):
            cfg.register_renamed_key(old, new, "see docs/configuration.md")


def get_detr_cfg(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's default config + :func:`add_detr_config`, then ``config_file`` and the ``KEY
    VALUE`` overrides ``opts`` merged (not frozen), as the tools build it. A CUDA ``MODEL.DEVICE``
    becomes ``cpu`` on a machine without CUDA. ``FileNotFoundError`` naming ``config_file`` if it
    does not exist."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file: {config_file} does not exist")
    cfg = get_cfg()
    add_detr_config(cfg)
    merge_config_file(cfg, config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            cfg.MODEL.DEVICE = "cpu"
    return cfg
