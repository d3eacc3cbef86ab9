"""Panoptic fusion of the exported ONNX network's outputs, in numpy only (no torch import; this file
needs nothing but numpy and can be copied next to an ONNX Runtime deployment).

The numpy twin of the one torch fusion, :func:`detr_d2.modeling.fusion.fuse_panoptic` (DETR's
post-processor; the algorithm is described there): :func:`fuse_panoptic` here mirrors it line for
line, with the same helpers (``pil_nearest_indices``, ``bilinear_taps``, ``sampled_bilinear``,
``class_predictions``), and ``tests/test_modeling_fusion_twins.py`` runs both on the same inputs.
The bilinear taps and their fused multiply-adds reproduce PyTorch's CPU kernel bit for bit (float64
products rounded once to float32); PyTorch's float32 exp is not correctly rounded, so a pixel whose
two best masks tie to float precision could still go the other way (none in the tests).

Usage (``outputs`` = ``session.run(None, {"image": image})``)::

    post = PanopticPostprocessor.from_onnx_session(session)  # settings stored in the .onnx file
    panoptic_seg, segments_info = post(outputs, image.shape[1:], (orig_h, orig_w))
"""

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "METADATA_KEY",
    "OUTPUT_NAMES",
    "PanopticPostprocessor",
    "bilinear_taps",
    "class_predictions",
    "fuse_panoptic",
    "pil_nearest_indices",
    "sampled_bilinear",
]

METADATA_KEY = "detr_d2_export"
OUTPUT_NAMES = ("pred_logits", "pred_boxes", "mask_queries", "pred_masks")


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """(n_out,) int64 source index of each output row/column of PIL's NEAREST resize n_in -> n_out
    (Pillow steps ``scale / 2``, ``+= scale`` in float64 and truncates)."""
    scale = n_in / n_out
    steps = np.full(n_out, scale, dtype=np.float64)
    steps[0] = scale * 0.5
    return np.minimum(np.add.accumulate(steps).astype(np.int64), n_in - 1)


def bilinear_taps(
    n_in: int, n_out: int, sel: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``i0``, ``i1`` and float32 weights ``w0``, ``w1`` of the output samples
    ``sel`` of PyTorch's bilinear (align_corners=False) resize n_in -> n_out."""
    scale = float(np.float32(n_in) / np.float32(n_out))
    src = np.maximum(
        ((sel.astype(np.float64) + 0.5) * scale - 0.5).astype(np.float32), np.float32(0)
    )
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), (np.float32(1) - w1).astype(np.float32), w1


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (the float64 product of two float32 values is exact)."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def sampled_bilinear(
    masks: np.ndarray, height: int, width: int, rows: np.ndarray, cols: np.ndarray
) -> np.ndarray:
    """(K, hm, wm) float32 -> (K, len(rows), len(cols)): the bilinear resize to (height, width)
    read at rows x cols."""
    r0, r1, wr0, wr1 = bilinear_taps(masks.shape[1], height, rows)
    c0, c1, wc0, wc1 = bilinear_taps(masks.shape[2], width, cols)
    t = _fma(masks[:, :, c0], wc0, masks[:, :, c1] * wc1)  # width pass: (K, hm, C)
    return _fma(t[:, r0, :], wr0[:, None], t[:, r1, :] * wr1[:, None])


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """float32 softmax as PyTorch's CPU kernel: ``exp(x - max)`` (here in float64, rounded once:
    PyTorch's float32 exp agrees with that on >99.9% of values, numpy's float32 exp on ~55%),
    summed in order, divided."""
    e = np.exp((x - x.max(axis, keepdims=True)).astype(np.float64)).astype(np.float32)
    return e / e.sum(axis, keepdims=True)


def class_predictions(logits: np.ndarray, label_map: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the argmax over all S+1 softmax outputs; labels are contiguous ids
    through ``label_map`` (S,) slot -> id (-1 unused), S (no-object) stays S."""
    num_slots = logits.shape[-1] - 1
    probs = _softmax(logits.astype(np.float32), -1)
    scores, labels = probs.max(-1), probs.argmax(-1)
    return scores, np.where(
        labels < num_slots, label_map[np.minimum(labels, num_slots - 1)], labels
    )


def _empty_result(height: int, width: int) -> Dict[str, np.ndarray]:
    none = np.zeros(0, dtype=np.int64)
    return {
        "panoptic_seg": np.zeros((height, width), dtype=np.int32),
        "segment_ids": none,
        "category_ids": none,
        "isthing": np.zeros(0, dtype=bool),
        "scores": np.zeros(0, dtype=np.float32),
        "areas": none,
    }


def fuse_panoptic(
    logits: np.ndarray,
    masks: np.ndarray,
    mask_queries: np.ndarray,
    image_height: int,
    image_width: int,
    output_height: int,
    output_width: int,
    is_thing: np.ndarray,
    label_map: np.ndarray,
    min_area: int,
    mask_stride: int,
    crop_padding: bool,
) -> Dict[str, np.ndarray]:
    """:func:`detr_d2.modeling.fusion.fuse_panoptic` in numpy: the same arguments (arrays for
    tensors) and the same result keys, as arrays."""
    if len(mask_queries) == 0:
        return _empty_result(output_height, output_width)
    scores, labels = class_predictions(logits, label_map)
    rows_u, rows_inv = np.unique(
        pil_nearest_indices(image_height, output_height), return_inverse=True
    )
    cols_u, cols_inv = np.unique(
        pil_nearest_indices(image_width, output_width), return_inverse=True
    )
    cur_masks = masks.astype(np.float32)
    if crop_padding:
        cur_masks = cur_masks[
            :, : -(-image_height // mask_stride), : -(-image_width // mask_stride)
        ]
    cur_masks = sampled_bilinear(cur_masks, image_height, image_width, rows_u, cols_u)
    cur_classes = labels[mask_queries]
    cur_scores = scores[mask_queries]
    cur_thing = is_thing[cur_classes]

    # first pass with the stuff merge: every stuff query -> the first kept query of its class
    order = np.arange(len(cur_classes))
    stuff = ~cur_thing
    same = (cur_classes[:, None] == cur_classes[None, :]) & stuff[:, None] & stuff[None, :]
    first_of_class = np.where(stuff, same.argmax(1), order)
    ids = first_of_class[_softmax(cur_masks, 0).argmax(0)]  # first maximal index, as torch
    alive = order
    ids_out = ids[rows_inv][:, cols_inv]
    area = np.bincount(ids_out.ravel(), minlength=len(alive))
    small = area <= min_area
    while small.any():
        sel = np.flatnonzero(~small)
        alive, cur_masks = alive[sel], cur_masks[sel]
        if len(alive) == 0:
            return _empty_result(output_height, output_width)
        ids = _softmax(cur_masks, 0).argmax(0)
        ids_out = ids[rows_inv][:, cols_inv]
        area = np.bincount(ids_out.ravel(), minlength=len(alive))
        small = area <= min_area
    return {
        "panoptic_seg": (ids_out + 1).astype(np.int32),
        "segment_ids": np.arange(1, len(alive) + 1, dtype=np.int64),
        "category_ids": cur_classes[alive].astype(np.int64),
        "isthing": cur_thing[alive],
        "scores": cur_scores[alive],
        "areas": area.astype(np.int64),
    }


class PanopticPostprocessor:
    """ONNX outputs of one image -> ``(panoptic_seg (H_out, W_out) int32, segments_info)``; segments
    as the model's (``id``, contiguous ``category_id``, ``isthing``, ``score``, ``area``).

    Args:
        is_thing: per contiguous class id.
        label_map: class slot -> contiguous id (-1 unused); None when the slots are contiguous ids.
        min_segment_area, mask_stride, crop_mask_padding: ``TEST.MIN_SEGMENT_AREA``, the mask head's
            stride (4), ``TEST.CROP_MASK_PADDING``.
        dataset_category_ids: contiguous id -> dataset category id; when given, each segment also
            has ``dataset_category_id``.
    """

    def __init__(
        self,
        is_thing: Sequence[bool],
        label_map: Optional[Sequence[int]] = None,
        min_segment_area: int = 4,
        mask_stride: int = 4,
        crop_mask_padding: bool = True,
        dataset_category_ids: Optional[Sequence[int]] = None,
    ):
        self.is_thing = np.asarray(is_thing, dtype=bool)
        self.label_map = None if label_map is None else np.asarray(label_map, dtype=np.int64)
        self.min_segment_area = int(min_segment_area)
        self.mask_stride = int(mask_stride)
        self.crop_mask_padding = bool(crop_mask_padding)
        self.dataset_category_ids = (
            None if dataset_category_ids is None else [int(v) for v in dataset_category_ids]
        )
        self.metadata: Optional[Dict[str, Any]] = (
            None  # the whole export metadata, when built from it
        )

    @classmethod
    def from_metadata(cls, metadata: Union[str, Mapping[str, Any]]) -> "PanopticPostprocessor":
        """From the export metadata (dict or its JSON text; see ``detr_d2.export.metadata``)."""
        meta = json.loads(metadata) if isinstance(metadata, str) else metadata
        missing = [k for k in ("is_thing", "min_segment_area", "mask_stride") if k not in meta]
        if missing:
            raise ValueError(f"export metadata lacks {missing}: not written by detr_d2's exporter")
        post = cls(
            meta["is_thing"],
            meta.get("label_map"),
            meta["min_segment_area"],
            meta["mask_stride"],
            meta.get("crop_mask_padding", True),
            meta.get("dataset_category_ids"),
        )
        post.metadata = dict(meta)
        return post

    @classmethod
    def from_onnx_session(cls, session: Any) -> "PanopticPostprocessor":
        """From the metadata stored in the model file of an ``onnxruntime.InferenceSession``."""
        props = session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in props:
            raise ValueError(
                f"the ONNX model has no '{METADATA_KEY}' metadata: export it with "
                "tools/export_model.py"
            )
        return cls.from_metadata(props[METADATA_KEY])

    def __call__(
        self,
        outputs: Union[Sequence[np.ndarray], Mapping[str, np.ndarray]],
        image_size: Sequence[int],
        output_size: Sequence[int],
    ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        """``outputs``: the network's (pred_logits (Q, S+1), pred_boxes, mask_queries (K,),
        pred_masks (K, Hm, Wm)) as a list in that order or a dict; ``image_size``: (h, w) of the
        network input; ``output_size``: (H_out, W_out) of the returned map (usually the original
        image size)."""
        if isinstance(outputs, Mapping):
            outputs = [outputs[k] for k in OUTPUT_NAMES]
        logits, _, queries, masks = outputs
        h, w = int(image_size[0]), int(image_size[1])
        h_out, w_out = int(output_size[0]), int(output_size[1])
        if masks.ndim != 3 or len(queries) != masks.shape[0]:
            raise ValueError(
                "pred_masks must be (K, Hm, Wm) with K = len(mask_queries) = "
                f"{len(queries)}, got {masks.shape}"
            )
        num_slots = logits.shape[-1] - 1
        label_map = (
            self.label_map if self.label_map is not None else np.arange(num_slots, dtype=np.int64)
        )
        result = fuse_panoptic(
            logits,
            masks,
            np.asarray(queries, dtype=np.int64),
            h,
            w,
            h_out,
            w_out,
            self.is_thing,
            label_map,
            self.min_segment_area,
            self.mask_stride,
            self.crop_mask_padding,
        )
        segments = []
        for i, c, t, sc, a in zip(
            *(
                result[k].tolist()
                for k in ("segment_ids", "category_ids", "isthing", "scores", "areas")
            )
        ):
            seg = {"id": i, "category_id": c, "isthing": bool(t), "score": sc, "area": a}
            if self.dataset_category_ids is not None:
                seg["dataset_category_id"] = self.dataset_category_ids[c]
            segments.append(seg)
        return result["panoptic_seg"], segments
