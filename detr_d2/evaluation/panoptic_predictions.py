"""Model panoptic outputs -> COCO-panoptic predictions, exactly as Detectron2's evaluator converts them.

A Detectron2 panoptic model returns ``output["panoptic_seg"] = (id_map, segments_info)``:
``id_map`` is an int (H, W) tensor of segment ids (0 = no segment) and ``segments_info`` lists
``{"id", "category_id" (contiguous), "isthing", ...}``. If ``segments_info`` is None, ``id_map`` holds
``contiguous_category * label_divisor + instance`` with -1 for VOID (Panoptic-DeepLab style).
:class:`PanopticPredictionConverter` reproduces ``COCOPanopticEvaluator.process``: same ids, same
contiguous -> dataset category mapping, without mutating the model's outputs.
"""
import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from panopticapi.utils import id2rgb

__all__ = ["PanopticPredictionConverter", "encode_panoptic_png", "json_safe"]


def json_safe(value: Any) -> Any:
    """Convert numpy/torch scalars (and containers of them) to plain Python for ``json.dumps``."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def encode_panoptic_png(id_map: np.ndarray) -> bytes:
    """PNG bytes of a (H, W) id map in COCO panoptic RGB encoding (``id2rgb``, ids modulo 2**24)."""
    with io.BytesIO() as out:
        Image.fromarray(id2rgb(id_map)).save(out, format="PNG")
        return out.getvalue()


class PanopticPredictionConverter:
    """Convert ``output["panoptic_seg"]`` to ``(id_map, segments_info)`` with *dataset* category ids.

    Args:
        metadata: the dataset's Detectron2 metadata (``thing_dataset_id_to_contiguous_id``,
            ``stuff_dataset_id_to_contiguous_id``; ``label_divisor`` for ``segments_info is None``).
    """

    def __init__(self, metadata: Any):
        self._metadata = metadata
        self._thing_to_dataset = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
        self._stuff_to_dataset = {v: k for k, v in metadata.stuff_dataset_id_to_contiguous_id.items()}
        self._thing_contiguous_ids = set(metadata.thing_dataset_id_to_contiguous_id.values())

    def _dataset_category(self, segment: Dict[str, Any]) -> Dict[str, Any]:
        segment = dict(segment)
        isthing = segment.pop("isthing", None)
        if isthing is None:  # the model produced dataset category ids directly
            return segment
        mapping, kind = (
            (self._thing_to_dataset, "thing") if bool(isthing) else (self._stuff_to_dataset, "stuff")
        )
        contiguous = int(segment["category_id"])
        if contiguous not in mapping:
            raise KeyError(
                f"predicted segment {segment.get('id')} has isthing={isthing} and contiguous "
                f"category_id {contiguous}, which is not a {kind} class of this dataset "
                f"(metadata {kind}_dataset_id_to_contiguous_id has values {sorted(mapping)[:10]}...)"
            )
        segment["category_id"] = mapping[contiguous]
        return segment

    def _from_label_divisor(self, id_map: np.ndarray) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        label_divisor = getattr(self._metadata, "label_divisor", None)
        if label_divisor is None:
            raise ValueError(
                "panoptic_seg has segments_info None (ids = category * label_divisor + instance), "
                "but the dataset metadata has no 'label_divisor'"
            )
        segments_info = []
        for panoptic_label in np.unique(id_map).tolist():
            if panoptic_label == -1:  # VOID
                continue
            pred_class = panoptic_label // label_divisor
            segments_info.append({
                "id": int(panoptic_label) + 1,
                "category_id": int(pred_class),
                "isthing": pred_class in self._thing_contiguous_ids,
            })
        # The official evaluation uses 0 for VOID.
        return id_map + 1, segments_info

    def __call__(
        self, panoptic_seg: Tuple[Any, Optional[Sequence[Dict[str, Any]]]]
    ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
        """Returns ``(id_map (H, W) integer np.ndarray, segments_info with dataset category ids)``.

        Entries keep their other fields (e.g. ``score``) and lose ``isthing``, as in Detectron2.
        """
        id_map, segments_info = panoptic_seg
        if isinstance(id_map, torch.Tensor):
            id_map = id_map.cpu().numpy()
        id_map = np.asarray(id_map)
        if id_map.ndim != 2:
            raise ValueError(f"panoptic_seg id map must be (H, W), got shape {tuple(id_map.shape)}")
        if not np.issubdtype(id_map.dtype, np.integer):
            raise TypeError(f"panoptic_seg id map must hold integers, got dtype {id_map.dtype}")
        if segments_info is None:
            id_map, segments_info = self._from_label_divisor(id_map)
        converted = []
        for segment in segments_info:
            segment = json_safe(self._dataset_category(segment))
            segment["id"] = int(segment["id"])
            segment["category_id"] = int(segment["category_id"])
            converted.append(segment)
        return id_map, converted
