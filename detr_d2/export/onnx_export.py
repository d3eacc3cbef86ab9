"""ONNX export of the network (:class:`~detr_d2.export.network.PanopticNetwork`) with dynamic image
size.

Graph: input ``image`` (3, H, W) float32 (0-255 pixels in ``INPUT.FORMAT`` order, already resized;
H, W dynamic); outputs ``pred_logits`` (Q, S+1), ``pred_boxes`` (Q, 4) cxcywh normalised,
``mask_queries`` (K,) int64 and ``pred_masks`` (K, ceil(H/4), ceil(W/4)): the mask head runs in the
graph on the K queries the panoptic fusion keeps (NonZero + Gather; score threshold baked in). The
fusion itself is :class:`~detr_d2.export.onnx_postprocess.PanopticPostprocessor` (numpy), configured
from the metadata stored in the file (``metadata_props["detr_d2_export"]``).

Exporter: always the TorchScript-based one (``dynamo=False`` where ``torch.onnx.export`` has the
argument, torch >= 2.5): torch >= 2.9 defaults to the dynamo exporter, which needs ``onnxscript``
and cannot export the data-dependent number of kept queries.

Opset: 17 (default) is the highest torch 2.3's TorchScript-based exporter writes (newer torch goes
higher: :func:`max_opset` reads the installed torch's
``torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET``); it writes ``GroupNorm`` as reshape
+ ``InstanceNormalization`` + affine at every opset (ONNX's own ``GroupNormalization`` is opset 18)
and ``LayerNormalization`` as one op from 17. The mask head's joint softmax over heads x H x W is a
flatten + ``Softmax`` on the last axis, exact at any opset >= 13; ``Einsum`` needs 12.
"""

import inspect
import io
import json
import warnings
from typing import Any, Dict

import torch
from torch import Tensor, nn

from .network import PanopticNetwork, check_image
from .onnx_postprocess import METADATA_KEY, OUTPUT_NAMES

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "check_opset",
    "export_onnx",
    "max_opset",
    "torchscript_exporter_options",
]

DEFAULT_OPSET = 17
MIN_OPSET = 13


def max_opset() -> int:
    """The highest opset the installed torch's TorchScript-based ONNX exporter supports (17 for
    torch 2.3, 20 for torch 2.14)."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", DEFAULT_OPSET))


def torchscript_exporter_options() -> Dict[str, Any]:
    """The ``torch.onnx.export`` keyword arguments that select the TorchScript-based exporter:
    ``{"dynamo": False}`` where the function has that argument (torch >= 2.5; the default became
    ``True`` in torch 2.9), else none (it is the only exporter)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def check_opset(opset: int) -> None:
    """``ValueError`` unless this torch can export the network at ``opset``."""
    if not MIN_OPSET <= opset <= max_opset():
        raise ValueError(
            f"ONNX opset {opset} is not supported: use {MIN_OPSET}..{max_opset()} (torch "
            f"{torch.__version__}'s "
            f"exporter writes up to {max_opset()}; the graph needs Softmax-13 semantics)"
        )


def export_onnx(
    model: nn.Module, sample_image: Tensor, metadata: Dict[str, Any], opset: int = DEFAULT_OPSET
) -> bytes:
    """The serialized ONNX model of ``model``'s network (puts ``model`` in eval mode), traced on
    ``sample_image`` (3, H, W), with ``metadata``
    (:func:`~detr_d2.export.metadata.export_metadata`)."""
    check_opset(opset)
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the 'onnx' package: pip install 'detr_d2[export]'"
        ) from e
    network = PanopticNetwork(model).eval()
    image = check_image(sample_image, model.pixel_mean.shape[0]).to(model.device, torch.float32)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # the constants the tracer warns about are the single unpadded image's (see network.py)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            network,
            (image,),
            buf,
            opset_version=opset,
            **torchscript_exporter_options(),
            input_names=["image"],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={
                "image": {1: "height", 2: "width"},
                "mask_queries": {0: "kept"},
                "pred_masks": {0: "kept", 1: "mask_height", 2: "mask_width"},
            },
        )
    proto = onnx.load_from_string(buf.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = (
        "detr_d2 DetrPanoptic network; panoptic fusion: detr_d2.export.onnx_postprocess"
    )
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
