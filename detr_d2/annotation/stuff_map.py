"""The stuff map of ``add_stuff_from_model``: which output stuff category each stuff class of a
panoptic model becomes, and the per-pixel label map of a model prediction under it.

Stuff map file (YAML or JSON)::

    categories:                 # the output stuff categories (COCO panoptic fields; isthing 0
    implied)
      - {id: 4, name: sky, color: [135, 200, 240]}
      - {id: 5, name: vegetation}
    map:                        # model stuff class name -> output category name (null: void)
      sky-other-merged: sky
      grass-merged: vegetation
      tree-merged: vegetation

Model class names are matched ignoring case and separators (``Sky_Other-Merged`` =
``sky-other-merged``); an unknown name is an error that suggests the closest ones. Model stuff
classes the map does not list become void. Output ids must not clash with the thing category ids.
"""

import difflib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..checkpoint.class_names import class_match_key, normalize_class_name
from ..data.datasets.panoptic_metadata import build_panoptic_metadata
from ..data.panoptic_io import (
    PanopticPredictionConverter,
    read_json,
    require_keys,
)

__all__ = [
    "MODEL_THING",
    "VOID",
    "StuffMap",
    "identity_stuff_map",
    "load_stuff_map",
    "model_label_map",
    "model_stuff_categories",
    "with_colors",
]

# model_label_map values besides output stuff ids (> 0)
VOID, MODEL_THING = 0, -1


@dataclass(frozen=True)
class StuffMap:
    """Output stuff ``categories`` (validated, isthing 0, with colours) and, per model stuff dataset
    id, the output category id it becomes (None: void)."""

    categories: List[Dict[str, Any]]
    model_to_output: Dict[int, Optional[int]]


def model_stuff_categories(metadata: Any) -> List[Dict[str, Any]]:
    """The stuff categories of a model's Detectron2 panoptic metadata: ``id`` (dataset id),
    ``name``, ``color``, ``isthing`` 0, sorted by id. Raises ``ValueError`` if it has none."""
    stuff = dict(getattr(metadata, "stuff_dataset_id_to_contiguous_id", None) or {})
    if not stuff:
        raise ValueError(
            f"the model's dataset {getattr(metadata, 'name', '?')!r} has no stuff classes "
            "(metadata stuff_dataset_id_to_contiguous_id is empty): a panoptic model with "
            "stuff is needed"
        )
    names = list(getattr(metadata, "stuff_classes", None) or [])
    colors = list(getattr(metadata, "stuff_colors", None) or [])
    cats = []
    for ds_id, c in sorted(stuff.items()):
        if c >= len(names):
            raise ValueError(
                f"the model's dataset {getattr(metadata, 'name', '?')!r}: stuff_classes has "
                f"{len(names)} names "
                f"but stuff class {ds_id} has contiguous id {c} (standard panoptic metadata "
                "lists all classes)"
            )
        cat = {"id": int(ds_id), "name": names[c], "isthing": 0}
        if c < len(colors):
            cat["color"] = [int(v) for v in colors[c]]
        cats.append(cat)
    return cats


def with_colors(categories: Sequence[Mapping[str, Any]], source: str) -> List[Dict[str, Any]]:
    """Validated categories, each with a colour (palette colour when missing)."""
    meta = build_panoptic_metadata(categories, source)
    return [dict(c, color=list(col)) for c, col in zip(meta["categories"], meta["stuff_colors"])]


def _read_mapping_file(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.lower().endswith(".json"):
        return read_json(path, what)
    import yaml

    try:
        with open(path, "r", encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {what} cannot be parsed as YAML: {e}") from e


def load_stuff_map(path: str, model_stuff: Sequence[Mapping[str, Any]]) -> StuffMap:
    """Read a stuff map file (format in the module docstring) against the model's stuff categories
    (:func:`model_stuff_categories`). Errors name the file and the field."""
    data = _read_mapping_file(path, "stuff map file")
    require_keys(data, ["categories", "map"], path)
    unknown = sorted(set(data) - {"categories", "map"})
    if unknown:
        raise ValueError(
            f"{path}: unknown field(s) {unknown} (the fields are 'categories' and 'map')"
        )
    raw = data["categories"]
    if not isinstance(raw, list):
        raise ValueError(
            f"{path}: 'categories' must be a list of {{id, name[, color]}}, got {raw!r:.80}"
        )
    for i, cat in enumerate(raw):
        if isinstance(cat, Mapping) and cat.get("isthing", 0) not in (0, False):
            raise ValueError(
                f"{path}: categories[{i}] ({cat.get('name')}): output categories are stuff "
                "(isthing 0)"
            )
    categories = with_colors(
        [dict(c, isthing=0) if isinstance(c, Mapping) else c for c in raw], f"{path}: 'categories'"
    )
    by_name: Dict[str, int] = {}
    for cat in categories:
        if cat["id"] < 1:
            raise ValueError(
                f"{path}: category {cat['name']!r} has id {cat['id']}; ids must be >= 1 (0 is void)"
            )
        key = normalize_class_name(cat["name"])
        if key in by_name:
            raise ValueError(f"{path}: 'categories' has two categories named {cat['name']!r}")
        by_name[key] = cat["id"]
    mapping = data["map"]
    if not isinstance(mapping, Mapping) or not mapping:
        raise ValueError(
            f"{path}: 'map' must be a non-empty mapping "
            "{model stuff class: output category or null}"
        )
    model_by_name = {normalize_class_name(c["name"]): c for c in model_stuff}
    model_to_output: Dict[int, Optional[int]] = {c["id"]: None for c in model_stuff}
    seen: Dict[int, str] = {}
    for src, dst in mapping.items():
        where = f"{path}: map[{src!r}]"
        model_cat = model_by_name.get(normalize_class_name(src)) if isinstance(src, str) else None
        if model_cat is None:
            names = [c["name"] for c in model_stuff]
            same_key = [n for n in names if class_match_key(n) == class_match_key(str(src))]
            close = same_key or difflib.get_close_matches(str(src), names, n=3, cutoff=0.5)
            hint = f"; did you mean {close}?" if close else ""
            raise ValueError(
                f"{where}: {src!r} is not a stuff class of the model ({len(model_stuff)} "
                f"stuff classes{hint})"
            )
        if model_cat["id"] in seen:
            raise ValueError(
                f"{where}: model class {model_cat['name']!r} is already mapped by "
                f"map[{seen[model_cat['id']]!r}]"
            )
        seen[model_cat["id"]] = src
        if dst is None:
            continue
        if not isinstance(dst, str) or normalize_class_name(dst) not in by_name:
            raise ValueError(
                f"{where}: {dst!r} is not one of the output categories "
                f"{[c['name'] for c in categories]} "
                "(declare it under 'categories', or write null for void)"
            )
        model_to_output[model_cat["id"]] = by_name[normalize_class_name(dst)]
    return StuffMap(categories, model_to_output)


def identity_stuff_map(model_stuff: Sequence[Mapping[str, Any]], source: str) -> StuffMap:
    categories = with_colors(model_stuff, source)
    return StuffMap(categories, {c["id"]: c["id"] for c in categories})


def model_label_map(
    panoptic_seg: Tuple[Any, Optional[List[Dict[str, Any]]]], metadata: Any, stuff_map: StuffMap
) -> np.ndarray:
    """A model's ``panoptic_seg`` -> int32 HxW map: output stuff category id (> 0) where the model
    predicts a mapped stuff class, ``MODEL_THING`` (-1) where it predicts a thing, ``VOID`` (0)
    elsewhere."""
    ids, segments = PanopticPredictionConverter(metadata)(panoptic_seg)  # dataset category ids
    thing_ids = set(metadata.thing_dataset_id_to_contiguous_id)
    out = np.zeros(ids.shape, np.int32)
    for seg in segments:
        cat = int(seg["category_id"])
        if cat in thing_ids:
            value = MODEL_THING
        else:
            value = stuff_map.model_to_output.get(cat) or VOID
        if value != VOID:
            out[ids == seg["id"]] = value
    return out
