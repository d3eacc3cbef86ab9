"""``torch.export`` of the network (``.pt2``): the successor of TorchScript export (``torch.jit`` is
deprecated from torch 2.14).

The file holds the :class:`~detr_d2.export.network.PanopticNetwork` program (``image (3, H, W)
float32 -> pred_logits, pred_boxes, mask_queries, pred_masks``, H and W dynamic, the number of
kept queries data-dependent), written with ``torch.export.save`` and the export metadata as the
extra file ``detr_d2_export.json``; ``torch.export.load`` alone reads it. The panoptic fusion is
not in the program (its small-segment loop is data-dependent control flow, which ``torch.export``
cannot capture): :func:`load_exported_program` wraps the loaded program with the TorchScript
model's fusion (:class:`~detr_d2.export.torchscript.ScriptedPanopticModel`, run eagerly), so the
result is the same ``panoptic_seg`` + segments dict, identical to the eager model's; without
detr_d2, the numpy :class:`~detr_d2.export.onnx_postprocess.PanopticPostprocessor` fuses the same
four outputs.

Needs torch >= 2.14 (:data:`MIN_TORCH`, the newest stack; verified with 2.14.1): torch 2.3.1's
``torch.export`` stops at a guard on the data-dependent number of kept queries
(``GuardOnDataDependentSymNode`` in ``is_contiguous``), and the releases between were not tried.
:func:`check_torch_export` refuses older torch, naming the version needed.
"""

import json
import warnings
from typing import Any, Dict, Tuple

import torch
from torch import Tensor, nn

from ..utils.atomic_io import atomic_write
from .metadata import METADATA_KEY
from .network import PanopticNetwork, check_image
from .torchscript import ScriptedPanopticModel

__all__ = [
    "MIN_TORCH",
    "check_torch_export",
    "export_program",
    "load_exported_program",
    "save_program",
]

MIN_TORCH = (2, 14)
_EXTRA = METADATA_KEY + ".json"


def _torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def check_torch_export() -> None:
    """``ValueError`` naming the torch version needed unless this torch can export the model (as
    for an unsupported ONNX opset: the format asked for is not available with this install)."""
    if _torch_version() < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise ValueError(
            f"torch.export of DetrPanoptic needs torch >= {need} (installed: {torch.__version__}, "
            "whose torch.export cannot capture the data-dependent number of kept queries): "
            "use --format torchscript or onnx here, or the newest stack (make setup-latest)"
        )


def export_program(
    model: nn.Module, sample_image: Tensor, max_size: int = 4096
) -> "torch.export.ExportedProgram":
    """``torch.export.export`` of ``model``'s :class:`PanopticNetwork` (puts ``model`` in eval mode)
    on ``sample_image`` (3, H, W), with H and W dynamic in 33..``max_size``."""
    check_torch_export()
    from torch.export import Dim

    network = PanopticNetwork(model, mask_free=True).eval()
    image = check_image(sample_image, model.pixel_mean.shape[0]).to(model.device, torch.float32)
    # H, W >= 33: a res5 map (stride 32) of at least 2 cells per side (a size-1 dimension would be
    # a broadcasting special case the program cannot share); the test resize gives far more
    dims = {1: Dim("height", min=33, max=max_size), 2: Dim("width", min=33, max=max_size)}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.export.export(network, (image,), dynamic_shapes=({**dims},), strict=False)


def save_program(program: "torch.export.ExportedProgram", path: str, metadata: Dict[str, Any]):
    """Write ``program`` atomically to ``path`` (``.pt2``) with ``metadata`` as the extra file
    ``detr_d2_export.json``."""
    extra = {_EXTRA: json.dumps(metadata)}
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))


def load_exported_program(path: str) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, metadata)`` of a ``.pt2`` written by :func:`save_program`: ``model(image,
    output_size=None)`` is the TorchScript model's interface (program + eager fusion)."""
    check_torch_export()
    extra = {_EXTRA: ""}
    program = torch.export.load(path, extra_files=extra)
    if not extra[_EXTRA]:
        raise ValueError(f"{path}: no {_EXTRA} in the file (not written by detr_d2's export)")
    metadata = json.loads(extra[_EXTRA])
    network = program.module()
    device = next(iter(program.state_dict.values())).device
    channels = 1 if metadata["input_format"] == "L" else 3  # Detectron2's INPUT.FORMAT choices
    # (no .eval(): the exported module refuses train(); the program is already in eval mode)
    return ScriptedPanopticModel(network, metadata, channels, device), metadata
