#!/usr/bin/env python
"""Export a DetrPanoptic model for deployment (in the style of Detectron2's
tools/deploy/export_model.py).

  --format torchscript   the whole model: one preprocessed image (3, H, W) -> panoptic id map +
                         segments (fusion included), written as <output>/model.ts; runs with
                         torch.jit.load alone (no detr_d2 / Detectron2 import), on the device it was
                         exported on (MODEL.DEVICE).
  --format onnx          the network: image (3, H, W), H and W dynamic -> pred_logits, pred_boxes,
                         mask_queries (the K kept queries) and pred_masks (their mask logits),
                         written as <output>/model.onnx (opset 17); the panoptic fusion of these
                         outputs is detr_d2.export.PanopticPostprocessor (numpy). Needs pip install
                         'detr_d2[export]'.
  --format torch_export  the network as --format onnx (dynamic H, W; the kept queries
                         data-dependent), captured with torch.export and written with
                         torch.export.save as <output>/model.pt2 (metadata as its extra file
                         detr_d2_export.json); detr_d2.export.load_exported_program(path) adds the
                         panoptic fusion and returns the TorchScript model's outputs. Needs torch >=
                         2.14 (the newest stack); older torch gets an error saying so.
  --export-method        tracing (the network is traced; the TorchScript fusion is scripted).
                         Scripting the network is not possible (the Detectron2 backbone carries the
                         model's batch-invariance hooks; the transformer and the mask head are not
                         scriptable).
  --sample-image FILE    the image to trace with and to verify the export on (resized by the test
                         resize); default a random image of 480x640 resized likewise. The trace
                         holds for every image size and number of kept queries.
Both files store the settings the caller needs (input format, test resize, fusion settings, class
tables) as metadata. TEST.OBJECT_MASK_THRESHOLD is baked into the graph. After writing, the tool
runs the artifact on the sample image and compares it with the eager model (TorchScript: identical
panoptic map; ONNX, when onnxruntime is installed: pixel agreement). Outputs are written atomically
and never replace an existing file without --overwrite.

    python tools/export_model.py --config-file configs/quickstart/detr_r18_quickstart.yaml \\
        --format torchscript --output export/ --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python tools/export_model.py --config-file configs/quickstart/detr_r18_quickstart.yaml \\
        --format onnx \\
        --sample-image tests/data/coco_panoptic_sample/input_images/000000142238.jpg \\
        --output export/ --opts MODEL.WEIGHTS ""
"""

import argparse
import logging
import os
import sys
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from detr_d2.checkpoint.checkpoint_io import check_output_path
from detr_d2.checkpoint.load_checks import load_inference_weights
from detr_d2.config import get_detr_cfg
from detr_d2.data.datasets.register_from_file import register_datasets_from_config
from detr_d2.data.transforms import build_detr_test_augmentation
from detr_d2.export import export_metadata, export_onnx, export_torchscript, save_torchscript
from detr_d2.export.network import check_exportable
from detr_d2.export.onnx_export import DEFAULT_OPSET, check_opset
from detr_d2.export.torch_export import (
    check_torch_export,
    export_program,
    load_exported_program,
    save_program,
)
from detr_d2.utils.atomic_io import atomic_write_bytes
from detr_d2.utils.cli import run_tool, tool_parser

logger = logging.getLogger("export_model")

FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx", "torch_export": "model.pt2"}
DEFAULT_SAMPLE_SIZE = (480, 640)


def build_parser() -> argparse.ArgumentParser:
    p = tool_parser(__doc__)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument(
        "--format",
        required=True,
        choices=tuple(FILE_NAMES),
        help="torchscript | onnx | torch_export",
    )
    p.add_argument(
        "--export-method",
        default="tracing",
        choices=("tracing", "scripting"),
        help="tracing (default; the only method that works for this model, see above)",
    )
    p.add_argument(
        "--sample-image", metavar="FILE", help="image to trace with and verify on (default: random)"
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing model.ts / .onnx / .pt2"
    )
    p.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE ..."
    )
    return p


def setup_cfg(args: argparse.Namespace):
    cfg = get_detr_cfg(args.config_file, args.opts)
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"MODEL.WEIGHTS: {weights} does not exist")
    cfg.freeze()
    register_datasets_from_config(
        cfg
    )  # DATASETS.REGISTER_FILES: class names and ids of your own datasets
    return cfg


def sample_input(cfg, path: str) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """The (3, h, w) uint8 image the model sees (test resize applied) and the original (H, W)."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--sample-image: {path} does not exist")
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except Exception as e:  # PIL's UnidentifiedImageError and friends
            raise ValueError(f"--sample-image: cannot read {path} as an image ({e})") from e
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"--sample-image: {path} must be a 3-channel image, got shape {image.shape}"
            )
    else:
        image = np.random.default_rng(0).integers(0, 256, (*DEFAULT_SAMPLE_SIZE, 3), dtype=np.uint8)
    aug_input = T.AugInput(np.ascontiguousarray(image))
    T.AugmentationList(build_detr_test_augmentation(cfg))(aug_input)
    return torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))), image.shape[
        :2
    ]


def segments_key(segments: List[Dict]) -> List[Tuple]:
    return [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in segments]


def verify_torchscript(module, model, image: torch.Tensor, out_hw: Tuple[int, int]) -> str:
    """TorchScript model or loaded .pt2 program (same interface) against the eager model."""
    with torch.no_grad():
        ref_ids, ref_segments = model([{"image": image, "height": out_hw[0], "width": out_hw[1]}])[
            0
        ]["panoptic_seg"]
        got = module(image.to(model.device), list(out_hw))
    segments = [
        {"id": int(i), "category_id": int(c), "isthing": bool(t), "area": int(a)}
        for i, c, t, a in zip(got["segment_ids"], got["category_ids"], got["isthing"], got["areas"])
    ]
    same = torch.equal(got["panoptic_seg"].cpu(), ref_ids.cpu())
    same = same and segments_key(segments) == segments_key(ref_segments)
    if not same:
        logger.warning(
            "the exported model's panoptic output differs from the eager model's on the "
            "sample image"
        )
    return (
        f"{len(segments)} segments, {'identical to' if same else 'DIFFERENT from'} the eager "
        "model's panoptic output"
    )


def verify_onnx(data: bytes, model, image: torch.Tensor, out_hw: Tuple[int, int]) -> str:
    try:
        import onnxruntime as ort
    except ImportError:
        return "not run (onnxruntime is not installed)"
    from detr_d2.export import PanopticPostprocessor

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": image.float().numpy()})
    ids, segments = PanopticPostprocessor.from_onnx_session(session)(
        outputs, image.shape[1:], out_hw
    )
    with torch.no_grad():
        ref_ids, ref_segments = model([{"image": image, "height": out_hw[0], "width": out_hw[1]}])[
            0
        ]["panoptic_seg"]
    agreement = float((ids == ref_ids.cpu().numpy()).mean())
    same = [s[:3] for s in segments_key(segments)] == [s[:3] for s in segments_key(ref_segments)]
    if agreement < 0.999 or not same:
        logger.warning(
            "the ONNX model + post-processor differ from the eager model on the sample image"
        )
    return (
        f"onnxruntime + PanopticPostprocessor: {len(segments)} segments "
        f"({'same' if same else 'DIFFERENT'} ids and "
        f"classes as the eager model), {100 * agreement:.3f}% of the pixels equal"
    )


def run(args: argparse.Namespace) -> int:
    if args.export_method == "scripting":
        raise ValueError(
            "--export-method scripting is not supported for DetrPanoptic: the network cannot "
            "be scripted (the "
            "Detectron2 backbone carries the model's batch-invariance forward hooks; the "
            "transformer and the mask "
            "head use Python constructs TorchScript lacks). Use --export-method tracing: the "
            "network is traced "
            "(valid for any image size and number of kept queries) and the TorchScript "
            "fusion is scripted"
        )
    if args.format == "onnx":
        check_opset(args.opset)
    if args.format == "torch_export":
        check_torch_export()
    cfg = setup_cfg(args)
    out_path = os.path.join(args.output, FILE_NAMES[args.format])
    os.makedirs(args.output, exist_ok=True)
    check_output_path(
        out_path,
        sources=[p for p in (cfg.MODEL.WEIGHTS, args.sample_image, args.config_file) if p],
        overwrite=args.overwrite,
    )
    image, orig_hw = sample_input(cfg, args.sample_image)

    model = build_model(cfg)
    check_exportable(model)
    if cfg.MODEL.WEIGHTS:  # all of it or an error naming the file (load_checks)
        load_inference_weights(model, cfg.MODEL.WEIGHTS)
    else:
        logger.warning("MODEL.WEIGHTS is empty: exporting a randomly initialised model")
    model.eval()
    dataset_meta = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
    metadata = export_metadata(model, cfg, dataset_meta)
    logger.info(
        "exporting (%s, %s) on %s with a %dx%d sample image",
        args.format,
        args.export_method,
        cfg.MODEL.DEVICE,
        image.shape[1],
        image.shape[2],
    )

    if args.format == "torchscript":
        module = export_torchscript(model, image, metadata)
        save_torchscript(module, out_path, metadata)
        check = verify_torchscript(
            torch.jit.load(out_path, map_location=model.device), model, image, orig_hw
        )
    elif args.format == "torch_export":
        save_program(export_program(model, image), out_path, metadata)
        check = verify_torchscript(load_exported_program(out_path)[0], model, image, orig_hw)
    else:
        data = export_onnx(model.to("cpu"), image, metadata, opset=args.opset)
        atomic_write_bytes(out_path, data)
        check = verify_onnx(data, model, image, orig_hw)
    print(f"wrote {out_path} ({os.path.getsize(out_path) / 2**20:.1f} MiB)")
    print(
        f"check on the sample image ({orig_hw[0]}x{orig_hw[1]} -> input "
        f"{image.shape[1]}x{image.shape[2]}): {check}"
    )
    return 0


def main(argv=None) -> int:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
