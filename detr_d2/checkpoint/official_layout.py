"""The key -> shape layout of official DETR checkpoints, and reading a checkpoint's configuration
off it.

Written from the published model code (facebookresearch/detr at 29901c5: ``models/detr.py``,
``models/segmentation.py``, ``models/transformer.py``, ``models/backbone.py``), independently of any
model code here: :func:`official_state_dict_spec` lists, in the official order, every tensor of
``DETRsegm`` (``masks=True``: ``detr.*``, ``bbox_attention.*``, ``mask_head.*``) or of the bare
``DETR`` detector (``masks=False``: the same names without ``detr.``, no panoptic heads).
Shapes, with ``d`` = hidden size, ``h`` = heads, ``f`` = FFN width, ``Q`` = queries, ``K`` = class
slots (logits ``K + 1``), ``C5``/``C4``/``C3``/``C2`` = ResNet stage channels (2048/1024/512/256, or
512/256/128/64 for ResNet-18/34):

* transformer, per encoder layer ``i``: ``self_attn.in_proj_weight`` (3d, d), ``in_proj_bias`` (3d),
  ``out_proj`` (d, d)/(d), ``linear1`` (f, d)/(f), ``linear2`` (d, f)/(d), ``norm1``/``norm2`` (d);
  per decoder layer: ``self_attn`` and ``multihead_attn`` (as above), ``linear1``, ``linear2``,
  ``norm1``..``norm3``; ``decoder.norm`` (d); ``encoder.norm`` (d) only for pre-norm models;
* ``class_embed`` (K+1, d)/(K+1); ``bbox_embed.layers.{0,1}`` (d, d)/(d), ``layers.2`` (4, d)/(4);
  ``query_embed.weight`` (Q, d); ``input_proj`` (d, C5, 1, 1)/(d);
* ``backbone.0.body.*``: torchvision ResNet keys (:func:`.resnet_keys.torchvision_resnet_template`);
* panoptic: ``bbox_attention.{q,k}_linear`` (d, d)/(d); ``mask_head.lay1`` (d+h, d+h, 3, 3),
  ``lay2`` (d/2, d+h, 3, 3), ``lay3`` (d/4, d/2, ..), ``lay4`` (d/8, d/4, ..), ``lay5`` (d/16, d/8,
  ..), ``out_lay`` (1, d/16, 3, 3), ``gn{n}`` = output channels of ``lay{n}``, ``adapter1`` (d/2,
  C4, 1, 1), ``adapter2`` (d/4, C3, 1, 1), ``adapter3`` (d/8, C2, 1, 1); each with its bias.

:func:`infer_official_layout` reads every dimension from *several* tensors and takes the strict
majority, so one corrupt tensor cannot change the inferred configuration (the strict layout check
then names exactly that tensor); when a dimension's tensors have no majority it refuses, naming
them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from .layout import format_list
from .resnet_keys import infer_resnet_depth, torchvision_resnet_template

__all__ = [
    "BACKBONE_BODY",
    "OfficialDETRLayout",
    "infer_official_layout",
    "official_state_dict_spec",
]

BACKBONE_BODY = "backbone.0.body."
_NORM_KEY = re.compile(r"(^|\.)norm\d?\.(weight|bias)$")


@dataclass(frozen=True)
class OfficialDETRLayout:
    """The configuration an official checkpoint was built with, as far as its tensors reveal it.

    ``nheads`` is only visible through the mask head (264 = hidden + heads); detection checkpoints
    report the official 8 (it does not change any tensor shape). DC5 (dilated res5) has the same
    tensors as the plain model and cannot be told apart.
    """

    masks: bool
    depth: int
    hidden_dim: int
    nheads: int
    enc_layers: int
    dec_layers: int
    dim_feedforward: int
    pre_norm: bool
    num_queries: int
    num_classes: int  # class slots before no-object (250 for the panoptic checkpoints)

    @property
    def prefix(self) -> str:
        """Prefix of the detector's keys in the source (``"detr."`` for panoptic checkpoints)."""
        return "detr." if self.masks else ""

    def describe(self) -> str:
        kind = "panoptic (DETRsegm)" if self.masks else "detection (DETR)"
        norm = "pre-norm" if self.pre_norm else "post-norm"
        return (
            f"{kind}, ResNet-{self.depth}, hidden {self.hidden_dim}, {self.nheads} heads, "
            f"{self.enc_layers}+{self.dec_layers} layers ({norm}), FFN {self.dim_feedforward}, "
            f"{self.num_queries} queries, {self.num_classes + 1} class logits"
        )


def _stage_channels(depth: int) -> Tuple[int, int, int, int]:
    """Output channels of res2..res5 of a torchvision ResNet (BasicBlock for 18/34, Bottleneck
    otherwise)."""
    return (64, 128, 256, 512) if depth in (18, 34) else (256, 512, 1024, 2048)


def _linear(name: str, out_dim: int, in_dim: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{name}.weight", (out_dim, in_dim)), (f"{name}.bias", (out_dim,))]


def _attention(name: str, d: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{name}.in_proj_weight", (3 * d, d)), (f"{name}.in_proj_bias", (3 * d,))] + _linear(
        f"{name}.out_proj", d, d
    )


def _norm(name: str, d: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{name}.weight", (d,)), (f"{name}.bias", (d,))]


def _conv(name: str, out_ch: int, in_ch: int, k: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{name}.weight", (out_ch, in_ch, k, k)), (f"{name}.bias", (out_ch,))]


def official_state_dict_spec(layout: OfficialDETRLayout) -> Dict[str, torch.Size]:
    """Official key -> shape for ``layout``, in the checkpoint's key order (see the module
    docstring)."""
    d, f, p = layout.hidden_dim, layout.dim_feedforward, layout.prefix
    t = f"{p}transformer."
    items: List[Tuple[str, Tuple[int, ...]]] = []
    for i in range(layout.enc_layers):
        e = f"{t}encoder.layers.{i}."
        items += (
            _attention(e + "self_attn", d)
            + _linear(e + "linear1", f, d)
            + _linear(e + "linear2", d, f)
        )
        items += _norm(e + "norm1", d) + _norm(e + "norm2", d)
    if layout.pre_norm:
        items += _norm(f"{t}encoder.norm", d)
    for i in range(layout.dec_layers):
        e = f"{t}decoder.layers.{i}."
        items += _attention(e + "self_attn", d) + _attention(e + "multihead_attn", d)
        items += _linear(e + "linear1", f, d) + _linear(e + "linear2", d, f)
        items += _norm(e + "norm1", d) + _norm(e + "norm2", d) + _norm(e + "norm3", d)
    items += _norm(f"{t}decoder.norm", d)
    items += _linear(f"{p}class_embed", layout.num_classes + 1, d)
    items += _linear(f"{p}bbox_embed.layers.0", d, d) + _linear(f"{p}bbox_embed.layers.1", d, d)
    items += _linear(f"{p}bbox_embed.layers.2", 4, d)
    items += [(f"{p}query_embed.weight", (layout.num_queries, d))]
    c2, c3, c4, c5 = _stage_channels(layout.depth)
    items += _conv(f"{p}input_proj", d, c5, 1)
    items += [
        (f"{p}{BACKBONE_BODY}{k}", tuple(s))
        for k, s in torchvision_resnet_template(layout.depth).items()
    ]
    if layout.masks:
        items += _linear("bbox_attention.q_linear", d, d) + _linear("bbox_attention.k_linear", d, d)
        dh = d + layout.nheads
        widths = [dh, d // 2, d // 4, d // 8, d // 16]
        for n, (out_ch, in_ch) in enumerate(zip(widths, [dh] + widths[:-1]), start=1):
            items += _conv(f"mask_head.lay{n}", out_ch, in_ch, 3) + _norm(
                f"mask_head.gn{n}", out_ch
            )
        items += _conv("mask_head.out_lay", 1, d // 16, 3)
        items += _conv("mask_head.adapter1", d // 2, c4, 1) + _conv(
            "mask_head.adapter2", d // 4, c3, 1
        )
        items += _conv("mask_head.adapter3", d // 8, c2, 1)
    return {k: torch.Size(s) for k, s in items}


# ------------------------------------------------------------------------------------------
# inference
Shapes = Mapping[str, Sequence[int]]


def _shape(value) -> Tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _votes(shapes: Shapes, keys: Iterable[str], dim: int, offset: int = 0) -> List[Tuple[str, int]]:
    """``(key, shape[dim] - offset)`` for every present key whose tensor has that dimension."""
    out = []
    for k in keys:
        if k in shapes:
            s = _shape(shapes[k])
            if len(s) > dim:
                out.append((k, s[dim] - offset))
    return out


def _majority(
    what: str, votes: List[Tuple[str, int]], source: str, display: Callable[[str], str]
) -> int:
    """The value more than half of ``votes`` agree on, else ``ValueError`` listing who says what."""
    counts = Counter(v for _, v in votes)
    if not counts:
        raise ValueError(
            f"{source}: cannot infer the {what}: none of the tensors that show it is present"
        )
    best, n = counts.most_common(1)[0]
    if 2 * n > len(votes):
        return best
    groups = "; ".join(
        f"{value} from {format_list([display(k) for k, v in votes if v == value], 5)}"
        for value, _ in counts.most_common()
    )
    raise ValueError(
        f"{source}: cannot infer the {what}: the tensors that show it disagree ({groups})"
    )


def _layer_count(keys: Iterable[str], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = [int(m.group(1)) for m in map(pattern.match, keys) if m]
    return max(indices) + 1 if indices else 0


def infer_official_layout(
    state_dict: Shapes, source: str = "state dict", display: Optional[Callable[[str], str]] = None
) -> OfficialDETRLayout:
    """Read the model configuration off an official DETR state dict (panoptic or detection).

    ``state_dict`` maps official key -> tensor (or shape). Each size is the strict majority over all
    tensors that show it (hidden size: ~20 tensors per transformer layer plus the heads; FFN width:
    3 per layer; heads: 6 mask-head tensors; class slots: ``class_embed`` weight and bias; queries:
    ``query_embed``); ResNet depth, layer counts, pre-norm and panoptic-vs-detection come from the
    key names. Raises ``ValueError`` naming ``source`` when the file is not DETR, a size has no
    majority (the message lists the disagreeing tensors, named by ``display(key)``), or the sizes
    are impossible. Completeness and every shape are checked afterwards against
    :func:`official_state_dict_spec`.
    """
    display = display or (lambda k: k)
    keys = list(state_dict)
    masks = any(k.startswith("detr.") for k in keys)
    p = "detr." if masks else ""
    t = f"{p}transformer."
    anchors = [
        f"{p}class_embed.weight",
        f"{p}query_embed.weight",
        f"{t}encoder.layers.0.linear1.weight",
    ]
    if not any(k.startswith((t, f"{p}class_embed.")) for k in keys):
        raise ValueError(
            f"{source}: not an official DETR state dict: cannot find "
            f"{format_list([display(a) for a in anchors])} "
            f"(first keys present: {format_list([display(k) for k in keys[:5]], 5)})"
        )
    body = [k[len(p + BACKBONE_BODY) :] for k in keys if k.startswith(p + BACKBONE_BODY)]
    if not body:
        raise ValueError(f"{source}: no backbone tensors under '{display(p + BACKBONE_BODY)}'")
    try:
        depth = infer_resnet_depth(body)
    except ValueError as e:
        raise ValueError(f"{source}: backbone under '{display(p + BACKBONE_BODY)}': {e}") from None

    tkeys = [k for k in keys if k.startswith(t)]
    hidden_votes = (
        _votes(state_dict, [f"{p}class_embed.weight", f"{p}query_embed.weight"], 1)
        + _votes(state_dict, [f"{p}input_proj.weight", f"{p}input_proj.bias"], 0)
        + _votes(state_dict, [f"{p}bbox_embed.layers.{i}.weight" for i in range(3)], 1)
        + _votes(
            state_dict,
            [f"{p}bbox_embed.layers.{i}.{w}" for i in range(2) for w in ("weight", "bias")],
            0,
        )
        + _votes(state_dict, [k for k in tkeys if _NORM_KEY.search(k)], 0)
        + _votes(
            state_dict, [k for k in tkeys if k.endswith(("out_proj.weight", "out_proj.bias"))], 0
        )
        + _votes(
            state_dict, [k for k in tkeys if k.endswith(("out_proj.weight", "in_proj_weight"))], 1
        )
        + _votes(
            state_dict, [k for k in tkeys if k.endswith(("linear2.weight", "linear2.bias"))], 0
        )
        + _votes(state_dict, [k for k in tkeys if k.endswith("linear1.weight")], 1)
        + _votes(
            state_dict,
            [f"bbox_attention.{q}_linear.{w}" for q in "qk" for w in ("weight", "bias")],
            0,
        )
        + _votes(state_dict, [f"bbox_attention.{q}_linear.weight" for q in "qk"], 1)
    )
    hidden_dim = _majority("hidden size", hidden_votes, source, display)
    ffn_votes = _votes(
        state_dict, [k for k in tkeys if k.endswith(("linear1.weight", "linear1.bias"))], 0
    )
    ffn_votes += _votes(state_dict, [k for k in tkeys if k.endswith("linear2.weight")], 1)
    dim_feedforward = _majority("FFN width", ffn_votes, source, display)
    if masks:
        head_keys = [
            "mask_head.lay1.weight",
            "mask_head.lay1.bias",
            "mask_head.gn1.weight",
            "mask_head.gn1.bias",
        ]
        head_votes = _votes(state_dict, head_keys, 0, hidden_dim)
        head_votes += _votes(
            state_dict, ["mask_head.lay1.weight", "mask_head.lay2.weight"], 1, hidden_dim
        )
        nheads = _majority(
            "number of attention heads (mask head channels - hidden size)",
            head_votes,
            source,
            display,
        )
    else:
        nheads = 8
    class_votes = _votes(state_dict, [f"{p}class_embed.weight", f"{p}class_embed.bias"], 0, 1)
    num_classes = _majority("number of class logits - 1", class_votes, source, display)
    num_queries = _majority(
        "number of queries", _votes(state_dict, [f"{p}query_embed.weight"], 0), source, display
    )
    if nheads <= 0 or hidden_dim % nheads or num_classes < 1 or (masks and hidden_dim < 16):
        raise ValueError(
            f"{source}: impossible DETR sizes: hidden size {hidden_dim}, {nheads} heads "
            "(must divide the hidden "
            f"size), {num_classes + 1} class logits"
        )
    return OfficialDETRLayout(
        masks=masks,
        depth=depth,
        hidden_dim=hidden_dim,
        nheads=nheads,
        enc_layers=_layer_count(keys, f"{t}encoder.layers."),
        dec_layers=_layer_count(keys, f"{t}decoder.layers."),
        dim_feedforward=dim_feedforward,
        pre_norm=f"{t}encoder.norm.weight" in state_dict or f"{t}encoder.norm.bias" in state_dict,
        num_queries=num_queries,
        num_classes=num_classes,
    )
