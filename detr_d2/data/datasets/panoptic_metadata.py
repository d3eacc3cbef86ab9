"""Panoptic category lists -> Detectron2 "standard" panoptic metadata, and checks on it.

Contiguous ids: a category's contiguous id is its position in the category list **sorted by
dataset id**, things and stuff together (COCO: things 0..79, stuff 80..132). In the "standard"
metadata ``thing_classes`` / ``stuff_classes`` (and the colours) both list *all* names indexed by
contiguous id, which is what Detectron2's Visualizer and ``COCOPanopticEvaluator`` expect.
"""

from typing import Any, Dict, Iterable, List, Mapping, Sequence

from detectron2.data import MetadataCatalog
from detectron2.utils.colormap import colormap

__all__ = [
    "REQUIRED_PANOPTIC_METADATA",
    "validate_categories",
    "build_panoptic_metadata",
    "missing_panoptic_metadata",
    "num_classes_from_metadata",
    "check_num_classes",
]

# Keys a panoptic dataset's metadata must have for the DETR mapper, evaluator and visualiser.
REQUIRED_PANOPTIC_METADATA = (
    "thing_dataset_id_to_contiguous_id",
    "stuff_dataset_id_to_contiguous_id",
    "thing_classes",
    "stuff_classes",
    "thing_colors",
    "stuff_colors",
    "panoptic_root",
    "panoptic_json",
    "image_root",
    "evaluator_type",
    "ignore_label",
    "label_divisor",
)


def validate_categories(categories: Any, source: str = "categories") -> List[Dict[str, Any]]:
    """Check a COCO-panoptic category list and return it sorted by ``id``.

    Each entry needs ``id`` (int), ``name`` (str) and ``isthing`` (0/1 or bool); ``color`` (three
    ints 0..255) is optional. Errors name ``source`` (e.g. the JSON file) and the bad entry.
    """
    if not isinstance(categories, (list, tuple)) or not categories:
        raise ValueError(f"{source}: 'categories' must be a non-empty list, got {categories!r:.80}")
    seen = set()
    for i, cat in enumerate(categories):
        where = f"{source}: categories[{i}]"
        if not isinstance(cat, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(cat).__name__}")
        for key in ("id", "name", "isthing"):
            if key not in cat:
                raise ValueError(f"{where}: missing field '{key}' (needs id, name, isthing)")
        if not isinstance(cat["id"], int) or isinstance(cat["id"], bool):
            raise ValueError(f"{where}: 'id' must be an integer, got {cat['id']!r}")
        if cat["id"] in seen:
            raise ValueError(f"{where}: duplicate category id {cat['id']}")
        seen.add(cat["id"])
        if cat["isthing"] not in (0, 1, True, False):
            raise ValueError(f"{where}: 'isthing' must be 0 or 1, got {cat['isthing']!r}")
        color = cat.get("color")
        if color is not None and (
            len(color) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise ValueError(f"{where}: 'color' must be three integers 0..255, got {color!r}")
    return sorted((dict(c) for c in categories), key=lambda c: c["id"])


def build_panoptic_metadata(
    categories: Sequence[Mapping[str, Any]], source: str = "categories"
) -> Dict[str, Any]:
    """Class/colour lists and id maps of the "standard" panoptic metadata for ``categories``.

    Returns ``thing_classes``, ``stuff_classes`` (all names, by contiguous id), ``thing_colors``,
    ``stuff_colors`` (RGB lists; a category without ``color`` gets a fixed palette colour),
    ``thing_dataset_id_to_contiguous_id``, ``stuff_dataset_id_to_contiguous_id`` and
    ``categories`` (the validated list, sorted by id). Errors name ``source``.
    """
    cats = validate_categories(categories, source)
    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    names = [c["name"] for c in cats]
    colors = [
        list(c["color"]) if c.get("color") is not None else palette[i % len(palette)]
        for i, c in enumerate(cats)
    ]
    return {
        "thing_classes": list(names),
        "stuff_classes": list(names),
        "thing_colors": [list(c) for c in colors],
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(cats) if c["isthing"]
        },
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(cats) if not c["isthing"]
        },
        "categories": cats,
    }


def missing_panoptic_metadata(metadata: Any) -> List[str]:
    """Names of problems with a dataset's metadata for DETR panoptic training/evaluation.

    Empty list = fine. Checks the keys of ``REQUIRED_PANOPTIC_METADATA``, that the two id maps
    cover contiguous ids 0..K-1 exactly once, and that ``thing_classes``/``stuff_classes`` list
    all K names (the "standard" convention, not the "separated" one).
    """
    problems = [f"missing '{k}'" for k in REQUIRED_PANOPTIC_METADATA if not hasattr(metadata, k)]
    if problems:
        return problems
    contiguous = sorted(
        list(metadata.thing_dataset_id_to_contiguous_id.values())
        + list(metadata.stuff_dataset_id_to_contiguous_id.values())
    )
    k = len(contiguous)
    if contiguous != list(range(k)):
        problems.append(f"contiguous ids are not 0..{k - 1} exactly once: {contiguous[:10]}...")
    for key in ("thing_classes", "stuff_classes"):
        if len(getattr(metadata, key)) != k:
            problems.append(
                f"'{key}' has {len(getattr(metadata, key))} names, expected all {k} classes "
                "(standard panoptic metadata)"
            )
    if metadata.evaluator_type != "coco_panoptic_seg":
        problems.append(f"evaluator_type is {metadata.evaluator_type!r}, not 'coco_panoptic_seg'")
    return problems


def num_classes_from_metadata(dataset_name: str) -> int:
    """Number of contiguous classes (things + stuff) of a registered panoptic dataset."""
    meta = MetadataCatalog.get(dataset_name)
    problems = missing_panoptic_metadata(meta)
    if problems:
        raise ValueError(f"dataset {dataset_name!r}: metadata not usable: {'; '.join(problems)}")
    return len(meta.thing_dataset_id_to_contiguous_id) + len(meta.stuff_dataset_id_to_contiguous_id)


def check_num_classes(
    num_classes: int, dataset_names: Iterable[str], class_slots: str = "contiguous"
) -> None:
    """Check ``cfg.MODEL.DETR.NUM_CLASSES`` against the datasets' metadata; clear error if wrong.

    ``class_slots="contiguous"``: NUM_CLASSES must equal the number of classes of every dataset.
    ``class_slots="dataset_id"`` (logit index = dataset category id, official checkpoints):
    NUM_CLASSES must exceed the largest dataset category id.
    """
    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        expected = num_classes_from_metadata(name)
        if class_slots == "contiguous":
            if num_classes != expected:
                raise ValueError(
                    f"MODEL.DETR.NUM_CLASSES is {num_classes} but dataset {name!r} has {expected} "
                    f"classes (contiguous ids 0..{expected - 1}); set MODEL.DETR.NUM_CLASSES "
                    f"{expected}."
                )
        elif class_slots == "dataset_id":
            max_id = max(
                list(meta.thing_dataset_id_to_contiguous_id)
                + list(meta.stuff_dataset_id_to_contiguous_id)
            )
            if num_classes <= max_id:
                raise ValueError(
                    f"MODEL.DETR.NUM_CLASSES is {num_classes} with CLASS_SLOTS 'dataset_id', but "
                    f"dataset {name!r} has category id {max_id}; NUM_CLASSES must be > {max_id}."
                )
        else:
            raise ValueError(f"unknown MODEL.DETR.CLASS_SLOTS {class_slots!r}")
