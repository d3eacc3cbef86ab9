"""The mask head run on chosen queries only (DETR's ``DETRsegm.forward``, ``models/segmentation.py``
at facebookresearch/detr 29901c5, computes every query's mask; each query's mask depends on that
query alone, so computing a subset gives the same values).

Masks travel in one format: per image, (n_i, Hm, Wm) mask logits of the sorted query indices
``queries[i]`` (n_i,); "every query" is ``arange(Q)``.
"""

from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "compute_query_masks",
    "compute_query_masks_on_batch_grid",
    "scale_attention",
    "training_mask_fn",
]


def _image_cells(t: Tensor, i: int, cells: Tuple[int, int]) -> Tensor:
    """Image ``i`` of the batched map ``t`` (B, ..., H, W), its top-left ``cells`` = (h, w): (1,
    ..., h, w)."""
    return t[i : i + 1, ..., : cells[0], : cells[1]]


def scale_attention(bbox_mask: Tensor, mask: Tensor) -> Tensor:
    """``MODEL.DETR.MASK_HEAD_FEATURE_NORM`` (not in official DETR; for training from scratch): the
    attention maps (B, Q, nheads, H, W), which sum to 1 over heads x valid positions, scaled so a
    uniform map is 1, matching the unit-RMS features they are concatenated with (otherwise every
    query gets nearly the same mask). ``mask``: (B, H, W) True on padding."""
    valid = (~mask).flatten(1).sum(1).to(bbox_mask.dtype) * bbox_mask.shape[2]
    return bbox_mask * valid.view(-1, 1, 1, 1, 1)


def compute_query_masks(
    bbox_attention: nn.Module,
    mask_head: nn.Module,
    state: Dict,
    queries: Sequence[Tensor],
    strides: Sequence[int],
    crop_to_image: bool,
    feature_norm: bool,
) -> List[Tensor]:
    """Mask logits of the given queries, image by image: ``queries[i]`` (n_i,) sorted query indices
    of image i -> (n_i, H_i, W_i) stride-4 mask logits. ``bbox_attention`` and ``mask_head`` run on
    these queries only; the image-feature part of the head's first convolution is computed once per
    image (``MaskHeadSmallConv.project_features``). ``state``: what
    ``DetrPanoptic.forward_detector`` returns; ``strides``: of the 4 backbone features.

    ``crop_to_image``: run on each image's own region (ceil(h/stride) cells at every stride; the
    result an image gets alone), else on the whole padded batch grid (DETR's computation)."""
    out = []
    for i, q in enumerate(queries):
        if crop_to_image:
            h, w = state["sizes"][i]
            cells = [(-(-h // s), -(-w // s)) for s in strides]
        else:
            cells = [tuple(f.shape[-2:]) for f in state["fpns"][::-1]] + [
                tuple(state["mask"].shape[-2:])
            ]
        if len(q) == 0:
            out.append(state["features"].new_zeros((0, *cells[0])))
            continue
        m5 = _image_cells(state["mask"], i, cells[3])
        q = q.to(state["hs"].device)
        att = bbox_attention(
            state["hs"][i : i + 1, q], _image_cells(state["memory"], i, cells[3]), mask=m5
        )
        if feature_norm:
            att = scale_attention(att, m5)
        feat = _image_cells(state["features"], i, cells[3])
        fpns = [_image_cells(f, i, cells[2 - k]) for k, f in enumerate(state["fpns"])]
        seg = mask_head(feat, att, fpns, projected=mask_head.project_features(feat))
        out.append(seg[:, 0])
    return out


def compute_query_masks_on_batch_grid(
    bbox_attention: nn.Module,
    mask_head: nn.Module,
    state: Dict,
    queries: Sequence[Tensor],
    feature_norm: bool,
) -> List[Tensor]:
    """:func:`compute_query_masks` with ``crop_to_image=False`` (the padded batch grid, DETR's
    computation; the criterion's masks in training), the queries of all images in one batch
    (``MHAttentionMap.forward_rows``, ``MaskHeadSmallConv.forward_rows``) instead of image by
    image: the same values up to float rounding, without the per-image loop of small operators
    (its forward and backward: docs/speed.md, issue 25)."""
    hs = state["hs"]
    queries = [q.to(hs.device) for q in queries]
    counts = [len(q) for q in queries]
    if sum(counts) == 0:
        return [state["features"].new_zeros((0, *state["fpns"][-1].shape[-2:])) for _ in queries]
    image_index = torch.repeat_interleave(
        torch.arange(len(queries), device=hs.device),
        torch.as_tensor(counts, device=hs.device),
    )
    mask = state["mask"]
    att = bbox_attention.forward_rows(
        hs[image_index, torch.cat(queries)], state["memory"], image_index, mask=mask
    )
    if feature_norm:
        att = scale_attention(att.unsqueeze(1), mask[image_index]).squeeze(1)
    feat = state["features"]
    seg = mask_head.forward_rows(
        att, list(state["fpns"]), mask_head.project_features(feat), image_index
    )
    return list(seg[:, 0].split(counts))


BatchGridMasks = Callable[[Dict, Sequence[Tensor]], List[Tensor]]


def training_mask_fn(
    batch_grid_masks: BatchGridMasks, state: Dict, all_query_masks: bool
) -> Callable[[Sequence[Tensor]], List[Tensor]]:
    """The criterion's ``mask_fn``: per image, the masks of the given (matched) queries on the
    padded batch grid (``batch_grid_masks(state, queries)``:
    :func:`compute_query_masks_on_batch_grid`); with ``all_query_masks`` every query's mask is
    computed (as official DETR) and the given ones are read from them."""

    def masks(queries: Sequence[Tensor]) -> List[Tensor]:
        if not all_query_masks:
            return batch_grid_masks(state, queries)
        every = torch.arange(state["hs"].shape[1], device=state["hs"].device)
        computed = batch_grid_masks(state, [every] * len(queries))
        return [m[q.to(m.device)] for m, q in zip(computed, queries)]

    return masks
