"""DETR's panoptic fusion, written once in torch: the eager model, the TorchScript export
(``torch.jit.script``) and ``torch.jit.trace`` (fvcore flop counting, Detectron2's
``tools/analyze_model.py`` and ``tools/deploy/export_model.py``) all run :func:`fuse_panoptic`.
Its numpy twin for the torch-free ONNX path is ``detr_d2/export/onnx_postprocess.py``.

Algorithm (DETR's ``PostProcessPanoptic``, facebookresearch/detr ``models/segmentation.py`` at
commit 29901c5, with the padding crop):

1. softmax over all S+1 logits; the kept queries (:func:`~detr_d2.modeling.panoptic_inference.
   panoptic_queries`) are those whose argmax is a class with score > threshold;
2. their stride-4 masks are cropped to the image's own ``ceil(h/4) x ceil(w/4)`` cells (DETR's
   post-processor skips this, which misaligns padded images in a batch) and resized bilinearly to
   the network input size (h, w);
3. per pixel argmax of the softmax over the kept masks;
4. first pass only: every stuff query of a class is merged into the first kept query of that class;
5. the id map is resized like PIL NEAREST to the output size and the segment areas counted; while
   some segment has area <= ``min_area``, its query is dropped and 3 and 5 are redone (without 4).

Segments are numbered 1..N in query order; 0 (void) only when nothing is kept.

Speed: only the pixels of the (h, w) map that the NEAREST resize reads matter, so the bilinear
masks are evaluated there only (:func:`sampled_bilinear`: the arithmetic of ``F.interpolate``,
bit-identical on CPU) and the argmax, merges and areas run on that grid.
"""

from typing import Dict, List, Tuple

import torch
from torch import Tensor

__all__ = [
    "bilinear_taps",
    "class_predictions",
    "class_predictions_from_probs",
    "crop_mask_padding",
    "fuse_panoptic",
    "fuse_panoptic_predictions",
    "fuse_panoptic_traceable",
    "pil_nearest_indices",
    "sampled_bilinear",
    "segments_info_from_tensors",
]


def crop_mask_padding(masks: Tensor, image_size: Tuple[int, int], stride: int) -> Tensor:
    """(Q, Hm, Wm) mask logits of a padded batch -> the cells covering an image of ``image_size``
    (h, w) pixels: the first ceil(h/stride) rows and ceil(w/stride) columns."""
    return masks[:, : -(-image_size[0] // stride), : -(-image_size[1] // stride)]


def pil_nearest_indices(n_in: int, n_out: int) -> Tensor:
    """(n_out,) int64 CPU tensor: the source index of each output row (or column) of PIL's NEAREST
    resize n_in -> n_out.

    Pillow (``ImagingScaleAffine``) steps ``x = scale / 2``, ``x += scale`` in float64 and truncates
    (scale = n_in / n_out); the float64 ``cumsum`` on the CPU adds in the same order. PyTorch's
    ``nearest-exact`` (floor((i + 0.5) * scale)) differs wherever the sum falls just below an
    integer, e.g. on 0.3% of the pixels for 800x800 -> 612x612 and 20% for 64x64 -> 48x48."""
    scale = n_in / n_out
    # TorchScript rounds a Python float assigned into a tensor item through float32: build with full
    first = torch.full([1], scale * 0.5, dtype=torch.float64)
    steps = torch.cat([first, torch.full([n_out - 1], scale, dtype=torch.float64)])
    return torch.cumsum(steps, 0).to(torch.int64).clamp(max=n_in - 1)


def bilinear_taps(n_in: int, n_out: int, sel: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices ``i0``, ``i1`` and float32 weights ``w0``, ``w1`` of the output samples
    ``sel`` of PyTorch's bilinear (align_corners=False) resize n_in -> n_out, as its kernel computes
    them: source position ``scale * (i + 0.5) - 0.5`` (scale = float32(n_in) / n_out) rounded once
    to float32 (the float64 product is exact) and clamped at 0, ``i0 = floor``,
    ``i1 = min(i0 + 1, n_in - 1)``, ``w1 = position - i0``, ``w0 = 1 - w1``."""
    scale = float(
        torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    )
    src = ((sel.double() + 0.5) * scale - 0.5).float().clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = (src - i0.float()).clamp(0, 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), 1 - w1, w1


def sampled_bilinear(masks: Tensor, height: int, width: int, rows: Tensor, cols: Tensor) -> Tensor:
    """(K, hm, wm) -> (K, len(rows), len(cols)) float32: ``F.interpolate(masks, (height, width),
    mode="bilinear")`` read at ``rows`` x ``cols`` only. The same arithmetic as PyTorch's CPU
    kernel, ``fma(wr0, t0, wr1 * t1)`` with ``t = fma(wc0, x_left, wc1 * x_right)`` (``addcmul``
    fuses the multiply-add the same way): bit-identical to it on CPU, equal to float rounding
    elsewhere."""
    dev = masks.device
    r0, r1, wr0, wr1 = bilinear_taps(masks.shape[1], height, rows)
    c0, c1, wc0, wc1 = bilinear_taps(masks.shape[2], width, cols)
    r0, r1, wr0, wr1 = r0.to(dev), r1.to(dev), wr0.to(dev), wr1.to(dev)
    c0, c1, wc0, wc1 = c0.to(dev), c1.to(dev), wc0.to(dev), wc1.to(dev)
    columns = masks.float().transpose(1, 2).contiguous()  # (K, wm, hm): column gathers = row copies
    left = columns.index_select(1, c0).transpose(1, 2)
    right = columns.index_select(1, c1).transpose(1, 2)
    t = torch.addcmul(right * wc1, left, wc0)  # width pass at the sampled columns: (K, hm, C)
    return torch.addcmul(t.index_select(1, r1) * wr1[:, None], t.index_select(1, r0), wr0[:, None])


def class_predictions(logits: Tensor, label_map: Tensor) -> Tuple[Tensor, Tensor]:
    """(scores, labels) of the argmax over all S+1 softmax outputs of ``logits`` (Q, S+1); labels
    are contiguous ids through ``label_map`` (S,) slot -> id (-1: unused slot; the identity when
    slots are contiguous ids), S (no-object) stays S."""
    return class_predictions_from_probs(logits.float().softmax(-1), label_map)


def class_predictions_from_probs(probs: Tensor, label_map: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`class_predictions` of the softmax ``probs`` (Q, S+1) already computed."""
    num_slots = probs.shape[-1] - 1
    scores, labels = probs.max(-1)
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
    """Panoptic fusion of one image (steps 2-5 of the module docstring).

    Args:
        logits: (Q, S+1) class logits over S class slots + no-object.
        masks: (K, Hm, Wm) stride-``mask_stride`` mask logits of the kept queries ``mask_queries``
            (K,) (sorted; :func:`~detr_d2.modeling.panoptic_inference.panoptic_queries`).
        image_height, image_width: the network input size (after resize, before padding).
        output_height, output_width: the size of the returned map (usually the original image's).
        is_thing: (C,) bool per contiguous class id; label_map: see :func:`class_predictions`.
        crop_padding: crop ``masks`` to the image's cells first (``TEST.CROP_MASK_PADDING``).
    Returns:
        ``panoptic_seg`` (H_out, W_out) int32 (segments 1..N, 0 = void) and per segment
        ``segment_ids`` (1..N), ``category_ids`` (contiguous), ``isthing``, ``scores`` (float32),
        ``areas`` (int64 pixels of the output map).
    """
    if mask_queries.numel() == 0:
        return _empty_result(output_height, output_width, logits.device)
    scores, labels = class_predictions(logits, label_map)
    return fuse_panoptic_predictions(
        scores,
        labels,
        masks,
        mask_queries,
        image_height,
        image_width,
        output_height,
        output_width,
        is_thing,
        min_area,
        mask_stride,
        crop_padding,
    )


def fuse_panoptic_predictions(
    scores: Tensor,
    labels: Tensor,
    masks: Tensor,
    mask_queries: Tensor,
    image_height: int,
    image_width: int,
    output_height: int,
    output_width: int,
    is_thing: Tensor,
    min_area: int,
    mask_stride: int,
    crop_padding: bool,
) -> Dict[str, Tensor]:
    """:func:`fuse_panoptic` from the class predictions (:func:`class_predictions`) of the image's
    queries, (Q,) ``scores`` and contiguous ``labels``, computed once by the caller."""
    device = scores.device
    if mask_queries.numel() == 0:
        return _empty_result(output_height, output_width, device)
    rows_u, rows_inv = torch.unique(
        pil_nearest_indices(image_height, output_height), return_inverse=True
    )
    cols_u, cols_inv = torch.unique(
        pil_nearest_indices(image_width, output_width), return_inverse=True
    )
    rows_inv, cols_inv = rows_inv.to(device), cols_inv.to(device)
    cur_masks = masks
    if crop_padding:
        cur_masks = crop_mask_padding(cur_masks, (image_height, image_width), mask_stride)
    cur_masks = sampled_bilinear(cur_masks, image_height, image_width, rows_u, cols_u)
    mask_queries = mask_queries.to(device)
    cur_classes = labels[mask_queries]
    cur_scores = scores[mask_queries]
    cur_thing = is_thing.to(device)[cur_classes]

    # first pass with the stuff merge: every stuff query -> the first kept query of its class
    order = torch.arange(cur_classes.shape[0], device=device)
    stuff = ~cur_thing
    same = (cur_classes[:, None] == cur_classes[None, :]) & stuff[:, None] & stuff[None, :]
    first_of_class = torch.where(stuff, same.to(torch.int64).argmax(1), order)
    # softmax first, as DETR (the same ties); max(0).indices is the first maximal index, as argmax
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


@torch.jit.script_if_tracing
def fuse_panoptic_traceable(
    logits: Tensor,
    masks: Tensor,
    mask_queries: Tensor,
    sizes: Tensor,
    is_thing: Tensor,
    label_map: Tensor,
    min_area: int,
    mask_stride: int,
    crop_padding: bool,
) -> Dict[str, Tensor]:
    """:func:`fuse_panoptic` with the sizes as a tensor ``sizes`` = (h, w, H_out, W_out).

    Under ``torch.jit.trace`` this runs scripted (``torch.jit.script_if_tracing``): the data-
    dependent steps (number of kept queries, the removal loop) and the sizes stay inputs of the
    traced graph instead of constants of the traced example; in eager mode it is a plain call."""
    return fuse_panoptic(
        logits,
        masks,
        mask_queries,
        int(sizes[0]),
        int(sizes[1]),
        int(sizes[2]),
        int(sizes[3]),
        is_thing,
        label_map,
        min_area,
        mask_stride,
        crop_padding,
    )


def segments_info_from_tensors(result: Dict[str, Tensor]) -> List[Dict]:
    """The per-segment tensors of :func:`fuse_panoptic` -> Detectron2's ``segments_info`` (dicts
    with ``id``, ``category_id`` (contiguous), ``isthing``, ``score``, ``area``)."""
    columns = [
        result[k].tolist() for k in ("segment_ids", "category_ids", "isthing", "scores", "areas")
    ]
    return [
        {"id": i, "category_id": c, "isthing": bool(t), "score": s, "area": a}
        for i, c, t, s, a in zip(*columns)
    ]
