"""Any DETR checkpoint file -> detr_d2 weights plus the config options they need.

:func:`convert_detr_file` reads an official DETR checkpoint (``.pth``, weights under ``"model"``) or
a Hugging Face transformers checkpoint (a ``save_pretrained`` folder, ``model.safetensors`` or
``pytorch_model.bin``; recognised by its key names), converts it to ``DetrPanoptic``'s names and
says how its class rows are named. :func:`retarget_classes` then optionally rebuilds the class head
for a registered dataset by class name (:mod:`.class_transfer`).
``tools/convert_detr_checkpoint.py`` is these two calls plus writing the file.

Class slots of a conversion without re-targeting: the classifier is kept as it is. Official
checkpoints index logits by dataset category id (``MODEL.DETR.CLASS_SLOTS dataset_id``, NUM_CLASSES
= logits - 1: 250 for COCO panoptic, 91 for COCO detection); so do Hugging Face checkpoints with the
official 251 / 92 logits. Other Hugging Face checkpoints index logits by their label id 0..K-1
(``CLASS_SLOTS contiguous``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .checkpoint_io import extract_state_dict, load_torch_file
from .class_names import hf_id2label_class_names, official_class_names
from .class_transfer import ClassMap, ClassMatch, transfer_class_head
from .detr_converter import convert_official_detr
from .hf_detr import hf_detr_to_official, is_hf_detr_state_dict, read_hf_config, read_hf_detr
from .official_layout import OfficialDETRLayout, infer_official_layout

__all__ = ["ConvertedDETR", "convert_detr_file", "retarget_classes"]

logger = logging.getLogger(__name__)


@dataclass
class ConvertedDETR:
    """A converted checkpoint: ``model`` (detr_d2 names), the source's configuration (``layout``),
    how its class rows are named (``source_classes``: one name or ``None`` per row before no-object;
    ``None`` when unknown), the class-slot convention of ``model``'s classifier and backbone
    facts."""

    model: Dict[str, torch.Tensor]
    layout: OfficialDETRLayout
    source_format: str
    source_classes: Optional[List[Optional[str]]]
    class_slots: str  # "dataset_id" | "contiguous"
    stride_in_1x1: bool = False
    notes: List[str] = field(default_factory=list)
    matches: Optional[List[ClassMatch]] = None  # set by retarget_classes

    @property
    def num_classes(self) -> int:
        return int(self.model["class_embed.weight"].shape[0]) - 1

    def config_options(self) -> List[str]:
        """Config overrides ``[KEY, VALUE, KEY, VALUE, ...]`` (for ``cfg.merge_from_list`` or a
        command line) of a model that loads ``model`` with exact names, on top of
        ``configs/Base-DETR.yaml`` (which
        already sets RGB input, the ImageNet mean/std, FrozenBN and res2..res5 outputs)."""
        lay = self.layout
        options = {
            "MODEL.MASK_ON": lay.masks,
            "MODEL.RESNETS.DEPTH": lay.depth,
            "MODEL.RESNETS.STRIDE_IN_1X1": self.stride_in_1x1,
        }
        if lay.depth in (18, 34):
            options["MODEL.RESNETS.RES2_OUT_CHANNELS"] = 64
        options.update({
            "MODEL.DETR.HIDDEN_DIM": lay.hidden_dim,
            "MODEL.DETR.NHEADS": lay.nheads,
            "MODEL.DETR.ENC_LAYERS": lay.enc_layers,
            "MODEL.DETR.DEC_LAYERS": lay.dec_layers,
            "MODEL.DETR.DIM_FEEDFORWARD": lay.dim_feedforward,
            "MODEL.DETR.PRE_NORM": lay.pre_norm,
            "MODEL.DETR.NUM_OBJECT_QUERIES": lay.num_queries,
            "MODEL.DETR.NUM_CLASSES": self.num_classes,
            "MODEL.DETR.CLASS_SLOTS": self.class_slots,
        })  # fmt: skip
        return [str(x) for item in options.items() for x in item]


def convert_detr_file(path: str) -> ConvertedDETR:
    """Read and convert an official DETR or a Hugging Face DETR checkpoint (see the module
    docstring).

    Raises ``ValueError`` / ``OSError`` naming ``path`` when it is neither, or does not match the
    layout its tensors imply (the offending tensors are listed).
    """
    if os.path.isdir(path) or path.endswith((".safetensors", ".index.json")):
        state_dict, config, weights = read_hf_detr(path)
        hf = True
    else:
        state_dict, weights = extract_state_dict(load_torch_file(path), path), path
        hf = is_hf_detr_state_dict(state_dict)
        config = read_hf_config(os.path.dirname(os.path.abspath(path))) if hf else None
    if any(k.startswith(("backbone.stem.", "backbone.res2.")) for k in state_dict):
        raise ValueError(
            f"{weights}: already has Detectron2 / detr_d2 names (backbone.stem.*): load it "
            "with MODEL.WEIGHTS as it "
            "is; to re-target its classes use detr_d2.checkpoint.transfer_class_head on its "
            "'model' dict"
        )
    if not hf:
        official = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        layout = infer_official_layout(official, weights)
        model = convert_official_detr(official, source=weights)
        names = official_class_names(layout.num_classes + 1)
        return ConvertedDETR(model, layout, "official DETR", names, "dataset_id")
    official, layout, style, notes = hf_detr_to_official(state_dict, config, source=weights)
    model = convert_official_detr(official, source=weights)
    num_logits = layout.num_classes + 1
    id2label = (config or {}).get("id2label")
    names = hf_id2label_class_names(id2label, num_logits, weights) or official_class_names(
        num_logits
    )
    slots = "dataset_id" if num_logits in (251, 92) else "contiguous"
    messages = []
    if "dc5" in notes:
        messages.append(
            "dilated res5 (DC5): Detectron2's RES5_DILATION 2 also dilates the first res5 "
            "block; not exact"
        )
    return ConvertedDETR(
        model,
        layout,
        f"Hugging Face ({style.describe()})",
        names,
        slots,
        "stride_in_1x1" in notes,
        messages,
    )


def retarget_classes(
    converted: ConvertedDETR,
    target: Union[Sequence[str], Any],
    *,
    class_map: Optional[ClassMap] = None,
    seed: int = 0,
    source: str = "checkpoint",
    class_map_source: str = "class map",
) -> ConvertedDETR:
    """``converted`` with its class head rebuilt for ``target`` (class names by contiguous id, or a
    registered dataset's name / ``Metadata``) by :func:`.class_transfer.transfer_class_head`;
    ``CLASS_SLOTS`` becomes ``contiguous``. Raises ``ValueError`` when the source rows have no
    names."""
    if converted.source_classes is None:
        raise ValueError(
            f"{source}: cannot name its {converted.num_classes} class rows: only the "
            "official layouts (251 logits: "
            "COCO panoptic ids, 92: COCO detection ids) or a Hugging Face config.json with "
            "id2label name them"
        )
    model, matches = transfer_class_head(
        converted.model,
        converted.source_classes,
        target,
        class_map=class_map,
        seed=seed,
        source=source,
        class_map_source=class_map_source,
    )
    return replace(converted, model=model, class_slots="contiguous", matches=matches)
