"""Names of a checkpoint's class rows and of a registered dataset's classes, and how names are
matched.

Class rows of a checkpoint (``class_embed``, last row = no-object) are described by a list with one
entry per row before no-object: the class name, or ``None`` for a row that is no class (a hole in
the id space, never trained).

* official DETR panoptic checkpoints (251 logits): row ``c`` is COCO panoptic category id ``c``
  (names from ``detectron2.data.datasets.builtin_meta.COCO_CATEGORIES``; 133 named rows);
* official DETR detection checkpoints (92 logits): row ``c`` is COCO detection category id ``c``
  (the 80 ``isthing`` categories of the same list, ids 1..90 with holes);
* Hugging Face checkpoints: ``config.json``'s ``id2label`` (placeholders ``LABEL_<n>`` / ``N/A`` are
  holes); without real names, the official layouts above by number of logits.

Matching (:func:`class_match_key`): case-insensitive, ``-``/``_``/space runs are one separator, and
the COCO panoptic suffixes ``merged``/``other``/``stuff`` are dropped from the end
("wall-other-merged" and "Wall" both give ``wall``; "door-stuff" gives ``door``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = [
    "class_match_key",
    "coco_detection_class_names",
    "coco_panoptic_class_names",
    "dataset_class_names",
    "hf_id2label_class_names",
    "normalize_class_name",
    "official_class_names",
]

_SEPARATORS = re.compile(r"[-_\s]+")
_PANOPTIC_SUFFIXES = ("merged", "other", "stuff")
_PLACEHOLDER = re.compile(r"^(label_\d+|n/a|)$", re.IGNORECASE)
ClassNames = List[Optional[str]]


def normalize_class_name(name: str) -> str:
    """Lower case, separator runs -> one space: ``"Traffic_Light"`` -> ``"traffic light"``."""
    return _SEPARATORS.sub(" ", str(name)).strip().lower()


def class_match_key(name: str) -> str:
    """:func:`normalize_class_name` without trailing ``merged``/``other``/``stuff`` words (the last
    word is always kept): ``"sky-other-merged"`` -> ``"sky"``, ``"water-other"`` -> ``"water"``."""
    words = normalize_class_name(name).split(" ")
    while len(words) > 1 and words[-1] in _PANOPTIC_SUFFIXES:
        words.pop()
    return " ".join(words)


def _coco_categories() -> List[Dict[str, Any]]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return list(COCO_CATEGORIES)


def coco_panoptic_class_names() -> ClassNames:
    """250 rows: name of COCO panoptic category id ``c`` (things and stuff), ``None`` for unused
    ids."""
    names: ClassNames = [None] * 250
    for cat in _coco_categories():
        names[cat["id"]] = cat["name"]
    return names


def coco_detection_class_names() -> ClassNames:
    """91 rows: name of COCO detection (instances) category id ``c`` (1..90 with holes), ``None``
    otherwise."""
    names: ClassNames = [None] * 91
    for cat in _coco_categories():
        if cat["isthing"]:
            names[cat["id"]] = cat["name"]
    return names


def official_class_names(num_logits: int) -> Optional[ClassNames]:
    """Row names of an official DETR classifier with ``num_logits`` outputs (no-object included):
    251 -> COCO panoptic, 92 -> COCO detection, anything else -> ``None`` (unknown)."""
    if num_logits == 251:
        return coco_panoptic_class_names()
    if num_logits == 92:
        return coco_detection_class_names()
    return None


def hf_id2label_class_names(
    id2label: Optional[Mapping[Any, str]], num_logits: int, source: str
) -> Optional[ClassNames]:
    """Row names from a Hugging Face ``config.json`` ``id2label`` (keys are label ids, as strings or
    ints).

    Returns ``None`` when it names no row (missing, or only ``LABEL_<n>``/``N/A`` placeholders).
    Raises ``ValueError`` (naming ``source``) for ids outside ``0..num_logits - 2``.
    """
    if not id2label:
        return None
    names: ClassNames = [None] * (num_logits - 1)
    for key, name in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: id2label key {key!r} is not an integer") from None
        if not 0 <= index < num_logits - 1:
            raise ValueError(
                f"{source}: id2label names id {index} ({name!r}) but the classifier has "
                f"{num_logits - 1} class rows "
                f"(ids 0..{num_logits - 2}) + no-object"
            )
        if not _PLACEHOLDER.match(str(name).strip()):
            names[index] = str(name)
    return names if any(n is not None for n in names) else None


def dataset_class_names(dataset: Union[str, Any]) -> List[str]:
    """Class names of a registered Detectron2 dataset (its name or its ``Metadata``), by contiguous
    id.

    Standard panoptic metadata (``stuff_classes`` lists all K classes, as detr_d2 and Detectron2's
    ``coco_2017_*_panoptic`` register them) and detection metadata (``thing_classes`` only) are
    understood; K = number of contiguous ids in ``thing/stuff_dataset_id_to_contiguous_id`` (or
    ``len(thing_classes)`` without id maps). Raises ``ValueError`` otherwise.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if isinstance(dataset, str):
        import detectron2.data.datasets  # noqa: F401  (registers Detectron2's builtin datasets)

        if dataset not in DatasetCatalog.list():
            raise ValueError(
                f"dataset '{dataset}' is not registered with Detectron2 "
                "(e.g. coco_2017_val_panoptic, or a dataset registered by detr_d2)"
            )
        meta = MetadataCatalog.get(dataset)
    else:
        meta = dataset
    name = getattr(meta, "name", "?")
    thing = dict(getattr(meta, "thing_dataset_id_to_contiguous_id", None) or {})
    stuff = dict(getattr(meta, "stuff_dataset_id_to_contiguous_id", None) or {})
    thing_classes = list(getattr(meta, "thing_classes", None) or [])
    stuff_classes = list(getattr(meta, "stuff_classes", None) or [])
    k = len(set(thing.values()) | set(stuff.values())) if (thing or stuff) else len(thing_classes)
    for names in (stuff_classes, thing_classes):
        if k and len(names) == k:
            return [str(n) for n in names]
    raise ValueError(
        f"dataset '{name}': cannot list its {k} classes by contiguous id (thing_classes has "
        f"{len(thing_classes)} "
        f"names, stuff_classes {len(stuff_classes)}); register it with standard panoptic metadata "
        "(detr_d2.data.register_panoptic_dataset) or detection metadata"
    )
