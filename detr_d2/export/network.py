"""The traceable network of one image: ``PanopticNetwork(image) -> (logits, boxes, kept queries,
masks)``.

What both exports trace (TorchScript's network part and the ONNX graph). It calls the model's own
parts (``forward_detector``, ``bbox_attention``, ``mask_head``), so the exported network is the
model's computation; the mask head runs on the queries the panoptic fusion keeps only
(:func:`~detr_d2.modeling.panoptic_inference.panoptic_queries`: argmax over the S+1 softmax is a
class with score > ``TEST.OBJECT_MASK_THRESHOLD``), selected in the graph (NonZero/Gather in ONNX),
so their number K varies from image to image. The threshold is the buffer ``object_mask_threshold``:
a constant of the ONNX graph, an attribute of the traced TorchScript module
(``module.network.object_mask_threshold``).

Input: one image (C, H, W) float32 in ``INPUT.FORMAT`` channel order and 0-255 pixel values, already
resized (the test resize); normalised here. There is no batch and no padding: the model's batch
padding masks and crops are then no-ops (the tracer warnings about ``sizes``/``padded`` in
``forward_detector`` are about those constants and are silenced by the exporters; the tests run
traces on other sizes).
"""

from typing import Any, Tuple

import torch
from torch import Tensor, nn

from ..modeling.panoptic_inference import panoptic_queries
from ..modeling.query_masks import scale_attention

__all__ = ["PanopticNetwork", "check_exportable", "check_image"]


def check_exportable(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a ``DetrPanoptic`` with masks and the panoptic
    output."""
    if not hasattr(model, "forward_detector"):
        raise ValueError(
            "export needs a DetrPanoptic model (MODEL.META_ARCHITECTURE), got "
            f"{type(model).__name__}"
        )
    if not model.mask_on:
        raise ValueError(
            "export writes the panoptic output, which needs the mask head: set MODEL.MASK_ON True"
        )
    if not model.panoptic_on:
        raise ValueError("export writes the panoptic output: set TEST.PANOPTIC_ON True")


def check_image(image: Any, channels: int) -> Tensor:
    """``image`` if it is a (channels, H, W) tensor with H, W >= 1, else ``ValueError``."""
    if (
        not isinstance(image, Tensor)
        or image.dim() != 3
        or image.shape[0] != channels
        or min(image.shape[1:]) < 1
    ):
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(
            f"the image must be a ({channels}, H, W) tensor with H, W >= 1, got {shape}"
        )
    return image


class PanopticNetwork(nn.Module):
    """``forward(image (C, H, W) float32) ->``

    * ``pred_logits`` (Q, S+1) class logits (S class slots + no-object);
    * ``pred_boxes`` (Q, 4) cxcywh, normalised to the image size;
    * ``mask_queries`` (K,) int64 sorted indices of the queries the panoptic fusion keeps;
    * ``pred_masks`` (K, ceil(H/4), ceil(W/4)) their mask logits (stride 4).

    With no kept query the mask head still runs on query 0 (ONNX Runtime crashes on zero-row
    convolutions) and its row is dropped: K = 0 rows come out.

    ``mask_free``: the detector gets no padding mask (``forward_detector(x, None)``) instead of an
    all-False one: what ``torch.export`` needs (no size read from a tensor); the traced exports
    keep the all-False mask, whose TorchScript graph gives the eager scores bit for bit.
    """

    output_names = ("pred_logits", "pred_boxes", "mask_queries", "pred_masks")

    def __init__(self, model: nn.Module, mask_free: bool = False):
        super().__init__()
        check_exportable(model)
        self.model = model
        self.mask_free = mask_free
        # a buffer, not a Python float, so that the traced graph reads it (tests change it to keep
        # none)
        self.register_buffer(
            "object_mask_threshold", torch.tensor(float(model.object_mask_threshold)), False
        )

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        m = self.model
        x = ((image - m.pixel_mean) / m.pixel_std)[None]
        pixel_mask = None
        if not self.mask_free:  # one image, no padding
            pixel_mask = torch.zeros(
                (1, x.shape[-2], x.shape[-1]), dtype=torch.bool, device=x.device
            )
        outputs, state = m.forward_detector(x, pixel_mask)
        logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
        keep = panoptic_queries(logits, self.object_mask_threshold, m.label_map)

        # run on the kept queries, or on query 0 when there is none (dropped below)
        index = torch.arange(logits.shape[0], device=logits.device)
        kept = (index[:, None] == keep[None, :]).any(1)
        run = (kept | ((index == 0) & ~kept.any())).nonzero().flatten()
        # at least one row by construction; torch.export must be told (GroupNorm checks its size).
        # (torch.jit.trace sees the size as a tensor, which torch._check refuses; it needs no hint)
        if not torch.jit.is_tracing():
            torch._check(run.shape[0] >= 1)
        # DetrPanoptic.query_masks(state, [run], crop_to_image=False) for one image, without its
        # shortcut for no query (a Python branch the tracer would freeze)
        att = m.bbox_attention(state["hs"][:, run], state["memory"], mask=state["mask"])
        if m.mask_head_feature_norm:
            att = scale_attention(att, state["mask"])
        feat = state["features"]
        seg = m.mask_head(feat, att, state["fpns"], projected=m.mask_head.project_features(feat))[
            :, 0
        ]
        return logits, boxes, keep, seg[kept[run]]
