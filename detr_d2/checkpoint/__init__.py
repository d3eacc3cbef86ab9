"""Checkpoints, in one package as Detectron2's ``detectron2/checkpoint/``:

- converters: official DETR and Hugging Face DETR -> detr_d2 (``convert_detr_file``,
  ``convert_official_detr``; ``sources``, ``detr_converter``, ``hf_detr``, ``official_layout``),
  class-head transfer by class name (``retarget_classes``, ``transfer_class_head``;
  ``class_transfer``, ``class_names``), torchvision ImageNet ResNet -> Detectron2 backbone
  (``convert_torchvision_resnet``; ``resnet_keys``);
- ``AtomicDetectionCheckpointer`` (``checkpointer``): Detectron2's ``DetectionCheckpointer`` with
  crash-safe saves and resume, used by training, the predictor and the tools;
- stage-2 loading (``weight_loading``: ``MODEL.DETR.FROZEN_WEIGHTS``,
  ``MODEL.DETR.MASK_HEAD_WEIGHTS``, Group DETR queries), used by the model;
- file I/O of the tools (``checkpoint_io``: read a weight file, write a checkpoint atomically);
- reading any checkpoint without running code from it (``safe_load``: an allow-list unpickler,
  opt-in ``DETR_D2_TRUST_CHECKPOINTS=1``), under every read above.

Only what users and the tools call is exported here; everything else is importable from its module
(e.g. ``from detr_d2.checkpoint.official_layout import official_state_dict_spec``).
"""

from .checkpoint_io import d2_checkpoint
from .checkpointer import AtomicDetectionCheckpointer
from .class_names import dataset_class_names
from .class_transfer import load_class_map, transfer_class_head
from .detr_converter import convert_official_detr
from .resnet_keys import convert_torchvision_resnet
from .sources import ConvertedDETR, convert_detr_file, retarget_classes

__all__ = [
    "AtomicDetectionCheckpointer",
    "ConvertedDETR",
    "convert_detr_file",
    "convert_official_detr",
    "convert_torchvision_resnet",
    "d2_checkpoint",
    "dataset_class_names",
    "load_class_map",
    "retarget_classes",
    "transfer_class_head",
]
