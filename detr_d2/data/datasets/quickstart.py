"""A small deterministic synthetic panoptic dataset in real COCO panoptic format (the quickstart).

Images are 128x128 (configurable). Stuff: 2-3 horizontal bands with slightly wavy borders, each of
a different class among ``sky`` (light blue, smooth vertical gradient), ``grass`` (green, grainy
with vertical streaks) and ``water`` (dark blue, horizontal waves). Things: 1-4 ``circle`` /
``square`` / ``triangle`` objects (size 20..50 px; squares and triangles rotated up to +-30 deg),
each drawn in one of three colours of its class (colours are shared between classes, so the shape
decides), with noise and shading; they may touch and occlude each other, but every thing keeps at
least half of its area and 150 px visible. No crowd segments. Later objects are on top.

Layout under ``root``::

    {split}/000000.jpg ...           images (JPEG, quality 95)
    panoptic_{split}/000000.png ...  panoptic PNGs (ids as panopticapi colours)
    panoptic_{split}.json            COCO panoptic JSON (images, annotations, categories)

Registered as ``detr_quickstart_train`` (1000 images) and ``detr_quickstart_val`` (100 images)
under ``$DETR_D2_QUICKSTART_ROOT`` (default ``$DETECTRON2_DATASETS/detr_d2_quickstart``, with
``DETECTRON2_DATASETS`` defaulting to ``datasets``), read when ``detr_d2`` is imported. Files are
generated on first use (``DatasetCatalog.get``) if the split's JSON is missing or has another
image count; every file is written atomically and the JSON last, and an existing JSON made with
other settings is removed before any image is rewritten, so a split whose JSON exists is always
complete and matches it (a generation that was interrupted is redone on next use).
"""

import functools
import logging
import math
import os
import zlib
from multiprocessing import get_context
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.atomic_io import atomic_save_image, atomic_write_json
from ..panoptic_io import read_json, save_panoptic_png
from ..segment_ids import SegmentIdGenerator
from .register_panoptic import load_panoptic_json, panoptic_dataset_metadata

__all__ = [
    "QUICKSTART_CATEGORIES",
    "QUICKSTART_SPLITS",
    "quickstart_root",
    "generate_quickstart_dataset",
    "ensure_quickstart_split",
    "register_quickstart",
]

logger = logging.getLogger(__name__)

QUICKSTART_CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "circle", "isthing": 1, "color": [220, 20, 60], "supercategory": "shape"},
    {"id": 2, "name": "square", "isthing": 1, "color": [0, 130, 200], "supercategory": "shape"},
    {"id": 3, "name": "triangle", "isthing": 1, "color": [255, 160, 0], "supercategory": "shape"},
    {"id": 4, "name": "sky", "isthing": 0, "color": [135, 200, 240], "supercategory": "background"},
    {"id": 5, "name": "grass", "isthing": 0, "color": [60, 140, 50], "supercategory": "background"},
    {"id": 6, "name": "water", "isthing": 0, "color": [25, 60, 140], "supercategory": "background"},
]
# name -> (split folder, number of images, seed)
QUICKSTART_SPLITS = {
    "detr_quickstart_train": ("train", 1000, 0),
    "detr_quickstart_val": ("val", 100, 1),
}

_CIRCLE, _SQUARE, _TRIANGLE = 1, 2, 3
_SKY, _GRASS, _WATER = 4, 5, 6
_RED, _ORANGE, _WHITE = (205, 35, 35), (240, 140, 20), (235, 235, 235)
_YELLOW, _MAGENTA, _BLACK = (235, 215, 40), (195, 45, 185), (35, 35, 35)
_THING_PALETTE = {
    _CIRCLE: (_RED, _ORANGE, _WHITE),
    _SQUARE: (_YELLOW, _MAGENTA, _WHITE),
    _TRIANGLE: (_RED, _MAGENTA, _BLACK),
}
_STUFF_BASE = {_SKY: (150, 200, 240), _GRASS: (70, 150, 50), _WATER: (30, 70, 160)}
_MIN_VISIBLE_FRACTION, _MIN_VISIBLE_PIXELS, _MIN_STUFF_PIXELS = 0.5, 150, 64


def quickstart_root() -> str:
    """``$DETR_D2_QUICKSTART_ROOT`` or ``$DETECTRON2_DATASETS/detr_d2_quickstart``."""
    root = os.getenv("DETR_D2_QUICKSTART_ROOT")
    if not root:
        root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "detr_d2_quickstart")
    return os.path.expanduser(root)


def _split_paths(root: str, split: str) -> Tuple[str, str, str]:
    """(image folder, panoptic PNG folder, panoptic JSON) of a split."""
    return (
        os.path.join(root, split),
        os.path.join(root, f"panoptic_{split}"),
        os.path.join(root, f"panoptic_{split}.json"),
    )


@functools.lru_cache(maxsize=4)
def _grid(h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """float32 (ys, xs) pixel index grids of an HxW image (cached; do not modify)."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return ys, xs


def _noise(rng: np.random.Generator, sd: float, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sd)


def _shape_mask(kind: int, cx: float, cy: float, size: float, angle: float, size_hw) -> np.ndarray:
    """Boolean HxW mask of a circle (diameter ``size``), square or equilateral triangle (side
    ``size``) centred at (cx, cy) in pixel-centre coordinates, rotated by ``angle`` radians."""
    h, w = size_hw
    ys, xs = _grid(h, w)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    if kind == _CIRCLE:
        return dx * dx + dy * dy <= (size / 2) ** 2
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy  # coordinates in the shape's frame
    if kind == _SQUARE:
        return (np.abs(u) <= size / 2) & (np.abs(v) <= size / 2)
    # Equilateral triangle, apex up, centroid at the origin: three half-planes.
    r = size / math.sqrt(3)  # circumradius
    verts = [
        (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
    ]
    inside = np.ones((h, w), dtype=bool)
    for (x0, y0), (x1, y1) in zip(verts, verts[1:] + verts[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _stuff_texture(kind: int, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """float32 HxWx3 texture of a stuff class over the whole image (cut to its band later)."""
    base = np.asarray(_STUFF_BASE[kind], np.float32) + rng.integers(-12, 13, size=3)
    ys, xs = _grid(h, w)
    if kind == _SKY:
        shade = 20.0 - 30.0 * ys / h
        noise = _noise(rng, 4, (h, w))
    elif kind == _GRASS:
        shade = _noise(rng, 10, (1, w)).repeat(h, 0)
        noise = _noise(rng, 14, (h, w))
    else:
        phase = rng.uniform(0, 2 * math.pi)
        shade = 12.0 * np.sin(2 * math.pi * ys / 6.0 + phase + 0.6 * np.sin(xs / 10.0))
        noise = _noise(rng, 6, (h, w))
    return base[None, None, :] + (shade + noise)[:, :, None]


def _render(rng: np.random.Generator, size: int):
    """One image: (uint8 HxWx3 image, HxW stuff class map, list of (thing class, full mask))."""
    h = w = size
    n_bands = int(rng.integers(2, 4))
    classes = [int(c) for c in rng.permutation([_SKY, _GRASS, _WATER])[:n_bands]]
    min_band = max(8, size * 3 // 16)
    cuts = np.sort(rng.choice(np.arange(min_band, h - min_band + 1), n_bands - 1, replace=False))
    while n_bands == 3 and cuts[1] - cuts[0] < min_band:
        cuts = np.sort(rng.choice(np.arange(min_band, h - min_band + 1), 2, replace=False))
    ys, xs = _grid(h, w)
    band = np.zeros((h, w), np.int64)
    for cut in cuts:
        amp, period, phase = rng.uniform(0, 4), rng.uniform(30, 80), rng.uniform(0, 2 * math.pi)
        band += ys >= cut + amp * np.sin(2 * math.pi * xs / period + phase)
    stuff_map = np.asarray(classes)[band]
    image = np.zeros((h, w, 3), np.float32)
    for k in classes:
        sel = stuff_map == k
        image[sel] = _stuff_texture(k, rng, h, w)[sel]

    things: List[Tuple[int, np.ndarray]] = []  # (class, full mask), drawing order
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            kind = int(rng.integers(1, 4))
            side = float(rng.uniform(size * 20 / 128, size * 50 / 128))
            angle = 0.0 if kind == _CIRCLE else float(rng.uniform(-math.pi / 6, math.pi / 6))
            margin = side / 2 + 1
            if things and rng.random() < 0.4:  # put it against an existing object
                _, other = things[int(rng.integers(len(things)))]
                oy, ox = np.argwhere(other).mean(0)
                radius = math.sqrt(other.sum() / math.pi) + side / 2
                theta = rng.uniform(0, 2 * math.pi)
                dist = radius * rng.uniform(0.7, 1.05)
                cx, cy = ox + 0.5 + dist * math.cos(theta), oy + 0.5 + dist * math.sin(theta)
                if not (margin <= cx <= w - margin and margin <= cy <= h - margin):
                    continue
            else:
                cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
            mask = _shape_mask(kind, cx, cy, side, angle, (h, w))
            if mask.sum() < _MIN_VISIBLE_PIXELS:
                continue
            if all(_visible_ok(m, things, i, mask) for i, (_, m) in enumerate(things)):
                things.append((kind, mask))
                break
    for kind, mask in things:
        palette = _THING_PALETTE[kind]
        color = np.asarray(palette[int(rng.integers(len(palette)))], np.float32)
        color = color + rng.integers(-15, 16, size=3)
        gx, gy = rng.normal(0, 0.4, 2)
        shade = gx * (xs - xs[mask].mean()) + gy * (ys - ys[mask].mean())
        pixels = color[None, :] + (shade[mask] + _noise(rng, 5, int(mask.sum())))[:, None]
        image[mask] = pixels
    return np.clip(image, 0, 255).astype(np.uint8), stuff_map, things


def _visible_ok(mask: np.ndarray, things, index: int, new_mask: np.ndarray) -> bool:
    """Would thing ``index`` keep enough visible area once ``new_mask`` is drawn on top?"""
    visible = mask.copy()
    for _, later in things[index + 1 :]:
        visible &= ~later
    visible &= ~new_mask
    area = int(visible.sum())
    return area >= _MIN_VISIBLE_PIXELS and area >= _MIN_VISIBLE_FRACTION * int(mask.sum())


def _segments(stuff_map: np.ndarray, things, seed: int):
    """Visible segments -> (int32 HxW id map, segments_info with dataset category ids)."""
    ids = np.zeros(stuff_map.shape, np.int32)
    gen = SegmentIdGenerator(SegmentIdGenerator.by_id(QUICKSTART_CATEGORIES), seed)
    covered = np.zeros(stuff_map.shape, bool)
    for _, mask in things:
        covered |= mask
    pieces = []
    for k in sorted(set(np.unique(stuff_map).tolist())):
        pieces.append((k, (stuff_map == k) & ~covered, 0))
    for i, (kind, mask) in enumerate(things):
        visible = mask.copy()
        for _, later in things[i + 1 :]:
            visible &= ~later
        pieces.append((kind, visible, 1))
    segments = []
    for category_id, visible, isthing in pieces:
        area = int(visible.sum())
        if area == 0 or (not isthing and area < _MIN_STUFF_PIXELS):
            continue  # a sliver of stuff stays void (id 0)
        seg_id = gen.new_id(category_id)
        ids[visible] = seg_id
        rows, cols = np.nonzero(visible)
        x0, y0 = int(cols.min()), int(rows.min())
        bbox = [x0, y0, int(cols.max()) - x0 + 1, int(rows.max()) - y0 + 1]
        segments.append(
            {
                "id": int(seg_id),
                "category_id": int(category_id),
                "iscrowd": 0,
                "area": area,
                "bbox": bbox,
            }
        )
    return ids, segments


def _make_one(task) -> Dict[str, Any]:
    """Render and write image ``index``; returns its (image entry, annotation)."""
    root, split, index, image_size, seed = task
    image_dir, png_dir, _ = _split_paths(root, split)
    rng = np.random.default_rng([seed, zlib.crc32(split.encode()), index])
    image, stuff_map, things = _render(rng, image_size)
    ids, segments = _segments(stuff_map, things, seed * 1_000_003 + index)
    stem = f"{index:06d}"
    atomic_save_image(os.path.join(image_dir, stem + ".jpg"), image, quality=95)
    save_panoptic_png(os.path.join(png_dir, stem + ".png"), ids)
    return {
        "image": {
            "id": index,
            "file_name": stem + ".jpg",
            "height": image_size,
            "width": image_size,
        },
        "annotation": {"image_id": index, "file_name": stem + ".png", "segments_info": segments},
    }


def generate_quickstart_dataset(
    root: str,
    split: str = "train",
    num_images: int = 1000,
    image_size: int = 128,
    seed: int = 0,
    workers: int = 0,
) -> str:
    """Write ``num_images`` synthetic images of ``split`` under ``root``; returns the JSON path.

    Deterministic: the same (split, index, image_size, seed) always gives the same files.
    ``workers`` > 1 uses a process pool (0 = one per CPU, at most 4, for >= 200 images).
    """
    if num_images < 1 or image_size < 32:
        raise ValueError(
            f"need num_images >= 1 and image_size >= 32, got {num_images}, {image_size}"
        )
    image_dir, png_dir, json_path = _split_paths(root, split)
    if os.path.lexists(json_path) and not _json_lists(json_path, num_images, image_size, seed):
        os.remove(json_path)  # the split is incomplete until the new JSON is written
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(png_dir, exist_ok=True)
    tasks = [(root, split, i, image_size, seed) for i in range(num_images)]
    if workers == 0:
        workers = min(4, os.cpu_count() or 1) if num_images >= 200 else 1
    if workers > 1:
        with get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
            results = pool.map(_make_one, tasks, chunksize=max(1, num_images // (4 * workers)))
    else:
        results = [_make_one(t) for t in tasks]
    atomic_write_json(
        json_path,
        {
            "info": {
                "description": f"detr_d2 quickstart synthetic panoptic dataset ({split})",
                "image_size": image_size,
                "seed": seed,
            },
            "images": [r["image"] for r in results],
            "annotations": [r["annotation"] for r in results],
            "categories": QUICKSTART_CATEGORIES,
        },
    )
    return json_path


def _json_lists(json_path: str, num_images: int, image_size: int, seed: int) -> bool:
    """Whether ``json_path`` describes exactly the files these settings generate."""
    try:
        data = read_json(json_path, "quickstart panoptic JSON")
    except (OSError, ValueError):
        return False
    info = data.get("info", {}) if isinstance(data, dict) else {}
    return (
        len(data.get("images", [])) == num_images
        and info.get("image_size") == image_size
        and info.get("seed") == seed
    )


def ensure_quickstart_split(root: str, split: str, num_images: int, seed: int) -> str:
    """Generate a split unless its JSON already lists ``num_images`` images; returns the JSON."""
    _, _, json_path = _split_paths(root, split)
    if os.path.isfile(json_path):
        if len(read_json(json_path, "quickstart panoptic JSON").get("images", [])) == num_images:
            return json_path
    logger.info(f"Generating the quickstart split {split!r} ({num_images} images) in {root}")
    return generate_quickstart_dataset(root, split, num_images, seed=seed)


def register_quickstart(root: Optional[str] = None) -> None:
    """Register ``detr_quickstart_train`` / ``detr_quickstart_val`` (files generated lazily)."""
    root = quickstart_root() if root is None else root
    for name, (split, num_images, seed) in QUICKSTART_SPLITS.items():
        image_dir, png_dir, json_path = _split_paths(root, split)
        meta = panoptic_dataset_metadata(
            QUICKSTART_CATEGORIES, "quickstart categories", image_dir, png_dir, json_path
        )

        def load(
            split=split,
            num_images=num_images,
            seed=seed,
            image_dir=image_dir,
            png_dir=png_dir,
            meta=meta,
        ):
            json_file = ensure_quickstart_split(root, split, num_images, seed)
            return load_panoptic_json(json_file, image_dir, png_dir, meta)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(**meta)


register_quickstart()
