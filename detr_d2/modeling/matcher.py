"""Hungarian matching between DETR's predictions and ground-truth segments (scipy's
``linear_sum_assignment``). Boxes are normalised (cx, cy, w, h) in [0, 1].

Follows ``HungarianMatcher`` in ``models/matcher.py`` (facebookresearch/detr at 29901c5).
"""

from typing import Dict, List, Tuple

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


class HungarianMatcher(nn.Module):
    """Cost = cost_class * (-p[class]) + cost_bbox * L1(cxcywh) + cost_giou * (-GIoU(xyxy))."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError(
                "HungarianMatcher: all costs are 0 (MODEL.DETR.COST_CLASS/COST_BBOX/COST_GIOU)"
            )
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]]
    ) -> List[Tensor]:
        """Per image, the (Q, num_targets_i) cost matrix on the CPU."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        out_prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)
        out_bbox = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets]).float()
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            return [out_bbox.new_zeros((num_queries, 0)).cpu() for _ in targets]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_class = -out_prob[:, tgt_ids]
        cost_giou = -generalized_box_iou(
            box_convert(out_bbox, "cxcywh", "xyxy"), box_convert(tgt_bbox, "cxcywh", "xyxy")
        )
        c = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        c = c.view(bs, num_queries, -1).cpu()
        return [m[i] for i, m in enumerate(c.split(sizes, -1))]

    @torch.no_grad()
    def forward(
        self, outputs: Dict[str, Tensor], targets: List[Dict[str, Tensor]], num_groups: int = 1
    ) -> List[Tuple[Tensor, Tensor]]:
        """outputs: ``pred_logits`` (B, Q, K+1), ``pred_boxes`` (B, Q, 4) cxcywh normalised;
        targets: per image ``labels`` (N_i,) and ``boxes`` (N_i, 4) cxcywh normalised.
        Returns per image (query_indices, target_indices), int64, sorted by query index.

        ``num_groups`` > 1 (Group DETR): the Q queries are that many equal groups, group-major; each
        group is matched one-to-one to all targets on its own (every target is matched once per
        group) and the indices of group g are offset by g * Q / num_groups."""
        out = []
        for c in self.cost_matrices(outputs, targets):
            if c.shape[0] % num_groups:
                raise ValueError(
                    f"HungarianMatcher: {c.shape[0]} queries cannot form {num_groups} equal groups"
                )
            size = c.shape[0] // num_groups
            rows, cols = [], []
            for g in range(num_groups):
                i, j = linear_sum_assignment(c[g * size : (g + 1) * size].numpy())
                rows.append(torch.as_tensor(i, dtype=torch.int64) + g * size)
                cols.append(torch.as_tensor(j, dtype=torch.int64))
            out.append((torch.cat(rows), torch.cat(cols)))
        return out
