"""Deployment exports of ``DetrPanoptic`` (``tools/export_model.py``).

* :func:`export_torchscript` / :func:`save_torchscript`: the whole model, one preprocessed image ->
  panoptic id map + segments, fusion included; runs with ``torch.jit.load`` alone
  (``torchscript.py``).
* :func:`export_onnx`: the network -> class logits, boxes, the kept queries and their masks, dynamic
  image size (``onnx_export.py``; needs the ``onnx`` package: ``pip install 'detr_d2[export]'``),
  and :class:`PanopticPostprocessor`: the panoptic fusion of its outputs in numpy
  (``onnx_postprocess.py``).
* :func:`export_program` / :func:`save_program` / :func:`load_exported_program`: ``torch.export``
  of the network (``.pt2``, torch >= 2.14), run with the same fusion as TorchScript
  (``torch_export.py``).
* :func:`export_metadata`: the settings stored with the artifacts (``metadata.py``).
"""

from .metadata import export_metadata
from .network import PanopticNetwork
from .onnx_export import export_onnx
from .onnx_postprocess import PanopticPostprocessor
from .torch_export import export_program, load_exported_program, save_program
from .torchscript import export_torchscript, save_torchscript

__all__ = [
    "PanopticNetwork",
    "PanopticPostprocessor",
    "export_metadata",
    "export_onnx",
    "export_program",
    "load_exported_program",
    "save_program",
    "export_torchscript",
    "save_torchscript",
]
