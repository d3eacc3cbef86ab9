"""Hugging Face ``transformers`` DETR checkpoints -> the official DETR layout -> detr_d2.

Reads ``DetrForSegmentation`` (keys ``detr.model.*``, ``detr.class_labels_classifier.*``,
``detr.bbox_predictor.*``, ``bbox_attention.*``, ``mask_head.*``) and ``DetrForObjectDetection``
(``model.*``, ``class_labels_classifier.*``, ``bbox_predictor.*``) state dicts, in four naming
styles:

* transformers 4.x or 5.x: 5.x renamed ``backbone.conv_encoder.model`` -> ``backbone.model``,
  ``out_proj`` -> ``o_proj``, ``fc1``/``fc2`` -> ``mlp.fc1``/``mlp.fc2``,
  ``bbox_attention.{q,k}_linear`` -> ``{q,k}_proj`` and the mask head's
  ``lay{n}``/``gn{n}``/``adapter{n}``/``out_lay`` -> ``conv{1,2}.{conv,norm}``,
  ``fpn_stages.{0,1,2}.{fpn_adapter,refine.conv,refine.norm}``, ``output_conv`` (transformers' own
  ``conversion_mapping.py``, entry ``"detr"``);
* timm backbone (``use_timm_backbone=True``, the hub default: torchvision ResNet names) or the
  native transformers ``ResNetBackbone`` (``embedder``/``encoder.stages``, see :mod:`.resnet_keys`).

Every other name is the official one renamed (``class_embed`` <-> ``class_labels_classifier``,
``query_embed`` <-> ``model.query_position_embeddings``, ``input_proj`` <->
``model.input_projection``, ``linear1/2`` <-> ``fc1/2``, ``norm1/2(/3)`` <->
``self_attn_layer_norm`` / (``encoder_attn_layer_norm``) / ``final_layer_norm``, ``multihead_attn``
<-> ``encoder_attn``, ``transformer.decoder.norm`` <-> ``model.decoder.layernorm``), except that HF
splits each attention's fused ``in_proj_weight`` (3d, d) into ``q_proj``/``k_proj``/``v_proj`` (d,
d) (bias likewise): they are concatenated back in q, k, v order. The configuration is inferred from
the tensors as for official checkpoints, the state dict is checked strictly against the layout of
that configuration *in HF names* (missing / unexpected / mis-shaped tensors are listed), and the
result goes through :func:`.detr_converter.convert_official_detr`. With the same weights, HF's DETR
computes what the official code computes (same frozen-BN eps 1e-5, post-norm transformer, sine
positions), so the converted model reproduces the HF model's outputs.

Follows the parameter names of ``src/transformers/models/detr/modeling_detr.py``
(huggingface/transformers v4.57.6 and v5).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .checkpoint_io import extract_state_dict, load_torch_file
from .layout import layout_errors
from .official_layout import (
    BACKBONE_BODY,
    OfficialDETRLayout,
    infer_official_layout,
    official_state_dict_spec,
)
from .resnet_keys import (
    hf_resnet_key_to_torchvision,
    infer_resnet_depth,
    torchvision_key_to_hf_resnet,
)

__all__ = [
    "HFDetrStyle",
    "hf_checkpoint_files",
    "hf_detr_to_official",
    "is_hf_detr_state_dict",
    "official_key_to_hf",
    "read_hf_config",
    "read_hf_detr",
]

_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_TIMM_RESNETS = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
_LAYER_MODULES = {  # official module in a transformer layer -> (HF 4.x, HF 5.x)
    "self_attn.out_proj": ("self_attn.out_proj", "self_attn.o_proj"),
    "multihead_attn.out_proj": ("encoder_attn.out_proj", "encoder_attn.o_proj"),
    "linear1": ("fc1", "mlp.fc1"),
    "linear2": ("fc2", "mlp.fc2"),
}
_LAYER_NORMS = {
    "encoder": {"norm1": "self_attn_layer_norm", "norm2": "final_layer_norm"},
    "decoder": {
        "norm1": "self_attn_layer_norm",
        "norm2": "encoder_attn_layer_norm",
        "norm3": "final_layer_norm",
    },
}
_DETECTOR_MODULES = {  # official detector module -> HF module
    "class_embed": "class_labels_classifier",
    "bbox_embed": "bbox_predictor",
    "query_embed": "model.query_position_embeddings",
    "input_proj": "model.input_projection",
    "transformer.decoder.norm": "model.decoder.layernorm",
}
_MASK_HEAD_V5 = {
    "lay1": "conv1.conv", "gn1": "conv1.norm", "lay2": "conv2.conv", "gn2": "conv2.norm",
    "adapter1": "fpn_stages.0.fpn_adapter", "lay3": "fpn_stages.0.refine.conv", "gn3": "fpn_stages.0.refine.norm",  # noqa: E501
    "adapter2": "fpn_stages.1.fpn_adapter", "lay4": "fpn_stages.1.refine.conv", "gn4": "fpn_stages.1.refine.norm",  # noqa: E501
    "adapter3": "fpn_stages.2.fpn_adapter", "lay5": "fpn_stages.2.refine.conv", "gn5": "fpn_stages.2.refine.norm",  # noqa: E501
    "out_lay": "output_conv",
}  # fmt: skip
_LAYER_KEY = re.compile(r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(\w+)$")


@dataclass(frozen=True)
class HFDetrStyle:
    """Which HF naming a state dict uses: segmentation (``detr.`` prefix) or detection model,
    transformers 5.x names or 4.x, timm (torchvision-named) or native transformers ResNet
    backbone."""

    masks: bool
    v5: bool
    timm: bool

    def describe(self) -> str:
        model = "DetrForSegmentation" if self.masks else "DetrForObjectDetection"
        backbone = "timm" if self.timm else "native transformers ResNet"
        return f"transformers {'5.x' if self.v5 else '4.x'} {model}, {backbone} backbone"


def official_key_to_hf(key: str, style: HFDetrStyle) -> List[str]:
    """The HF key(s) holding official tensor ``key``: one name, or the q/k/v parts of an
    ``in_proj_*`` (rows 0..d-1, d..2d-1, 2d..3d-1). Raises ``KeyError`` for keys HF models do not
    have (pre-norm ``transformer.encoder.norm``)."""
    if key.startswith("bbox_attention."):
        return [key.replace("_linear.", "_proj.") if style.v5 else key]
    if key.startswith("mask_head."):
        module, param = key[len("mask_head.") :].rsplit(".", 1)
        return [f"mask_head.{_MASK_HEAD_V5[module] if style.v5 else module}.{param}"]
    p = "detr." if style.masks else ""
    name = key[len(p) :]
    m = _LAYER_KEY.match(name)
    if m:
        stack, i, module, param = m.groups()
        base = f"{p}model.{stack}.layers.{i}."
        if param.startswith("in_proj_") and module in ("self_attn", "multihead_attn"):
            attn = "self_attn" if module == "self_attn" else "encoder_attn"
            return [f"{base}{attn}.{q}_proj.{param[len('in_proj_') :]}" for q in "qkv"]
        if module in _LAYER_NORMS[stack]:
            return [f"{base}{_LAYER_NORMS[stack][module]}.{param}"]
        if module in _LAYER_MODULES:
            return [f"{base}{_LAYER_MODULES[module][style.v5]}.{param}"]
    elif name.startswith(BACKBONE_BODY):
        body = name[len(BACKBONE_BODY) :]
        backbone = "model.backbone.model." if style.v5 else "model.backbone.conv_encoder.model."
        return [p + backbone + (body if style.timm else torchvision_key_to_hf_resnet(body))]
    else:
        module, param = name.rsplit(".", 1)
        for official, hf in _DETECTOR_MODULES.items():
            if module == official or module.startswith(official + "."):
                return [f"{p}{hf}{module[len(official) :]}.{param}"]
    raise KeyError(
        f"official DETR key {key!r} has no Hugging Face counterpart ({style.describe()})"
    )


def is_hf_detr_state_dict(keys) -> bool:
    """Whether state-dict keys look like a transformers DETR model (rather than an official
    checkpoint)."""
    return any(
        k.endswith("class_labels_classifier.weight")
        or k.startswith(("model.backbone.", "detr.model."))
        for k in keys
    )


def _detect_style(keys: List[str], config: Optional[Mapping[str, Any]], source: str) -> HFDetrStyle:
    masks = any(k.startswith(("detr.", "mask_head.", "bbox_attention.")) for k in keys)
    p = "detr.model.backbone." if masks else "model.backbone."
    v4_keys = [k for k in keys if k.startswith(p + "conv_encoder.model.")]
    v5_keys = [k for k in keys if k.startswith(p + "model.")]
    if not v4_keys and not v5_keys:
        raise ValueError(
            f"{source}: no backbone tensors under '{p}conv_encoder.model.' (transformers "
            f"4.x) or '{p}model.' (5.x)"
        )
    v5 = len(v5_keys) > len(v4_keys)
    timm = not any(".embedder.embedder." in k for k in (v5_keys if v5 else v4_keys))
    if (
        config is not None
        and "use_timm_backbone" in config
        and bool(config["use_timm_backbone"]) != timm
    ):
        raise ValueError(
            f"{source}: config.json says use_timm_backbone={config['use_timm_backbone']} but "
            "the backbone tensors are "
            f"named like a {'timm' if timm else 'native transformers'} ResNet"
        )
    return HFDetrStyle(masks=masks, v5=v5, timm=timm)


def _check_config(config: Mapping[str, Any], style: HFDetrStyle, source: str) -> List[str]:
    """Refuse HF options detr_d2's model cannot reproduce; return notes for options that need config
    keys."""
    notes: List[str] = []
    problems = []
    if config.get("position_embedding_type", "sine") != "sine":
        problems.append(
            f"position_embedding_type {config['position_embedding_type']!r} (detr_d2 has "
            "sine positions)"
        )
    if config.get("activation_function", "relu") != "relu":
        problems.append(
            f"activation_function {config['activation_function']!r} (detr_d2 uses relu)"
        )
    heads = (config.get("encoder_attention_heads", 8), config.get("decoder_attention_heads", 8))
    if heads[0] != heads[1]:
        problems.append(
            f"encoder_attention_heads {heads[0]} != decoder_attention_heads {heads[1]} (one "
            "MODEL.DETR.NHEADS)"
        )
    ffn = (config.get("encoder_ffn_dim"), config.get("decoder_ffn_dim"))
    if ffn[0] != ffn[1]:
        problems.append(
            f"encoder_ffn_dim {ffn[0]} != decoder_ffn_dim {ffn[1]} (one MODEL.DETR.DIM_FEEDFORWARD)"
        )
    if config.get("num_channels", 3) != 3:
        problems.append(f"num_channels {config['num_channels']} (RGB input)")
    if style.timm:
        name = str(config.get("backbone") or "").split(".")[0]
        if name and name not in _TIMM_RESNETS:
            problems.append(
                f"timm backbone {config['backbone']!r} (only {', '.join(sorted(_TIMM_RESNETS))} "
                "have torchvision's layout)"
            )
    else:
        bb = config.get("backbone_config") or {}
        if bb.get("model_type", "resnet") != "resnet":
            problems.append(f"backbone_config.model_type {bb.get('model_type')!r} (only ResNet)")
        if bb.get("downsample_in_first_stage"):
            problems.append(
                "backbone_config.downsample_in_first_stage True (Detectron2's ResNet cannot "
                "stride res2)"
            )
        if bb.get("downsample_in_bottleneck"):
            notes.append("stride_in_1x1")
    if problems:
        raise ValueError(
            f"{source}: config.json asks for what detr_d2's DetrPanoptic cannot reproduce: "
            + "; ".join(problems)
        )
    if config.get("dilation"):
        notes.append("dc5")
    return notes


def hf_detr_to_official(
    state_dict: Mapping[str, torch.Tensor],
    config: Optional[Mapping[str, Any]] = None,
    *,
    source: str = "state dict",
) -> Tuple[Dict[str, torch.Tensor], OfficialDETRLayout, HFDetrStyle, List[str]]:
    """Rename (and re-fuse q/k/v) a transformers DETR state dict to the official DETR layout.

    ``config`` is the model's ``config.json`` as a dict (optional: used for checks, the number of
    heads of detection models and notes). Returns (official state dict, its layout, the HF naming
    style, notes: ``"stride_in_1x1"`` when the native ResNet strides in the 1x1 conv,
    ``"dc5"`` for a dilated res5). Raises ``ValueError`` naming ``source`` and the offending HF
    keys.
    """
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    keys = list(sd)
    style = _detect_style(keys, config, source)
    notes = _check_config(config, style, source) if config else []
    p = "detr." if style.masks else ""
    backbone = f"{p}model.backbone.{'model.' if style.v5 else 'conv_encoder.model.'}"
    body = [k[len(backbone) :] for k in keys if k.startswith(backbone)]
    if not style.timm:
        body = [_try(hf_resnet_key_to_torchvision, k) for k in body]
    try:
        depth = infer_resnet_depth([k for k in body if k])
    except ValueError as e:
        raise ValueError(f"{source}: backbone under '{backbone}': {e}") from None

    def count(stack: str) -> int:
        pattern = re.compile(re.escape(f"{p}model.{stack}.layers.") + r"(\d+)\.")
        return max([int(m.group(1)) + 1 for m in map(pattern.match, keys) if m], default=0)

    # Names only (sizes are placeholders): the official keys this model has, and their HF names.
    names = OfficialDETRLayout(
        style.masks, depth, 256, 8, count("encoder"), count("decoder"), 2048, False, 1, 1
    )
    hf_names = {k: official_key_to_hf(k, style) for k in official_state_dict_spec(names)}
    official_of = {h: k for k, hs in hf_names.items() for h in hs}
    shapes = {official_of[h]: v.shape for h, v in sd.items() if h in official_of}

    def display(official_key: str) -> str:
        hs = hf_names.get(official_key, [official_key])
        return hs[0] if len(hs) == 1 else hs[0].replace(".q_proj.", ".{q,k,v}_proj.")

    layout = infer_official_layout(shapes, source, display)
    if not style.masks and config and "encoder_attention_heads" in config:
        layout = replace(layout, nheads=int(config["encoder_attention_heads"]))
    expected: Dict[str, torch.Size] = {}
    for key, shape in official_state_dict_spec(layout).items():
        parts = hf_names[key]
        part_shape = torch.Size([shape[0] // len(parts), *shape[1:]])
        expected.update({h: part_shape for h in parts})
    errors = layout_errors(sd, expected)
    if errors:
        raise ValueError(
            f"{source}: does not match the Hugging Face DETR layout inferred from it "
            f"({style.describe()}; "
            f"{layout.describe()}): " + "; ".join(errors)
        )
    official = {k: torch.cat([sd[h] for h in hf_names[k]]) if len(hf_names[k]) > 1 else sd[hf_names[k][0]]  # noqa: E501
                for k in official_state_dict_spec(layout)}  # fmt: skip
    return official, layout, style, notes


def _try(rename, key: str) -> Optional[str]:
    try:
        return rename(key)
    except KeyError:
        return None


def _load_weights(path: str) -> Dict[str, torch.Tensor]:
    if path.endswith(".index.json"):
        with open(path, "r", encoding="utf-8") as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        if not shards:
            raise ValueError(f"{path}: no 'weight_map' shards listed")
        out: Dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_load_weights(os.path.join(os.path.dirname(path), shard)))
        return out
    if path.endswith(".safetensors"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(
                f"{path}: reading .safetensors files needs the 'safetensors' package (pip "
                "install safetensors)"
            ) from None
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise ValueError(
                f"{path}: cannot be read as safetensors ({type(e).__name__}: {e})"
            ) from e
    return extract_state_dict(load_torch_file(path), path)


def hf_checkpoint_files(path: str) -> List[str]:
    """The existing files a transformers checkpoint ``path`` (folder or weight file) consists of."""
    if os.path.isdir(path):
        names = ("config.json",) + _WEIGHT_FILES
        return [os.path.join(path, f) for f in names if os.path.isfile(os.path.join(path, f))]
    return [path]


def read_hf_config(folder: str) -> Optional[Dict[str, Any]]:
    """``folder/config.json`` as a dict (``None`` if absent); ``ValueError`` if it is not a DETR
    config."""
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path, "r", encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    if not isinstance(config, dict) or config.get("model_type", "detr") != "detr":
        raise ValueError(
            f"{config_path}: not a DETR config (model_type "
            f"{config.get('model_type') if isinstance(config, dict) else None!r})"
        )
    return config


def read_hf_detr(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]], str]:
    """Read a transformers checkpoint: a folder written by ``save_pretrained`` (``config.json`` +
    ``model.safetensors`` or ``pytorch_model.bin``, sharded or not) or one weight file (its folder's
    ``config.json`` is used when present). Returns (state dict, config dict or None, weight file
    path)."""
    if os.path.isdir(path):
        found = [f for f in hf_checkpoint_files(path) if not f.endswith("config.json")]
        if not found:
            raise FileNotFoundError(f"{path}: no {' / '.join(_WEIGHT_FILES)} in this folder")
        weights, folder = found[0], path
    else:
        weights, folder = path, os.path.dirname(os.path.abspath(path))
    return _load_weights(weights), read_hf_config(folder), weights
