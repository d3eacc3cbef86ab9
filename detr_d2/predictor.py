"""``DetrPanopticPredictor``: one-image inference with a config, like Detectron2's
``DefaultPredictor``,
plus helpers that turn predictions into COCO panoptic PNG + JSON."""

import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from .checkpoint.load_checks import load_inference_weights
from .data.dataset_mappers.detr_panoptic_dataset_mapper import check_image_array
from .data.datasets.register_from_file import register_datasets_from_config
from .data.panoptic_io import PanopticPredictionConverter, save_panoptic_png
from .data.transforms import build_detr_test_augmentation
from .utils.atomic_io import atomic_write_json
from .utils.cpu_memory import apply_cpu_memory_setting

__all__ = ["DetrPanopticPredictor", "panoptic_to_coco", "write_panoptic_png_json"]


class DetrPanopticPredictor:
    """Build the model from ``cfg``, load ``cfg.MODEL.WEIGHTS``, and run it on single BGR images.

    Images are ``uint8`` HxWx3 BGR arrays (``cv2.imread``); anything else (float, e.g. in [0, 1],
    NaN, empty, another shape) raises ``ValueError`` saying what was expected.

    ``predictor(bgr_image)`` -> Detectron2's output dict for that image (``panoptic_seg`` = (id map
    int32 HxW at the image's size, segments_info with contiguous ``category_id``), and ``instances``
    / ``sem_seg`` when enabled). ``predictor.raw(bgr_image)`` also returns the raw network outputs
    (``pred_logits``, ``pred_boxes``, ``pred_masks``) for inspection.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        register_datasets_from_config(
            self.cfg
        )  # DATASETS.REGISTER_FILES: the classes the model reads
        apply_cpu_memory_setting(self.cfg)  # CPU_REUSE_FREED_MEMORY (utils/cpu_memory.py)
        self.model = build_model(self.cfg).eval()
        if cfg.DATASETS.TEST:
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        else:
            self.metadata = MetadataCatalog.get("__unused")
        if cfg.MODEL.WEIGHTS:  # all of it or an error naming the file (load_checks)
            load_inference_weights(self.model, cfg.MODEL.WEIGHTS)
        self.aug = T.AugmentationList(build_detr_test_augmentation(cfg))
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format!r}")

    def _inputs(self, bgr_image: np.ndarray) -> Dict:
        check_image_array(bgr_image, "DetrPanopticPredictor input", "BGR")
        image = bgr_image[:, :, ::-1] if self.input_format == "RGB" else bgr_image
        h, w = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.aug(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}

    @torch.inference_mode()
    def __call__(self, bgr_image: np.ndarray) -> Dict:
        return self.model([self._inputs(bgr_image)])[0]

    @torch.inference_mode()
    def raw(self, bgr_image: np.ndarray) -> Tuple[Dict, Dict]:
        """(prediction dict, raw outputs of the single image: pred_logits (Q, S+1), pred_boxes (Q,
        4) cxcywh normalised, pred_masks (Q, H/4, W/4) logits of every query)."""
        inputs = [self._inputs(bgr_image)]
        images, mask = self.model.preprocess_image(inputs)
        out, state = self.model.forward_detector(images.tensor, mask)
        pred = self.model.inference(out, state, inputs, images.image_sizes)[0]
        raw = {"pred_logits": out["pred_logits"][0], "pred_boxes": out["pred_boxes"][0]}
        if self.model.mask_on:
            raw["pred_masks"] = self.model.all_masks(state, crop_to_image=False)[0]
        return pred, raw


def panoptic_to_coco(
    panoptic_seg: Tuple[torch.Tensor, List[Dict]], metadata
) -> Tuple[np.ndarray, List[Dict]]:
    """A model's ``panoptic_seg`` -> (H, W) id map and COCO ``segments_info`` with dataset category
    ids (:class:`~detr_d2.data.panoptic_io.PanopticPredictionConverter`, as Detectron2's evaluator),
    each with ``iscrowd`` 0, the pixel ``area`` and ``bbox`` (x, y, w, h) of the segment in the
    map."""
    ids, segments = PanopticPredictionConverter(metadata)(panoptic_seg)
    for s in segments:
        ys, xs = np.nonzero(ids == s["id"])
        s["iscrowd"] = 0
        s["area"] = int(len(xs))
        s["bbox"] = (
            [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
            if len(xs)
            else [0, 0, 0, 0]
        )
    return ids, segments


def write_panoptic_png_json(
    annotations: List[Dict], png_dir: str, json_path: str, metadata, id_maps: Dict[str, np.ndarray]
) -> None:
    """Write COCO panoptic predictions: ``id_maps`` (file_name -> (H, W) ids) as PNGs under
    ``png_dir`` and the JSON (``annotations`` + ``categories`` from the metadata) at ``json_path``,
    each atomically."""
    for name, ids in id_maps.items():
        save_panoptic_png(os.path.join(png_dir, name), ids)
    categories = getattr(metadata, "categories", None)
    if categories is None:
        categories = _categories_from_metadata(metadata)
    atomic_write_json(json_path, {"annotations": annotations, "categories": categories})


def _categories_from_metadata(metadata) -> List[Dict]:
    cats = []
    names = list(
        getattr(metadata, "stuff_classes", None) or getattr(metadata, "thing_classes", None) or []
    )
    thing = getattr(metadata, "thing_dataset_id_to_contiguous_id", None) or {}
    stuff = getattr(metadata, "stuff_dataset_id_to_contiguous_id", None) or {}
    for ds, c in sorted({**stuff, **thing}.items()):
        cats.append(
            {
                "id": int(ds),
                "name": names[c] if c < len(names) else str(ds),
                "isthing": int(ds in thing),
            }
        )
    return cats
