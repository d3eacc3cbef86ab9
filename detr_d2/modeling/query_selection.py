"""Which queries of one image each output reads, decided once per image from one softmax.

DETR's rules (facebookresearch/detr at 29901c5: ``PostProcessPanoptic`` in
``models/segmentation.py``, ``PostProcess`` in ``models/detr.py``):

- panoptic fusion: the argmax over all S+1 softmax outputs is a class (not no-object, not an
  unused slot) with a score above ``TEST.OBJECT_MASK_THRESHOLD``;
- ``instances``: the best real class is a thing with a score above
  ``TEST.INSTANCE_SCORE_THRESHOLD``;
- ``sem_seg``: every query (a sum over queries).

The masks computed for an image are those of the union (every query with
``MODEL.DETR.ALL_QUERY_MASKS``), passed on as per-image masks + these sorted query indices.
"""

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .fusion import class_predictions_from_probs

__all__ = ["QuerySelection", "select_queries"]


class QuerySelection(NamedTuple):
    """The decisions of one image with Q queries and S class slots."""

    probs: Tensor  # (Q, S+1) float32 softmax of the class logits
    scores: Tensor  # (Q,) the largest of the S+1 probabilities
    labels: Tensor  # (Q,) its contiguous class id (S: no-object, -1: unused slot)
    panoptic: Tensor  # sorted indices of the queries the panoptic fusion keeps
    thing_scores: Tensor  # (Q,) the largest probability of a real class
    thing_labels: Tensor  # (Q,) its contiguous class id (-1: unused slot)
    instances: Tensor  # (Q,) bool: the query is output as an instance
    masks: Tensor  # sorted indices of the queries whose masks are computed


def select_queries(
    logits: Tensor,
    is_thing: Tensor,
    label_map: Optional[Tensor],
    *,
    threshold: float,
    instance_score_threshold: float,
    panoptic: bool,
    instances: bool,
    every_mask: bool,
) -> QuerySelection:
    """The :class:`QuerySelection` of one image's ``logits`` (Q, S+1). ``is_thing``: (C,) bool per
    contiguous id; ``label_map``: (S,) slot -> contiguous id (-1: unused), None when slots are
    contiguous ids; ``panoptic`` / ``instances``: the outputs that read masks; ``every_mask``: the
    masks of all queries (``sem_seg`` or ``MODEL.DETR.ALL_QUERY_MASKS``)."""
    q, num_slots = logits.shape[0], logits.shape[-1] - 1
    slots_to_ids = (
        label_map if label_map is not None else torch.arange(num_slots, device=logits.device)
    )
    probs = logits.float().softmax(-1)
    scores, labels = class_predictions_from_probs(probs, slots_to_ids)
    keep = (labels != num_slots) & (scores > threshold) & (labels >= 0)
    thing_scores, thing_labels = probs[:, :-1].max(-1)
    if label_map is not None:
        thing_labels = label_map.to(thing_labels.device)[thing_labels]
    is_instance = thing_labels >= 0
    is_instance[is_instance.clone()] = is_thing.to(thing_labels.device)[thing_labels[is_instance]]
    is_instance = is_instance & (thing_scores > instance_score_threshold)
    if every_mask:
        masks = torch.arange(q, device=logits.device)
    else:
        need = torch.zeros(q, dtype=torch.bool, device=logits.device)
        if panoptic:
            need |= keep
        if instances:
            need |= is_instance
        masks = need.nonzero().flatten()
    return QuerySelection(
        probs,
        scores,
        labels,
        keep.nonzero().flatten(),
        thing_scores,
        thing_labels,
        is_instance,
        masks,
    )
