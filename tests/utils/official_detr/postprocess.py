"""DETR's ``PostProcessPanoptic`` as published (``models/segmentation.py``, facebookresearch/detr at
29901c5), for the reference oracle.

Segment ids start at **0** and every pixel belongs to a segment (no void); ``category_id`` is the
logit index, i.e. the dataset (COCO panoptic) category id; ``isthing`` comes from ``is_thing_map``.
Mask logits are resized to the *processed* size from the full (padded) mask grid without cropping
the padding, exactly as the official code does.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image
from torch import Tensor, nn

__all__ = ["PostProcessPanoptic", "decode_panoptic_png", "official_is_thing_map"]

SizeLike = Union[Tensor, Sequence[int], Tuple[int, int]]


def official_is_thing_map(num_slots: int = 250) -> Dict[int, bool]:
    """The hub's thing/stuff rule: ``{c: c <= 90 for c in range(num_slots)}``."""
    return {c: c <= 90 for c in range(num_slots)}


def decode_panoptic_png(png_string: bytes) -> np.ndarray:
    """Decode a ``png_string`` from :class:`PostProcessPanoptic` to an int32 (H, W) id map."""
    with Image.open(io.BytesIO(png_string)) as img:
        return rgb2id(np.asarray(img.convert("RGB"), dtype=np.uint8)).astype(np.int32)


def _to_tuple(size: SizeLike) -> Tuple[int, int]:
    if isinstance(size, Tensor):
        return tuple(int(v) for v in size.tolist())  # type: ignore[return-value]
    return tuple(int(v) for v in size)  # type: ignore[return-value]


class PostProcessPanoptic(nn.Module):
    """Turn DETRsegm outputs into COCO-panoptic PNG strings + ``segments_info`` per image.

    Args:
        is_thing_map: dataset category id -> bool (thing). The hub uses ``c <= 90`` over range(250).
        threshold: keep queries with ``score > threshold`` (strict) whose label is not no-object.
    """

    def __init__(self, is_thing_map: Mapping[int, bool], threshold: float = 0.85):
        super().__init__()
        self.threshold = threshold
        self.is_thing_map = is_thing_map

    @torch.no_grad()
    def forward(
        self,
        outputs: Mapping[str, Tensor],
        processed_sizes: Sequence[SizeLike],
        target_sizes: Optional[Sequence[SizeLike]] = None,
    ) -> List[Dict[str, object]]:
        """outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, Hm, Wm), ``pred_boxes`` (B,
        Q, 4).

        processed_sizes: per image (h, w) after resizing, before padding; target_sizes: per image
        final (h, w) (default: the processed sizes). Returns per image
        ``{"png_string": bytes, "segments_info": [{"id", "isthing", "category_id", "area"}]}``.
        """
        if target_sizes is None:
            target_sizes = processed_sizes
        assert len(processed_sizes) == len(target_sizes)
        out_logits, raw_masks, raw_boxes = (
            outputs["pred_logits"],
            outputs["pred_masks"],
            outputs["pred_boxes"],
        )
        assert len(out_logits) == len(raw_masks) == len(target_sizes)
        no_object = out_logits.shape[-1] - 1
        preds: List[Dict[str, object]] = []

        for cur_logits, cur_masks, cur_boxes, size, target_size in zip(
            out_logits, raw_masks, raw_boxes, processed_sizes, target_sizes
        ):
            # 1-2. softmax over all K+1 entries; keep non-no-object labels with score > threshold.
            scores, labels = cur_logits.softmax(-1).max(-1)
            keep = labels.ne(no_object) & (scores > self.threshold)
            cur_scores, cur_classes = cur_logits.softmax(-1).max(-1)
            cur_scores = cur_scores[keep]
            cur_classes = cur_classes[keep]
            cur_masks = cur_masks[keep]
            # 3. bilinear (align_corners=False) from the full mask grid straight to the processed
            #    size.
            h, w = _to_tuple(size)
            if cur_masks.shape[0] > 0:
                cur_masks = F.interpolate(
                    cur_masks[:, None], (h, w), mode="bilinear", align_corners=False
                ).squeeze(1)
            else:
                cur_masks = cur_masks.new_zeros((0, h, w))
            assert len(cur_boxes[keep]) == len(cur_classes)  # boxes are not used further
            cur_masks = cur_masks.flatten(1)

            # 4. stuff queries grouped by class (in query order).
            stuff_equiv_classes: Dict[int, List[int]] = defaultdict(list)
            for k, label in enumerate(cur_classes):
                if not self.is_thing_map[label.item()]:
                    stuff_equiv_classes[label.item()].append(k)

            def get_ids_area(
                masks: Tensor, scores: Tensor, dedup: bool = False
            ) -> Tuple[List[int], Image.Image]:
                # 5. per-pixel softmax over the kept queries, then argmax (first index wins ties).
                m_id = masks.transpose(0, 1).softmax(-1)
                if m_id.shape[-1] == 0:
                    m_id = torch.zeros((h, w), dtype=torch.long, device=m_id.device)
                else:
                    m_id = m_id.argmax(-1).view(h, w)
                # 6. first pass only: merge duplicated stuff classes into their first query.
                if dedup:
                    for equiv in stuff_equiv_classes.values():
                        if len(equiv) > 1:
                            for eq_id in equiv:
                                m_id.masked_fill_(m_id.eq(eq_id), equiv[0])
                # 7. id2rgb -> PIL NEAREST resize to the target size -> rgb2id.
                final_h, final_w = _to_tuple(target_size)
                seg_img = Image.fromarray(id2rgb(m_id.view(h, w).cpu().numpy()))
                seg_img = seg_img.resize(size=(final_w, final_h), resample=Image.NEAREST)
                np_seg_img = np.frombuffer(seg_img.tobytes(), dtype=np.uint8).reshape(
                    final_h, final_w, 3
                )
                m_id_final = torch.from_numpy(rgb2id(np_seg_img))
                # 8. areas in the target-size map.
                area = [int(m_id_final.eq(i).sum().item()) for i in range(len(scores))]
                return area, seg_img

            area, seg_img = get_ids_area(cur_masks, cur_scores, dedup=True)
            if cur_classes.numel() > 0:
                # 9. drop segments with area <= 4 and recompute (without the stuff merge) until
                #    stable.
                while True:
                    filtered_small = torch.as_tensor(
                        [area[i] <= 4 for i, _ in enumerate(cur_classes)],
                        dtype=torch.bool,
                        device=keep.device,
                    )
                    if filtered_small.any().item():
                        cur_scores = cur_scores[~filtered_small]
                        cur_classes = cur_classes[~filtered_small]
                        cur_masks = cur_masks[~filtered_small]
                        area, seg_img = get_ids_area(cur_masks, cur_scores)
                    else:
                        break

            # 10. segments in query order, ids 0..K'-1.
            segments_info = []
            for i, a in enumerate(area):
                cat = cur_classes[i].item()
                segments_info.append(
                    {"id": i, "isthing": self.is_thing_map[cat], "category_id": cat, "area": a}
                )
            with io.BytesIO() as out:
                seg_img.save(out, format="PNG")
                preds.append({"png_string": out.getvalue(), "segments_info": segments_info})
        return preds
