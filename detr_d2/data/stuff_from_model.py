"""Panoptic labels from thing-only annotations plus a panoptic model's stuff predictions.

Input: a COCO instances JSON (things only; polygons or RLE), its images, and a panoptic model (any
callable ``BGR image -> Detectron2 output dict`` with ``panoptic_seg``, e.g.
``DetrPanopticPredictor``, plus the metadata of its classes). Output: COCO panoptic PNGs + JSON
where

* **thing segments come from the annotations exactly**: they are rasterised and their overlaps
  resolved by :func:`~detr_d2.data.panoptic_conversion.detection_image_to_panoptic`, the rules of
  ``tools/convert_detection_to_panoptic.py`` (things before stuff, then smaller before larger, then
  the first listed; crowd kept). The model never moves, adds or removes a thing pixel;
* every other pixel takes the model's **stuff** prediction: one segment per stuff category and
  image, either the model's own stuff classes (ids, names, colours of its metadata) or, through a
  *stuff map* file, a coarser set of output categories;
* a pixel the model calls a **thing** that no annotation covers becomes **void** (0): an
  unannotated object is never turned into an invented instance nor into stuff. Pixels the model
  leaves void, or gives a stuff class the stuff map does not map, are void too.

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
import logging
import os
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
from tqdm import tqdm

from ..checkpoint.class_names import class_match_key, normalize_class_name
from ..utils.atomic_io import atomic_directory, atomic_write_json
from .coco_bounds import check_image_size
from .dataset_mappers.detr_panoptic_dataset_mapper import read_image_checked
from .datasets.panoptic_metadata import build_panoptic_metadata, validate_categories
from .panoptic_conversion import ConversionReport, decode_segmentation, detection_image_to_panoptic
from .panoptic_io import (
    PanopticPredictionConverter,
    join_under,
    read_json,
    require_keys,
    save_panoptic_png,
)

__all__ = [
    "StuffMap",
    "ImageCoverage",
    "StuffFromModelSummary",
    "model_stuff_categories",
    "load_stuff_map",
    "model_label_map",
    "compose_image",
    "add_stuff_from_model",
]

logger = logging.getLogger(__name__)

# model_label_map values besides output stuff ids (> 0)
VOID, MODEL_THING = 0, -1


@dataclass(frozen=True)
class StuffMap:
    """Output stuff ``categories`` (validated, isthing 0, with colours) and, per model stuff dataset
    id,
    the output category id it becomes (None: void)."""

    categories: List[Dict[str, Any]]
    model_to_output: Dict[int, Optional[int]]


def model_stuff_categories(metadata: Any) -> List[Dict[str, Any]]:
    """The stuff categories of a model's Detectron2 panoptic metadata: ``id`` (dataset id),
    ``name``,
    ``color``, ``isthing`` 0, sorted by id. Raises ``ValueError`` if it has none."""
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


def _with_colors(categories: Sequence[Mapping[str, Any]], source: str) -> List[Dict[str, Any]]:
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
    categories = _with_colors(
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


def _identity_stuff_map(model_stuff: Sequence[Mapping[str, Any]], source: str) -> StuffMap:
    categories = _with_colors(model_stuff, source)
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


@dataclass
class ImageCoverage:
    """Pixel shares of one output image (percent of its pixels)."""

    image_id: Any
    file_name: str
    pixels: int
    things: float  # annotated thing segments
    stuff: float  # the model's (mapped) stuff
    void: float  # everything else:
    void_model_thing: float  # ... of which the model calls a thing that no annotation covers
    void_other: float  # ... of which the model leaves void or gives an unmapped stuff class


def compose_image(
    image: Mapping[str, Any],
    annotations: Sequence[Mapping[str, Any]],
    categories: Mapping[int, Mapping[str, Any]],
    label_map: np.ndarray,
    *,
    overlap: str = "resolve",
    seed: int = 0,
    source: str = "instances JSON",
) -> Tuple[np.ndarray, List[Dict[str, Any]], ImageCoverage, ConversionReport]:
    """One image: thing ``annotations`` (exact) + stuff from ``label_map`` (:func:`model_label_map`)
    -> (int32 HxW segment id map, ``segments_info`` with dataset ids, coverage, conversion report).

    ``categories``: dataset id -> category (``isthing``, ``color``) for things and output stuff.
    """
    h, w = int(image["height"]), int(image["width"])
    if label_map.shape != (h, w):
        raise ValueError(
            f"{source}: image_id {image['id']}: the model's map is "
            f"{label_map.shape[1]}x{label_map.shape[0]}, "
            f"the image {w}x{h} (WxH)"
        )
    annotated = np.zeros((h, w), bool)
    for ann in annotations:
        where = f"{source}: annotation id {ann.get('id')} (image_id {image['id']})"
        annotated |= decode_segmentation(ann["segmentation"], h, w, where)
    stuff_anns = []
    for cat in np.unique(label_map[label_map > 0]).tolist():
        mask = (label_map == cat) & ~annotated
        if mask.any():
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            stuff_anns.append(
                {"id": f"model stuff {cat}", "category_id": int(cat), "segmentation": rle}
            )
    ids, segments, report = detection_image_to_panoptic(
        image,
        list(annotations) + stuff_anns,
        categories,
        overlap=overlap,
        id_scheme="color",
        seed=seed,
        source=source,
    )
    n = h * w
    thing_ids = [s["id"] for s in segments if categories[s["category_id"]]["isthing"]]
    things = int(np.isin(ids, thing_ids).sum())
    void_mask = ids == 0
    void_thing = int((void_mask & (label_map == MODEL_THING)).sum())
    void = int(void_mask.sum())
    pct = lambda x: round(100.0 * x / n, 3)  # noqa: E731
    coverage = ImageCoverage(
        image["id"],
        image["file_name"],
        n,
        pct(things),
        pct(n - things - void),
        pct(void),
        pct(void_thing),
        pct(void - void_thing),
    )
    return ids, segments, coverage, report


@dataclass
class StuffFromModelSummary:
    """What :func:`add_stuff_from_model` wrote, and the pixel shares over all images (percent)."""

    images: int = 0
    segments: int = 0
    things: float = 0.0
    stuff: float = 0.0
    void: float = 0.0
    void_model_thing: float = 0.0
    void_other: float = 0.0
    coverage: List[ImageCoverage] = field(default_factory=list)
    report: ConversionReport = field(default_factory=ConversionReport)

    def text(self, worst: int = 5) -> str:
        lines = [
            f"{self.images} images, {self.segments} segments; pixels: annotated things "
            f"{self.things:.1f}%, "
            f"model stuff {self.stuff:.1f}%, void {self.void:.1f}% (model thing without annotation "
            f"{self.void_model_thing:.1f}%, model void or unmapped stuff {self.void_other:.1f}%)"
        ]
        if self.coverage:
            voids = np.array([c.void for c in self.coverage])
            lines.append(
                f"void per image: min {voids.min():.1f}%, mean {voids.mean():.1f}%, max "
                f"{voids.max():.1f}%"
            )
            for c in sorted(self.coverage, key=lambda c: -c.void)[:worst]:
                lines.append(
                    f"  {c.file_name}: things {c.things:.1f}%, stuff {c.stuff:.1f}%, void "
                    f"{c.void:.1f}% "
                    f"(model thing {c.void_model_thing:.1f}%)"
                )
        if self.report.images_with_overlap or self.report.dropped:
            lines.append("annotations: " + self.report.summary())
        return "\n".join(lines)


# Worker state (set once per process by the pool initializer).
_WORKER: Dict[str, Any] = {}


def _init_worker(state: Dict[str, Any]) -> None:
    _WORKER.clear()
    _WORKER.update(state)


def _compose_task(task):
    index, image, anns, label_map, png_path = task
    st = _WORKER
    ids, segments, coverage, report = compose_image(
        image,
        anns,
        st["categories"],
        label_map,
        overlap=st["overlap"],
        seed=st["seed"] * 1_000_003 + index,
        source=st["source"],
    )
    save_panoptic_png(png_path, ids)
    ann = {
        "image_id": image["id"],
        "file_name": os.path.basename(png_path),
        "segments_info": segments,
    }
    return ann, coverage, report


def _read_instances(instances_json: str, image_root: str):
    """Images, annotations per image and thing categories of an instances JSON, checked."""
    data = read_json(instances_json, "instances JSON")
    require_keys(data, ["images", "annotations", "categories"], instances_json)
    raw_cats = data["categories"]
    if not isinstance(raw_cats, list):
        raise ValueError(f"{instances_json}: 'categories' must be a list")
    cats = []
    for i, cat in enumerate(raw_cats):
        require_keys(cat, ["id", "name"], f"{instances_json}: categories[{i}]")
        if cat.get("isthing", 1) not in (1, True):
            raise ValueError(
                f"{instances_json}: categories[{i}] ({cat['name']}) has isthing "
                f"{cat['isthing']!r}: this tool takes "
                "thing annotations only (stuff comes from the model); for stuff annotations use "
                "tools/convert_detection_to_panoptic.py"
            )
        cats.append(dict(cat, isthing=1))
    things = _with_colors(
        validate_categories(cats, f"{instances_json}: 'categories'"), instances_json
    )
    thing_ids = {c["id"] for c in things}
    images, stems = {}, {}
    for i, img in enumerate(data["images"]):
        where = f"{instances_json}: images[{i}]"
        require_keys(img, ["id", "file_name", "height", "width"], where)
        if img["id"] in images:
            raise ValueError(f"{where}: duplicate image id {img['id']!r}")
        stem = os.path.splitext(os.path.basename(img["file_name"]))[0]
        if stem in stems:
            raise ValueError(
                f"{where}: file name stem {stem!r} also used by image id {stems[stem]} (PNG "
                "names clash)"
            )
        stems[stem] = img["id"]
        check_image_size(img["height"], img["width"], f"{where} (id {img['id']!r})")
        path = join_under(image_root, img["file_name"], f"{where} 'file_name'")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{where}: image not found (file_name {img['file_name']!r}): {path}"
            )
        images[img["id"]] = img
    anns: Dict[Any, List[Dict[str, Any]]] = {k: [] for k in images}
    for i, ann in enumerate(data["annotations"]):
        where = (
            f"{instances_json}: annotations[{i}] (id "
            f"{ann.get('id') if isinstance(ann, Mapping) else '?'})"
        )
        require_keys(ann, ["image_id", "category_id", "segmentation"], where)
        if ann["image_id"] not in images:
            raise ValueError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in thing_ids:
            raise ValueError(
                f"{where}: category_id {ann['category_id']!r} is not in 'categories' (ids "
                f"{sorted(thing_ids)})"
            )
        anns[ann["image_id"]].append(ann)
    return data, images, anns, things


def add_stuff_from_model(
    instances_json: str,
    image_root: str,
    output_dir: str,
    predict: Callable[[np.ndarray], Dict[str, Any]],
    metadata: Any,
    *,
    stuff_map: Optional[str] = None,
    workers: int = 1,
    overwrite: bool = False,
    overlap: str = "resolve",
    seed: int = 0,
    read_image: Optional[Callable[[str], np.ndarray]] = None,
    protected: Sequence[str] = (),
) -> StuffFromModelSummary:
    """Write ``output_dir/panoptic/*.png``, ``output_dir/panoptic.json`` and
    ``output_dir/coverage.json``.

    Args:
        instances_json, image_root: the thing annotations and their images (never modified).
        output_dir: written all or nothing (a temporary sibling renamed at the end); an existing one
            is refused unless ``overwrite``. It may not contain an input.
        predict: BGR uint8 HxWx3 image -> Detectron2 output dict with ``panoptic_seg`` at the
        image's size. metadata: the Detectron2 panoptic metadata of the model's classes.
        stuff_map: optional stuff map file (module docstring); default: the model's stuff classes.
        workers: processes composing and writing the PNGs while the model runs in this process.
        overlap: "resolve" or "error" for overlapping thing annotations (as the detection
        converter). read_image: path -> BGR image (default: ``read_image_checked``, EXIF-aware,
        as training). protected: further input files (config, weights) the output must not contain.

    The output JSON has the instances JSON's ``images`` (and ``info``/``licenses``), one annotation
    per image and the categories: the things of the instances JSON, then the output stuff
    categories.
    """
    if overlap not in ("resolve", "error"):
        raise ValueError(f"overlap must be 'resolve' or 'error', got {overlap!r}")
    model_stuff = model_stuff_categories(metadata)
    smap = (
        load_stuff_map(stuff_map, model_stuff)
        if stuff_map
        else _identity_stuff_map(
            model_stuff, f"the model's dataset {getattr(metadata, 'name', '?')!r}"
        )
    )
    inputs = [instances_json, image_root, stuff_map or "", *protected]
    data, images, anns, things = _read_instances(instances_json, image_root)
    clash = sorted({c["id"] for c in things} & {c["id"] for c in smap.categories})
    if clash:
        raise ValueError(
            f"stuff category id(s) {clash} ({stuff_map or 'the model'}) are also thing ids "
            f"of {instances_json}; "
            "give the stuff categories other ids in a stuff map file (--stuff-map)"
        )
    stuff_colors: Dict[Tuple[int, ...], Any] = {}
    for c in smap.categories:
        if tuple(c["color"]) in stuff_colors:
            raise ValueError(
                f"{stuff_map or 'the model metadata'}: stuff categories "
                f"{stuff_colors[tuple(c['color'])]} and "
                f"{c['id']} share the colour {c['color']}, so their segment ids would collide"
            )
        stuff_colors[tuple(c["color"])] = c["id"]
    categories = things + smap.categories
    by_id = {c["id"]: c for c in categories}
    if read_image is None:
        read_image = lambda path: read_image_checked(path, "BGR")  # noqa: E731

    summary = StuffFromModelSummary()
    state = {"categories": by_id, "overlap": overlap, "seed": seed, "source": instances_json}
    with atomic_directory(output_dir, overwrite=overwrite, inputs=inputs) as tmp:
        _refuse_replacing_a_foreign_folder(
            output_dir
        )  # (after atomic_directory's checks of the inputs)
        png_dir = os.path.join(tmp, "panoptic")
        os.makedirs(png_dir)
        tasks = _model_tasks(images, anns, image_root, png_dir, predict, metadata, smap, read_image)
        results = _run(tasks, state, workers, len(images))
        annotations = []
        for ann, coverage, report in results:
            annotations.append(ann)
            summary.coverage.append(coverage)
            summary.report.add(report)
        out = {k: data[k] for k in ("info", "licenses") if k in data}
        out.update(images=list(images.values()), annotations=annotations, categories=categories)
        atomic_write_json(os.path.join(tmp, "panoptic.json"), out)
        _summarise(summary)
        atomic_write_json(
            os.path.join(tmp, "coverage.json"),
            {
                "summary": {
                    k: v for k, v in asdict(summary).items() if k not in ("coverage", "report")
                },
                "images": [asdict(c) for c in summary.coverage],
            },
        )
    return summary


def _refuse_replacing_a_foreign_folder(folder: str) -> None:
    """Before ``overwrite`` replaces ``folder`` as a whole: it must look like this tool's output."""
    if not os.path.isdir(folder):
        return
    foreign = [
        n
        for n in sorted(os.listdir(folder))
        if n not in ("panoptic", "panoptic.json", "coverage.json")
    ]
    png_dir = os.path.join(folder, "panoptic")
    if os.path.isdir(png_dir):
        foreign += [f"panoptic/{n}" for n in sorted(os.listdir(png_dir)) if not n.endswith(".png")]
    if foreign:
        raise ValueError(
            f"refusing to replace {folder}: it holds {foreign[:3]}, which this tool does not "
            "write; choose "
            "another output folder or delete it yourself"
        )


def _model_tasks(images, anns, image_root, png_dir, predict, metadata, smap, read_image):
    """Yield one compose task per image; the model runs here, in this process."""
    for index, (image_id, img) in enumerate(images.items()):
        path = os.path.join(image_root, img["file_name"])
        bgr = read_image(path)
        if bgr.shape[:2] != (int(img["height"]), int(img["width"])):
            raise ValueError(
                f"{path}: the image is {bgr.shape[1]}x{bgr.shape[0]} but the instances JSON says "
                f"{img['width']}x{img['height']} (width x height) for image id {image_id!r}"
            )
        pred = predict(bgr)
        if "panoptic_seg" not in pred:
            raise ValueError(
                "the model returned no 'panoptic_seg': use a panoptic model (MODEL.MASK_ON, "
                "TEST.PANOPTIC_ON)"
            )
        label_map = model_label_map(pred["panoptic_seg"], metadata, smap)
        png = os.path.join(
            png_dir, os.path.splitext(os.path.basename(img["file_name"]))[0] + ".png"
        )
        yield index, img, anns[image_id], label_map, png


def _run(tasks, state: Dict[str, Any], workers: int, total: int) -> List:
    """Compose the images in order: in this process, or in ``workers`` processes while the model
    runs."""
    bar = tqdm(total=total, desc="stuff from model", unit="img")
    try:
        if workers <= 1:
            _init_worker(state)
            out = []
            for t in tasks:
                out.append(_compose_task(t))
                bar.update()
            return out
        ctx = get_context("fork" if hasattr(os, "fork") else "spawn")
        with ctx.Pool(workers, initializer=_init_worker, initargs=(state,)) as pool:
            pending, out = [], []
            for t in tasks:
                pending.append(pool.apply_async(_compose_task, (t,)))
                while len(pending) > 2 * workers or (pending and pending[0].ready()):
                    out.append(pending.pop(0).get())
                    bar.update()
            for p in pending:
                out.append(p.get())
                bar.update()
            return out
    finally:
        bar.close()


def _summarise(summary: StuffFromModelSummary) -> None:
    cov = summary.coverage
    total = sum(c.pixels for c in cov) or 1
    summary.images = len(cov)
    summary.segments = summary.report.segments

    def share(key: str) -> float:
        return round(sum(getattr(c, key) * c.pixels for c in cov) / total, 3)

    for key in ("things", "stuff", "void", "void_model_thing", "void_other"):
        setattr(summary, key, share(key))
