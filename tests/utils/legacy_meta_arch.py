"""Test oracle: ``DetrPanoptic`` as it was before the split of issue 20 item 3 (main at 2c93145:
masks in two formats, the keep rule evaluated in ``mask_queries`` and again in the fusion), not
registered. ``tests/test_modeling_meta_arch_oracle.py`` requires the new model to give the same
losses and outputs.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn
from torchvision.ops import box_convert

from detr_d2.checkpoint.weight_loading import (
    MASK_HEAD_PREFIXES,
    adapt_group_queries,
    load_and_freeze_detector,
    load_mask_head,
)
from detr_d2.config_rules import validate_detr_config
from detr_d2.data.datasets.panoptic_metadata import class_slots
from detr_d2.data.datasets.register_from_file import register_datasets_from_config
from detr_d2.modeling.batch_invariance import (
    BatchInvariantBackbone,
    ceil_padding_mask,
    resize_padding_mask,
)
from detr_d2.modeling.criterion import SetCriterion
from detr_d2.modeling.fusion import segments_info_from_tensors
from detr_d2.modeling.mask_head import MaskHeadSmallConv, MHAttentionMap
from detr_d2.modeling.matcher import HungarianMatcher
from detr_d2.modeling.mlp import MLP
from detr_d2.modeling.panoptic_inference import (
    instance_inference,
    instance_queries,
    panoptic_fusion_tensors,
    panoptic_queries,
    semantic_inference,
)
from detr_d2.modeling.position_encoding import PositionEmbeddingSine
from detr_d2.modeling.transformer import Transformer

logger = logging.getLogger(__name__)

__all__ = ["LegacyDetrPanoptic"]


def _image_cells(t: Tensor, i: int, cells: Tuple[int, int]) -> Tensor:
    """Image ``i`` of the batched map ``t`` (B, ..., H, W), its top-left ``cells`` = (h, w): (1,
    ..., h, w)."""
    return t[i : i + 1, ..., : cells[0], : cells[1]]


class LegacyDetrPanoptic(nn.Module):
    """DETR (+ panoptic mask head). See the module docstring for the input/output and key
    conventions."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        transformer: Transformer,
        num_classes: int,
        num_queries: int,
        criterion: SetCriterion,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        is_thing: Sequence[bool],
        label_map: Optional[Sequence[int]] = None,
        mask_on: bool = True,
        aux_loss: bool = True,
        in_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        frozen_weights: str = "",
        mask_head_weights: str = "",
        object_mask_threshold: float = 0.85,
        min_segment_area: int = 4,
        panoptic_on: bool = True,
        instance_on: bool = False,
        semantic_on: bool = False,
        instance_score_threshold: float = 0.0,
        crop_mask_padding: bool = True,
        segments_as_tensors: bool = False,
        mask_head_feature_norm: bool = False,
        batch_invariant: bool = True,
        all_query_masks: bool = False,
        num_query_groups: int = 1,
    ):
        """
        Args:
            backbone: a Detectron2 backbone whose ``in_features`` are, in order, strides 4, 8, 16,
                32 (only the last is needed without masks).
            num_classes: number of class slots S (classifier has S + 1 outputs, last = no object).
            is_thing: per contiguous class id.
            label_map: slot -> contiguous id (-1 for unused slots) when slots are dataset ids; None
                when slots are contiguous ids.
            frozen_weights: detection checkpoint to load and freeze; only the mask head then trains.
            mask_head_weights: a panoptic checkpoint whose ``bbox_attention.*``/``mask_head.*``
                (class-agnostic) initialise the mask head, e.g. a converted COCO one for stage 2 on
                another dataset.
            panoptic_on / instance_on / semantic_on: the outputs at inference; without masks only
                ``instance_on`` (boxes) is possible.
            instance_score_threshold: ``instances`` keep thing queries whose class score is above it
                (0: every thing query, as DETR's COCO detection evaluation).
            crop_mask_padding: crop each image's padding from the mask grid before resizing (False =
                DETR's published post-processor, wrong for padded batches).
            segments_as_tensors: ``panoptic_seg``'s segments as a dict of per-segment tensors (the
                format under ``torch.jit.trace``; ``TEST.PANOPTIC_SEGMENTS_AS_TENSORS``).
            batch_invariant: an image gives the same outputs alone and in a padded batch (see
                ``batch_invariance.py``); single images are unaffected (DETR's numbers are
                single-image).
            all_query_masks: compute the masks of all queries, in training and at inference, as
                official DETR does (for comparison); default: only the masks that are used.
            num_query_groups: Group DETR's K (training only; see the module docstring); 1 = DETR.

        The rules between these arguments' config keys are checked by
        :func:`~detr_d2.config_rules.validate_detr_config` in :meth:`from_config`.
        """
        super().__init__()
        self.backbone = backbone
        self.batch_invariant = BatchInvariantBackbone(backbone) if batch_invariant else None
        self.in_features = list(in_features)
        shapes = backbone.output_shape()
        for f in self.in_features:
            if f not in shapes:
                raise ValueError(
                    f"MODEL.DETR.IN_FEATURES: backbone has no output '{f}' (has {sorted(shapes)})"
                )
        self.feature_strides = [shapes[f].stride for f in self.in_features]
        hidden_dim, nheads = transformer.d_model, transformer.nhead
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_query_groups = num_query_groups
        # training-only queries of groups 1..K-1 (group-major); group 0 is query_embed, the
        # inference queries
        self.group_query_embed = None
        if num_query_groups > 1:
            self.group_query_embed = nn.Embedding((num_query_groups - 1) * num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(
            shapes[self.in_features[-1]].channels, hidden_dim, kernel_size=1
        )
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2)
        self.mask_on = mask_on
        if mask_on:
            self.bbox_attention = MHAttentionMap(hidden_dim, hidden_dim, nheads, dropout=0.0)
            fpn_dims = [shapes[f].channels for f in self.in_features[2::-1]]
            self.mask_head = MaskHeadSmallConv(hidden_dim + nheads, fpn_dims, hidden_dim)
            self.mask_stride = shapes[self.in_features[0]].stride
        self.mask_head_feature_norm = mask_head_feature_norm
        self.aux_loss = aux_loss
        self.criterion = criterion
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("is_thing", torch.tensor(list(is_thing), dtype=torch.bool), False)
        lm = None if label_map is None else torch.tensor(list(label_map), dtype=torch.int64)
        self.register_buffer("label_map", lm, False)
        if lm is not None:
            contig_to_slot = torch.full((len(is_thing),), -1, dtype=torch.int64)
            valid = lm >= 0
            contig_to_slot[lm[valid]] = valid.nonzero().flatten()
            self.register_buffer("contiguous_to_slot", contig_to_slot, False)
        else:
            self.contiguous_to_slot = None
        self.object_mask_threshold = object_mask_threshold
        self.min_segment_area = min_segment_area
        self.panoptic_on = panoptic_on
        self.instance_on = instance_on
        self.semantic_on = semantic_on
        self.instance_score_threshold = instance_score_threshold
        self.crop_mask_padding = crop_mask_padding
        self.segments_as_tensors = segments_as_tensors
        self.all_query_masks = all_query_masks
        self.frozen_weights = frozen_weights
        if frozen_weights:
            self.load_and_freeze_detector(frozen_weights)
        if mask_head_weights:
            self.load_mask_head(mask_head_weights)

    @classmethod
    def from_config(cls, cfg):
        validate_detr_config(cfg)  # every rule between config keys (config_rules.py)
        d = cfg.MODEL.DETR
        backbone = build_backbone(cfg)
        in_features = list(d.IN_FEATURES) if cfg.MODEL.MASK_ON else [d.IN_FEATURES[-1]]
        register_datasets_from_config(cfg)  # DATASETS.REGISTER_FILES: where the classes are read
        slots = class_slots(
            d.NUM_CLASSES,
            d.CLASS_SLOTS,
            list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN),
            all_things_without_metadata=d.ALL_THINGS_WITHOUT_METADATA,
        )
        transformer = Transformer(
            d_model=d.HIDDEN_DIM,
            nhead=d.NHEADS,
            num_encoder_layers=d.ENC_LAYERS,
            num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD,
            dropout=d.DROPOUT,
            normalize_before=d.PRE_NORM,
        )
        matcher = HungarianMatcher(
            cost_class=d.COST_CLASS, cost_bbox=d.COST_BBOX, cost_giou=d.COST_GIOU
        )
        weight_dict = {
            "loss_ce": d.CLASS_WEIGHT,
            "loss_bbox": d.L1_WEIGHT,
            "loss_giou": d.GIOU_WEIGHT,
        }
        losses = ["labels", "boxes"]
        if cfg.MODEL.MASK_ON:
            weight_dict.update({"loss_mask": d.MASK_WEIGHT, "loss_dice": d.DICE_WEIGHT})
            losses.append("masks")
        if d.DEEP_SUPERVISION:
            base = {k: v for k, v in weight_dict.items() if k not in ("loss_mask", "loss_dice")}
            for i in range(d.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = SetCriterion(
            slots.num_slots,
            matcher,
            weight_dict,
            eos_coef=d.NO_OBJECT_WEIGHT,
            losses=losses,
            focal_alpha=d.FOCAL_ALPHA,
            focal_gamma=d.FOCAL_GAMMA,
            duplicate_no_object_weight=d.DUPLICATE_SUPPRESSION.DUPLICATE_CLASS_WEIGHT
            if d.DUPLICATE_SUPPRESSION.ENABLED
            else None,
            duplicate_iou_threshold=d.DUPLICATE_SUPPRESSION.IOU_THRESHOLD,
        )
        t = cfg.TEST
        return {
            "backbone": backbone,
            "transformer": transformer,
            "num_classes": slots.num_slots,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "criterion": criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "is_thing": slots.is_thing,
            "label_map": slots.label_map,
            "mask_on": cfg.MODEL.MASK_ON,
            "aux_loss": d.DEEP_SUPERVISION,
            "in_features": in_features,
            "frozen_weights": d.FROZEN_WEIGHTS,
            "mask_head_weights": d.MASK_HEAD_WEIGHTS,
            "object_mask_threshold": t.OBJECT_MASK_THRESHOLD,
            "min_segment_area": t.MIN_SEGMENT_AREA,
            "panoptic_on": t.PANOPTIC_ON,
            "instance_on": t.INSTANCE_ON,
            "semantic_on": t.SEMANTIC_ON,
            "instance_score_threshold": t.INSTANCE_SCORE_THRESHOLD,
            "crop_mask_padding": t.CROP_MASK_PADDING,
            "segments_as_tensors": t.PANOPTIC_SEGMENTS_AS_TENSORS,
            "mask_head_feature_norm": d.MASK_HEAD_FEATURE_NORM,
            "batch_invariant": d.BATCH_INVARIANT,
            "all_query_masks": d.ALL_QUERY_MASKS,
            "num_query_groups": d.GROUP_DETR.NUM_QUERY_GROUPS,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ checkpoints (see
    # detr_d2/checkpoint/weight_loading.py)
    def mask_head_parameter_prefixes(self) -> Tuple[str, ...]:
        return MASK_HEAD_PREFIXES

    def load_and_freeze_detector(self, path: str) -> None:
        """Stage 2: load everything but the mask head from ``path`` and freeze it."""
        load_and_freeze_detector(self, path)

    def load_mask_head(self, path: str) -> None:
        """Initialise ``bbox_attention``/``mask_head`` from the panoptic checkpoint ``path``."""
        load_mask_head(self, path)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        """Group DETR's training-only queries load both ways
        (:func:`weight_loading.adapt_group_queries`)."""
        adapt_group_queries(self, state_dict, prefix)
        return super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> Tuple[ImageList, Tensor]:
        """Normalise, pad bottom/right with zeros (in normalised space) to the batch's max size, and
        build the (B, H, W) padding mask (True on padded pixels)."""
        images = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image")
            if (
                not isinstance(img, Tensor)
                or img.dim() != 3
                or img.shape[0] != self.pixel_mean.shape[0]
            ):
                raise ValueError(
                    f"batched_inputs[{i}]['image'] must be a ({self.pixel_mean.shape[0]}, H, "
                    "W) tensor, got "
                    f"{type(img).__name__}{'' if not isinstance(img, Tensor) else tuple(img.shape)}"
                )
            if img.shape[-1] < 1 or img.shape[-2] < 1:
                raise ValueError(f"batched_inputs[{i}]['image'] is empty: shape {tuple(img.shape)}")
            images.append((img.to(self.device).float() - self.pixel_mean) / self.pixel_std)
        images = ImageList.from_tensors(images, size_divisibility=0)
        b, _, hp, wp = images.tensor.shape
        mask = torch.ones((b, hp, wp), dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :h, :w] = False
        return images, mask

    def forward_detector(self, images: Tensor, pixel_mask: Tensor) -> Tuple[Dict, Dict]:
        """Backbone, transformer and the class/box heads.

        Returns ``outputs``: ``pred_logits`` (B, Q, S+1), ``pred_boxes`` (B, Q, 4) cxcywh in [0, 1]
        of each image's own size, ``aux_outputs`` (training with deep supervision); and ``state``,
        what the mask head reads: ``hs`` (B, Q, C) last decoder layer (in training with Group DETR,
        Q = K groups x the queries, group-major; at inference always group 0 only), ``memory`` and
        ``features`` (B, C, H/32, W/32: the encoder output and the projected res5), ``mask`` (B,
        H/32, W/32, True on padding), ``fpns`` [res4, res3, res2], ``sizes`` (each image's (h, w))
        and ``padded``.

        ``pixel_mask`` (B, H, W) is True on padding. Feature-level masks: DETR's legacy-nearest
        resize of the pixel mask; with ``batch_invariant`` the first ceil(h/stride) x ceil(w/stride)
        cells are valid (what a single image has). Both are identical to DETR for a single image."""
        valid = ~pixel_mask
        sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]
        padded = any(sz != tuple(images.shape[-2:]) for sz in sizes)
        if self.batch_invariant is not None and padded:
            with self.batch_invariant.active(sizes, tuple(images.shape[-2:])):
                feats = self.backbone(images)
        else:
            feats = self.backbone(images)
        feats = [feats[f] for f in self.in_features]
        src = feats[-1]
        if self.batch_invariant is not None and padded:
            mask = ceil_padding_mask(sizes, src.shape[-2:], self.feature_strides[-1], images.device)
        else:
            mask = resize_padding_mask(pixel_mask, src.shape[-2:])
        pos = self.position_encoding(mask).to(src.dtype)
        src_proj = self.input_proj(src)
        queries, groups = self.query_embed.weight, 1
        if self.training and self.group_query_embed is not None:
            queries, groups = (
                torch.cat([queries, self.group_query_embed.weight]),
                self.num_query_groups,
            )
        hs, memory = self.transformer(src_proj, mask, queries, pos, query_groups=groups)
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss and self.training:
            out["aux_outputs"] = [
                {"pred_logits": a, "pred_boxes": b}
                for a, b in zip(outputs_class[:-1], outputs_coord[:-1])
            ]
        feat = src_proj
        if self.mask_head_feature_norm:
            feat = feat / feat.pow(2).mean(1, keepdim=True).add(1e-6).sqrt()
        state = {
            "hs": hs[-1],
            "memory": memory,
            "features": feat,
            "mask": mask,
            "fpns": feats[2::-1] if self.mask_on else [],
            "sizes": sizes,
            "padded": padded,
        }
        return out, state

    def query_masks(
        self, state: Dict, queries: Sequence[Tensor], crop_to_image: bool
    ) -> List[Tensor]:
        """Mask logits of the given queries, image by image: ``queries[i]`` (n_i,) sorted query
        indices of image i -> (n_i, H_i, W_i) stride-4 mask logits. The attention maps
        (``bbox_attention``) and the FPN head (``mask_head``) run on these queries only; the
        image-feature part of the head's first convolution is computed once per image
        (``MaskHeadSmallConv.project_features``).

        ``crop_to_image``: run on each image's own region (ceil(h/stride) cells at every stride; the
        result an image gets alone), else on the whole padded batch grid (DETR's training
        computation)."""
        strides = self.feature_strides
        out = []
        for i, q in enumerate(queries):
            if crop_to_image:
                h, w = state["sizes"][i]
                cells = [(-(-h // s), -(-w // s)) for s in strides]
            else:
                cells = [tuple(f.shape[-2:]) for f in state["fpns"][::-1]] + [
                    tuple(state["mask"].shape[-2:])
                ]

            if len(q) == 0:
                out.append(state["features"].new_zeros((0, *cells[0])))
                continue

            m5 = _image_cells(state["mask"], i, cells[3])
            q = q.to(state["hs"].device)
            att = self.bbox_attention(
                state["hs"][i : i + 1, q], _image_cells(state["memory"], i, cells[3]), mask=m5
            )
            att = self._scale_attention(att, m5)
            feat = _image_cells(state["features"], i, cells[3])
            fpns = [_image_cells(f, i, cells[2 - k]) for k, f in enumerate(state["fpns"])]
            seg = self.mask_head(feat, att, fpns, projected=self.mask_head.project_features(feat))
            out.append(seg[:, 0])
        return out

    def all_masks(self, state: Dict, crop_to_image: bool) -> Tensor:
        """(B, Q, Hm, Wm) mask logits of every query (:meth:`query_masks` on all queries); with
        ``crop_to_image`` each image's masks fill its own region of the batch grid, zeros
        elsewhere."""
        b, q = state["hs"].shape[:2]
        every = torch.arange(q, device=state["hs"].device)
        masks = self.query_masks(state, [every] * b, crop_to_image)
        out = masks[0].new_zeros((b, q, *state["fpns"][-1].shape[-2:]))
        for i, m in enumerate(masks):
            out[i, :, : m.shape[-2], : m.shape[-1]] = m
        return out

    def forward_network(self, images: Tensor, pixel_mask: Tensor) -> Dict:
        """Raw DETR outputs with every query's mask (as official DETR): ``pred_logits`` (B, Q, S+1),
        ``pred_boxes`` (B, Q, 4) cxcywh in [0, 1] of each image's own size, ``pred_masks`` (B, Q,
        H/4, W/4) logits (with masks; at inference each image's own region with
        ``batch_invariant``), ``aux_outputs``
        (training). For inspection and comparison; ``forward`` computes only the masks it uses."""
        out, state = self.forward_detector(images, pixel_mask)
        if self.mask_on:
            crop = self.batch_invariant is not None and state["padded"] and not self.training
            out["pred_masks"] = self.all_masks(state, crop_to_image=crop)
        return out

    def _scale_attention(self, bbox_mask: Tensor, mask: Tensor) -> Tensor:
        """With ``mask_head_feature_norm`` (not in official DETR; for training from scratch): the
        attention maps (B, Q, nheads, H, W), which sum to 1 over heads x valid positions, are scaled
        so a uniform map is 1, matching the unit-RMS features they are concatenated with; otherwise
        every query gets nearly the same mask."""
        if not self.mask_head_feature_norm:
            return bbox_mask
        valid = (~mask).flatten(1).sum(1).to(bbox_mask.dtype) * bbox_mask.shape[2]
        return bbox_mask * valid.view(-1, 1, 1, 1, 1)

    def forward(self, batched_inputs: List[Dict]):
        images, pixel_mask = self.preprocess_image(batched_inputs)
        outputs, state = self.forward_detector(images.tensor, pixel_mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            mask_fn = None
            if self.mask_on:
                if self.all_query_masks:
                    outputs["pred_masks"] = self.all_masks(state, crop_to_image=False)
                else:
                    mask_fn = lambda queries: self.query_masks(state, queries, crop_to_image=False)  # noqa: E731
            losses = self.criterion(outputs, targets, mask_fn, num_groups=self.num_query_groups)
            class_error = losses.pop("class_error", None)
            if class_error is not None:
                try:
                    get_event_storage().put_scalar("class_error", float(class_error))
                except AssertionError:  # no EventStorage outside a trainer
                    pass
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        return self.inference(outputs, state, batched_inputs, images.image_sizes)

    # ------------------------------------------------------------------ targets
    def prepare_targets(
        self, batched_inputs: List[Dict], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        targets = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            inst: Optional[Instances] = x.get("instances")
            if inst is None:
                raise ValueError(
                    f"batched_inputs[{i}] has no 'instances' (training needs a mapper that "
                    "adds them)"
                )
            inst = inst.to(self.device)
            if inst.has("gt_is_crowd") and len(inst):
                inst = inst[~inst.gt_is_crowd.bool()]
            classes = inst.gt_classes.long()
            if len(classes) and (classes.min() < 0 or classes.max() >= len(self.is_thing)):
                raise ValueError(
                    f"batched_inputs[{i}] ({x.get('file_name', '?')}): gt_classes "
                    f"{classes.tolist()} outside "
                    f"0..{len(self.is_thing) - 1}; MODEL.DETR.NUM_CLASSES / dataset metadata "
                    "mismatch"
                )
            if self.contiguous_to_slot is not None:
                classes = self.contiguous_to_slot[classes]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = (
                box_convert(inst.gt_boxes.tensor.float() / scale, "xyxy", "cxcywh")
                if len(inst)
                else torch.zeros((0, 4), device=self.device)
            )
            t = {"labels": classes, "boxes": boxes}
            if self.mask_on:
                if not inst.has("gt_masks"):
                    raise ValueError(
                        f"batched_inputs[{i}]: instances have no gt_masks but MODEL.MASK_ON is True"
                    )
                gm = inst.gt_masks
                if isinstance(gm, PolygonMasks):
                    gm = BitMasks.from_polygon_masks(gm, h, w)
                t["masks"] = gm.tensor if isinstance(gm, BitMasks) else gm
                if len(inst) == 0:
                    t["masks"] = torch.zeros((0, h, w), dtype=torch.bool, device=self.device)
            targets.append(t)
        return targets

    # ------------------------------------------------------------------ inference
    def mask_queries(self, logits: Tensor) -> Tensor:
        """Sorted indices of the queries of one image (``logits`` (Q, S+1)) whose masks the enabled
        outputs read: the panoptic fusion's kept queries, the thing queries of ``instances`` above
        ``instance_score_threshold``, every query for ``sem_seg`` (a sum over all queries)."""
        if self.semantic_on or self.all_query_masks:
            return torch.arange(logits.shape[0], device=logits.device)
        need = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        if self.panoptic_on:
            need[panoptic_queries(logits, self.object_mask_threshold, self.label_map)] = True
        if self.instance_on:
            need[
                instance_queries(
                    logits, self.is_thing, self.instance_score_threshold, self.label_map
                )
            ] = True
        return need.nonzero().flatten()

    def inference(
        self,
        outputs: Dict,
        state: Dict,
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict]:
        """Detectron2 outputs per image (see the README): the masks of the queries the enabled
        outputs read are computed (:meth:`mask_queries`, :meth:`query_masks`), then
        :meth:`postprocess`."""
        if not self.mask_on:
            return self.postprocess(outputs, batched_inputs, image_sizes)
        queries = [self.mask_queries(logits) for logits in outputs["pred_logits"]]
        masks = self.query_masks(
            state, queries, crop_to_image=self.batch_invariant is not None and state["padded"]
        )
        return self.postprocess(
            outputs, batched_inputs, image_sizes, masks=masks, mask_queries=queries
        )

    def postprocess(
        self,
        outputs: Dict,
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
        masks: Optional[Sequence[Tensor]] = None,
        mask_queries: Optional[Sequence[Tensor]] = None,
    ) -> List[Dict]:
        """Raw outputs -> Detectron2 outputs per image. Mask logits: ``outputs["pred_masks"]`` (B,
        Q, Hm, Wm) of all queries, or per image ``masks[i]`` (n_i, Hm, Wm) of the sorted queries
        ``mask_queries[i]``."""
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, image_sizes)):
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            if not torch.jit.is_tracing():  # traced: sizes stay (tensor) inputs of the graph
                out_size = (int(out_size[0]), int(out_size[1]))
            logits = outputs["pred_logits"][i]
            if masks is not None:
                m, q = masks[i], mask_queries[i]
            else:
                m, q = (outputs["pred_masks"][i] if self.mask_on else None), None
            r: Dict = {}
            if self.panoptic_on:
                fused = panoptic_fusion_tensors(
                    logits,
                    m,
                    image_size,
                    out_size,
                    self.is_thing,
                    threshold=self.object_mask_threshold,
                    min_area=self.min_segment_area,
                    mask_stride=self.mask_stride,
                    crop_padding=self.crop_mask_padding,
                    label_map=self.label_map,
                    mask_queries=q,
                )
                # traced: always the per-segment tensors (a traceable structure; docs/export.md)
                segments = {k: v for k, v in fused.items() if k != "panoptic_seg"}
                if not (self.segments_as_tensors or torch.jit.is_tracing()):
                    segments = segments_info_from_tensors(fused)
                r["panoptic_seg"] = (fused["panoptic_seg"], segments)
            if self.instance_on:
                r["instances"] = instance_inference(
                    logits,
                    outputs["pred_boxes"][i],
                    m,
                    image_size,
                    out_size,
                    self.is_thing,
                    mask_stride=getattr(self, "mask_stride", 4),
                    label_map=self.label_map,
                    score_threshold=self.instance_score_threshold,
                    mask_queries=q,
                )
            if self.semantic_on:
                if q is not None and len(q) != logits.shape[0]:
                    raise ValueError("sem_seg needs the masks of all queries")
                r["sem_seg"] = semantic_inference(
                    logits,
                    m,
                    image_size,
                    out_size,
                    len(self.is_thing),
                    mask_stride=self.mask_stride,
                    label_map=self.label_map,
                )
            results.append(r)
        return results
