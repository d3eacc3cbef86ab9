#!/usr/bin/env python
"""Run DETR panoptic on images and write Visualizer overlays (+ optional per-query mask grids and COCO
panoptic PNG + JSON of the predictions).

    python tools/demo.py --config-file configs/quickstart/detr_r18_quickstart.yaml \
        --input tests/data/coco_panoptic_sample/input_images/ 'more/*.jpg' img.jpg --output demo_out/ \
        --opts MODEL.WEIGHTS output/quickstart/model_final.pth
"""
import argparse
import glob
import os
import sys

import cv2
import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.utils.visualizer import ColorMode, Visualizer
from tqdm import tqdm

import detr_d2
from detr_d2.predictor import DetrPanopticPredictor, panoptic_to_coco, write_panoptic_png_json
from detr_d2.utils.cli import run_tool, tool_parser

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--input", nargs="+", required=True, help="image files, directories or quoted globs")
    p.add_argument("--output", required=True, help="output directory (created; inputs are never overwritten)")
    p.add_argument("--save-query-masks", action="store_true", help="also write the per-query mask grid with scores")
    p.add_argument("--save-panoptic", action="store_true", help="also write COCO panoptic PNGs + predictions.json")
    p.add_argument("--num-query-masks", type=int, default=16, help="queries shown in the grid (highest scores)")
    p.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def expand_inputs(inputs):
    files = []
    for item in inputs:
        if os.path.isdir(item):
            files += sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
        elif any(c in item for c in "*?["):
            files += sorted(glob.glob(item))
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise FileNotFoundError(f"--input: {item!r} is not a file, directory or matching glob")
    if not files:
        raise FileNotFoundError(f"--input: no images found in {inputs}")
    return files


def query_mask_grid(raw, num: int, cell: int = 160) -> np.ndarray:
    """Grid image (BGR uint8) of the sigmoid masks of the ``num`` highest-scoring queries, with class/score."""
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
        cv2.putText(tile, f"q{q} c{int(labels[q])} {float(scores[q]):.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        r, c = divmod(k, cols)
        grid[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = tile
    return grid


def run(args: argparse.Namespace) -> int:
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    files = expand_inputs(args.input)
    out_dir = os.path.abspath(args.output)
    for f in files:
        if os.path.dirname(os.path.abspath(f)) == out_dir:
            raise ValueError(f"--output {args.output} contains input {f}: choose another directory")
    os.makedirs(out_dir, exist_ok=True)
    predictor = DetrPanopticPredictor(cfg)
    meta = predictor.metadata
    annotations, pngs = [], {}
    for path in tqdm(files, desc="demo", unit="img"):
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read image {path}")
        pred, raw = predictor.raw(img)
        stem = os.path.splitext(os.path.basename(path))[0]
        vis = Visualizer(img[:, :, ::-1], meta, instance_mode=ColorMode.IMAGE)
        if "panoptic_seg" in pred:
            ids, segs = pred["panoptic_seg"]
            drawn = vis.draw_panoptic_seg_predictions(ids.cpu(), segs)
        else:
            drawn = vis.draw_instance_predictions(pred["instances"].to("cpu"))
        cv2.imwrite(os.path.join(out_dir, f"{stem}_panoptic.jpg"), drawn.get_image()[:, :, ::-1])
        if args.save_query_masks and "pred_masks" in raw:
            cv2.imwrite(os.path.join(out_dir, f"{stem}_queries.jpg"), query_mask_grid(raw, args.num_query_masks))
        if args.save_panoptic and "panoptic_seg" in pred:
            id_map, coco_segs = panoptic_to_coco(pred["panoptic_seg"], meta)
            pngs[f"{stem}.png"] = id_map
            annotations.append({"image_id": stem, "file_name": f"{stem}.png", "segments_info": coco_segs})
    if args.save_panoptic and annotations:
        write_panoptic_png_json(annotations, os.path.join(out_dir, "panoptic"), os.path.join(out_dir, "predictions.json"), meta, pngs)
    print(f"wrote {len(files)} overlay(s) to {out_dir}")
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
