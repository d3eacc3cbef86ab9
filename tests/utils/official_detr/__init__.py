"""Reference oracle: a faithful re-implementation of the official DETR panoptic model, its input
pipeline and its panoptic post-processor, written from the documented facts of facebookresearch/detr
(commit 29901c5: checkpoint key layout, forward pass and post-processor numerics).

Not part of the installed package: tests and benchmarks (from a checkout) import it.
"""

from .inputs import (
    NestedTensor,
    detr_resized_hw,
    load_rgb_image,
    nested_tensor_from_tensor_list,
    official_eval_transform,
)
from .model import (
    DETR,
    DETRsegm,
    FrozenBatchNorm2d,
    OfficialDETRsegm,
    build_official_detr,
    official_state_dict_template,
    randomize_frozen_batchnorm_,
)
from .postprocess import PostProcessPanoptic, decode_panoptic_png, official_is_thing_map

__all__ = [
    "DETR",
    "DETRsegm",
    "FrozenBatchNorm2d",
    "NestedTensor",
    "OfficialDETRsegm",
    "PostProcessPanoptic",
    "build_official_detr",
    "decode_panoptic_png",
    "detr_resized_hw",
    "load_rgb_image",
    "nested_tensor_from_tensor_list",
    "official_eval_transform",
    "official_is_thing_map",
    "official_state_dict_template",
    "randomize_frozen_batchnorm_",
]
