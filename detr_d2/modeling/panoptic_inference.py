"""Detectron2 outputs of one image from DETR's raw outputs: ``panoptic_seg`` (the panoptic fusion,
written once in :mod:`~detr_d2.modeling.fusion`), ``instances`` and ``sem_seg``."""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torch import Tensor
from torchvision.ops import box_convert

from .fusion import (
    class_predictions,
    crop_mask_padding,
    fuse_panoptic,
    fuse_panoptic_predictions,
    fuse_panoptic_traceable,
    segments_info_from_tensors,
)
from .query_selection import QuerySelection

SizeLike = Tuple[object, object]  # (h, w): ints, or 0-dim tensors under torch.jit.trace


def _label_map_or_identity(logits: Tensor, label_map: Optional[Tensor]) -> Tensor:
    """``label_map``, or the identity slot -> id table when slots are contiguous ids."""
    if label_map is not None:
        return label_map
    return torch.arange(logits.shape[-1] - 1, device=logits.device)


def _rows(masks: Tensor, idx: Tensor, mask_queries: Optional[Tensor]) -> Tensor:
    """The masks of queries ``idx`` from ``masks``, whose rows are the queries ``mask_queries``
    (sorted; all queries when None)."""
    if mask_queries is None:
        return masks[idx]
    pos = torch.searchsorted(mask_queries.to(idx.device), idx)
    # a data-dependent Python check: torch.jit.trace cannot record it, so it is skipped there
    if (
        not torch.jit.is_tracing()
        and pos.numel()
        and (
            pos.max() >= len(mask_queries) or not torch.equal(mask_queries.to(idx.device)[pos], idx)
        )
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
    scores, labels = class_predictions(logits, _label_map_or_identity(logits, label_map))
    keep = (labels != logits.shape[-1] - 1) & (scores > threshold) & (labels >= 0)
    return keep.nonzero().flatten()


def panoptic_fusion_tensors(
    logits: Tensor,
    masks: Tensor,
    image_size: SizeLike,
    output_size: SizeLike,
    is_thing: Tensor,
    *,
    threshold: float = 0.85,
    min_area: int = 4,
    mask_stride: int = 4,
    crop_padding: bool = True,
    label_map: Optional[Tensor] = None,
    mask_queries: Optional[Tensor] = None,
    selection: Optional[QuerySelection] = None,
) -> Dict[str, Tensor]:
    """:func:`panoptic_fusion` with the segments as tensors (:func:`~detr_d2.modeling.fusion.
    fuse_panoptic`'s result). Under ``torch.jit.trace`` the sizes may be 0-dim tensors: the fusion
    then runs scripted with the sizes as graph inputs (:func:`~detr_d2.modeling.fusion.
    fuse_panoptic_traceable`). ``selection``: the image's decisions made once
    (:func:`~detr_d2.modeling.query_selection.select_queries`; ``threshold`` is then unused)."""
    idx = (
        panoptic_queries(logits, threshold, label_map) if selection is None else selection.panoptic
    )
    kept = _rows(masks, idx, mask_queries)
    label_map = _label_map_or_identity(logits, label_map)
    if torch.jit.is_tracing():
        # traced sizes are 0-dim tensors (graph values); Python ints (e.g. an input's "height")
        # are constants of the trace
        sizes = torch.stack(
            [
                v.to(logits.device)
                if isinstance(v, Tensor)
                else torch.tensor(v, device=logits.device)
                for v in (image_size[0], image_size[1], output_size[0], output_size[1])
            ]
        )
        return fuse_panoptic_traceable(
            logits, kept, idx, sizes, is_thing, label_map, min_area, mask_stride, crop_padding
        )
    h, w = (int(v) for v in image_size)
    h_out, w_out = (int(v) for v in output_size)
    if selection is not None:
        return fuse_panoptic_predictions(
            selection.scores,
            selection.labels,
            kept,
            idx,
            h,
            w,
            h_out,
            w_out,
            is_thing,
            min_area,
            mask_stride,
            crop_padding,
        )
    return fuse_panoptic(
        logits,
        kept,
        idx,
        h,
        w,
        h_out,
        w_out,
        is_thing,
        label_map,
        min_area,
        mask_stride,
        crop_padding,
    )


def panoptic_fusion(
    logits: Tensor,
    masks: Tensor,
    image_size: SizeLike,
    output_size: SizeLike,
    is_thing: Tensor,
    *,
    threshold: float = 0.85,
    min_area: int = 4,
    mask_stride: int = 4,
    crop_padding: bool = True,
    label_map: Optional[Tensor] = None,
    mask_queries: Optional[Tensor] = None,
    selection: Optional[QuerySelection] = None,
) -> Tuple[Tensor, List[Dict]]:
    """Fuse one image's query predictions into a panoptic id map (DETR's ``PostProcessPanoptic``;
    the algorithm: :mod:`~detr_d2.modeling.fusion`).

    Args:
        logits: (Q, S+1) class logits over S class slots + no-object.
        masks: (Q, Hm, Wm) mask logits on the padded batch's stride-4 grid, or (K, Hm, Wm) those of
            the sorted queries ``mask_queries`` (which must include :func:`panoptic_queries`).
        image_size: (h, w) of the network input (after resize, before padding).
        output_size: (H, W) of the returned id map (usually the original image size).
        is_thing: (C,) bool per contiguous class id.
        label_map: optional (S,) int64 slot -> contiguous id (-1: not a class; such queries are not
            kept). None means slots are contiguous ids.
        selection: the image's :class:`~detr_d2.modeling.query_selection.QuerySelection`, when
            the caller has made the decisions (then ``threshold`` is unused).
    Returns:
        id map (H, W) int32 (segments 1..N, 0 = void), and ``segments_info`` dicts with ``id``,
        ``category_id`` (contiguous), ``isthing``, ``score``, ``area``.
    """
    result = panoptic_fusion_tensors(
        logits,
        masks,
        image_size,
        output_size,
        is_thing,
        threshold=threshold,
        min_area=min_area,
        mask_stride=mask_stride,
        crop_padding=crop_padding,
        label_map=label_map,
        mask_queries=mask_queries,
        selection=selection,
    )
    return result["panoptic_seg"], segments_info_from_tensors(result)


def _thing_predictions(
    logits: Tensor, is_thing: Tensor, score_threshold: float, label_map: Optional[Tensor]
):
    """(scores, contiguous labels, keep) of the best real class of each query; keep = a thing with a
    score above ``score_threshold``."""
    scores, labels = logits.float().softmax(-1)[:, :-1].max(-1)
    if label_map is not None:
        labels = label_map.to(labels.device)[labels]
    keep = labels >= 0
    keep[keep.clone()] = is_thing.to(labels.device)[labels[keep]]
    return scores, labels, keep & (scores > score_threshold)


def instance_queries(
    logits: Tensor,
    is_thing: Tensor,
    score_threshold: float = 0.0,
    label_map: Optional[Tensor] = None,
) -> Tensor:
    """Indices of the queries :func:`instance_inference` outputs (and whose masks it reads)."""
    return _thing_predictions(logits, is_thing, score_threshold, label_map)[2].nonzero().flatten()


def instance_inference(
    logits: Tensor,
    boxes: Tensor,
    masks: Optional[Tensor],
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    is_thing: Tensor,
    *,
    mask_stride: int = 4,
    label_map: Optional[Tensor] = None,
    score_threshold: float = 0.0,
    mask_queries: Optional[Tensor] = None,
    selection: Optional[QuerySelection] = None,
) -> Instances:
    """Detectron2 ``Instances`` of every query whose best real class is a thing with a class score
    above ``score_threshold`` (0: no threshold, as DETR's COCO detection evaluation). Boxes: the box
    head's cxcywh (relative to the image) -> XYXY pixels of ``output_size``; masks: sigmoid > 0.5 of
    the padding-cropped logits resized to ``output_size``; scores: the class probability (softmax
    over all slots + no-object). ``masks``: (Q, Hm, Wm), or (K, Hm, Wm) of the sorted queries
    ``mask_queries`` (must include :func:`instance_queries`). ``selection``: the image's decisions
    made once (then ``score_threshold`` is unused)."""
    if selection is None:
        scores, labels, keep = _thing_predictions(logits, is_thing, score_threshold, label_map)
    else:
        scores, labels = selection.thing_scores, selection.thing_labels
        keep = selection.instances
    h_out, w_out = output_size
    result = Instances((h_out, w_out))
    xyxy = box_convert(boxes[keep].float(), "cxcywh", "xyxy") * torch.tensor(
        [w_out, h_out, w_out, h_out], device=boxes.device
    )
    result.pred_boxes = Boxes(xyxy)
    result.scores = scores[keep]
    result.pred_classes = labels[keep]
    if masks is not None:
        m = crop_mask_padding(
            _rows(masks, keep.nonzero().flatten(), mask_queries), image_size, mask_stride
        )
        if m.shape[0]:
            m = F.interpolate(
                m[:, None].float(), size=(h_out, w_out), mode="bilinear", align_corners=False
            )[:, 0]
        else:
            m = m.new_zeros((0, h_out, w_out))
        result.pred_masks = m > 0
    return result


def semantic_inference(
    logits: Tensor,
    masks: Tensor,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
    num_classes: int,
    *,
    mask_stride: int = 4,
    label_map: Optional[Tensor] = None,
    probs: Optional[Tensor] = None,
) -> Tensor:
    """(C, H, W) per-class scores: sum over queries of p(class) * sigmoid(mask), as Mask2Former's
    semantic inference, for Detectron2's ``SemSegEvaluator`` (it takes the argmax)."""
    probs = (logits.float().softmax(-1) if probs is None else probs)[:, :-1]
    if label_map is not None:  # fold slots into contiguous classes
        valid = label_map >= 0
        folded = probs.new_zeros((probs.shape[0], num_classes))
        folded.index_add_(1, label_map[valid].to(probs.device), probs[:, valid.to(probs.device)])
        probs = folded
    m = crop_mask_padding(masks, image_size, mask_stride)
    m = F.interpolate(
        m[:, None].float(), size=tuple(output_size), mode="bilinear", align_corners=False
    )[:, 0]
    return torch.einsum("qc,qhw->chw", probs, m.sigmoid())


def image_outputs(
    model,
    logits: Tensor,
    boxes: Tensor,
    masks: Optional[Tensor],
    selection: QuerySelection,
    image_size: Tuple[int, int],
    output_size: Tuple[int, int],
) -> Dict:
    """Detectron2 outputs of one image of ``model`` (a ``DetrPanoptic``: its ``TEST.*`` options and
    class tables): ``panoptic_seg``, ``instances`` and ``sem_seg`` as enabled. ``logits`` (Q, S+1),
    ``boxes`` (Q, 4); ``masks`` (n, Hm, Wm) of the sorted queries ``selection.masks`` (None without
    masks); ``selection``: the image's decisions (:meth:`DetrPanoptic.select_queries`)."""
    r: Dict = {}
    if model.panoptic_on:
        fused = panoptic_fusion_tensors(
            logits,
            masks,
            image_size,
            output_size,
            model.is_thing,
            min_area=model.min_segment_area,
            mask_stride=model.mask_stride,
            crop_padding=model.crop_mask_padding,
            label_map=model.label_map,
            mask_queries=selection.masks,
            selection=selection,
        )
        # traced: always the per-segment tensors (a traceable structure; docs/export.md)
        segments = {k: v for k, v in fused.items() if k != "panoptic_seg"}
        if not (model.segments_as_tensors or torch.jit.is_tracing()):
            segments = segments_info_from_tensors(fused)
        r["panoptic_seg"] = (fused["panoptic_seg"], segments)
    if model.instance_on:
        r["instances"] = instance_inference(
            logits,
            boxes,
            masks,
            image_size,
            output_size,
            model.is_thing,
            mask_stride=getattr(model, "mask_stride", 4),
            label_map=model.label_map,
            mask_queries=selection.masks if masks is not None else None,
            selection=selection,
        )
    if model.semantic_on:
        if len(selection.masks) != logits.shape[0]:
            raise ValueError("sem_seg needs the masks of all queries")
        r["sem_seg"] = semantic_inference(
            logits,
            masks,
            image_size,
            output_size,
            len(model.is_thing),
            mask_stride=model.mask_stride,
            label_map=model.label_map,
            probs=selection.probs,
        )
    return r
