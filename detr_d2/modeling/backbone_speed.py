"""Speed settings of the Detectron2 backbone that leave its parameters and results unchanged.

* :func:`fold_frozen_batchnorm`: a Detectron2 ``Conv2d`` followed by a ``FrozenBatchNorm2d`` runs as
  one convolution whose weight and bias absorb the frozen affine map (``w * s``, ``b * s + t`` with
  ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``), computed from the norm's buffers at
  every call, so loading a checkpoint, the state dict (``*.norm.*`` buffers stay where they are) and
  gradients of a trainable convolution are as before. Detectron2 (``layers/batch_norm.py``,
  ``FrozenBatchNorm2d.forward``) runs the norm as a separate pass over the activation; folded, that
  pass is gone (same result up to float rounding). Trainable ``BatchNorm2d`` (the quickstart) is not
  touched.
* :func:`use_channels_last`: parameters in ``torch.channels_last`` memory format, so oneDNN (CPU)
  and cuDNN run the convolutions without reordering every input; the outputs come back in that
  format (same values; ``Tensor.view`` callers must use ``reshape``).
"""

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import Tensor, nn

__all__ = ["FrozenBNFoldedConv2d", "fast_backbone", "fold_frozen_batchnorm", "use_channels_last"]


class FrozenBNFoldedConv2d(Conv2d):
    """Detectron2 ``Conv2d`` with a ``FrozenBatchNorm2d`` ``norm`` folded into the convolution at
    each call (see the module docstring). Same parameters, buffers and state-dict keys."""

    def folded_weight_and_bias(self) -> "tuple[Tensor, Tensor]":
        norm = self.norm
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
        weight = self.weight * scale.reshape(-1, 1, 1, 1).to(self.weight.dtype)
        bias = shift if self.bias is None else self.bias * scale + shift
        return weight, bias.to(weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.folded_weight_and_bias()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.activation is not None:
            x = self.activation(x)
        return x


def fold_frozen_batchnorm(module: nn.Module) -> int:
    """Turn every Detectron2 ``Conv2d`` under ``module`` whose ``norm`` is a ``FrozenBatchNorm2d``
    into a :class:`FrozenBNFoldedConv2d` (in place: same object, parameters and hooks). Returns how
    many were folded."""
    count = 0
    for m in module.modules():
        if type(m) is Conv2d and isinstance(m.norm, FrozenBatchNorm2d):
            m.__class__ = FrozenBNFoldedConv2d
            count += 1
    return count


def use_channels_last(module: nn.Module) -> nn.Module:
    """``module``'s 4-d parameters and buffers in ``torch.channels_last`` (in place; returns it)."""
    return module.to(memory_format=torch.channels_last)


def fast_backbone(backbone: nn.Module) -> nn.Module:
    """Both settings, in place: :func:`fold_frozen_batchnorm`, then :func:`use_channels_last`."""
    fold_frozen_batchnorm(backbone)
    return use_channels_last(backbone)
