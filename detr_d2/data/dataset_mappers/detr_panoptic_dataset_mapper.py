"""Dataset mapper for DETR panoptic training: image + panoptic PNG -> tensors + ``Instances``.

Follows ``DetrDatasetMapper`` in ``d2/detr/dataset_mapper.py`` (facebookresearch/detr at 29901c5)
and Detectron2's ``DatasetMapper`` (facebookresearch/detectron2 at 02b5c4e).
"""

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.logger import log_first_n
from PIL import Image

from ..image_depth import eight_bit_image
from ..panoptic_io import check_segment_ids_of_map, read_panoptic_png, rgb2id
from ..transforms import build_detr_test_augmentation, build_detr_train_augmentation
from .corrupt_samples import CorruptSampleCounter

__all__ = [
    "DetrPanopticDatasetMapper",
    "read_image_checked",
    "check_image_array",
    "panoptic_to_instances",
]

logger = logging.getLogger(__name__)


def read_image_checked(file_name: str, image_format: str) -> np.ndarray:
    """Read an image like Detectron2's ``read_image`` (EXIF orientation applied), with checks.

    Grayscale images are converted to ``image_format`` (COCO has some); an alpha channel is
    dropped with a warning; 16-bit images are converted exactly to 8 bits and float images refused
    (:mod:`detr_d2.data.image_depth`). A missing, undecodable (e.g. truncated) or empty image
    raises an error naming the file (field ``file_name``). Returns an ``uint8`` HxWxC array in
    ``image_format`` channel order.
    """
    try:
        with Image.open(file_name) as img:
            mode = img.mode
            eight_bit = eight_bit_image(img, file_name)  # None: 8 bits already
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found (file_name): {file_name}") from None
    except OSError as e:
        raise ValueError(f"{file_name} (file_name): cannot be read as an image: {e}") from e
    if eight_bit is not None:
        return utils.convert_PIL_to_numpy(eight_bit, image_format)
    if mode in ("RGBA", "LA", "PA"):
        log_first_n(
            logging.WARNING,
            f"{file_name} (file_name) has an alpha channel (PIL mode {mode!r}); it is dropped.",
            n=5,
            name=__name__,
        )
    try:
        image = utils.read_image(file_name, format=image_format)
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
        raise ValueError(f"{file_name} (file_name): cannot be decoded as an image: {e}") from None
    if image.size == 0:
        raise ValueError(
            f"{file_name} (file_name): the image is empty ({image.shape[1]}x{image.shape[0]} "
            "pixels)"
        )
    return image


def check_image_array(image: Any, where: str, channel_order: str = "BGR") -> None:
    """Raise ``ValueError`` naming ``where`` unless ``image`` is a non-empty HxWx3 ``uint8`` numpy
    array.

    Pixel values must be ``uint8`` 0..255 (what ``cv2.imread`` /
    ``detectron2.data.detection_utils.read_image`` give): a float image, e.g. in [0, 1], or one with
    NaN is refused with a hint how to convert it.
    """
    expected = f"an HxWx3 {channel_order} uint8 image (values 0..255, as cv2.imread returns)"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected {expected}, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"{where}: expected {expected}, got an array of shape {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(
            f"{where}: expected {expected}, got an empty image of shape {tuple(image.shape)}"
        )
    if image.dtype == np.uint8:
        return
    problem = f"got dtype {image.dtype}"
    if np.issubdtype(image.dtype, np.floating):
        finite = np.isfinite(image)
        if not finite.all():
            problem += f" with {int((~finite).sum())} NaN/inf values"
        elif image.max() <= 1.0:
            problem += (
                f" with values in [{image.min():.3g}, {image.max():.3g}] (a [0, 1] image: "
                "convert with "
                "(image * 255).round().astype(np.uint8))"
            )
        else:
            problem += (
                f" with values in [{image.min():.4g}, {image.max():.4g}] (convert with "
                "np.clip(image, 0, 255).round().astype(np.uint8))"
            )
    elif np.issubdtype(image.dtype, np.integer):
        problem += f" with values in [{image.min()}, {image.max()}]"
    raise ValueError(f"{where}: expected {expected}, {problem}")


def panoptic_to_instances(
    ids: np.ndarray, segments_info: List[Dict[str, Any]], image_size: tuple
) -> Instances:
    """Build DETR training targets from an augmented HxW id map.

    One instance per segment of ``segments_info`` (things *and* stuff, crowd included) whose mask
    is not empty: ``gt_classes`` (int64, contiguous ids), ``gt_masks`` (``BitMasks`` HxW bool),
    ``gt_boxes`` (``Boxes``, XYXY absolute pixels of the augmented image, from the mask extent,
    exclusive max, as ``BitMasks.get_bounding_boxes``) and ``gt_is_crowd`` (bool). All segments'
    masks come from one broadcast comparison and their boxes from one pass (the same values as a
    loop over the segments with Detectron2's ``get_bounding_boxes``; 4x faster at 128x128 with 10
    segments, docs/speed.md).
    """
    h, w = image_size
    segment_ids = np.array([int(seg["id"]) for seg in segments_info], dtype=np.int64)
    masks = ids[None] == _as_dtype_of(segment_ids, ids).reshape(-1, 1, 1)  # (segments, H, W)
    cols, rows = masks.any(axis=1), masks.any(axis=2)  # (segments, W), (segments, H)
    kept = np.flatnonzero(cols.any(axis=1))  # segments cropped away have no pixel
    if len(kept) < len(segments_info):
        masks, cols, rows = masks[kept], cols[kept], rows[kept]
    instances = Instances((h, w))
    instances.gt_classes = torch.tensor(
        [int(segments_info[i]["category_id"]) for i in kept], dtype=torch.int64
    )
    instances.gt_masks = BitMasks(torch.from_numpy(masks))
    instances.gt_boxes = Boxes(torch.from_numpy(_mask_extents(cols, rows)))
    instances.gt_is_crowd = torch.tensor(
        [bool(segments_info[i].get("iscrowd", 0)) for i in kept], dtype=torch.bool
    )
    return instances


def _as_dtype_of(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``values`` (int64) in the integer dtype of ``ids`` when they all fit, so that comparing
    them with ``ids`` does not convert the whole map to int64 (10x slower for int32 maps); as
    they are otherwise."""
    if np.issubdtype(ids.dtype, np.integer) and values.size:
        limits = np.iinfo(ids.dtype)
        if limits.min <= values.min() and values.max() <= limits.max:
            return values.astype(ids.dtype)
    return values


def _mask_extents(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(N, 4) float32 XYXY boxes, max exclusive, of non-empty masks given which of their columns
    ``cols`` (N, W) and rows ``rows`` (N, H) hold a pixel: the first and one past the last."""
    x0, y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    x1 = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    y1 = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.float32)


class DetrPanopticDatasetMapper:
    """Map a panoptic dataset dict (from ``load_panoptic_json`` / ``load_coco_panoptic_json``).

    Output: ``image`` (uint8 tensor CxHxW in ``image_format`` channel order, after
    augmentation), ``height``/``width`` (original size), ``image_id``, ``file_name`` and the
    other input fields; in training also ``instances`` (see :func:`panoptic_to_instances`), built
    from the panoptic PNG transformed with the *same* transforms as the image (PIL nearest for
    the PNG, bilinear for the image). Pixels whose id is 0 are void; a non-zero PNG id with no
    ``segments_info`` entry, or an entry with no pixel, raises an error naming the PNG.

    A sample whose files cannot be used (missing, undecodable, sizes or ids not matching the dict)
    raises an error naming the file; with ``skip_corrupt_samples`` (training only) it is logged,
    counted and skipped instead (``None`` is returned, so Detectron2's ``MapDataset`` maps another
    sample), up to ``max_corrupt_fraction`` (see :mod:`.corrupt_samples`).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str,
        skip_corrupt_samples: bool = False,
        max_corrupt_fraction: float = 0.01,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.corrupt_samples = (
            CorruptSampleCounter(max_corrupt_fraction) if skip_corrupt_samples else None
        )
        mode = "training" if is_train else "inference"
        logger.info(f"[DetrPanopticDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        augs = build_detr_train_augmentation(cfg) if is_train else build_detr_test_augmentation(cfg)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "skip_corrupt_samples": is_train and cfg.DATALOADER.SKIP_CORRUPT_SAMPLES,
            "max_corrupt_fraction": cfg.DATALOADER.MAX_CORRUPT_FRACTION,
        }

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        dataset_dict = copy.deepcopy(dataset_dict)
        if self.corrupt_samples is None:
            image, pan_rgb = self._read(dataset_dict)
        else:
            self.corrupt_samples.read()
            try:
                image, pan_rgb = self._read(dataset_dict)
            except (OSError, ValueError) as e:  # the messages name the file
                key = (dataset_dict.get("image_id"), dataset_dict.get("file_name"))
                self.corrupt_samples.skip(e, key)
                return None
        return self._map(dataset_dict, image, pan_rgb)

    def _read(self, dataset_dict: Dict[str, Any]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """(image HxWxC uint8, panoptic PNG HxWx3 uint8 or None at inference), checked against the
        dict."""
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
            check_segment_ids_of_map(
                rgb2id(pan_rgb),
                dataset_dict["segments_info"],
                dataset_dict["pan_seg_file_name"],
                dataset_dict.get("image_id"),
            )
        return image, pan_rgb

    def _map(
        self, dataset_dict: Dict[str, Any], image: np.ndarray, pan_rgb: Optional[np.ndarray]
    ) -> Dict[str, Any]:
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
