"""Dataset mapper for DETR panoptic training: image + panoptic PNG -> tensors + ``Instances``."""

import copy
import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.logger import log_first_n
from PIL import Image

from ..panoptic_io import check_png_ids_listed, read_panoptic_png, rgb2id
from ..transforms import build_detr_test_augmentation, build_detr_train_augmentation

__all__ = ["DetrPanopticDatasetMapper", "read_image_checked", "panoptic_to_instances"]

logger = logging.getLogger(__name__)


def read_image_checked(file_name: str, image_format: str) -> np.ndarray:
    """Read an image like Detectron2's ``read_image`` (EXIF orientation applied), with checks.

    Grayscale images are converted to ``image_format`` (COCO has some); an alpha channel is
    dropped with a warning. A missing or unreadable file raises an error naming it (field
    ``file_name``). Returns an ``uint8`` HxWxC array in ``image_format`` channel order.
    """
    try:
        with Image.open(file_name) as img:
            mode = img.mode
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found (file_name): {file_name}") from None
    except OSError as e:
        raise ValueError(f"{file_name} (file_name): cannot be read as an image: {e}") from e
    if mode in ("RGBA", "LA", "PA"):
        log_first_n(
            logging.WARNING,
            f"{file_name} (file_name) has an alpha channel (PIL mode {mode!r}); it is dropped.",
            n=5,
            name=__name__,
        )
    return utils.read_image(file_name, format=image_format)


def panoptic_to_instances(
    ids: np.ndarray, segments_info: List[Dict[str, Any]], image_size: tuple
) -> Instances:
    """Build DETR training targets from an augmented HxW id map.

    One instance per segment of ``segments_info`` (things *and* stuff, crowd included) whose mask
    is not empty: ``gt_classes`` (int64, contiguous ids), ``gt_masks`` (``BitMasks`` HxW bool),
    ``gt_boxes`` (``Boxes``, XYXY absolute pixels of the augmented image, from the mask extent,
    exclusive max) and ``gt_is_crowd`` (bool).
    """
    classes, masks, crowd = [], [], []
    for seg in segments_info:
        mask = ids == seg["id"]
        if not mask.any():  # cropped away (or absent from the PNG)
            continue
        classes.append(int(seg["category_id"]))
        masks.append(mask)
        crowd.append(bool(seg.get("iscrowd", 0)))
    h, w = image_size
    instances = Instances((h, w))
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        bitmasks = BitMasks(torch.from_numpy(np.stack(masks)))
    else:
        bitmasks = BitMasks(torch.zeros((0, h, w), dtype=torch.bool))
    instances.gt_masks = bitmasks
    instances.gt_boxes = Boxes(bitmasks.get_bounding_boxes().tensor)
    instances.gt_is_crowd = torch.tensor(crowd, dtype=torch.bool)
    return instances


class DetrPanopticDatasetMapper:
    """Map a panoptic dataset dict (from ``load_panoptic_json`` / ``load_coco_panoptic_json``).

    Output: ``image`` (uint8 tensor CxHxW in ``image_format`` channel order, after
    augmentation), ``height``/``width`` (original size), ``image_id``, ``file_name`` and the
    other input fields; in training also ``instances`` (see :func:`panoptic_to_instances`), built
    from the panoptic PNG transformed with the *same* transforms as the image (PIL nearest for
    the PNG, bilinear for the image). Pixels whose id is 0 are void; a non-zero PNG id with no
    ``segments_info`` entry raises an error naming the PNG.
    """

    @configurable
    def __init__(self, is_train: bool = True, *, augmentations: List, image_format: str):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        mode = "training" if is_train else "inference"
        logger.info(f"[DetrPanopticDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        augs = build_detr_train_augmentation(cfg) if is_train else build_detr_test_augmentation(cfg)
        return {"is_train": is_train, "augmentations": augs, "image_format": cfg.INPUT.FORMAT}

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)  # also fills height/width if absent

        pan_rgb: Optional[np.ndarray] = None
        if self.is_train:
            pan_rgb = read_panoptic_png(dataset_dict["pan_seg_file_name"])
            if pan_rgb.shape[:2] != image.shape[:2]:
                raise ValueError(
                    f"{dataset_dict['pan_seg_file_name']} (pan_seg_file_name) is "
                    f"{pan_rgb.shape[1]}x{pan_rgb.shape[0]} but its image "
                    f"{dataset_dict['file_name']} is {image.shape[1]}x{image.shape[0]} (WxH)"
                )
            check_png_ids_listed(
                rgb2id(pan_rgb),
                dataset_dict["segments_info"],
                dataset_dict["pan_seg_file_name"],
                dataset_dict.get("image_id"),
            )

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            return dataset_dict

        ids = rgb2id(transforms.apply_segmentation(pan_rgb))
        dataset_dict["instances"] = panoptic_to_instances(
            ids, dataset_dict["segments_info"], image.shape[:2]
        )
        return dataset_dict
