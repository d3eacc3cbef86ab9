"""Official DETR checkpoints (facebookresearch/detr) -> ``detr_d2``'s ``DetrPanoptic`` state dict.

Source layouts (``checkpoint["model"]``):

* panoptic (``DETRsegm``): ``detr.transformer.*``, ``detr.class_embed.*``, ``detr.bbox_embed.*``,
  ``detr.query_embed.*``, ``detr.input_proj.*``, ``detr.backbone.0.body.<torchvision ResNet>``,
  ``bbox_attention.*``, ``mask_head.*`` (R50: 490 tensors, R101: 745);
* detection (``DETR``): the same without the ``detr.`` prefix and without the panoptic heads.

Target layout: ``backbone.<Detectron2 ResNet names>`` (see :mod:`.resnet_keys`) and, for everything
else, the official names with ``detr.`` stripped. The source layout is checked strictly against
:func:`.official_layout.official_state_dict_spec` for the configuration inferred from the checkpoint
(:func:`.official_layout.infer_official_layout`, majority over several tensors per size): any
missing, unexpected or mis-shaped tensor raises ``ValueError`` naming the file and listing exactly
those tensors (mis-shaped ones with the shape found and the shape expected).

Class slots: the official classifier has 251 outputs whose index *is* the COCO panoptic category id
(0..249) plus no-object (250). ``class_slots="keep"`` keeps them (``MODEL.DETR.CLASS_SLOTS
dataset_id``, ``NUM_CLASSES 250``: exact official scores, since the softmax runs over all 251
logits); a mapping ``{dataset id: contiguous id}`` keeps rows ``[dataset id of contiguous 0..K-1] +
[250]`` (``CLASS_SLOTS contiguous``, ``NUM_CLASSES K``; probabilities change slightly because the
softmax loses the 117 never-trained rows). That mapping is by *category id* and only right for
datasets that use COCO's ids; for any other dataset re-target the head by class *name* with
:func:`.class_transfer.transfer_class_head` (what ``tools/convert_detr_checkpoint.py --dataset``
does).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Union

import torch

from .layout import layout_errors
from .official_layout import BACKBONE_BODY, infer_official_layout, official_state_dict_spec
from .resnet_keys import torchvision_resnet_key_to_d2

__all__ = ["class_rows_from_mapping", "convert_official_detr", "dataset_class_mapping"]

logger = logging.getLogger(__name__)

ClassSlots = Union[str, Mapping[int, int]]


def dataset_class_mapping(dataset_name: str) -> Dict[int, int]:
    """``{dataset category id: contiguous id}`` of a registered Detectron2 dataset, merging its
    metadata's ``thing_dataset_id_to_contiguous_id`` and ``stuff_dataset_id_to_contiguous_id``.

    ``coco_2017_val_panoptic`` (registered by Detectron2 itself) gives the standard 133 classes:
    things 1..90 -> 0..79, stuff 92..200 -> 80..132.
    """
    import detectron2.data.datasets  # noqa: F401  (registers Detectron2's builtin datasets)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if dataset_name not in DatasetCatalog.list():
        raise ValueError(
            f"dataset '{dataset_name}' is not registered with Detectron2 "
            "(e.g. coco_2017_val_panoptic, or a dataset registered by detr_d2)"
        )
    meta = MetadataCatalog.get(dataset_name)
    thing = dict(meta.get("thing_dataset_id_to_contiguous_id", {}) or {})
    stuff = dict(meta.get("stuff_dataset_id_to_contiguous_id", {}) or {})
    if not thing and not stuff:
        raise ValueError(
            f"dataset '{dataset_name}': metadata has neither thing_dataset_id_to_contiguous_id nor "
            "stuff_dataset_id_to_contiguous_id"
        )
    clash = {k for k in thing.keys() & stuff.keys() if thing[k] != stuff[k]}
    if clash:
        raise ValueError(
            f"dataset '{dataset_name}': ids {sorted(clash)} map to different contiguous ids "
            "as thing and stuff"
        )
    return {int(k): int(v) for k, v in {**stuff, **thing}.items()}


def class_rows_from_mapping(mapping: Mapping[int, int], num_slots: int) -> List[int]:
    """Rows of a ``num_slots``-way official classifier to keep for a dataset: ``[dataset id of
    contiguous 0..K-1] + [num_slots - 1]`` (the last row is no-object).

    ``mapping`` is ``{dataset id: contiguous id}`` with contiguous ids exactly 0..K-1, each once,
    and dataset ids in ``[0, num_slots - 2]``; otherwise ``ValueError``.
    """
    inverse: Dict[int, int] = {}
    for dataset_id, contiguous_id in mapping.items():
        if contiguous_id in inverse:
            raise ValueError(
                f"class mapping: contiguous id {contiguous_id} is used by dataset ids "
                f"{inverse[contiguous_id]} "
                f"and {dataset_id}"
            )
        inverse[int(contiguous_id)] = int(dataset_id)
    k = len(inverse)
    if k == 0 or sorted(inverse) != list(range(k)):
        raise ValueError(
            f"class mapping: contiguous ids must be exactly 0..{k - 1}; got "
            f"{sorted(inverse)[:10]}..."
        )
    out_of_range = sorted(d for d in inverse.values() if not 0 <= d < num_slots - 1)
    if out_of_range:
        raise ValueError(
            f"class mapping: dataset ids {out_of_range} have no row in a {num_slots}-way "
            "classifier "
            f"(valid ids 0..{num_slots - 2}; row {num_slots - 1} is no-object)"
        )
    return [inverse[c] for c in range(k)] + [num_slots - 1]


def convert_official_detr(
    state_dict: Mapping[str, torch.Tensor],
    *,
    class_slots: ClassSlots = "keep",
    backbone_prefix: str = "backbone.",
    source: str = "state dict",
) -> Dict[str, torch.Tensor]:
    """Convert an official DETR ``checkpoint["model"]`` to ``DetrPanoptic``'s names.

    Args:
        state_dict: the official weights (panoptic ``detr.*`` layout or detection layout).
        class_slots: ``"keep"`` (all 251 rows, logit index = dataset id) or ``{dataset id:
            contiguous id}`` (rows re-ordered to contiguous ids + no-object), see the module
            docstring.
        backbone_prefix: where the Detectron2 ResNet lives in the target model.
        source: name used in error messages (the file path).

    Returns a new ``{name: tensor}`` dict; every BN keeps its four buffers.

    Raises ``ValueError`` listing missing / unexpected / mis-shaped tensors, or a bad mapping.
    ``num_batches_tracked`` buffers (not in official files, harmless) are dropped.
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    layout = infer_official_layout(state_dict, source)
    template = official_state_dict_spec(layout)
    errors = layout_errors(state_dict, template)
    if errors:
        raise ValueError(
            f"{source}: does not match the official DETR layout inferred from it "
            f"({layout.describe()}): " + "; ".join(errors)
        )

    p = layout.prefix
    rows = None
    if not (isinstance(class_slots, str) and class_slots == "keep"):
        if isinstance(class_slots, str):
            raise ValueError(
                "class_slots must be 'keep' or a {dataset id: contiguous id} mapping, got "
                f"{class_slots!r}"
            )
        rows = torch.as_tensor(
            class_rows_from_mapping(class_slots, layout.num_classes + 1), dtype=torch.long
        )

    converted: Dict[str, torch.Tensor] = {}
    for key in template:  # official order; every key is present (checked above)
        value = state_dict[key]
        name = key[len(p) :] if key.startswith(p) else key
        if name.startswith(BACKBONE_BODY):
            name = backbone_prefix + torchvision_resnet_key_to_d2(name[len(BACKBONE_BODY) :])
        elif rows is not None and name in ("class_embed.weight", "class_embed.bias"):
            value = value.index_select(0, rows)
        if name in converted:
            raise AssertionError(f"two source keys map to {name}")  # cannot happen with the rules
        converted[name] = value
    logger.info("%s: converted %d tensors (%s)", source, len(converted), layout.describe())
    return converted
