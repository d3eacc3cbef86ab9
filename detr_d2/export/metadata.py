"""What an exported artifact needs beside its graph, as one JSON-able dict stored with it.

TorchScript: the file's extra file ``detr_d2_export.json`` (``torch.jit.load(path,
_extra_files=...)``) and module attributes; ONNX: the model's ``metadata_props`` entry
``detr_d2_export``. Keys:

* ``input_format`` (RGB/BGR), ``min_size_test``, ``max_size_test``, ``resize_rounding``: the test
  resize the caller applies before the model (``INPUT.*``);
* ``object_mask_threshold`` (baked into the graph), ``min_segment_area``, ``mask_stride``,
  ``crop_mask_padding``: the panoptic fusion's settings (``TEST.*``);
* ``is_thing`` (per contiguous class id), ``label_map`` (class slot -> contiguous id, -1 unused;
  None when slots are contiguous ids), ``dataset_category_ids`` (contiguous id -> dataset category
  id, None without dataset metadata), ``class_names`` (per contiguous id, or None).
"""

from typing import Any, Dict, List, Optional

from .onnx_postprocess import METADATA_KEY

__all__ = ["METADATA_KEY", "export_metadata", "contiguous_to_dataset_ids"]

FORMAT_VERSION = 1


def contiguous_to_dataset_ids(dataset_metadata: Any, num_classes: int) -> Optional[List[int]]:
    """Dataset category id of each contiguous id from Detectron2 metadata's
    ``thing_/stuff_dataset_id_to_
    contiguous_id`` (None when the metadata has neither or does not cover ``num_classes`` ids)."""
    mapping: Dict[int, int] = {}
    for key in ("thing_dataset_id_to_contiguous_id", "stuff_dataset_id_to_contiguous_id"):
        for dataset_id, contiguous in (getattr(dataset_metadata, key, None) or {}).items():
            mapping.setdefault(int(contiguous), int(dataset_id))
    if sorted(mapping) != list(range(num_classes)):
        return None
    return [mapping[c] for c in range(num_classes)]


def export_metadata(model: Any, cfg, dataset_metadata: Any = None) -> Dict[str, Any]:
    """The dict described in the module docstring, for ``model`` (a ``DetrPanoptic``) built from
    ``cfg``; ``dataset_metadata``: Detectron2 metadata of the test dataset (optional)."""
    num_classes = len(model.is_thing)
    names = None
    if dataset_metadata is not None:
        names = getattr(dataset_metadata, "stuff_classes", None) or getattr(
            dataset_metadata, "thing_classes", None
        )
        names = list(names or [])
        names = names if len(names) == num_classes else None
    dataset_ids = (
        None
        if dataset_metadata is None
        else contiguous_to_dataset_ids(dataset_metadata, num_classes)
    )
    return {
        "format_version": FORMAT_VERSION,
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "resize_rounding": cfg.INPUT.RESIZE_ROUNDING,
        "object_mask_threshold": float(model.object_mask_threshold),
        "min_segment_area": int(model.min_segment_area),
        "mask_stride": int(model.mask_stride),
        "crop_mask_padding": bool(model.crop_mask_padding),
        "num_queries": int(model.num_queries),
        "is_thing": [bool(t) for t in model.is_thing.tolist()],
        "label_map": None
        if model.label_map is None
        else [int(v) for v in model.label_map.tolist()],
        "dataset_category_ids": dataset_ids,
        "class_names": names,
    }
