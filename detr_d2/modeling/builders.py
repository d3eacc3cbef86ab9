"""The transformer and the criterion of ``DetrPanoptic`` from a config (DETR's ``build`` in
``models/detr.py``, facebookresearch/detr at 29901c5; keys in ``detr_d2/config.py``)."""

from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .transformer import Transformer

__all__ = ["build_criterion", "build_transformer"]


def build_transformer(cfg) -> Transformer:
    d = cfg.MODEL.DETR
    return Transformer(
        d_model=d.HIDDEN_DIM,
        nhead=d.NHEADS,
        num_encoder_layers=d.ENC_LAYERS,
        num_decoder_layers=d.DEC_LAYERS,
        dim_feedforward=d.DIM_FEEDFORWARD,
        dropout=d.DROPOUT,
        normalize_before=d.PRE_NORM,
    )


def build_criterion(cfg, num_slots: int) -> SetCriterion:
    """Hungarian matcher (class, L1, GIoU costs) and DETR's losses with their weights: CE + L1 +
    GIoU, focal + dice on masks (``MODEL.MASK_ON``), the box/class losses of every decoder layer
    (``DEEP_SUPERVISION``), duplicate suppression when enabled."""
    d = cfg.MODEL.DETR
    matcher = HungarianMatcher(
        cost_class=d.COST_CLASS, cost_bbox=d.COST_BBOX, cost_giou=d.COST_GIOU
    )
    weight_dict = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
    losses = ["labels", "boxes"]
    if cfg.MODEL.MASK_ON:
        weight_dict.update({"loss_mask": d.MASK_WEIGHT, "loss_dice": d.DICE_WEIGHT})
        losses.append("masks")
    if d.DEEP_SUPERVISION:
        base = {k: v for k, v in weight_dict.items() if k not in ("loss_mask", "loss_dice")}
        for i in range(d.DEC_LAYERS - 1):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    ds = d.DUPLICATE_SUPPRESSION
    return SetCriterion(
        num_slots,
        matcher,
        weight_dict,
        eos_coef=d.NO_OBJECT_WEIGHT,
        losses=losses,
        focal_alpha=d.FOCAL_ALPHA,
        focal_gamma=d.FOCAL_GAMMA,
        duplicate_no_object_weight=ds.DUPLICATE_CLASS_WEIGHT if ds.ENABLED else None,
        duplicate_iou_threshold=ds.IOU_THRESHOLD,
    )
