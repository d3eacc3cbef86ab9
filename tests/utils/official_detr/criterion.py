"""DETR's training criterion as published (facebookresearch/detr ``models/matcher.py``,
``models/detr.py`` ``SetCriterion`` and ``build``, ``models/segmentation.py`` losses,
``util/box_ops.py``), for the reference oracle: the official stage-2 (mask head) training step the
benchmarks compare against.

Conventions (official): ``outputs`` ``pred_logits`` (B, Q, K+1) (last = no object), ``pred_boxes``
(B, Q, 4) normalised cxcywh, ``pred_masks`` (B, Q, Hm, Wm) logits of **every** query, optional
``aux_outputs``; ``targets`` per image ``labels`` (N,) class slots (dataset ids), ``boxes`` (N, 4)
normalised cxcywh, ``masks`` (N, H, W) at the image's input size. The mask losses take the matched
queries' masks from ``pred_masks`` (computed for all queries by the model), upsample them bilinearly
to the zero-padded target size and apply the sigmoid focal loss (alpha 0.25, gamma 2) and the dice
loss. Losses are unweighted; ``weight_dict`` holds the weights, and the training step sums
``loss_dict[k] * weight_dict[k]`` over the keys present in both (as ``engine.train_one_epoch``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .inputs import nested_tensor_from_tensor_list

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "box_cxcywh_to_xyxy",
    "build_official_criterion",
    "dice_loss",
    "generalized_box_iou",
    "sigmoid_focal_loss",
]


# --------------------------------------------------------------------------------------------------
# util/box_ops.py
# --------------------------------------------------------------------------------------------------
def box_cxcywh_to_xyxy(x: Tensor) -> Tensor:
    x_c, y_c, w, h = x.unbind(-1)
    return torch.stack([(x_c - 0.5 * w), (y_c - 0.5 * h), (x_c + 0.5 * w), (y_c + 0.5 * h)], dim=-1)


def _box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_iou(boxes1: Tensor, boxes2: Tensor) -> Tuple[Tensor, Tensor]:
    area1, area2 = _box_area(boxes1), _box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """(N, M) GIoU of xyxy boxes (degenerate boxes are an error, as in the official code)."""
    assert (boxes1[:, 2:] >= boxes1[:, :2]).all()
    assert (boxes2[:, 2:] >= boxes2[:, :2]).all()
    iou, union = _box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


# --------------------------------------------------------------------------------------------------
# models/matcher.py
# --------------------------------------------------------------------------------------------------
class HungarianMatcher(nn.Module):
    """Cost = cost_class * (-p[target class]) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU)."""

    def __init__(self, cost_class: float = 1, cost_bbox: float = 1, cost_giou: float = 1):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        assert cost_class != 0 or cost_bbox != 0 or cost_giou != 0, "all costs cant be 0"

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tuple[Tensor, Tensor]]:
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1)
        tgt_ids = torch.cat([v["labels"] for v in targets])
        tgt_bbox = torch.cat([v["boxes"] for v in targets])
        cost_class = -out_prob[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        c = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        c = c.view(bs, num_queries, -1).cpu()
        sizes = [len(v["boxes"]) for v in targets]
        indices = [linear_sum_assignment(m[i]) for i, m in enumerate(c.split(sizes, -1))]
        return [
            (torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64))
            for i, j in indices
        ]


# --------------------------------------------------------------------------------------------------
# models/segmentation.py losses
# --------------------------------------------------------------------------------------------------
def dice_loss(inputs: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    inputs = inputs.sigmoid()
    inputs = inputs.flatten(1)
    numerator = 2 * (inputs * targets).sum(1)
    denominator = inputs.sum(-1) + targets.sum(-1)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_boxes


def sigmoid_focal_loss(
    inputs: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2
) -> Tensor:
    prob = inputs.sigmoid()
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss.mean(1).sum() / num_boxes


# --------------------------------------------------------------------------------------------------
# models/detr.py SetCriterion
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def _accuracy(output: Tensor, target: Tensor) -> Tensor:
    """util/misc.py ``accuracy`` with topk=(1,): percentage of correct top-1 predictions."""
    if target.numel() == 0:
        return torch.zeros([], device=output.device)
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return correct[:1].view(-1).float().sum(0) * (100.0 / target.size(0))


class SetCriterion(nn.Module):
    """Hungarian matching on the last decoder layer, then the requested losses (``labels``,
    ``cardinality``, ``boxes``, ``masks``); auxiliary layers get every loss but ``masks``."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str],
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(self.num_classes + 1)
        empty_weight[-1] = self.eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def loss_labels(self, outputs, targets, indices, num_boxes, log=True):
        src_logits = outputs["pred_logits"]
        idx = self._get_src_permutation_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(
            src_logits.shape[:2], self.num_classes, dtype=torch.int64, device=src_logits.device
        )
        target_classes[idx] = target_classes_o
        loss_ce = F.cross_entropy(src_logits.transpose(1, 2), target_classes, self.empty_weight)
        losses = {"loss_ce": loss_ce}
        if log:
            losses["class_error"] = 100 - _accuracy(src_logits[idx], target_classes_o)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes):
        pred_logits = outputs["pred_logits"]
        tgt_lengths = torch.as_tensor(
            [len(v["labels"]) for v in targets], device=pred_logits.device
        )
        card_pred = (pred_logits.argmax(-1) != pred_logits.shape[-1] - 1).sum(1)
        return {"cardinality_error": F.l1_loss(card_pred.float(), tgt_lengths.float())}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        idx = self._get_src_permutation_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]
        target_boxes = torch.cat([t["boxes"][i] for t, (_, i) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none")
        loss_giou = 1 - torch.diag(
            generalized_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))
        )
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def loss_masks(self, outputs, targets, indices, num_boxes):
        """Index the matched queries out of ``pred_masks`` (all queries' masks), upsample to the
        padded target size, focal + dice against the zero-padded target masks."""
        src_idx = self._get_src_permutation_idx(indices)
        tgt_idx = self._get_tgt_permutation_idx(indices)
        src_masks = outputs["pred_masks"]
        src_masks = src_masks[src_idx]
        masks = [t["masks"] for t in targets]
        target_masks, _valid = nested_tensor_from_tensor_list(masks).decompose()
        target_masks = target_masks.to(src_masks)
        target_masks = target_masks[tgt_idx]
        src_masks = F.interpolate(
            src_masks[:, None], size=target_masks.shape[-2:], mode="bilinear", align_corners=False
        )
        src_masks = src_masks[:, 0].flatten(1)
        target_masks = target_masks.flatten(1)
        target_masks = target_masks.view(src_masks.shape)
        return {
            "loss_mask": sigmoid_focal_loss(src_masks, target_masks, num_boxes),
            "loss_dice": dice_loss(src_masks, target_masks, num_boxes),
        }

    @staticmethod
    def _get_src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    @staticmethod
    def _get_tgt_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(tgt, i) for i, (_, tgt) in enumerate(indices)])
        tgt_idx = torch.cat([tgt for (_, tgt) in indices])
        return batch_idx, tgt_idx

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
        loss_map = {
            "labels": self.loss_labels,
            "cardinality": self.loss_cardinality,
            "boxes": self.loss_boxes,
            "masks": self.loss_masks,
        }
        assert loss in loss_map, f"do you really want to compute {loss} loss?"
        return loss_map[loss](outputs, targets, indices, num_boxes, **kwargs)

    def forward(self, outputs, targets) -> Dict[str, Tensor]:
        outputs_without_aux = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        indices = self.matcher(outputs_without_aux, targets)
        num_boxes = sum(len(t["labels"]) for t in targets)
        num_boxes = torch.as_tensor(
            [num_boxes], dtype=torch.float, device=next(iter(outputs.values())).device
        )
        # single process: no all_reduce, world size 1
        num_boxes = torch.clamp(num_boxes, min=1).item()
        losses: Dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(self.get_loss(loss, outputs, targets, indices, num_boxes))
        if "aux_outputs" in outputs:
            for i, aux_outputs in enumerate(outputs["aux_outputs"]):
                indices = self.matcher(aux_outputs, targets)
                for loss in self.losses:
                    if loss == "masks":
                        # intermediate masks losses are too costly to compute, we ignore them
                        continue
                    kwargs = {"log": False} if loss == "labels" else {}
                    l_dict = self.get_loss(loss, aux_outputs, targets, indices, num_boxes, **kwargs)
                    losses.update({k + f"_{i}": v for k, v in l_dict.items()})
        return losses


def build_official_criterion(
    *,
    num_classes: int = 250,
    masks: bool = True,
    aux_loss: bool = True,
    dec_layers: int = 6,
    set_cost_class: float = 1,
    set_cost_bbox: float = 5,
    set_cost_giou: float = 2,
    bbox_loss_coef: float = 5,
    giou_loss_coef: float = 2,
    mask_loss_coef: float = 1,
    dice_loss_coef: float = 1,
    eos_coef: float = 0.1,
) -> SetCriterion:
    """The criterion ``models/detr.py build(args)`` makes, defaults = ``main.py``'s argument
    defaults (panoptic: 250 class slots; ``--masks`` adds the mask losses; aux losses on unless
    ``--no_aux_loss``)."""
    matcher = HungarianMatcher(
        cost_class=set_cost_class, cost_bbox=set_cost_bbox, cost_giou=set_cost_giou
    )
    weight_dict = {"loss_ce": 1, "loss_bbox": bbox_loss_coef}
    weight_dict["loss_giou"] = giou_loss_coef
    if masks:
        weight_dict["loss_mask"] = mask_loss_coef
        weight_dict["loss_dice"] = dice_loss_coef
    if aux_loss:
        aux_weight_dict = {}
        for i in range(dec_layers - 1):
            aux_weight_dict.update({k + f"_{i}": v for k, v in weight_dict.items()})
        weight_dict.update(aux_weight_dict)
    losses = ["labels", "boxes", "cardinality"]
    if masks:
        losses += ["masks"]
    return SetCriterion(
        num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=eos_coef, losses=losses
    )
