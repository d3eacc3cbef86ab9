"""torchvision ResNet parameter names -> Detectron2 ``ResNet`` names (facts document, section 7).

| torchvision                                   | Detectron2                              |
| --------------------------------------------- | --------------------------------------- |
| ``conv1.weight``                              | ``stem.conv1.weight``                   |
| ``bn1.{p}``                                   | ``stem.conv1.norm.{p}``                 |
| ``layer{L}.{j}.conv{k}.weight``               | ``res{L+1}.{j}.conv{k}.weight``         |
| ``layer{L}.{j}.bn{k}.{p}``                    | ``res{L+1}.{j}.conv{k}.norm.{p}``       |
| ``layer{L}.{j}.downsample.0.weight``          | ``res{L+1}.{j}.shortcut.weight``        |
| ``layer{L}.{j}.downsample.1.{p}``             | ``res{L+1}.{j}.shortcut.norm.{p}``      |

with ``p`` in weight / bias / running_mean / running_var. Every BN must keep all four buffers:
Detectron2's ``FrozenBatchNorm2d`` silently fills a *missing* running_mean / running_var with 0 / 1
when the state dict has no version metadata (any converted dict), so ``strict=True`` would not notice.
The weights assume torchvision's ResNet ("v1.5": stride on the 3x3 conv), i.e.
``MODEL.RESNETS.STRIDE_IN_1X1 False`` and RGB input normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Mapping, Tuple

import torch
import torchvision

from .layout import format_list, layout_errors

__all__ = [
    "BN_BUFFERS",
    "convert_torchvision_resnet",
    "infer_resnet_depth",
    "torchvision_resnet_key_to_d2",
    "torchvision_resnet_template",
]

BN_BUFFERS: Tuple[str, ...] = ("weight", "bias", "running_mean", "running_var")
_P = "(weight|bias|running_mean|running_var)"
_RULES: List[Tuple["re.Pattern[str]", Callable[["re.Match[str]"], str]]] = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(rf"^bn1\.{_P}$"), lambda m: f"stem.conv1.norm.{m[1]}"),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.conv([1-3])\.weight$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        re.compile(rf"^layer([1-4])\.(\d+)\.bn([1-3])\.{_P}$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight",
    ),
    (
        re.compile(rf"^layer([1-4])\.(\d+)\.downsample\.1\.{_P}$"),
        lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}",
    ),
]
# Blocks per stage (layer1..layer4) -> depth; 18/34 use BasicBlock (no conv3), the others Bottleneck.
_BLOCKS_TO_DEPTHS = {(2, 2, 2, 2): (18,), (3, 4, 6, 3): (34, 50), (3, 4, 23, 3): (101,), (3, 8, 36, 3): (152,)}
_TORCHVISION_BUILDERS = {
    18: torchvision.models.resnet18,
    34: torchvision.models.resnet34,
    50: torchvision.models.resnet50,
    101: torchvision.models.resnet101,
    152: torchvision.models.resnet152,
}


def torchvision_resnet_key_to_d2(key: str) -> str:
    """Map one torchvision ResNet key (no prefix, e.g. ``layer1.0.bn2.running_var``) to Detectron2's
    (``res2.0.conv2.norm.running_var``). Raises ``KeyError`` for keys outside the table above."""
    for pattern, rename in _RULES:
        m = pattern.match(key)
        if m is not None:
            return rename(m)
    raise KeyError(f"not a torchvision ResNet parameter name: {key!r}")


def infer_resnet_depth(keys: List[str]) -> int:
    """Depth (18/34/50/101/152) of a torchvision ResNet from its (prefix-free) keys.

    Raises ``ValueError`` when the block counts match no standard ResNet.
    """
    counts = [0, 0, 0, 0]
    has_conv3 = False
    pattern = re.compile(r"^layer([1-4])\.(\d+)\.")
    for k in keys:
        m = pattern.match(k)
        if m:
            stage, block = int(m.group(1)) - 1, int(m.group(2))
            counts[stage] = max(counts[stage], block + 1)
            has_conv3 = has_conv3 or ".conv3." in k
    depths = _BLOCKS_TO_DEPTHS.get(tuple(counts))
    if depths is None:
        raise ValueError(
            f"ResNet blocks per stage (layer1..layer4) = {tuple(counts)} match no standard ResNet "
            f"(expected one of {sorted(_BLOCKS_TO_DEPTHS)})"
        )
    if len(depths) == 1:
        return depths[0]
    return 50 if has_conv3 else 34


def torchvision_resnet_template(depth: int) -> Dict[str, torch.Size]:
    """Key -> shape of a torchvision ResNet body (no ``fc``, no ``num_batches_tracked``), built on meta."""
    if depth not in _TORCHVISION_BUILDERS:
        raise ValueError(f"ResNet depth must be one of {sorted(_TORCHVISION_BUILDERS)}, got {depth}")
    with torch.device("meta"):
        model = _TORCHVISION_BUILDERS[depth](weights=None)
    return {
        k: v.shape
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


def convert_torchvision_resnet(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "", source: str = "state dict"
) -> Dict[str, torch.Tensor]:
    """Convert an ImageNet torchvision ResNet-18/34/50/101/152 state dict to Detectron2 names.

    ``fc.*`` (the classifier) and ``num_batches_tracked`` are dropped; every other key must belong to
    the ResNet whose depth is inferred from the block counts, with the right shape, and every BN must
    carry its four buffers, else ``ValueError`` (naming ``source``). ``prefix`` is prepended to every
    output key (``""`` for Detectron2 model-zoo ``.pkl`` files matched by suffix, ``"backbone."``
    for a model whose ResNet lives at ``model.backbone``). Values are returned as float tensors.
    """
    body = {k: v for k, v in state_dict.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    non_tensor = [k for k, v in body.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise ValueError(f"{source}: values must be tensors; not a tensor: {format_list(non_tensor)}")
    try:
        depth = infer_resnet_depth(list(body))
    except ValueError as e:
        raise ValueError(f"{source}: not a torchvision ResNet state dict: {e}") from None
    errors = layout_errors(body, torchvision_resnet_template(depth))
    if errors:
        raise ValueError(f"{source}: does not match torchvision ResNet-{depth}: " + "; ".join(errors))
    return {prefix + torchvision_resnet_key_to_d2(k): v.float() for k, v in body.items()}
