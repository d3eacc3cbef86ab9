"""torchvision ResNet parameter names -> Detectron2 ``ResNet`` names.

The mapping of Detectron2's ``tools/convert-torchvision-to-d2.py`` (facebookresearch/detectron2 at
02b5c4e), for torchvision's ``torchvision/models/resnet.py`` names:

| torchvision                                   | Detectron2                              |
| --------------------------------------------- | --------------------------------------- |
| ``conv1.weight``                              | ``stem.conv1.weight``                   |
| ``bn1.{p}``                                   | ``stem.conv1.norm.{p}``                 |
| ``layer{L}.{j}.conv{k}.weight``               | ``res{L+1}.{j}.conv{k}.weight``         |
| ``layer{L}.{j}.bn{k}.{p}``                    | ``res{L+1}.{j}.conv{k}.norm.{p}``       |
| ``layer{L}.{j}.downsample.0.weight``          | ``res{L+1}.{j}.shortcut.weight``        |
| ``layer{L}.{j}.downsample.1.{p}``             | ``res{L+1}.{j}.shortcut.norm.{p}``      |

with ``p`` in weight / bias / running_mean / running_var. Hugging Face's native ``ResNetBackbone``
(``transformers``, ``use_timm_backbone=False``) names the same tensors differently
(:func:`hf_resnet_key_to_torchvision`): ``embedder.embedder.{convolution,normalization}`` is the
stem, ``encoder.stages.{L-1}.layers.{j}.layer.{k-1}.{convolution,normalization}`` is
``layer{L}.{j}.conv{k}``/``bn{k}`` and ``...layers.{j}.shortcut.{convolution,normalization}`` is
``downsample.{0,1}``.

Every BN must keep all four buffers:
Detectron2's ``FrozenBatchNorm2d`` silently fills a *missing* running_mean / running_var with 0 / 1
when the state dict has no version metadata (any converted dict), so ``strict=True`` would not
notice. The weights assume torchvision's ResNet ("v1.5": stride on the 3x3 conv), i.e.
``MODEL.RESNETS.STRIDE_IN_1X1 False`` and RGB input normalised with the ImageNet mean/std.
"""

from __future__ import annotations

import functools
import re
from typing import Dict, List, Mapping, Tuple

import torch
import torchvision

from .layout import format_list, layout_errors

__all__ = [
    "BN_BUFFERS",
    "convert_torchvision_resnet",
    "hf_resnet_key_to_torchvision",
    "infer_resnet_depth",
    "torchvision_key_to_hf_resnet",
    "torchvision_resnet_key_to_d2",
    "torchvision_resnet_template",
]

BN_BUFFERS: Tuple[str, ...] = ("weight", "bias", "running_mean", "running_var")
# One row per kind of tensor: (torchvision, Detectron2, Hugging Face native ResNet) names.
# Placeholders: {L} = torchvision stage 1..4, {R} = L + 1 (res2..res5), {S} = L - 1 (HF stage
# index), {j} = block, {k} = conv 1..3, {K} = k - 1, {p} = a BN tensor (BN_BUFFERS).
_NAME_TABLE: Tuple[Tuple[str, str, str], ...] = (
    ("conv1.weight", "stem.conv1.weight", "embedder.embedder.convolution.weight"),
    ("bn1.{p}", "stem.conv1.norm.{p}", "embedder.embedder.normalization.{p}"),
    (
        "layer{L}.{j}.conv{k}.weight",
        "res{R}.{j}.conv{k}.weight",
        "encoder.stages.{S}.layers.{j}.layer.{K}.convolution.weight",
    ),
    (
        "layer{L}.{j}.bn{k}.{p}",
        "res{R}.{j}.conv{k}.norm.{p}",
        "encoder.stages.{S}.layers.{j}.layer.{K}.normalization.{p}",
    ),
    (
        "layer{L}.{j}.downsample.0.weight",
        "res{R}.{j}.shortcut.weight",
        "encoder.stages.{S}.layers.{j}.shortcut.convolution.weight",
    ),
    (
        "layer{L}.{j}.downsample.1.{p}",
        "res{R}.{j}.shortcut.norm.{p}",
        "encoder.stages.{S}.layers.{j}.shortcut.normalization.{p}",
    ),
)
_TORCHVISION, _DETECTRON2, _HF = 0, 1, 2
_STYLE_NAMES = ("torchvision ResNet", "Detectron2 ResNet", "Hugging Face ResNet")
_GROUPS = {
    "L": "[1-4]",
    "R": "[2-5]",
    "S": "[0-3]",
    "k": "[1-3]",
    "K": "[0-2]",
    "j": r"\d+",
    "p": "|".join(BN_BUFFERS),
}
_OFFSETS = {
    "L": ("L", 0),
    "R": ("L", 1),
    "S": ("L", -1),
    "k": ("k", 0),
    "K": ("k", -1),
}  # name = base + offset


def _pattern(template: str) -> "re.Pattern[str]":
    regex = re.escape(template)
    for name, group in _GROUPS.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{group})")
    return re.compile(f"^{regex}$")


_PATTERNS = [tuple(_pattern(t) for t in row) for row in _NAME_TABLE]


def _translate(key: str, src: int, dst: int) -> str:
    """Rename one ResNet key from naming style ``src`` to ``dst`` (indices into ``_NAME_TABLE``
    rows)."""
    for row, patterns in zip(_NAME_TABLE, _PATTERNS):
        m = patterns[src].match(key)
        if m is None:
            continue
        values = dict(m.groupdict())
        for name, value in m.groupdict().items():
            if name in _OFFSETS:  # derive the stage / conv numbers of the other naming styles
                base, offset = _OFFSETS[name]
                base_value = int(value) - offset
                values.update(
                    {n: str(base_value + o) for n, (b, o) in _OFFSETS.items() if b == base}
                )
        return row[dst].format(**values)
    raise KeyError(f"not a {_STYLE_NAMES[src]} parameter name: {key!r}")


# Blocks per stage (layer1..layer4) -> depth; 18/34 use BasicBlock (no conv3), the others
# Bottleneck.
_BLOCKS_TO_DEPTHS = {
    (2, 2, 2, 2): (18,),
    (3, 4, 6, 3): (34, 50),
    (3, 4, 23, 3): (101,),
    (3, 8, 36, 3): (152,),
}
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
    return _translate(key, _TORCHVISION, _DETECTRON2)


def hf_resnet_key_to_torchvision(key: str) -> str:
    """Map one key of Hugging Face's native ``ResNetBackbone`` (no prefix, e.g.
    ``encoder.stages.0.layers.1.layer.2.normalization.bias``) to torchvision's
    (``layer1.1.bn3.bias``).
    Raises ``KeyError`` for other keys."""
    return _translate(key, _HF, _TORCHVISION)


def torchvision_key_to_hf_resnet(key: str) -> str:
    """Inverse of :func:`hf_resnet_key_to_torchvision`."""
    return _translate(key, _TORCHVISION, _HF)


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
    """Key -> shape of a torchvision ResNet body (no ``fc``, no ``num_batches_tracked``), built on
    meta."""
    if depth not in _TORCHVISION_BUILDERS:
        raise ValueError(
            f"ResNet depth must be one of {sorted(_TORCHVISION_BUILDERS)}, got {depth}"
        )
    return dict(_cached_template(depth))


@functools.lru_cache(maxsize=None)
def _cached_template(depth: int) -> Tuple[Tuple[str, torch.Size], ...]:
    with torch.device("meta"):
        model = _TORCHVISION_BUILDERS[depth](weights=None)
    return tuple(
        (k, v.shape)
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    )


def convert_torchvision_resnet(
    state_dict: Mapping[str, torch.Tensor], *, prefix: str = "", source: str = "state dict"
) -> Dict[str, torch.Tensor]:
    """Convert an ImageNet torchvision ResNet-18/34/50/101/152 state dict to Detectron2 names.

    ``fc.*`` (the classifier) and ``num_batches_tracked`` are dropped; every other key must belong
    to the ResNet whose depth is inferred from the block counts, with the right shape, and every BN
    must carry its four buffers, else ``ValueError`` (naming ``source``). ``prefix`` is prepended to
    every output key (``""`` for Detectron2 model-zoo ``.pkl`` files matched by suffix,
    ``"backbone."`` for a model whose ResNet lives at ``model.backbone``). Values are returned as
    float tensors.
    """
    body = {
        k: v
        for k, v in state_dict.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    non_tensor = [k for k, v in body.items() if not isinstance(v, torch.Tensor)]
    if non_tensor:
        raise ValueError(
            f"{source}: values must be tensors; not a tensor: {format_list(non_tensor)}"
        )
    try:
        depth = infer_resnet_depth(list(body))
    except ValueError as e:
        raise ValueError(f"{source}: not a torchvision ResNet state dict: {e}") from None
    errors = layout_errors(body, torchvision_resnet_template(depth))
    if errors:
        raise ValueError(
            f"{source}: does not match torchvision ResNet-{depth}: " + "; ".join(errors)
        )
    return {prefix + torchvision_resnet_key_to_d2(k): v.float() for k, v in body.items()}
