"""DETR's set criterion: CE (with a no-object weight), L1 + GIoU on boxes, sigmoid focal + dice on
masks.

Targets per image: ``labels`` (N,) int64 class slots, ``boxes`` (N, 4) cxcywh normalised by the
image's own (unpadded) size, ``masks`` (N, H, W) bool at the image's input resolution (only for mask
losses). Each loss is normalised by the number of target segments in the whole (distributed) batch.

Group DETR (``forward(..., num_groups=K)``, training only): the queries form K equal groups, each
matched one-to-one to all targets on its own; every loss is the average over the groups of the
single-group loss (box and mask losses: summed over the K matched sets and normalised by K x the
number of targets; the classification loss: the weighted mean over all queries, which equals the
average of the groups' means because every group has the same numbers of matched and unmatched
queries). ``class_error`` is over the matched queries of all groups.

Duplicate suppression (``duplicate_no_object_weight``, training only): an unmatched query whose
predicted box overlaps a target box of its image with IoU >= ``duplicate_iou_threshold`` (a
duplicate of that target, or a near miss) is pushed to "no object" with this weight instead of
``eos_coef``; the classification loss is then the weighted mean over each group's queries, averaged
over the groups.

Follows ``SetCriterion`` in ``models/detr.py`` (facebookresearch/detr at 29901c5); the focal and
dice mask losses are computed together (``mask_losses.sigmoid_focal_dice_loss``).
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import Tensor, nn
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from .mask_losses import sigmoid_focal_dice_loss
from .matcher import HungarianMatcher

# Per-image sorted query indices -> per-image mask logits (n_i, Hm, Wm) of those queries.
QueryMaskFn = Callable[[Sequence[Tensor]], List[Tensor]]


def bilinear_matrix(in_size: int, out_size: int, device=None) -> Tensor:
    """(out_size, in_size) float32 weights of 1-d linear interpolation as ``F.interpolate(...,
    mode="bilinear", align_corners=False)`` computes them for an output ``size`` (PyTorch's
    ``area_pixel_compute_source_index`` and ``compute_indices_weights_linear``, ATen/native
    UpSample.h / cpu/UpSampleKernel.cpp, v2.3.1): source ``(dst + 0.5) * in/out - 0.5`` clamped at
    0, the two neighbours weighted by distance, the last row repeated at the border."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.long()
    lam1 = (src - i0).clamp(0, 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    rows = torch.arange(out_size)
    m = torch.zeros(out_size, in_size)
    m.index_put_((rows, i0), 1 - lam1, accumulate=True)
    m.index_put_((rows, i1), lam1, accumulate=True)
    return m.to(device)


def upsample_bilinear(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """``F.interpolate(x[:, None], size, mode="bilinear", align_corners=False)[:, 0]`` for ``x``
    (N, h, w) float32, as two matrix products (``A_h @ x @ A_w^T``, :func:`bilinear_matrix`): the
    same weights and sums up to float rounding, but its backward is two matrix products too,
    where PyTorch's CPU ``upsample_bilinear2d_backward`` scatters pixel by pixel (the single
    slowest kernel of the quickstart's training step). Runs in float32 under autocast, as the
    interpolation did."""
    a_h = bilinear_matrix(x.shape[-2], size[0], x.device)
    a_w = bilinear_matrix(x.shape[-1], size[1], x.device)
    with torch.autocast(x.device.type, enabled=False):
        return torch.matmul(torch.matmul(a_h, x.float()), a_w.t())


class SetCriterion(nn.Module):
    """Hungarian-matched losses. ``forward`` returns *unweighted* losses named ``loss_ce``,
    ``loss_bbox``, ``loss_giou``, ``loss_mask``, ``loss_dice`` (+ ``_{i}`` for auxiliary decoder
    layer i); ``weight_dict`` holds their weights."""

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "boxes", "masks"),
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        duplicate_no_object_weight: Optional[float] = None,
        duplicate_iou_threshold: float = 0.5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = list(losses)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.duplicate_no_object_weight = duplicate_no_object_weight
        self.duplicate_iou_threshold = duplicate_iou_threshold
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @staticmethod
    def _src_idx(indices: List[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tensor]:
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def loss_labels(
        self, outputs, targets, indices, num_boxes, num_groups: int = 1
    ) -> Dict[str, Tensor]:
        logits = outputs["pred_logits"]
        idx = self._src_idx(indices)
        target_classes_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        target_classes[idx] = target_classes_o
        if self.duplicate_no_object_weight is None:
            loss_ce = F.cross_entropy(
                logits.transpose(1, 2).float(), target_classes, self.empty_weight
            )
        else:
            weight = self.empty_weight[target_classes]
            near = self._near_target(outputs["pred_boxes"], targets) & (
                target_classes == self.num_classes
            )
            weight = torch.where(near, weight.new_tensor(self.duplicate_no_object_weight), weight)
            ce = F.cross_entropy(logits.transpose(1, 2).float(), target_classes, reduction="none")
            grouped = (
                ce.shape[0],
                num_groups,
                -1,
            )  # per group: weighted mean over its queries of all images
            loss_ce = (
                (ce * weight).view(grouped).sum((0, 2)) / weight.view(grouped).sum((0, 2))
            ).mean()
        out = {"loss_ce": loss_ce}
        if target_classes_o.numel():
            acc = (logits[idx].argmax(-1) == target_classes_o).float().mean() * 100
            out["class_error"] = (100 - acc).detach()
        return out

    def _near_target(self, pred_boxes: Tensor, targets: List[Dict[str, Tensor]]) -> Tensor:
        """(B, Q) bool: the query's box (cxcywh normalised, detached) has IoU >=
        ``duplicate_iou_threshold`` with some target box of its image.

        All images in one ``box_iou`` of every query box with every target box of the batch (as
        the matcher's costs), other images' targets masked out: each pair's IoU is the one computed
        image by image (the same element-wise operations), so the result is identical to a loop
        over the images (``tests/utils/speed_oracles.py``)."""
        bs, num_queries = pred_boxes.shape[:2]
        device = pred_boxes.device
        counts = [len(t["boxes"]) for t in targets]
        if sum(counts) == 0:
            return torch.zeros((bs, num_queries), dtype=torch.bool, device=device)
        sizes = torch.tensor(counts, device=device)
        iou = box_iou(
            box_convert(pred_boxes.detach().flatten(0, 1).float(), "cxcywh", "xyxy"),
            box_convert(torch.cat([t["boxes"] for t in targets]).float(), "cxcywh", "xyxy"),
        )  # (B * Q, all targets)
        images = torch.arange(bs, device=device)
        own = images.repeat_interleave(num_queries)[:, None] == images.repeat_interleave(
            sizes, output_size=sum(counts)
        )  # output_size: no device sync on CUDA
        best = iou.masked_fill(~own, float("-inf")).max(1).values.view(bs, num_queries)
        # images without targets: never near (their rows are all -inf, which a threshold of -inf
        # would still pass; the loop skipped them)
        return (best >= self.duplicate_iou_threshold) & (sizes > 0)[:, None]

    def loss_boxes(self, outputs, targets, indices, num_boxes) -> Dict[str, Tensor]:
        idx = self._src_idx(indices)
        src_boxes = outputs["pred_boxes"][idx].float()
        target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, target_boxes, reduction="none").sum() / num_boxes
        giou = generalized_box_iou(
            box_convert(src_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        loss_giou = (1 - torch.diag(giou)).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def loss_masks(
        self, outputs, targets, indices, num_boxes, mask_fn: Optional[QueryMaskFn] = None
    ) -> Dict[str, Tensor]:
        """Predicted stride-4 logits of the padded batch are upsampled (bilinear,
        :func:`upsample_bilinear`) to the padded input size; target masks are zero-padded to that
        size (as DETR's ``nested_tensor_from_tensor_list``); focal and dice losses:
        :func:`~detr_d2.modeling.mask_losses.sigmoid_focal_dice_loss`.

        The logits of the matched queries come from ``outputs["pred_masks"]`` (B, Q, Hm, Wm) when
        present, else from ``mask_fn`` (per-image sorted query indices -> per-image (n_i, Hm, Wm)
        logits), which computes those queries' masks only."""
        if "pred_masks" in outputs:
            pred_masks = outputs["pred_masks"]
            src_masks = pred_masks[self._src_idx(indices)]
            if src_masks.shape[0] == 0:
                return {"loss_mask": pred_masks.sum() * 0.0, "loss_dice": pred_masks.sum() * 0.0}
        else:
            if sum(len(src) for src, _ in indices) == 0:
                # No target in the batch: run the head on one query so its parameters stay in the
                # graph (DistributedDataParallel expects a gradient for every parameter), with zero
                # loss.
                zero = (
                    mask_fn([indices[0][0].new_zeros(1)] + [src for src, _ in indices[1:]])[0].sum()
                    * 0.0
                )
                return {"loss_mask": zero, "loss_dice": zero}
            src_masks = torch.cat(mask_fn([src for src, _ in indices]))
        pad_h = max(t["masks"].shape[-2] for t in targets)
        pad_w = max(t["masks"].shape[-1] for t in targets)
        tgt = [
            F.pad(
                t["masks"][j].bool(),
                (0, pad_w - t["masks"].shape[-1], 0, pad_h - t["masks"].shape[-2]),
            )
            for t, (_, j) in zip(targets, indices)
        ]
        target_masks = torch.cat(tgt).flatten(1)
        src_masks = upsample_bilinear(src_masks.float(), (pad_h, pad_w)).flatten(1)
        focal, dice = sigmoid_focal_dice_loss(
            src_masks, target_masks, num_boxes, self.focal_alpha, self.focal_gamma
        )
        return {"loss_mask": focal, "loss_dice": dice}

    def _compute(
        self, loss: str, outputs, targets, indices, num_boxes, mask_fn=None, num_groups: int = 1
    ) -> Dict[str, Tensor]:
        if loss == "masks":
            return self.loss_masks(outputs, targets, indices, num_boxes, mask_fn)
        if loss == "labels":
            return self.loss_labels(outputs, targets, indices, num_boxes, num_groups)
        if loss == "boxes":
            return self.loss_boxes(outputs, targets, indices, num_boxes)
        raise KeyError(f"SetCriterion: unknown loss {loss!r} (expected labels, boxes or masks)")

    def forward(
        self,
        outputs: Dict,
        targets: List[Dict[str, Tensor]],
        mask_fn: Optional[QueryMaskFn] = None,
        num_groups: int = 1,
    ) -> Dict[str, Tensor]:
        """``outputs``: ``pred_logits``, ``pred_boxes``, optional ``pred_masks`` and
        ``aux_outputs``; ``mask_fn``: computes the masks of the matched queries when ``pred_masks``
        is absent (the matching uses class and box costs only, so it is known before any mask is
        computed: with groups, the matched queries of all groups go to ``mask_fn`` in one call).
        ``num_groups``: Group DETR's query groups (see the module docstring); 1 = DETR."""
        indices = self.matcher(outputs, targets, num_groups)
        num_boxes = torch.as_tensor(
            [float(sum(len(t["labels"]) for t in targets))], device=outputs["pred_logits"].device
        )
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_boxes)
        # each group matches every target once: normalising the K groups' sums by K x the targets
        # averages them
        num_boxes = torch.clamp(num_boxes / comm.get_world_size(), min=1).item() * num_groups

        losses: Dict[str, Tensor] = {}
        for loss in self.losses:
            losses.update(
                self._compute(loss, outputs, targets, indices, num_boxes, mask_fn, num_groups)
            )
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_indices = self.matcher(aux, targets, num_groups)
            for loss in self.losses:
                if loss == "masks":  # intermediate layers have no masks
                    continue
                l_dict = self._compute(
                    loss, aux, targets, aux_indices, num_boxes, num_groups=num_groups
                )
                losses.update({f"{k}_{i}": v for k, v in l_dict.items() if k != "class_error"})
        return losses
