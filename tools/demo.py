#!/usr/bin/env python
"""Run DETR panoptic on images and write Visualizer overlays (+ optional per-query mask grids and
COCO panoptic PNG + JSON of the predictions).

    python tools/demo.py --config-file configs/quickstart/detr_r18_quickstart.yaml \\
        --input tests/data/coco_panoptic_sample/input_images/ \\
        'datasets/detr_d2_quickstart/val/00000*.jpg' \\
        --output output/demo/ --save-query-masks --save-panoptic --opts MODEL.WEIGHTS \\
        output/quickstart/model_final.pth

Outputs per input image ``<name>_panoptic.jpg`` (+ ``<name>_queries.jpg``, ``panoptic/<name>.png``),
each written atomically as soon as it is ready; ``predictions.json`` is written last and lists the
images whose results are complete. ``<name>`` is the file stem, or, for inputs sharing a stem
(``a/img.jpg``, ``b/img.jpg``), their path below their common folder (``a_img``, ``b_img``). An
image that cannot be read is skipped and reported; the others are still written and the exit code is
1. The output folder must be new or empty unless ``--overwrite`` (then files of the same name are
replaced, others are left); inputs may not lie inside it, so they are never overwritten.
"""

import argparse
import collections
import glob
import os
import sys
from typing import List

import cv2
import numpy as np
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

from detr_d2.config import get_detr_cfg
from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import read_image_checked
from detr_d2.data.panoptic_io import save_panoptic_png
from detr_d2.predictor import DetrPanopticPredictor, panoptic_to_coco, write_panoptic_png_json
from detr_d2.utils.atomic_io import atomic_write_bytes, require_new_or_empty_folder
from detr_d2.utils.cli import run_tool, tool_parser

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument(
        "--input", nargs="+", required=True, help="image files, directories or quoted globs"
    )
    p.add_argument(
        "--output",
        required=True,
        help="output directory (created; new or empty unless --overwrite)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --output (same names are replaced)",
    )
    p.add_argument(
        "--save-query-masks",
        action="store_true",
        help="also write the per-query mask grid with scores",
    )
    p.add_argument(
        "--save-panoptic",
        action="store_true",
        help="also write COCO panoptic PNGs + predictions.json",
    )
    p.add_argument(
        "--num-query-masks", type=int, default=16, help="queries shown in the grid (highest scores)"
    )
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return p


def expand_inputs(inputs: List[str]) -> List[str]:
    """Image files of ``--input`` (files, folders, globs) in the given order, each once; an item
    that gives no file is an error naming it."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS)
            )
            if not found:
                raise FileNotFoundError(
                    f"--input {item!r}: the folder holds no image ({', '.join(IMAGE_EXTS)})"
                )
        elif os.path.isfile(item):
            found = [item]
        elif any(c in item for c in "*?["):
            found = sorted(f for f in glob.glob(item) if os.path.isfile(f))
            if not found:
                raise FileNotFoundError(f"--input {item!r}: the pattern matches no file")
        else:
            raise FileNotFoundError(f"--input {item!r}: no such file or folder")
        files += found
    seen, unique = set(), []
    for f in files:
        if os.path.realpath(f) not in seen:
            seen.add(os.path.realpath(f))
            unique.append(f)
    return unique


def output_names(files: List[str]) -> List[str]:
    """A distinct output name per input: its file stem; for inputs sharing a stem, their path below
    their common folder with ``/`` (and, if still shared, the extension's ``.``) as ``_``; then
    ``_2``, ``_3``..."""
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    by_stem = collections.defaultdict(list)
    for f, stem in zip(files, stems):
        by_stem[stem].append(os.path.abspath(f))
    names = []
    for f, stem in zip(files, stems):
        group = by_stem[stem]
        if len(group) > 1:
            common = os.path.commonpath([os.path.dirname(g) for g in group])
            rel = os.path.relpath(os.path.abspath(f), common)
            without_ext = [os.path.splitext(os.path.relpath(g, common))[0] for g in group]
            if without_ext.count(os.path.splitext(rel)[0]) == 1:
                rel = os.path.splitext(rel)[0]
            stem = rel.replace(os.sep, "_").replace(".", "_")
        names.append(stem)
    used, result = set(), []
    for name in names:
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}_{k}"
        used.add(unique)
        result.append(unique)
    return result


def write_image(path: str, bgr: np.ndarray) -> None:
    """Encode ``bgr`` (format from the extension) and write it atomically; a failure raises naming
    ``path``."""
    ok, buf = cv2.imencode(os.path.splitext(path)[1], bgr)
    if not ok:
        raise OSError(f"cannot encode {path}")
    atomic_write_bytes(path, buf.tobytes())


def query_mask_grid(raw, num: int, cell: int = 160) -> np.ndarray:
    """Grid image (BGR uint8) of the sigmoid masks of the ``num`` highest-scoring queries, with
    class/score."""
    probs = raw["pred_logits"].softmax(-1)
    scores, labels = probs[:, :-1].max(-1)
    order = scores.argsort(descending=True)[:num].tolist()
    cols = 4
    rows = max(1, (len(order) + cols - 1) // cols)
    grid = np.zeros((rows * cell, cols * cell, 3), dtype=np.uint8)
    for k, q in enumerate(order):
        m = raw["pred_masks"][q].sigmoid().numpy()
        m = cv2.resize((m * 255).astype(np.uint8), (cell, cell), interpolation=cv2.INTER_LINEAR)
        tile = cv2.applyColorMap(m, cv2.COLORMAP_VIRIDIS)
        cv2.putText(
            tile,
            f"q{q} c{int(labels[q])} {float(scores[q]):.2f}",
            (4, 14),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (255, 255, 255),
            1,
        )
        r, c = divmod(k, cols)
        grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
    return grid


def run(args: argparse.Namespace) -> int:
    cfg = get_detr_cfg(args.config_file, args.opts)
    cfg.freeze()
    files = expand_inputs(args.input)
    out_dir = os.path.abspath(args.output)
    real_out = os.path.realpath(out_dir)
    for f in files:
        if os.path.realpath(f).startswith(real_out + os.sep):
            raise ValueError(
                f"--input {f} is inside --output {args.output}: choose another output folder"
            )
    require_new_or_empty_folder(out_dir, args.overwrite)  # before the model is built
    predictor = DetrPanopticPredictor(cfg)
    meta = predictor.metadata
    png_dir = os.path.join(out_dir, "panoptic")
    annotations, skipped = [], []
    for path, name in zip(tqdm(files, desc="demo", unit="img"), output_names(files)):
        try:  # as the data loaders read images: EXIF orientation applied, truncated files refused
            img = read_image_checked(path, "BGR")
        except (OSError, ValueError) as e:
            skipped.append(path)
            tqdm.write(f"skipped: {e}", file=sys.stderr)
            continue
        pred, raw = predictor.raw(img)
        vis = Visualizer(img[:, :, ::-1], meta, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in pred:
            ids, segs = pred["panoptic_seg"]
            drawn = vis.draw_panoptic_seg_predictions(ids.cpu(), segs)
        else:
            drawn = vis.draw_instance_predictions(pred["instances"].to("cpu"))
        write_image(os.path.join(out_dir, f"{name}_panoptic.jpg"), drawn.get_image()[:, :, ::-1])
        if args.save_query_masks and "pred_masks" in raw:
            write_image(
                os.path.join(out_dir, f"{name}_queries.jpg"),
                query_mask_grid(raw, args.num_query_masks),
            )
        if args.save_panoptic and "panoptic_seg" in pred:
            id_map, coco_segs = panoptic_to_coco(pred["panoptic_seg"], meta)
            save_panoptic_png(os.path.join(png_dir, f"{name}.png"), id_map)
            annotations.append(
                {"image_id": name, "file_name": f"{name}.png", "segments_info": coco_segs}
            )
    if args.save_panoptic and annotations:
        write_panoptic_png_json(
            annotations, png_dir, os.path.join(out_dir, "predictions.json"), meta, {}
        )
    print(f"wrote {len(files) - len(skipped)} overlay(s) to {out_dir}")
    if skipped:
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        print(
            f"error: skipped {len(skipped)} unreadable image(s): {', '.join(skipped[:10])}{more}",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
