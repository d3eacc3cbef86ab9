"""Loading parts of a checkpoint into :class:`~detr_d2.modeling.meta_arch.DetrPanoptic`.

- the two stages: the frozen detector (``MODEL.DETR.FROZEN_WEIGHTS``: everything but the mask head)
  and the class-agnostic mask head (``MODEL.DETR.MASK_HEAD_WEIGHTS``), each required complete and of
  the right shape;
- Group DETR's training-only queries (``group_query_embed.weight``) in any checkpoint, both ways.

Checkpoints have this model's names (converted official, Hugging Face or detr_d2 files; see the
converters beside this module).
"""

import logging
from typing import Dict, Tuple

import torch
from detectron2.utils.file_io import PathManager
from torch import Tensor, nn

from .checkpoint_io import load_state_dict_file

logger = logging.getLogger(__name__)

MASK_HEAD_PREFIXES: Tuple[str, ...] = ("bbox_attention.", "mask_head.")
GROUP_QUERIES = "group_query_embed.weight"


def load_checkpoint_part(
    model: nn.Module,
    state: Dict[str, Tensor],
    path: str,
    key: str,
    prefixes: Tuple[str, ...],
    include: bool,
) -> None:
    """Copy the tensors of checkpoint ``state`` (read from ``path``, config ``key``) whose names
    start (``include``) or do not start with ``prefixes`` into ``model``; every such tensor of the
    model must be in the file with its shape (else a ``ValueError`` naming the file, the key and the
    first mismatches)."""
    own = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes) == include}
    missing = sorted(set(own) - set(state))
    bad_shape = [
        f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        for k in sorted(own)
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or bad_shape:
        kind = (
            "mask head (bbox_attention.*, mask_head.*)"
            if include
            else "detector (all but the mask head)"
        )
        raise ValueError(
            f"{key}={path}: does not hold this model's {kind}: missing keys "
            f"{missing[:10]}{'...' if len(missing) > 10 else ''} ({len(missing)}), "
            f"shape mismatches {bad_shape[:5]}"
        )
    if include:  # load into the submodules: a partial load_state_dict of the whole model would make
        # Detectron2's FrozenBatchNorm2d (no version metadata) reset its statistics to 0 / 1
        for prefix in prefixes:
            module = getattr(model, prefix.rstrip("."))
            module.load_state_dict(
                {k[len(prefix) :]: state[k] for k in own if k.startswith(prefix)}
            )
    else:
        model.load_state_dict({k: state[k] for k in own}, strict=False)


def load_and_freeze_detector(model: nn.Module, path: str) -> None:
    """Load a detection checkpoint (Detectron2 ``.pth``/``.pkl`` with a ``model`` dict of this
    model's names) into everything but the mask head, then freeze it (``requires_grad=False``). With
    Group DETR the checkpoint must hold trained extra groups of the model's shape (a stage 1 trained
    with the same K)."""
    state = load_state_dict_file(PathManager.get_local_path(path))
    groups = getattr(model, "group_query_embed", None)
    if groups is not None:
        found = state.get(GROUP_QUERIES)
        if found is None or found.shape != groups.weight.shape:
            raise ValueError(
                f"MODEL.DETR.FROZEN_WEIGHTS={path}: "
                f"MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS={model.num_query_groups} "
                "trains the mask head on every group's matched queries, but the frozen "
                "detector has no trained "
                f"{GROUP_QUERIES} of shape {tuple(groups.weight.shape)} (found "
                f"{None if found is None else tuple(found.shape)}): use a stage 1 trained "
                "with the same NUM_QUERY_GROUPS and NUM_OBJECT_QUERIES, or "
                "MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS 1"
            )
    load_checkpoint_part(
        model, state, path, "MODEL.DETR.FROZEN_WEIGHTS", MASK_HEAD_PREFIXES, include=False
    )
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(MASK_HEAD_PREFIXES))
    logger.info("Loaded and froze the detector from %s; training only %s", path, MASK_HEAD_PREFIXES)


def load_mask_head(model: nn.Module, path: str) -> None:
    """Initialise ``bbox_attention``/``mask_head`` from a panoptic checkpoint with this model's (=
    DETR's official) names. The mask head is class-agnostic, so any panoptic checkpoint of the same
    widths (hidden dim, heads, backbone) fits."""
    state = load_state_dict_file(PathManager.get_local_path(path))
    load_checkpoint_part(
        model, state, path, "MODEL.DETR.MASK_HEAD_WEIGHTS", MASK_HEAD_PREFIXES, include=True
    )
    logger.info("Initialised the mask head from %s", path)


def adapt_group_queries(model: nn.Module, state_dict: Dict[str, Tensor], prefix: str) -> None:
    """Make ``state_dict`` (being loaded into ``model`` at ``prefix``) fit the model's Group DETR
    queries, in place. A model without groups drops ``group_query_embed.weight`` (logged, not an
    unexpected key). A model with K groups that finds none of the right shape initialises them from
    the checkpoint's ``query_embed.weight``: each extra group a copy plus Gaussian noise of 0.1 x
    the std of those embeddings (identical copies would get identical gradients and stay identical);
    logged. Without ``query_embed`` either, both are left to be reported missing as usual."""
    key, base_key = prefix + GROUP_QUERIES, prefix + "query_embed.weight"
    if model.group_query_embed is None:
        if key in state_dict:
            shape = tuple(state_dict.pop(key).shape)
            logger.info(
                "Ignored %s %s from the checkpoint: Group DETR's training-only queries (this model "
                "decodes query_embed only, as at inference)",
                key,
                shape,
            )
        return
    own, found, base = model.group_query_embed.weight, state_dict.get(key), state_dict.get(base_key)
    usable = found is not None and found.shape == own.shape
    if usable or base is None or base.shape != model.query_embed.weight.shape:
        return
    base = base.detach().to(own.device, own.dtype)
    extra = base.repeat(model.num_query_groups - 1, 1)
    state_dict[key] = extra + torch.randn_like(extra) * (0.1 * base.std())
    logger.info(
        "Initialised %s (Group DETR's %d training-only query groups) from the checkpoint's "
        "%s plus noise%s",
        key,
        model.num_query_groups - 1,
        base_key,
        ""
        if found is None
        else f" (the checkpoint's has shape {tuple(found.shape)}, not {tuple(own.shape)})",
    )
