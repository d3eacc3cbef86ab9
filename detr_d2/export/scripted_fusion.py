"""DETR's panoptic fusion for one unpadded image, written for ``torch.jit.script``.

The same computation, op for op, as :func:`detr_d2.modeling.panoptic_inference.panoptic_fusion`
(kept queries, padding crop, bilinear masks sampled at the pixels PIL's NEAREST resize reads,
softmax argmax, first-pass stuff merge, small-segment removal loop, segments 1..N in query order),
re-expressed without numpy, Python containers of dicts or ``searchsorted``: the PIL index tables
come from a float64 ``cumsum`` computed on the CPU (sequential, as numpy's ``add.accumulate``) and
the stuff merge is vectorised. The tests check both against the model's own functions.
"""

import math
from typing import Dict, Tuple

import torch
from torch import Tensor

__all__ = [
    "pil_nearest_indices",
    "bilinear_taps",
    "sampled_bilinear",
    "class_predictions",
    "fuse_panoptic",
]


def pil_nearest_indices(n_in: int, n_out: int) -> Tensor:
    """(n_out,) int64 source index of each output row/column of PIL's NEAREST resize n_in -> n_out
    (CPU)."""
    scale = n_in / n_out
    # (item assignment of a Python float goes through float32 in TorchScript: build the steps with
    # full)
    first = torch.full([1], scale * 0.5, dtype=torch.float64)
    steps = torch.cat([first, torch.full([n_out - 1], scale, dtype=torch.float64)])
    return torch.cumsum(steps, 0).to(torch.int64).clamp(max=n_in - 1)


def bilinear_taps(n_in: int, n_out: int, sel: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices ``i0``, ``i1`` and float32 weights ``w0``, ``w1`` of the output samples
    ``sel`` of
    PyTorch's bilinear (align_corners=False) resize n_in -> n_out (scale rounded to float32
    once)."""
    scale = float(
        torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    )
    src = ((sel.double() + 0.5) * scale - 0.5).float().clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def sampled_bilinear(masks: Tensor, height: int, width: int, rows: Tensor, cols: Tensor) -> Tensor:
    """(K, hm, wm) -> (K, len(rows), len(cols)): the bilinear resize to (height, width) read at
    ``rows`` x
    ``cols`` only (same arithmetic as ``F.interpolate`` on the CPU)."""
    hm, wm = masks.shape[1], masks.shape[2]
    r0, r1, wr0, wr1 = bilinear_taps(hm, height, rows)
    c0, c1, wc0, wc1 = bilinear_taps(wm, width, cols)
    dev = masks.device
    r0, r1, wr0, wr1 = r0.to(dev), r1.to(dev), wr0.to(dev), wr1.to(dev)
    c0, c1, wc0, wc1 = c0.to(dev), c1.to(dev), wc0.to(dev), wc1.to(dev)
    columns = masks.float().transpose(1, 2).contiguous()
    left = columns.index_select(1, c0).transpose(1, 2)
    right = columns.index_select(1, c1).transpose(1, 2)
    t = torch.addcmul(right * wc1, left, wc0)
    return torch.addcmul(t.index_select(1, r1) * wr1[:, None], t.index_select(1, r0), wr0[:, None])


def class_predictions(logits: Tensor, label_map: Tensor) -> Tuple[Tensor, Tensor]:
    """(scores, contiguous labels) of the argmax over all S+1 softmax outputs; ``label_map`` (S,)
    slot ->
    contiguous id (-1 unused; the identity when slots are contiguous ids); S stays no-object."""
    num_slots = logits.shape[-1] - 1
    scores, labels = logits.float().softmax(-1).max(-1)
    mapped = label_map.to(labels.device)[labels.clamp(max=num_slots - 1)]
    return scores, torch.where(labels < num_slots, mapped, labels)


def _empty_result(height: int, width: int, device: torch.device) -> Dict[str, Tensor]:
    none = torch.zeros([0], dtype=torch.int64, device=device)
    return {
        "panoptic_seg": torch.zeros([height, width], dtype=torch.int32, device=device),
        "segment_ids": none,
        "category_ids": none,
        "isthing": torch.zeros([0], dtype=torch.bool, device=device),
        "scores": torch.zeros([0], dtype=torch.float32, device=device),
        "areas": none,
    }


def fuse_panoptic(
    logits: Tensor,
    masks: Tensor,
    mask_queries: Tensor,
    image_height: int,
    image_width: int,
    output_height: int,
    output_width: int,
    is_thing: Tensor,
    label_map: Tensor,
    min_area: int,
    mask_stride: int,
    crop_padding: bool,
) -> Dict[str, Tensor]:
    """Panoptic fusion of one unpadded image.

    Args:
        logits: (Q, S+1) class logits; masks: (K, Hm, Wm) stride-4 mask logits of the sorted kept
            queries ``mask_queries`` (K,) (the queries ``panoptic_queries`` keeps);
            image_height/width: the network input size; output_height/width: the size of the
            returned map.
    Returns:
        ``panoptic_seg`` (H_out, W_out) int32 (segments 1..N, 0 = void), and per segment
        ``segment_ids`` (1..N), ``category_ids`` (contiguous), ``isthing``, ``scores`` (float32),
        ``areas`` (pixels).
    """
    device = logits.device
    if mask_queries.numel() == 0:
        return _empty_result(output_height, output_width, device)
    scores, labels = class_predictions(logits, label_map)
    rows_u, rows_inv = torch.unique(
        pil_nearest_indices(image_height, output_height), return_inverse=True
    )
    cols_u, cols_inv = torch.unique(
        pil_nearest_indices(image_width, output_width), return_inverse=True
    )
    rows_inv, cols_inv = rows_inv.to(device), cols_inv.to(device)
    cur_masks = masks
    if crop_padding:
        cells_h = int(math.ceil(image_height / mask_stride))
        cells_w = int(math.ceil(image_width / mask_stride))
        cur_masks = cur_masks[:, :cells_h, :cells_w]
    cur_masks = sampled_bilinear(cur_masks, image_height, image_width, rows_u, cols_u)
    cur_classes = labels[mask_queries]
    cur_scores = scores[mask_queries]
    cur_thing = is_thing.to(device)[cur_classes]

    # first pass with the stuff merge: every stuff query -> the first kept query of its class
    k = cur_classes.shape[0]
    order = torch.arange(k, device=device)
    stuff = ~cur_thing
    same = (cur_classes[:, None] == cur_classes[None, :]) & stuff[:, None] & stuff[None, :]
    first_of_class = torch.where(stuff, same.to(torch.int64).argmax(1), order)
    ids = first_of_class[cur_masks.softmax(0).max(0)[1]]
    alive = order
    ids_out = ids.index_select(0, rows_inv).index_select(1, cols_inv)
    area = torch.bincount(ids_out.flatten(), minlength=alive.shape[0])
    small = area <= min_area
    while bool(small.any()):
        sel = (~small).nonzero().flatten()
        alive, cur_masks = alive[sel], cur_masks[sel]
        if alive.numel() == 0:
            return _empty_result(output_height, output_width, device)
        ids = cur_masks.softmax(0).max(0)[1]
        ids_out = ids.index_select(0, rows_inv).index_select(1, cols_inv)
        area = torch.bincount(ids_out.flatten(), minlength=alive.shape[0])
        small = area <= min_area
    return {
        "panoptic_seg": (ids_out + 1).to(torch.int32),
        "segment_ids": torch.arange(1, alive.shape[0] + 1, dtype=torch.int64, device=device),
        "category_ids": cur_classes[alive],
        "isthing": cur_thing[alive],
        "scores": cur_scores[alive],
        "areas": area,
    }
