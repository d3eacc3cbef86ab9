"""DETR's network pass: backbone, transformer and the class/box heads (``DETR.forward`` in
``models/detr.py``, facebookresearch/detr at 29901c5), with Group DETR's training-only queries and
batch-invariant padding masks; the mask head runs later, on chosen queries (:mod:`.query_masks`).
"""

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .batch_invariance import ceil_padding_mask, resize_padding_mask

__all__ = ["forward_detector"]


def forward_detector(model, images: Tensor, pixel_mask: Optional[Tensor]) -> Tuple[Dict, Dict]:
    """Backbone, transformer and the class/box heads of ``model`` (a ``DetrPanoptic``) on the
    padded batch ``images`` (B, 3, H, W); ``pixel_mask`` (B, H, W) is True on padding; None: no
    padding (the exports' single image: then no size is read from a tensor, which
    ``torch.export`` could not trace).

    Returns ``outputs``: ``pred_logits`` (B, Q, S+1), ``pred_boxes`` (B, Q, 4) cxcywh in [0, 1] of
    each image's own size, ``aux_outputs`` (training with deep supervision); and ``state``, what the
    mask head reads: ``hs`` (B, Q, C) last decoder layer (in training with Group DETR, Q = K groups
    x the queries, group-major; at inference always group 0 only), ``memory`` and ``features`` (B,
    C, H/32, W/32: the encoder output and the projected res5), ``mask`` (B, H/32, W/32, True on
    padding), ``fpns`` [res4, res3, res2], ``sizes`` (each image's (h, w)) and ``padded``.

    Feature-level masks: DETR's legacy-nearest resize of the pixel mask; with ``batch_invariant``
    the first ceil(h/stride) x ceil(w/stride) cells are valid (what a single image has). Both are
    identical to DETR for a single image."""

    if pixel_mask is None:
        sizes = [tuple(images.shape[-2:])] * images.shape[0]
        padded = False
    else:
        valid = ~pixel_mask
        sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]
        padded = any(sz != tuple(images.shape[-2:]) for sz in sizes)
    if model.batch_invariant is not None and padded:
        with model.batch_invariant.active(sizes, tuple(images.shape[-2:])):
            feats = model.backbone(images)
    else:
        feats = model.backbone(images)
    feats = [feats[f] for f in model.in_features]
    src = feats[-1]
    if pixel_mask is None:
        mask = torch.zeros((src.shape[0], *src.shape[-2:]), dtype=torch.bool, device=images.device)
    elif model.batch_invariant is not None and padded:
        mask = ceil_padding_mask(sizes, src.shape[-2:], model.feature_strides[-1], images.device)
    else:
        mask = resize_padding_mask(pixel_mask, src.shape[-2:])
    pos = model.position_encoding(mask).to(src.dtype)
    src_proj = model.input_proj(src)
    queries, groups = model.query_embed.weight, 1
    if model.training and model.group_query_embed is not None:
        queries, groups = (
            torch.cat([queries, model.group_query_embed.weight]),
            model.num_query_groups,
        )
    hs, memory = model.transformer(src_proj, mask, queries, pos, query_groups=groups)
    outputs_class = model.class_embed(hs)
    outputs_coord = model.bbox_embed(hs).sigmoid()
    out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
    if model.aux_loss and model.training:
        out["aux_outputs"] = [
            {"pred_logits": a, "pred_boxes": b}
            for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
        ]
    feat = src_proj
    if model.mask_head_feature_norm:
        feat = feat / feat.pow(2).mean(1, keepdim=True).add(1e-6).sqrt()
    state = {
        "hs": hs[-1],
        "memory": memory,
        "features": feat,
        "mask": mask,
        "fpns": feats[2::-1] if model.mask_on else [],
        "sizes": sizes,
        "padded": padded,
    }
    return out, state
