"""TorchScript export of the whole panoptic model: one preprocessed image -> panoptic id map +
segments.

The network (:class:`~detr_d2.export.network.PanopticNetwork`: backbone, transformer, heads, mask
head on the kept queries) is traced -- the Detectron2 backbone with the model's batch-invariance
hooks, the transformer and the mask head are not scriptable -- and called from a scripted wrapper
that holds the data-dependent panoptic fusion (:func:`~detr_d2.modeling.fusion.fuse_panoptic`, the
function the eager model runs) and the class tables. The saved file runs with ``torch.jit.load``
alone (no detr_d2 or Detectron2 import), on the device it was exported on.

``model(image, output_size=None) -> Dict[str, Tensor]``:

* ``image``: (3, H, W) uint8 or float, 0-255 pixel values in ``input_format`` channel order (the
  module's attribute, ``INPUT.FORMAT``), resized as the test resize does
  (``min_size_test``/``max_size_test`` attributes); any H, W;
* ``output_size``: [H_out, W_out] of the returned map (usually the original image size; default (H,
  W));
* returns ``panoptic_seg`` (H_out, W_out) int32 (segments 1..N, 0 = void) and per segment
  ``segment_ids``, ``category_ids`` (contiguous), ``dataset_category_ids`` (-1 when exported without
  dataset metadata), ``isthing`` (bool), ``scores`` (float32), ``areas`` (int64 pixels of the output
  map).

Attributes: ``input_format``, ``min_size_test``, ``max_size_test``, ``resize_rounding``,
``object_mask_threshold`` (informative: the graph reads ``network.object_mask_threshold``); the
whole export metadata is the extra file ``detr_d2_export.json``. The first calls, and the first at a
new image size, are slower than eager (TorchScript's profiling executor specialises the graph),
later ones as fast.
"""

import json
import warnings
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..modeling.fusion import fuse_panoptic
from ..utils.atomic_io import atomic_write
from .metadata import METADATA_KEY
from .network import PanopticNetwork, check_image

__all__ = ["ScriptedPanopticModel", "export_torchscript", "save_torchscript", "trace_network"]


class ScriptedPanopticModel(nn.Module):
    """The scripted wrapper (see the module docstring); ``network`` is the traced
    :class:`PanopticNetwork`."""

    def __init__(
        self, network: nn.Module, metadata: Dict[str, Any], num_channels: int, device: torch.device
    ):
        super().__init__()
        self.network = network
        num_classes = len(metadata["is_thing"])
        label_map = (
            metadata["label_map"] if metadata["label_map"] is not None else list(range(num_classes))
        )
        dataset_ids = metadata["dataset_category_ids"] or [-1] * num_classes
        self.register_buffer(
            "is_thing", torch.tensor(metadata["is_thing"], dtype=torch.bool, device=device)
        )
        self.register_buffer("label_map", torch.tensor(label_map, dtype=torch.int64, device=device))
        self.register_buffer(
            "dataset_ids", torch.tensor(dataset_ids, dtype=torch.int64, device=device)
        )
        self.num_channels: int = num_channels
        self.min_area: int = metadata["min_segment_area"]
        self.mask_stride: int = metadata["mask_stride"]
        self.crop_padding: bool = metadata["crop_mask_padding"]
        self.object_mask_threshold: float = metadata["object_mask_threshold"]
        self.input_format: str = metadata["input_format"]
        self.min_size_test: int = metadata["min_size_test"]
        self.max_size_test: int = metadata["max_size_test"]
        self.resize_rounding: str = metadata["resize_rounding"]

    def forward(self, image: Tensor, output_size: Optional[List[int]] = None) -> Dict[str, Tensor]:
        if (
            image.dim() != 3
            or image.shape[0] != self.num_channels
            or image.shape[1] < 1
            or image.shape[2] < 1
        ):
            raise ValueError(
                "image must be a ("
                + str(self.num_channels)
                + ", H, W) tensor with H, W >= 1 in "
                + self.input_format
                + " order, got shape "
                + str(image.shape)
            )
        height, width = image.shape[1], image.shape[2]
        out_h, out_w = height, width
        if output_size is not None:
            if len(output_size) != 2 or output_size[0] < 1 or output_size[1] < 1:
                raise ValueError(
                    "output_size must be [H_out, W_out] with both >= 1, got " + str(output_size)
                )
            out_h, out_w = output_size[0], output_size[1]
        logits, boxes, mask_queries, masks = self.network(
            image.to(self.is_thing.device, torch.float32)
        )
        result = fuse_panoptic(
            logits,
            masks,
            mask_queries,
            height,
            width,
            out_h,
            out_w,
            self.is_thing,
            self.label_map,
            self.min_area,
            self.mask_stride,
            self.crop_padding,
        )
        result["dataset_category_ids"] = self.dataset_ids[result["category_ids"]]
        return result


def trace_network(model: nn.Module, sample_image: Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of :class:`PanopticNetwork` (puts ``model`` in eval mode) on
    ``sample_image`` (C, H, W); the trace is valid for any H, W and any number of kept queries (the
    tests check both)."""
    network = PanopticNetwork(model).eval()
    image = check_image(sample_image, model.pixel_mean.shape[0]).to(model.device, torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        # the constants the tracer warns about are the single unpadded image's (see network.py)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.trace(network, image, check_trace=False)


def export_torchscript(
    model: nn.Module, sample_image: Tensor, metadata: Dict[str, Any]
) -> torch.jit.ScriptModule:
    """The scripted whole model (see the module docstring); ``metadata``:
    :func:`~detr_d2.export.metadata.
    export_metadata` of ``model``."""
    traced = trace_network(model, sample_image)
    wrapper = ScriptedPanopticModel(traced, metadata, int(model.pixel_mean.shape[0]), model.device)
    return torch.jit.script(wrapper)


def save_torchscript(module: torch.jit.ScriptModule, path: str, metadata: Dict[str, Any]) -> None:
    """Write ``module`` atomically to ``path`` with ``metadata`` as the extra file
    ``detr_d2_export.json``."""
    extra = {METADATA_KEY + ".json": json.dumps(metadata)}
    atomic_write(path, lambda f: torch.jit.save(module, f, _extra_files=extra))
