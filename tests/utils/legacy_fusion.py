"""Test oracle: the eager panoptic fusion as it was before the torch/TorchScript/numpy copies were
made one (issue 20 item 1), kept verbatim so the tests can prove the one fusion gives the same maps
and segments. Copied from ``detr_d2/modeling/panoptic_inference.py`` at commit b3baf89 (functions
``crop_mask_padding`` .. ``panoptic_fusion``); not used by the package.
"""

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def crop_mask_padding(masks: Tensor, image_size: Tuple[int, int], stride: int) -> Tensor:
    """Crop (Q, Hm, Wm) mask logits of a padded batch to the cells covering an image of
    ``image_size`` (h, w) pixels: the first ceil(h/stride) rows and ceil(w/stride) columns."""
    h, w = image_size
    return masks[:, : int(math.ceil(h / stride)), : int(math.ceil(w / stride))]


def _argmax_ids(masks: Tensor) -> Tensor:
    """(K, h, w) logits -> (h, w) int64 index of the winning mask (softmax first, as DETR:
    bit-identical ties; ``max(0).indices`` returns the first maximal index like ``argmax`` and is
    ~3x faster on CPU)."""
    return masks.softmax(0).max(0).indices


def pil_nearest_indices(n_in: int, n_out: int, device=None) -> Tensor:
    """(n_out,) int64 source index of each output row (or column) of PIL's NEAREST resize n_in ->
    n_out.

    Pillow (``ImagingScaleAffine``) steps ``x = scale / 2``, ``x += scale`` in float64 and truncates
    (scale = n_in / n_out). PyTorch's ``nearest-exact`` (floor((i + 0.5) * scale)) differs from it
    wherever the accumulated sum falls just below an integer, e.g. on 0.3% of the pixels for 800x800
    -> 612x612 and 20% for 64x64 -> 48x48."""
    scale = n_in / n_out
    steps = np.full(n_out, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    idx = np.minimum(np.add.accumulate(steps).astype(np.int64), n_in - 1)
    return torch.from_numpy(idx).to(device)


def bilinear_taps(n_in: int, n_out: int, sel: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices ``i0``, ``i1`` and float32 weights ``w0``, ``w1`` of the output samples
    ``sel`` of PyTorch's bilinear (align_corners=False) resize n_in -> n_out, computed as its kernel
    does: source position ``scale * (i + 0.5) - 0.5`` (scale = float32(n_in) / n_out) rounded once
    to float32 and clamped at 0, ``i0 = floor``, ``i1 = min(i0 + 1, n_in - 1)``, ``w1 = position -
    i0``, ``w0 = 1 - w1``."""
    scale = float(np.float32(n_in) / np.float32(n_out))
    src = (
        ((sel.double() + 0.5) * scale - 0.5).float().clamp(min=0)
    )  # float64 product is exact: one rounding
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def _sampled_bilinear(masks: Tensor, size: Tuple[int, int], rows: Tensor, cols: Tensor) -> Tensor:
    """(K, hm, wm) -> (K, len(rows), len(cols)): ``F.interpolate(masks, size, mode="bilinear")``
    read at ``rows`` x ``cols`` only. Same arithmetic as PyTorch's CPU kernel, ``fma(wr0, t0, wr1 *
    t1)`` with ``t = fma(wc0, x_left, wc1 * x_right)`` (``addcmul`` fuses the multiply-add the same
    way), so the values are bit-identical to it on CPU and equal to float rounding elsewhere."""
    _, hm, wm = masks.shape
    r0, r1, wr0, wr1 = (t.to(masks.device) for t in bilinear_taps(hm, size[0], rows))
    c0, c1, wc0, wc1 = (t.to(masks.device) for t in bilinear_taps(wm, size[1], cols))
    columns = (
        masks.float().transpose(1, 2).contiguous()
    )  # (K, wm, hm): column gathers become row copies
    left = columns.index_select(1, c0).transpose(1, 2)
    right = columns.index_select(1, c1).transpose(1, 2)
    t = torch.addcmul(right * wc1, left, wc0)  # width pass at the kept columns: (K, hm, C)
    return torch.addcmul(t.index_select(1, r1) * wr1[:, None], t.index_select(1, r0), wr0[:, None])


def _class_predictions(logits: Tensor, label_map: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """(scores, labels) of the argmax over all S+1 softmax outputs; labels are contiguous ids (slots
    mapped through ``label_map``; -1 for an unused slot), S for no-object."""
    num_slots = logits.shape[-1] - 1
    scores, labels = logits.float().softmax(-1).max(-1)
    if label_map is not None:
        labels = torch.where(
            labels < num_slots, label_map.to(labels.device)[labels.clamp(max=num_slots - 1)], labels
        )
    return scores, labels


def _rows(masks: Tensor, idx: Tensor, mask_queries: Optional[Tensor]) -> Tensor:
    """The masks of queries ``idx`` from ``masks``, whose rows are the queries ``mask_queries``
    (sorted; all queries when None)."""
    if mask_queries is None:
        return masks[idx]
    pos = torch.searchsorted(mask_queries.to(idx.device), idx)
    if pos.numel() and (
        pos.max() >= len(mask_queries) or not torch.equal(mask_queries.to(idx.device)[pos], idx)
    ):
        raise ValueError(
            f"masks of queries {idx.tolist()} are needed but only {mask_queries.tolist()} "
            "were computed"
        )
    return masks[pos.to(masks.device)]


def panoptic_queries(
    logits: Tensor, threshold: float, label_map: Optional[Tensor] = None
) -> Tensor:
    """Indices of the queries the panoptic fusion keeps (and whose masks it reads): the argmax over
    all S+1 outputs is a class (not no-object, not an unused slot) with score > ``threshold``."""
    scores, labels = _class_predictions(logits, label_map)
    keep = (labels != logits.shape[-1] - 1) & (scores > threshold) & (labels >= 0)
    return keep.nonzero().flatten()


def panoptic_fusion(
    logits: Tensor,
    masks: Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    is_thing: Tensor,
    *,
    threshold: float = 0.85,
    min_area: int = 4,
    mask_stride: int = 4,
    crop_padding: bool = True,
    label_map: Optional[Tensor] = None,
    mask_queries: Optional[Tensor] = None,
) -> Tuple[Tensor, List[Dict]]:
    """Fuse one image's query predictions into a panoptic id map.

    Args:
        logits: (Q, S+1) class logits over S class slots + no-object.
        masks: (Q, Hm, Wm) mask logits on the padded batch's stride-4 grid, or (K, Hm, Wm) those of
            the sorted queries ``mask_queries`` (which must include :func:`panoptic_queries`).
        image_size: (h, w) of the network input (after resize, before padding).
        output_size: (H, W) of the returned id map (usually the original image size).
        is_thing: (C,) bool per contiguous class id.
        label_map: optional (S,) int64 slot -> contiguous id (-1: not a class; such queries are not
            kept). None means slots are contiguous ids.
    Returns:
        id map (H, W) int32 (segments 1..N, 0 = void), and ``segments_info`` dicts with ``id``,
        ``category_id`` (contiguous), ``isthing``, ``score``, ``area``.
    """
    scores, labels = _class_predictions(logits, label_map)
    idx = panoptic_queries(logits, threshold, label_map)
    h_out, w_out = output_size
    if idx.numel() == 0:
        return torch.zeros((h_out, w_out), dtype=torch.int32, device=logits.device), []

    # Only the pixels of the (h, w) map that PIL's NEAREST resize reads to build the output map
    # matter (their ids and the output areas): compute the bilinear masks, the argmax and the areas
    # there only.
    rows = pil_nearest_indices(image_size[0], h_out, logits.device)
    cols = pil_nearest_indices(image_size[1], w_out, logits.device)
    rows_u, rows_inv = torch.unique(rows, return_inverse=True)
    cols_u, cols_inv = torch.unique(cols, return_inverse=True)

    cur_masks = _rows(masks, idx, mask_queries)
    if crop_padding:
        cur_masks = crop_mask_padding(cur_masks, image_size, mask_stride)
    cur_masks = _sampled_bilinear(cur_masks, tuple(image_size), rows_u, cols_u)
    cur_classes = labels[idx]
    cur_scores = scores[idx]
    cur_thing = is_thing.to(cur_classes.device)[cur_classes]

    # first pass with the stuff merge (every stuff query of a class -> first query of that class)
    ids = _argmax_ids(cur_masks)
    first_of_class = torch.arange(len(idx), device=ids.device)
    for c in cur_classes[~cur_thing].unique():
        members = ((cur_classes == c) & ~cur_thing).nonzero().flatten()
        first_of_class[members] = members[0]
    ids = first_of_class[ids]
    alive = torch.arange(len(idx), device=ids.device)
    while True:
        ids_out = ids.index_select(0, rows_inv).index_select(1, cols_inv)
        area = torch.bincount(ids_out.flatten(), minlength=len(alive))
        small = area <= min_area
        if not small.any():
            break
        sel = (~small).nonzero().flatten()
        alive, cur_masks = alive[sel], cur_masks[sel]
        if alive.numel() == 0:
            return torch.zeros((h_out, w_out), dtype=torch.int32, device=logits.device), []
        ids = _argmax_ids(cur_masks)

    segments_info = []
    for i, q in enumerate(alive.tolist()):
        segments_info.append(
            {
                "id": i + 1,
                "category_id": int(cur_classes[q]),
                "isthing": bool(cur_thing[q]),
                "score": float(cur_scores[q]),
                "area": int(area[i]),
            }
        )
    return (ids_out + 1).to(torch.int32), segments_info
