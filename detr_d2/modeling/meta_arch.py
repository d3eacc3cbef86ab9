"""``DetrPanoptic``: DETR with the panoptic mask head as a Detectron2 meta-architecture.

State-dict layout (what checkpoint converters target): ``backbone.*`` (the Detectron2 backbone, e.g.
``backbone.stem.conv1.weight``, ``backbone.res2.0.conv1.norm.running_mean``), then the official DETR
names without the ``detr.`` prefix: ``input_proj``, ``transformer``, ``query_embed``,
``class_embed``, ``bbox_embed.layers.{0,1,2}``, and with ``MODEL.MASK_ON`` the official
``bbox_attention`` and ``mask_head``. Pixel mean/std are non-persistent buffers.

Inputs follow Detectron2 (:mod:`.inputs`, :mod:`.targets`).

The mask head runs only where its output is used (:meth:`DetrPanoptic.query_masks`): at inference on
the queries the enabled outputs read (decided once per image: :mod:`.query_selection`), in training
on the queries matched to a target (the matcher uses class and box costs only). Masks travel in one
format, per image with their sorted query indices (:mod:`.query_masks`);
``MODEL.DETR.ALL_QUERY_MASKS`` computes every query's mask as official DETR does (same results:
each query's mask is independent of the others'). The network pass: :mod:`.detector`; input checks:
:mod:`.inputs`; training targets: :mod:`.targets`.

Training-only aids (docs/training_aids.md): Group DETR (``MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS``
K > 1; Chen et al., ICCV 2023) decodes K - 1 extra groups of queries in training
(``group_query_embed``, group-major, self-attention within each group; checkpoints load both ways:
``weight_loading.adapt_group_queries``); at inference only ``query_embed`` (group 0) is decoded.
Duplicate suppression is a class-loss weight in ``SetCriterion``.

Follows ``DETR`` (``models/detr.py``), ``DETRsegm`` (``models/segmentation.py``) and the Detectron2
wrapper ``d2/detr/detr.py`` (facebookresearch/detr at 29901c5).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ..checkpoint.weight_loading import (
    MASK_HEAD_PREFIXES,
    adapt_group_queries,
    load_and_freeze_detector,
    load_mask_head,
)
from ..config_rules import validate_detr_config
from ..data.datasets.panoptic_metadata import class_slots
from ..data.datasets.register_from_file import register_datasets_from_config
from .backbone_speed import fast_backbone
from .batch_invariance import BatchInvariantBackbone
from .builders import build_criterion, build_transformer
from .criterion import SetCriterion
from .detector import forward_detector
from .inputs import preprocess_image
from .mask_head import MaskHeadSmallConv, MHAttentionMap
from .mlp import MLP
from .panoptic_inference import image_outputs
from .position_encoding import PositionEmbeddingSine
from .query_masks import (
    compute_query_masks,
    compute_query_masks_on_batch_grid,
    training_mask_fn,
)
from .query_selection import QuerySelection, select_queries
from .targets import contiguous_to_slot, prepare_targets
from .transformer import Transformer

logger = logging.getLogger(__name__)

__all__ = ["DetrPanoptic"]


@META_ARCH_REGISTRY.register()
class DetrPanoptic(nn.Module):
    """DETR (+ panoptic mask head); conventions in the module docstring."""

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
        self.backbone = fast_backbone(backbone)  # same parameters and results (backbone_speed.py)
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
        self.register_buffer("contiguous_to_slot", contiguous_to_slot(lm, len(is_thing)), False)
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
        t = cfg.TEST
        return {
            "backbone": backbone,
            "transformer": build_transformer(cfg),
            "num_classes": slots.num_slots,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "criterion": build_criterion(cfg, slots.num_slots),
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

    # ---------------------------------------------- checkpoints (checkpoint/weight_loading.py)
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
        """Checked, normalised and padded images and the (B, H, W) padding mask
        (:func:`~detr_d2.modeling.inputs.preprocess_image`)."""
        return preprocess_image(batched_inputs, self.pixel_mean, self.pixel_std)

    def forward_detector(self, images: Tensor, pixel_mask: Optional[Tensor]) -> Tuple[Dict, Dict]:
        """Backbone, transformer and the class/box heads: ``(outputs, state)``
        (:func:`~detr_d2.modeling.detector.forward_detector`)."""
        return forward_detector(self, images, pixel_mask)

    def query_masks(
        self, state: Dict, queries: Sequence[Tensor], crop_to_image: bool
    ) -> List[Tensor]:
        """Per image, the (n_i, Hm, Wm) mask logits of the sorted queries ``queries[i]``
        (:func:`~detr_d2.modeling.query_masks.compute_query_masks`)."""
        return compute_query_masks(
            self.bbox_attention,
            self.mask_head,
            state,
            queries,
            self.feature_strides,
            crop_to_image,
            self.mask_head_feature_norm,
        )

    def batch_grid_query_masks(self, state: Dict, queries: Sequence[Tensor]) -> List[Tensor]:
        """:meth:`query_masks` with ``crop_to_image=False``, all images in one batch (the
        criterion's masks in training;
        :func:`~detr_d2.modeling.query_masks.compute_query_masks_on_batch_grid`)."""
        return compute_query_masks_on_batch_grid(
            self.bbox_attention, self.mask_head, state, queries, self.mask_head_feature_norm
        )

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

    def forward(self, batched_inputs: List[Dict]):
        images, pixel_mask = self.preprocess_image(batched_inputs)
        outputs, state = self.forward_detector(images.tensor, pixel_mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            mask_fn = None
            if self.mask_on:
                mask_fn = training_mask_fn(self.batch_grid_query_masks, state, self.all_query_masks)
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

    def prepare_targets(
        self, batched_inputs: List[Dict], images: ImageList
    ) -> List[Dict[str, Tensor]]:
        """DETR's targets (:func:`~detr_d2.modeling.targets.prepare_targets`)."""
        return prepare_targets(
            batched_inputs,
            images.image_sizes,
            len(self.is_thing),
            self.contiguous_to_slot,
            self.mask_on,
            self.device,
        )

    # ------------------------------------------------------------------ inference
    def select_queries(self, logits: Tensor, every_mask: bool = False) -> QuerySelection:
        """The decisions of one image (``logits`` (Q, S+1)), made once: the panoptic fusion's kept
        queries, the ``instances``, and the queries whose masks are computed (every query for
        ``sem_seg``, ``all_query_masks`` or ``every_mask``; :mod:`.query_selection`)."""
        return select_queries(
            logits,
            self.is_thing,
            self.label_map,
            threshold=self.object_mask_threshold,
            instance_score_threshold=self.instance_score_threshold,
            panoptic=self.panoptic_on,
            instances=self.instance_on,
            every_mask=every_mask or self.semantic_on or self.all_query_masks,
        )

    def inference(
        self,
        outputs: Dict,
        state: Dict,
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict]:
        """Detectron2 outputs per image: each image's queries are selected once
        (:meth:`select_queries`), the masks of those that the enabled outputs read computed
        (:meth:`query_masks`, on each image's own region when the batch is padded), then
        :meth:`postprocess`."""
        selections = [self.select_queries(logits) for logits in outputs["pred_logits"]]
        masks = None
        if self.mask_on:
            crop = self.batch_invariant is not None and state["padded"]
            masks = self.query_masks(state, [s.masks for s in selections], crop_to_image=crop)
        return self.postprocess(outputs, batched_inputs, image_sizes, masks, selections)

    def postprocess(
        self,
        outputs: Dict,
        batched_inputs: List[Dict],
        image_sizes: List[Tuple[int, int]],
        masks: Optional[Sequence[Tensor]],
        selections: Sequence[QuerySelection],
    ) -> List[Dict]:
        """Raw outputs -> Detectron2 outputs per image (``panoptic_seg``, ``instances``,
        ``sem_seg``). ``masks[i]``: (n_i, Hm, Wm) mask logits of the sorted queries
        ``selections[i].masks`` (None without ``mask_on``)."""
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, image_sizes)):
            out_size = (x.get("height", image_size[0]), x.get("width", image_size[1]))
            if not torch.jit.is_tracing():  # traced: sizes stay (tensor) inputs of the graph
                out_size = (int(out_size[0]), int(out_size[1]))
            results.append(
                image_outputs(
                    self,
                    outputs["pred_logits"][i],
                    outputs["pred_boxes"][i],
                    masks[i] if masks is not None else None,
                    selections[i],
                    image_size,
                    out_size,
                )
            )
        return results
