"""Proposed with the faster panoptic_fusion: it must agree with the official PostProcessPanoptic
(PIL round trip) on every pixel, for random outputs, output sizes above and below the processed size
(including those where PIL NEAREST and nearest-exact disagree), duplicated stuff classes and exact
ties."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from detr_d2.modeling.fusion import pil_nearest_indices, sampled_bilinear
from detr_d2.modeling.panoptic_inference import panoptic_fusion
from tests.utils.official_detr import (
    PostProcessPanoptic,
    decode_panoptic_png,
    official_is_thing_map,
)


@pytest.mark.parametrize("size", [(64, 48), (800, 612), (1066, 500), (7, 25), (1199, 640), (5, 5)])
def test_pil_nearest_indices_match_pillow(size):
    n_in, n_out = size
    x = np.arange(n_in * 3).reshape(3, n_in)
    pil = rgb2id(np.asarray(Image.fromarray(id2rgb(x)).resize((n_out, 3), Image.NEAREST)))
    assert np.array_equal(pil, x[:, pil_nearest_indices(n_in, n_out).numpy()])


@pytest.mark.parametrize("shape", [(200, 300, 800, 1199), (17, 23, 64, 90), (50, 50, 200, 200)])
def test_sampled_bilinear_is_interpolate(shape):
    hm, wm, h, w = shape
    m = torch.randn(3, hm, wm) * 5
    full = F.interpolate(m[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    rows, cols = torch.arange(0, h, 3), torch.arange(1, w, 2)
    out = sampled_bilinear(m, h, w, rows, cols)
    torch.testing.assert_close(out, full[:, rows][:, :, cols], rtol=1e-6, atol=1e-6)


def test_fusion_matches_official_postprocessor_pixel_for_pixel():
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    is_thing = torch.tensor([c <= 90 for c in range(250)])
    post = PostProcessPanoptic(official_is_thing_map(250), 0.85)
    checked = 0
    for case in range(30):
        q = int(rng.integers(2, 25))
        hm, wm = (int(v) for v in rng.integers(3, 30, 2))
        h, w = 4 * hm - int(rng.integers(0, 4)), 4 * wm - int(rng.integers(0, 4))
        oh, ow = (int(v) for v in rng.integers(2, 2 * max(h, w), 2))
        logits = torch.randn(q, 251, generator=g)
        logits[:, 250] += 10
        for j in rng.choice(q, int(rng.integers(1, q + 1)), replace=False):
            logits[j, 250] -= 10
            logits[j, int(rng.choice(list(range(1, 91)) + [92, 93, 95]))] += (
                10  # few stuff ids: duplicates
            )
        masks = torch.randn(q, hm, wm, generator=g) * float(rng.choice([0.01, 1.0, 5.0]))
        if case % 3 == 0:
            masks[int(rng.integers(q))] = masks[int(rng.integers(q))]  # identical masks: exact ties
        ref = post(
            {
                "pred_logits": logits[None],
                "pred_masks": masks[None],
                "pred_boxes": torch.rand(1, q, 4),
            },
            [(h, w)],
            [(oh, ow)],
        )[0]
        ids, info = panoptic_fusion(logits, masks, (h, w), (oh, ow), is_thing, crop_padding=False)
        assert [(s["category_id"], s["area"]) for s in info] == [
            (s["category_id"], s["area"]) for s in ref["segments_info"]
        ]
        if info:
            assert np.array_equal(ids.numpy() - 1, decode_panoptic_png(ref["png_string"]))
            checked += 1
    assert checked >= 20
