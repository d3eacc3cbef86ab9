"""Panoptic category lists -> Detectron2 "standard" panoptic metadata, checks on it, and the model's
class-slot layout derived from it (the one place ``MODEL.DETR.NUM_CLASSES`` is checked).

Contiguous ids: a category's contiguous id is its position in the category list **sorted by
dataset id**, things and stuff together (COCO: things 0..79, stuff 80..132). In the "standard"
metadata ``thing_classes`` / ``stuff_classes`` (and the colours) both list *all* names indexed by
contiguous id, which is what Detectron2's Visualizer and ``COCOPanopticEvaluator`` expect.
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog
from detectron2.utils.colormap import colormap

logger = logging.getLogger(__name__)

__all__ = [
    "REQUIRED_PANOPTIC_METADATA",
    "validate_categories",
    "build_panoptic_metadata",
    "missing_panoptic_metadata",
    "num_classes_from_metadata",
    "class_info_from_metadata",
    "ClassSlots",
    "class_slots",
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


def class_info_from_metadata(metadata: Any) -> Tuple[int, List[bool], Dict[int, int]]:
    """From Detectron2 panoptic metadata: (number of contiguous classes, is_thing per contiguous id,
    dataset id -> contiguous id). Raises ValueError when the metadata has no id mappings."""
    thing = dict(getattr(metadata, "thing_dataset_id_to_contiguous_id", {}) or {})
    stuff = dict(getattr(metadata, "stuff_dataset_id_to_contiguous_id", {}) or {})
    if not thing and not stuff:
        raise ValueError(
            f"dataset '{metadata.name}': metadata has neither "
            "thing_dataset_id_to_contiguous_id nor "
            "stuff_dataset_id_to_contiguous_id; register it with "
            "detr_d2.data.register_panoptic_dataset"
        )
    dataset_to_contig = {**stuff, **thing}
    num = max(dataset_to_contig.values()) + 1
    is_thing = [False] * num
    for c in thing.values():
        is_thing[c] = True
    return num, is_thing, dataset_to_contig


@dataclass(frozen=True)
class ClassSlots:
    """How the classifier's rows map to a dataset's classes.

    ``num_slots``: rows before the no-object row (``MODEL.DETR.NUM_CLASSES``); ``is_thing``: per
    contiguous class id; ``label_map``: slot -> contiguous id (-1 for unused slots) when the slots
    are dataset category ids (``CLASS_SLOTS dataset_id``), None when they are contiguous ids.
    """

    num_slots: int
    is_thing: List[bool]
    label_map: Optional[List[int]] = None


def class_slots(
    num_classes: int,
    slots: str,
    dataset_names: Sequence[str],
    all_things_without_metadata: bool = False,
) -> ClassSlots:
    """The classifier layout for ``MODEL.DETR.NUM_CLASSES`` / ``CLASS_SLOTS`` and the datasets'
    metadata.

    Every dataset in ``dataset_names`` that has panoptic id mappings must have the same classes (the
    first one defines them). ``slots="contiguous"``: ``num_classes`` must equal the number of
    classes (0 derives it). ``slots="dataset_id"`` (logit index = dataset category id, as the
    official checkpoints): ``num_classes`` must exceed the largest dataset id (0 derives it).
    Without any dataset metadata: an error (a model whose classes are all things, with a warning,
    was a silently different model), unless ``all_things_without_metadata``
    (``MODEL.DETR.ALL_THINGS_WITHOUT_METADATA``): then ``num_classes`` contiguous classes, all
    things. Errors give both numbers and the config key.
    """
    if slots not in ("contiguous", "dataset_id"):
        raise ValueError(
            f"MODEL.DETR.CLASS_SLOTS must be 'contiguous' or 'dataset_id', got {slots!r}"
        )
    names = list(dataset_names)
    infos = []
    for name in names:
        md = MetadataCatalog.get(name)
        if hasattr(md, "thing_dataset_id_to_contiguous_id") or hasattr(
            md, "stuff_dataset_id_to_contiguous_id"
        ):
            infos.append((name, class_info_from_metadata(md)))
    if not infos:
        register = (
            "register them before the model is built: list their YAML file in "
            "DATASETS.REGISTER_FILES (or call detr_d2.data.register_panoptic_dataset)"
        )
        if num_classes <= 0:
            raise ValueError(
                "MODEL.DETR.NUM_CLASSES <= 0 asks to derive it from the dataset metadata, "
                f"but no dataset in DATASETS.TRAIN/TEST ({names}) has panoptic id mappings: "
                f"{register}"
            )
        if slots == "dataset_id":
            raise ValueError(
                "MODEL.DETR.CLASS_SLOTS 'dataset_id' needs a dataset with panoptic metadata "
                f"in DATASETS: {register}"
            )
        if not all_things_without_metadata:
            raise ValueError(
                f"no dataset in DATASETS.TRAIN/TEST ({names}) is registered with panoptic "
                "metadata, so the model cannot know which classes are things and which stuff: "
                f"{register}, or set MODEL.DETR.ALL_THINGS_WITHOUT_METADATA True to build "
                f"{num_classes} classes that are all things"
            )
        logger.info(
            "MODEL.DETR.ALL_THINGS_WITHOUT_METADATA: no panoptic metadata in DATASETS; %d "
            "classes, all things",
            num_classes,
        )
        return ClassSlots(num_classes, [True] * num_classes)
    name, (num_contig, is_thing, ds_to_contig) = infos[0]
    for other, info in infos[1:]:
        if info != (num_contig, is_thing, ds_to_contig):
            raise ValueError(
                f"datasets '{name}' and '{other}' have different classes ({num_contig} vs "
                f"{info[0]} classes or "
                "different id mappings); one model can only train/evaluate on datasets with "
                "the same classes"
            )
    if slots == "contiguous":
        if num_classes > 0 and num_classes != num_contig:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES = {num_classes} but dataset '{name}' has "
                f"{num_contig} classes "
                f"({sum(is_thing)} things + {num_contig - sum(is_thing)} stuff). Set "
                "MODEL.DETR.NUM_CLASSES "
                f"{num_contig} (or 0 to derive it from the metadata)."
            )
        return ClassSlots(num_contig, is_thing)
    max_id = max(ds_to_contig)
    num_slots = num_classes if num_classes > 0 else max_id + 1
    if max_id >= num_slots:
        raise ValueError(
            f"MODEL.DETR.CLASS_SLOTS 'dataset_id': dataset '{name}' has category id {max_id} but "
            f"MODEL.DETR.NUM_CLASSES = {num_slots} slots; need at least {max_id + 1}"
        )
    label_map = [-1] * num_slots
    for ds_id, c in ds_to_contig.items():
        label_map[ds_id] = c
    return ClassSlots(num_slots, is_thing, label_map)
