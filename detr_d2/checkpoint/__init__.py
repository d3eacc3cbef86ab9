"""Checkpoint converters: official DETR and Hugging Face DETR -> detr_d2 (``convert_detr_file``,
``convert_official_detr``, ``hf_detr_to_official``), class-head transfer by class name
(``transfer_class_head``), and torchvision ImageNet ResNet -> Detectron2 backbone
(``convert_torchvision_resnet``).

Not imported by ``detr_d2/__init__.py``; used by ``tools/convert_detr_checkpoint.py``,
``tools/convert_torchvision_to_d2.py`` and to load ``MODEL.DETR.FROZEN_WEIGHTS``.
"""

from .checkpoint_io import (
    check_output_path,
    d2_checkpoint,
    extract_state_dict,
    load_state_dict_file,
    load_torch_file,
    write_atomically,
)
from .class_names import (
    class_match_key,
    coco_detection_class_names,
    coco_panoptic_class_names,
    dataset_class_names,
    hf_id2label_class_names,
    normalize_class_name,
    official_class_names,
)
from .class_transfer import (
    ClassMatch,
    format_transfer_table,
    fresh_class_head,
    load_class_map,
    match_classes,
    transfer_class_head,
)
from .detr_converter import class_rows_from_mapping, convert_official_detr, dataset_class_mapping
from .hf_detr import (
    HFDetrStyle,
    hf_checkpoint_files,
    hf_detr_to_official,
    is_hf_detr_state_dict,
    official_key_to_hf,
    read_hf_config,
    read_hf_detr,
)
from .layout import format_list, layout_errors
from .official_layout import OfficialDETRLayout, infer_official_layout, official_state_dict_spec
from .resnet_keys import (
    convert_torchvision_resnet,
    hf_resnet_key_to_torchvision,
    infer_resnet_depth,
    torchvision_key_to_hf_resnet,
    torchvision_resnet_key_to_d2,
    torchvision_resnet_template,
)
from .sources import ConvertedDETR, convert_detr_file, retarget_classes

__all__ = [
    "ClassMatch",
    "ConvertedDETR",
    "HFDetrStyle",
    "OfficialDETRLayout",
    "check_output_path",
    "class_match_key",
    "class_rows_from_mapping",
    "coco_detection_class_names",
    "coco_panoptic_class_names",
    "convert_detr_file",
    "convert_official_detr",
    "convert_torchvision_resnet",
    "d2_checkpoint",
    "dataset_class_mapping",
    "dataset_class_names",
    "extract_state_dict",
    "format_list",
    "format_transfer_table",
    "fresh_class_head",
    "hf_checkpoint_files",
    "hf_detr_to_official",
    "hf_id2label_class_names",
    "hf_resnet_key_to_torchvision",
    "infer_official_layout",
    "infer_resnet_depth",
    "is_hf_detr_state_dict",
    "layout_errors",
    "load_class_map",
    "load_state_dict_file",
    "load_torch_file",
    "match_classes",
    "normalize_class_name",
    "official_class_names",
    "official_key_to_hf",
    "official_state_dict_spec",
    "read_hf_config",
    "read_hf_detr",
    "retarget_classes",
    "torchvision_key_to_hf_resnet",
    "torchvision_resnet_key_to_d2",
    "torchvision_resnet_template",
    "transfer_class_head",
    "write_atomically",
]
