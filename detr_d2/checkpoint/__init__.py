"""Checkpoint converters: official DETR -> detr_d2 (``convert_official_detr``) and torchvision ImageNet
ResNet -> Detectron2 backbone (``convert_torchvision_resnet``).

Not imported by ``detr_d2/__init__.py``; used by ``tools/convert_detr_checkpoint.py`` and
``tools/convert_torchvision_to_d2.py``.
"""

from .checkpoint_io import d2_checkpoint, extract_state_dict, load_torch_file, write_atomically
from .detr_converter import (
    OfficialDETRLayout,
    class_rows_from_mapping,
    convert_official_detr,
    dataset_class_mapping,
    infer_official_layout,
)
from .layout import format_list, layout_errors
from .resnet_keys import (
    convert_torchvision_resnet,
    infer_resnet_depth,
    torchvision_resnet_key_to_d2,
    torchvision_resnet_template,
)

__all__ = [
    "OfficialDETRLayout",
    "class_rows_from_mapping",
    "convert_official_detr",
    "convert_torchvision_resnet",
    "d2_checkpoint",
    "dataset_class_mapping",
    "extract_state_dict",
    "format_list",
    "infer_official_layout",
    "infer_resnet_depth",
    "layout_errors",
    "load_torch_file",
    "torchvision_resnet_key_to_d2",
    "torchvision_resnet_template",
    "write_atomically",
]
