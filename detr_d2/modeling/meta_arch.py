"""``DetrPanoptic``: DETR with the panoptic mask head as a Detectron2 meta-architecture.

State-dict layout (what checkpoint converters target): ``backbone.*`` (the Detectron2 backbone, e.g.
``backbone.stem.conv1.weight``, ``backbone.res2.0.conv1.norm.running_mean``), then the official DETR
names without the ``detr.`` prefix: ``input_proj``, ``transformer``, ``query_embed``, ``class_embed``,
``bbox_embed.layers.{0,1,2}``, and with ``MODEL.MASK_ON`` the official ``bbox_attention`` and ``mask_head``.
Pixel mean/std are non-persistent buffers.

Inputs follow Detectron2: a list of dicts with ``image`` (C, H, W) uint8/float in ``INPUT.FORMAT`` order,
optional ``height``/``width`` (output size), and for training ``instances`` with ``gt_classes``
(contiguous ids), ``gt_boxes`` (XYXY pixels of the input image), ``gt_masks`` and optionally
``gt_is_crowd`` (crowd segments are never matched as positives).
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import BitMasks, ImageList, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn
from torchvision.ops import box_convert

from .batch_invariance import ZeroPaddedFeatures
from .criterion import SetCriterion
from .mask_head import MaskHeadSmallConv, MHAttentionMap
from .matcher import HungarianMatcher
from .panoptic_inference import instance_inference, panoptic_fusion, semantic_inference
from .position_encoding import PositionEmbeddingSine
from .transformer import Transformer

logger = logging.getLogger(__name__)

__all__ = ["DetrPanoptic", "MLP", "class_info_from_metadata"]


class MLP(nn.Module):
    """Feed-forward network (Linear -> ReLU)* -> Linear; DETR's box head (names ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


def class_info_from_metadata(metadata) -> Tuple[int, List[bool], Dict[int, int]]:
    """From Detectron2 panoptic metadata: (number of contiguous classes, is_thing per contiguous id,
    dataset id -> contiguous id). Raises ValueError when the metadata has no id mappings."""
    thing = dict(getattr(metadata, "thing_dataset_id_to_contiguous_id", {}) or {})
    stuff = dict(getattr(metadata, "stuff_dataset_id_to_contiguous_id", {}) or {})
    if not thing and not stuff:
        raise ValueError(
            f"dataset '{metadata.name}': metadata has neither thing_dataset_id_to_contiguous_id nor "
            "stuff_dataset_id_to_contiguous_id; register it with detr_d2.data.register_panoptic_dataset"
        )
    dataset_to_contig = {**stuff, **thing}
    num = max(dataset_to_contig.values()) + 1
    is_thing = [False] * num
    for c in thing.values():
        is_thing[c] = True
    return num, is_thing, dataset_to_contig


def _ceil_masks(sizes: Sequence[Tuple[int, int]], hw: Sequence[int], stride: int, device) -> Tensor:
    """(B, H, W) mask, False on the first ceil(h/stride) rows and ceil(w/stride) columns of each image."""
    mask = torch.ones((len(sizes), hw[0], hw[1]), dtype=torch.bool, device=device)
    for i, (h, w) in enumerate(sizes):
        mask[i, : -(-h // stride), : -(-w // stride)] = False
    return mask


def _feature_masks(pixel_mask: Tensor, features: Sequence[Tensor]) -> List[Tensor]:
    """Resize the (B, H, W) padding mask (True = pad) to each feature map with legacy nearest (as DETR)."""
    return [F.interpolate(pixel_mask[None].float(), size=f.shape[-2:]).to(torch.bool)[0] for f in features]


@META_ARCH_REGISTRY.register()
class DetrPanoptic(nn.Module):
    """DETR (+ panoptic mask head). See the module docstring for the input/output and key conventions."""

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
        object_mask_threshold: float = 0.85,
        min_segment_area: int = 4,
        panoptic_on: bool = True,
        instance_on: bool = False,
        semantic_on: bool = False,
        crop_padding: bool = True,
        mask_head_feature_norm: bool = False,
        batch_invariant_backbone: bool = True,
    ):
        """
        Args:
            backbone: a Detectron2 backbone whose ``in_features`` are, in order, strides 4, 8, 16, 32
                (only the last is needed without masks).
            num_classes: number of class slots S (classifier has S + 1 outputs, last = no object).
            is_thing: per contiguous class id.
            label_map: slot -> contiguous id (-1 for unused slots) when slots are dataset ids; None when
                slots are contiguous ids.
            frozen_weights: detection checkpoint to load and freeze; only the mask head then trains.
            crop_padding: crop each image's padding from the mask grid before resizing (False = DETR's
                published post-processor, wrong for padded batches).
            batch_invariant_backbone: zero the padded region after every backbone conv so an image gives
                the same outputs alone and in a padded batch (see ``batch_invariance.py``); single images
                are unaffected (DETR's own numbers are single-image).
        """
        super().__init__()
        self.backbone = backbone
        self._zero_padding = ZeroPaddedFeatures(backbone) if batch_invariant_backbone else None
        self.in_features = list(in_features)
        shapes = backbone.output_shape()
        for f in self.in_features:
            if f not in shapes:
                raise ValueError(f"MODEL.DETR: backbone has no output '{f}' (has {sorted(shapes)})")
        self.feature_strides = [shapes[f].stride for f in self.in_features]
        hidden_dim, nheads = transformer.d_model, transformer.nhead
        self.transformer = transformer
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(shapes[self.in_features[-1]].channels, hidden_dim, kernel_size=1)
        self.position_encoding = PositionEmbeddingSine(hidden_dim // 2)
        self.mask_on = mask_on
        if mask_on:
            if len(self.in_features) != 4:
                raise ValueError(f"the mask head needs 4 backbone features (strides 4..32), got {self.in_features}")
            if hidden_dim % 128 or (hidden_dim + nheads) % 8:
                raise ValueError(
                    f"MODEL.DETR.HIDDEN_DIM ({hidden_dim}) must be a multiple of 128 and HIDDEN_DIM + NHEADS "
                    f"({hidden_dim + nheads}) a multiple of 8 with MODEL.MASK_ON: the mask head's GroupNorm(8) "
                    "layers have HIDDEN_DIM + NHEADS, HIDDEN_DIM/2 ... HIDDEN_DIM/16 channels"
                )
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
        self.panoptic_on = panoptic_on and mask_on
        self.instance_on = instance_on or not mask_on
        self.semantic_on = semantic_on and mask_on
        self.crop_padding = crop_padding
        self.frozen_weights = frozen_weights
        if frozen_weights:
            self.load_and_freeze_detector(frozen_weights)

    @classmethod
    def from_config(cls, cfg):
        d = cfg.MODEL.DETR
        backbone = build_backbone(cfg)
        in_features = list(cfg.MODEL.RESNETS.OUT_FEATURES) if cfg.MODEL.MASK_ON else [cfg.MODEL.RESNETS.OUT_FEATURES[-1]]
        num_classes, is_thing, label_map = _class_setup(cfg)
        transformer = Transformer(
            d_model=d.HIDDEN_DIM, nhead=d.NHEADS, num_encoder_layers=d.ENC_LAYERS, num_decoder_layers=d.DEC_LAYERS,
            dim_feedforward=d.DIM_FEEDFORWARD, dropout=d.DROPOUT, normalize_before=d.PRE_NORM,
        )
        matcher = HungarianMatcher(cost_class=d.COST_CLASS, cost_bbox=d.COST_BBOX, cost_giou=d.COST_GIOU)
        weight_dict = {"loss_ce": d.CLASS_WEIGHT, "loss_bbox": d.L1_WEIGHT, "loss_giou": d.GIOU_WEIGHT}
        losses = ["labels", "boxes"]
        if cfg.MODEL.MASK_ON:
            weight_dict.update({"loss_mask": d.MASK_WEIGHT, "loss_dice": d.DICE_WEIGHT})
            losses.append("masks")
        aux_loss = d.DEEP_SUPERVISION and not d.FROZEN_WEIGHTS
        if aux_loss:
            base = {k: v for k, v in weight_dict.items() if k not in ("loss_mask", "loss_dice")}
            for i in range(d.DEC_LAYERS - 1):
                weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
        criterion = SetCriterion(
            num_classes, matcher, weight_dict, eos_coef=d.NO_OBJECT_WEIGHT, losses=losses,
            focal_alpha=d.FOCAL_ALPHA, focal_gamma=d.FOCAL_GAMMA,
        )
        if d.TEST.POSTPROCESS not in ("d2", "official"):
            raise ValueError(f"MODEL.DETR.TEST.POSTPROCESS must be 'd2' or 'official', got {d.TEST.POSTPROCESS!r}")
        return {
            "backbone": backbone,
            "transformer": transformer,
            "num_classes": num_classes,
            "num_queries": d.NUM_OBJECT_QUERIES,
            "criterion": criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "is_thing": is_thing,
            "label_map": label_map,
            "mask_on": cfg.MODEL.MASK_ON,
            "aux_loss": aux_loss,
            "in_features": in_features,
            "frozen_weights": d.FROZEN_WEIGHTS,
            "object_mask_threshold": d.TEST.OBJECT_MASK_THRESHOLD,
            "min_segment_area": d.TEST.MIN_SEGMENT_AREA,
            "panoptic_on": d.TEST.PANOPTIC_ON,
            "instance_on": d.TEST.INSTANCE_ON,
            "semantic_on": d.TEST.SEMANTIC_ON,
            "crop_padding": d.TEST.POSTPROCESS == "d2",
            "mask_head_feature_norm": d.MASK_HEAD_FEATURE_NORM,
            "batch_invariant_backbone": d.BATCH_INVARIANT_BACKBONE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ two-stage training
    def mask_head_parameter_prefixes(self) -> Tuple[str, ...]:
        return ("bbox_attention.", "mask_head.")

    def load_and_freeze_detector(self, path: str) -> None:
        """Load a detection checkpoint (Detectron2 ``.pth``/``.pkl`` with a ``model`` dict of this model's
        names) into everything but the mask head, then freeze it (``requires_grad=False``)."""
        import pickle

        from detectron2.utils.file_io import PathManager

        local = PathManager.get_local_path(path)
        if local.endswith(".pkl"):
            with open(local, "rb") as f:
                ckpt = pickle.load(f, encoding="latin1")
        else:
            ckpt = torch.load(local, map_location="cpu")
        state = {k: torch.as_tensor(v) for k, v in ckpt.get("model", ckpt).items()}
        prefixes = self.mask_head_parameter_prefixes()
        own = {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}
        missing = sorted(set(own) - set(state))
        bad_shape = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
        if missing or bad_shape:
            raise ValueError(
                f"MODEL.DETR.FROZEN_WEIGHTS={path}: not a detection checkpoint of this model: "
                f"missing keys {missing[:10]}{'...' if len(missing) > 10 else ''} ({len(missing)}), "
                f"shape mismatches {bad_shape[:10]}"
            )
        self.load_state_dict({k: state[k] for k in own}, strict=False)
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(prefixes))
        logger.info("Loaded and froze the detector from %s; training only %s", path, prefixes)

    # ------------------------------------------------------------------ forward
    def preprocess_image(self, batched_inputs: List[Dict]) -> Tuple[ImageList, Tensor]:
        """Normalise, pad bottom/right with zeros (in normalised space) to the batch's max size, and build
        the (B, H, W) padding mask (True on padded pixels)."""
        images = []
        for i, x in enumerate(batched_inputs):
            img = x.get("image")
            if not isinstance(img, Tensor) or img.dim() != 3 or img.shape[0] != self.pixel_mean.shape[0]:
                raise ValueError(
                    f"batched_inputs[{i}]['image'] must be a ({self.pixel_mean.shape[0]}, H, W) tensor, got "
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

    def forward_network(self, images: Tensor, pixel_mask: Tensor) -> Dict:
        """Raw DETR outputs: ``pred_logits`` (B, Q, S+1), ``pred_boxes`` (B, Q, 4) cxcywh in [0, 1] of each
        image's own size, ``pred_masks`` (B, Q, H/4, W/4) logits (with masks), ``aux_outputs``.

        ``pixel_mask`` (B, H, W) is True on padding. Feature-level masks: DETR's legacy-nearest resize of
        the pixel mask; with ``batch_invariant_backbone`` the first ceil(h/stride) x ceil(w/stride) cells
        are valid (what a single image has), and at inference the mask head runs per image on its own
        region (its GroupNorm statistics would otherwise include the padding). Both are identical to
        DETR for a single image."""
        valid = ~pixel_mask
        sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]
        padded = any(sz != tuple(images.shape[-2:]) for sz in sizes)
        if self._zero_padding is not None and padded:
            with self._zero_padding.active(sizes, tuple(images.shape[-2:])):
                feats = self.backbone(images)
        else:
            feats = self.backbone(images)
        feats = [feats[f] for f in self.in_features]
        strides = self.feature_strides
        if self._zero_padding is not None and padded:
            mask = _ceil_masks(sizes, feats[-1].shape[-2:], strides[-1], images.device)
        else:
            mask = _feature_masks(pixel_mask, feats[-1:])[0]
        src = feats[-1]
        pos = self.position_encoding(mask).to(src.dtype)
        src_proj = self.input_proj(src)
        hs, memory = self.transformer(src_proj, mask, self.query_embed.weight, pos)
        outputs_class = self.class_embed(hs)
        outputs_coord = self.bbox_embed(hs).sigmoid()
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss and self.training:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
        if not self.mask_on:
            return out
        feat = src_proj
        if self.mask_head_feature_norm:
            feat = feat / feat.pow(2).mean(1, keepdim=True).add(1e-6).sqrt()
        fpns = [feats[2], feats[1], feats[0]]
        if self._zero_padding is not None and padded and not self.training:
            b, q = src.shape[0], self.num_queries
            pred_masks = src.new_zeros((b, q, feats[0].shape[-2], feats[0].shape[-1]))
            for i, (h, w) in enumerate(sizes):
                def crop(t: Tensor, stride: int) -> Tensor:
                    return t[i : i + 1, ..., : -(-h // stride), : -(-w // stride)]

                m5 = crop(mask, strides[-1])
                bbox_mask = self._scale_attention(self.bbox_attention(hs[-1][i : i + 1], crop(memory, strides[-1]), mask=m5), m5)
                seg = self.mask_head(crop(feat, strides[-1]), bbox_mask, [crop(f, s) for f, s in zip(fpns, strides[2::-1])])
                pred_masks[i, :, : seg.shape[-2], : seg.shape[-1]] = seg[:, 0]
            out["pred_masks"] = pred_masks
            return out
        bbox_mask = self._scale_attention(self.bbox_attention(hs[-1], memory, mask=mask), mask)
        seg = self.mask_head(feat, bbox_mask, fpns)
        out["pred_masks"] = seg.view(src.shape[0], self.num_queries, seg.shape[-2], seg.shape[-1])
        return out

    def _scale_attention(self, bbox_mask: Tensor, mask: Tensor) -> Tensor:
        """With ``mask_head_feature_norm`` (not in official DETR; for training from scratch): the attention
        maps (B, Q, nheads, H, W), which sum to 1 over heads x valid positions, are scaled so a uniform map
        is 1, matching the unit-RMS features they are concatenated with; otherwise every query gets nearly
        the same mask."""
        if not self.mask_head_feature_norm:
            return bbox_mask
        valid = (~mask).flatten(1).sum(1).to(bbox_mask.dtype) * bbox_mask.shape[2]
        return bbox_mask * valid.view(-1, 1, 1, 1, 1)

    def forward(self, batched_inputs: List[Dict]):
        images, pixel_mask = self.preprocess_image(batched_inputs)
        outputs = self.forward_network(images.tensor, pixel_mask)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            losses = self.criterion(outputs, targets)
            class_error = losses.pop("class_error", None)
            if class_error is not None:
                try:
                    get_event_storage().put_scalar("class_error", float(class_error))
                except AssertionError:  # no EventStorage outside a trainer
                    pass
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        return self.postprocess(outputs, batched_inputs, images.image_sizes)

    # ------------------------------------------------------------------ targets
    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, Tensor]]:
        targets = []
        for i, (x, (h, w)) in enumerate(zip(batched_inputs, images.image_sizes)):
            inst: Optional[Instances] = x.get("instances")
            if inst is None:
                raise ValueError(f"batched_inputs[{i}] has no 'instances' (training needs a mapper that adds them)")
            inst = inst.to(self.device)
            if inst.has("gt_is_crowd") and len(inst):
                inst = inst[~inst.gt_is_crowd.bool()]
            classes = inst.gt_classes.long()
            if len(classes) and (classes.min() < 0 or classes.max() >= len(self.is_thing)):
                raise ValueError(
                    f"batched_inputs[{i}] ({x.get('file_name', '?')}): gt_classes {classes.tolist()} outside "
                    f"0..{len(self.is_thing) - 1}; MODEL.DETR.NUM_CLASSES / dataset metadata mismatch"
                )
            if self.contiguous_to_slot is not None:
                classes = self.contiguous_to_slot[classes]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=self.device)
            boxes = box_convert(inst.gt_boxes.tensor.float() / scale, "xyxy", "cxcywh") if len(inst) else torch.zeros((0, 4), device=self.device)
            t = {"labels": classes, "boxes": boxes}
            if self.mask_on:
                if not inst.has("gt_masks"):
                    raise ValueError(f"batched_inputs[{i}]: instances have no gt_masks but MODEL.MASK_ON is True")
                gm = inst.gt_masks
                if isinstance(gm, PolygonMasks):
                    gm = BitMasks.from_polygon_masks(gm, h, w)
                t["masks"] = gm.tensor if isinstance(gm, BitMasks) else gm
                if len(inst) == 0:
                    t["masks"] = torch.zeros((0, h, w), dtype=torch.bool, device=self.device)
            targets.append(t)
        return targets

    # ------------------------------------------------------------------ inference
    def postprocess(self, outputs: Dict, batched_inputs: List[Dict], image_sizes: List[Tuple[int, int]]) -> List[Dict]:
        results = []
        for i, (x, image_size) in enumerate(zip(batched_inputs, image_sizes)):
            out_size = (int(x.get("height", image_size[0])), int(x.get("width", image_size[1])))
            logits = outputs["pred_logits"][i]
            masks = outputs["pred_masks"][i] if self.mask_on else None
            r: Dict = {}
            if self.panoptic_on:
                r["panoptic_seg"] = panoptic_fusion(
                    logits, masks, image_size, out_size, self.is_thing, threshold=self.object_mask_threshold,
                    min_area=self.min_segment_area, mask_stride=self.mask_stride, crop_padding=self.crop_padding,
                    label_map=self.label_map,
                )
            if self.instance_on:
                r["instances"] = instance_inference(
                    logits, outputs["pred_boxes"][i], masks, image_size, out_size, self.is_thing,
                    mask_stride=getattr(self, "mask_stride", 4), label_map=self.label_map,
                )
            if self.semantic_on:
                r["sem_seg"] = semantic_inference(
                    logits, masks, image_size, out_size, len(self.is_thing), mask_stride=self.mask_stride,
                    label_map=self.label_map,
                )
            results.append(r)
        return results


def _class_setup(cfg) -> Tuple[int, List[bool], Optional[List[int]]]:
    """Number of class slots, is_thing per contiguous id and the slot -> contiguous map, from the config and
    the metadata of the first dataset in DATASETS.TEST (else TRAIN). Checks NUM_CLASSES against it."""
    d = cfg.MODEL.DETR
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    meta_info = None
    for name in names:
        md = MetadataCatalog.get(name)
        if hasattr(md, "thing_dataset_id_to_contiguous_id") or hasattr(md, "stuff_dataset_id_to_contiguous_id"):
            meta_info = (name, class_info_from_metadata(md))
            break
    if d.CLASS_SLOTS not in ("contiguous", "dataset_id"):
        raise ValueError(f"MODEL.DETR.CLASS_SLOTS must be 'contiguous' or 'dataset_id', got {d.CLASS_SLOTS!r}")
    if meta_info is None:
        if d.NUM_CLASSES <= 0:
            raise ValueError("MODEL.DETR.NUM_CLASSES <= 0 asks to derive it from the dataset metadata, but no "
                             f"dataset in DATASETS.TRAIN/TEST ({names}) has panoptic id mappings")
        if d.CLASS_SLOTS == "dataset_id":
            raise ValueError("MODEL.DETR.CLASS_SLOTS 'dataset_id' needs a dataset with panoptic metadata in DATASETS")
        logger.warning("No panoptic metadata in DATASETS; treating all %d classes as things", d.NUM_CLASSES)
        return d.NUM_CLASSES, [True] * d.NUM_CLASSES, None
    name, (num_contig, is_thing, ds_to_contig) = meta_info
    if d.CLASS_SLOTS == "contiguous":
        if d.NUM_CLASSES <= 0:
            return num_contig, is_thing, None
        if d.NUM_CLASSES != num_contig:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES = {d.NUM_CLASSES} but dataset '{name}' has {num_contig} classes "
                f"({sum(is_thing)} things + {num_contig - sum(is_thing)} stuff). Set MODEL.DETR.NUM_CLASSES "
                f"{num_contig} (or 0 to derive it from the metadata)."
            )
        return num_contig, is_thing, None
    max_id = max(ds_to_contig)
    num_slots = d.NUM_CLASSES if d.NUM_CLASSES > 0 else max_id + 1
    if max_id >= num_slots:
        raise ValueError(
            f"MODEL.DETR.CLASS_SLOTS 'dataset_id': dataset '{name}' has category id {max_id} but "
            f"MODEL.DETR.NUM_CLASSES = {num_slots} slots; need at least {max_id + 1}"
        )
    label_map = [-1] * num_slots
    for ds_id, c in ds_to_contig.items():
        label_map[ds_id] = c
    return num_slots, is_thing, label_map
