"""The reference oracle (tests.utils.official_detr) against official DETR as published
(facebookresearch/detr at 29901c5): its state-dict layout, input pipeline
(``datasets/transforms.py``) and each numerically delicate block recomputed independently from the
published code."""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.utils.official_detr import (
    FrozenBatchNorm2d,
    NestedTensor,
    OfficialDETRsegm,
    build_official_detr,
    detr_resized_hw,
    load_rgb_image,
    nested_tensor_from_tensor_list,
    official_eval_transform,
    official_state_dict_template,
    randomize_frozen_batchnorm_,
)
from tests.utils.official_detr.model import (
    MaskHeadSmallConv,
    MHAttentionMap,
    PositionEmbeddingSine,
    Transformer,
)
from tests.utils.paths import COCO_SAMPLE

SAMPLE_IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg")  # 640x427 (WxH)


def _group_counts(keys):
    groups = []
    for k in keys:
        g = ".".join(k.split(".")[:2]) if k.startswith("detr.") else k.split(".")[0]
        if not groups or groups[-1][0] != g:
            groups.append([g, 0])
        groups[-1][1] += 1
    return [tuple(g) for g in groups]


# ------------------------------------------------------------------------------------------ layout
def test_r50_panoptic_layout_equals_official_checkpoint():
    sd = official_state_dict_template()  # hub defaults: detr_resnet50_panoptic
    assert len(sd) == 490
    assert sum(math.prod(s) for s in sd.values()) == 43_005_528
    assert _group_counts(sd) == [
        ("detr.transformer", 182),
        ("detr.class_embed", 2),
        ("detr.bbox_embed", 6),
        ("detr.query_embed", 1),
        ("detr.input_proj", 2),
        ("detr.backbone", 265),
        ("bbox_attention", 4),
        ("mask_head", 28),
    ]
    expected_shapes = {
        "detr.transformer.encoder.layers.5.self_attn.in_proj_weight": (768, 256),
        "detr.transformer.decoder.layers.0.multihead_attn.in_proj_bias": (768,),
        "detr.transformer.decoder.layers.3.norm3.weight": (256,),
        "detr.transformer.decoder.norm.bias": (256,),
        "detr.transformer.encoder.layers.0.linear1.weight": (2048, 256),
        "detr.class_embed.weight": (251, 256),
        "detr.bbox_embed.layers.2.weight": (4, 256),
        "detr.query_embed.weight": (100, 256),
        "detr.input_proj.weight": (256, 2048, 1, 1),
        "detr.backbone.0.body.conv1.weight": (64, 3, 7, 7),
        "detr.backbone.0.body.bn1.running_var": (64,),
        "detr.backbone.0.body.layer1.0.conv1.weight": (64, 64, 1, 1),
        "detr.backbone.0.body.layer3.5.conv1.weight": (256, 1024, 1, 1),
        "detr.backbone.0.body.layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "detr.backbone.0.body.layer4.2.bn3.running_mean": (2048,),
        "bbox_attention.k_linear.weight": (256, 256),
        "mask_head.lay1.weight": (264, 264, 3, 3),
        "mask_head.gn5.weight": (16,),
        "mask_head.out_lay.weight": (1, 16, 3, 3),
        "mask_head.adapter1.weight": (128, 1024, 1, 1),
        "mask_head.adapter3.weight": (32, 256, 1, 1),
    }
    for k, shape in expected_shapes.items():
        assert tuple(sd[k]) == shape, k
    assert not any("num_batches_tracked" in k or ".fc." in k for k in sd)
    assert "detr.transformer.encoder.norm.weight" not in sd  # post-norm: no final encoder norm
    bn_keys = [k for k in sd if k.startswith("detr.backbone.") and k.endswith(".running_var")]
    assert len(bn_keys) == 53


def test_r101_and_detection_layouts():
    sd = official_state_dict_template(depth=101)
    assert len(sd) == 745
    assert sum(math.prod(s) for s in sd.values()) == 62_049_880
    assert "detr.backbone.0.body.layer3.22.bn3.weight" in sd
    det = official_state_dict_template(masks=False, num_classes=91)
    assert len(det) == 490 - 4 - 28
    assert not any(k.startswith(("detr.", "mask_head", "bbox_attention")) for k in det)
    assert tuple(det["class_embed.weight"]) == (92, 256)


def test_official_checkpoint_loads_strictly_and_reproduces_outputs():
    kw = dict(
        depth=18,
        hidden_dim=128,
        enc_layers=1,
        dec_layers=1,
        dim_feedforward=64,
        num_queries=4,
        num_classes=20,
    )
    a = randomize_frozen_batchnorm_(OfficialDETRsegm(**kw)).eval()
    b = OfficialDETRsegm(**kw).eval()
    sd = a.state_dict()
    sd["detr.backbone.0.body.bn1.num_batches_tracked"] = torch.tensor(
        5
    )  # tolerated, like DETR's FrozenBN
    result = b.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(3, 64, 80)
    with torch.no_grad():
        oa, ob = a([x]), b([x])
    for k in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.equal(oa[k], ob[k]), k


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize(
    "wh,expected_hw",
    [
        ((640, 427), (800, 1199)),
        ((640, 480), (800, 1066)),  # Detectron2 rounds to 1067
        ((480, 640), (1066, 800)),
        ((500, 375), (800, 1066)),
        ((375, 500), (1066, 800)),
        ((640, 360), (750, 1333)),  # long side capped: short = round(1333 * 360 / 640) = 750
        ((612, 612), (800, 800)),
        ((1200, 800), (800, 1200)),  # short side already 800: unchanged
    ],
)
def test_detr_resize_rule(wh, expected_hw):
    assert detr_resized_hw(*wh) == expected_hw


def test_official_eval_transform_on_sample_image():
    img = load_rgb_image(SAMPLE_IMAGE)
    assert img.size == (640, 427) and img.mode == "RGB"
    tensor, size = official_eval_transform(img)
    assert size == (800, 1199) and tuple(tensor.shape) == (3, 800, 1199)
    resized = np.asarray(img.resize((1199, 800), Image.BILINEAR), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((resized - mean) / std).transpose(2, 0, 1)  # channel 0 = R
    assert np.abs(tensor.numpy() - expected).max() < 1e-5


def test_nested_tensor_pads_bottom_right_with_mask():
    a, b = torch.ones(3, 4, 5), 2 * torch.ones(3, 6, 3)
    nt = nested_tensor_from_tensor_list([a, b])
    assert tuple(nt.tensors.shape) == (2, 3, 6, 5)  # no rounding to a multiple of 32
    assert torch.equal(nt.tensors[0, :, :4, :5], a) and nt.tensors[0, :, 4:].abs().sum() == 0
    assert torch.equal(nt.tensors[1, :, :, :3], b) and nt.tensors[1, :, :, 3:].abs().sum() == 0
    assert not nt.mask[0, :4, :5].any() and nt.mask[0, 4:].all()
    assert not nt.mask[1, :, :3].any() and nt.mask[1, :, 3:].all()


# ------------------------------------------------------------------------------------------ blocks
def test_frozen_batchnorm_scale_and_shift():
    bn = randomize_frozen_batchnorm_(torch.nn.Sequential(FrozenBatchNorm2d(6)))[0]
    x = torch.randn(2, 6, 3, 4)
    s = bn.weight / torch.sqrt(bn.running_var + 1e-5)
    t = bn.bias - bn.running_mean * s
    assert torch.allclose(bn(x), x * s[:, None, None] + t[:, None, None], atol=1e-6)
    assert set(dict(bn.named_buffers())) == {"weight", "bias", "running_mean", "running_var"}


def test_position_encoding_matches_formula():
    f = 8  # features per axis
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[:, :, 4:] = True  # padded last column
    mask[:, 2:, :] = True  # padded last row
    pos = PositionEmbeddingSine(f, normalize=True)(NestedTensor(torch.zeros(1, 1, 3, 5), mask))
    assert tuple(pos.shape) == (1, 2 * f, 3, 5)
    nm = (~mask[0]).float()
    y, x = nm.cumsum(0), nm.cumsum(1)
    y = y / (y[-1:, :] + 1e-6) * 2 * math.pi
    x = x / (x[:, -1:] + 1e-6) * 2 * math.pi
    expected = torch.zeros(2 * f, 3, 5)
    for i in range(f):
        dim_t = 10000 ** (2 * (i // 2) / f)
        fn = torch.sin if i % 2 == 0 else torch.cos
        expected[i] = fn(y / dim_t)
        expected[f + i] = fn(x / dim_t)
    assert torch.allclose(pos[0], expected, atol=1e-5)


def _manual_attention(xq, xk, xv, attn, key_padding_mask=None):
    """Section 4.3 attention from nn.MultiheadAttention's packed weights (sequence-first
    tensors)."""
    c = xq.shape[-1]
    heads, d = attn.num_heads, c // attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = (xq @ w[:c].T + b[:c]) / math.sqrt(d)
    k = xk @ w[c : 2 * c].T + b[c : 2 * c]
    v = xv @ w[2 * c :].T + b[2 * c :]
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).permute(
        1, 2, 0, 3
    )  # (B, heads, L, d)
    logits = split(q) @ split(k).transpose(-1, -2)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ split(v)).permute(2, 0, 1, 3).reshape(xq.shape[0], xq.shape[1], c)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def test_transformer_post_norm_matches_description():
    torch.manual_seed(1)
    tr = Transformer(
        d_model=32,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=24,
        return_intermediate_dec=True,
    ).eval()
    with torch.no_grad():  # non-identity LayerNorms, else decoder.norm(t) == t after norm3
        for m in tr.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    bs, h, w, q = 2, 3, 4, 5
    src, pos = torch.randn(bs, 32, h, w), torch.randn(bs, 32, h, w)
    mask = torch.zeros(bs, h, w, dtype=torch.bool)
    mask[1, :, 3:] = True
    query = torch.randn(q, 32)
    with torch.no_grad():
        hs, memory = tr(src, mask, query, pos)
        s = src.flatten(2).permute(2, 0, 1)
        p = pos.flatten(2).permute(2, 0, 1)
        kpm = mask.flatten(1)
        for layer in tr.encoder.layers:
            s = layer.norm1(s + _manual_attention(s + p, s + p, s, layer.self_attn, kpm))
            s = layer.norm2(s + layer.linear2(F.relu(layer.linear1(s))))
        assert torch.allclose(
            memory, s.permute(1, 2, 0).reshape(bs, 32, h, w), atol=1e-5
        )  # no final norm
        t = torch.zeros(q, bs, 32)
        qpos = query[:, None].repeat(1, bs, 1)
        expected_hs = []
        for layer in tr.decoder.layers:
            t = layer.norm1(t + _manual_attention(t + qpos, t + qpos, t, layer.self_attn))
            t = layer.norm2(t + _manual_attention(t + qpos, s + p, s, layer.multihead_attn, kpm))
            t = layer.norm3(t + layer.linear2(F.relu(layer.linear1(t))))
            expected_hs.append(
                tr.decoder.norm(t).transpose(0, 1)
            )  # the next layer gets un-normalised t
    assert tuple(hs.shape) == (2, bs, q, 32)
    assert torch.allclose(hs, torch.stack(expected_hs), atol=1e-5)


def test_bbox_attention_is_one_softmax_over_heads_and_positions():
    torch.manual_seed(2)
    att = MHAttentionMap(32, 32, 4).eval()
    hs, memory = torch.randn(2, 3, 32), torch.randn(2, 32, 4, 5)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True
    with torch.no_grad():
        out = att(hs, memory, mask=mask)
        qh = att.q_linear(hs).view(2, 3, 4, 8) * 8**-0.5
        k = (memory.permute(0, 2, 3, 1) @ att.k_linear.weight.T + att.k_linear.bias).view(
            2, 4, 5, 4, 8
        )
        logits = torch.einsum("bqnc,bhwnc->bqnhw", qh, k).masked_fill(
            mask[:, None, None], float("-inf")
        )
        expected = logits.flatten(2).softmax(-1).view_as(logits)
    assert tuple(out.shape) == (2, 3, 4, 4, 5)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.sum(dim=(2, 3, 4)), torch.ones(2, 3), atol=1e-5)
    assert not torch.allclose(out.sum(dim=(3, 4)), torch.ones(2, 3, 4), atol=1e-2)  # not per head
    assert out[1, :, :, 3:].abs().max() == 0


def _legacy_nearest(x, size):
    """Source index floor(dst * in / out), the legacy ``nearest`` of ``F.interpolate`` (PyTorch
    ``UpSampleKernel.cpp``)."""
    (hi, wi), (ho, wo) = x.shape[-2:], size
    iy = torch.arange(ho) * hi // ho
    ix = torch.arange(wo) * wi // wo
    return x[..., iy[:, None], ix[None, :]]


def test_mask_head_matches_description_with_legacy_nearest():
    torch.manual_seed(3)
    hidden, heads, b, q = 128, 8, 2, 3
    head = MaskHeadSmallConv(hidden + heads, [32, 16, 8], hidden).eval()
    sizes = [
        (4, 5),
        (7, 10),
        (13, 19),
        (25, 38),
    ]  # res5..res2 of a 100x150 input: not exact doubles
    src_proj = torch.randn(b, hidden, *sizes[0])
    bbox_mask = torch.rand(b, q, heads, *sizes[0])
    fpns = [
        torch.randn(b, 32, *sizes[1]),
        torch.randn(b, 16, *sizes[2]),
        torch.randn(b, 8, *sizes[3]),
    ]
    with torch.no_grad():
        out = head(src_proj, bbox_mask, fpns)
        rows = [
            torch.cat([src_proj[i], bbox_mask[i, j]], 0) for i in range(b) for j in range(q)
        ]  # batch-major
        x = torch.stack(rows)
        x = F.relu(head.gn1(head.lay1(x)))
        x = F.relu(head.gn2(head.lay2(x)))
        for adapter, lay, gn, fpn in [
            (head.adapter1, head.lay3, head.gn3, fpns[0]),
            (head.adapter2, head.lay4, head.gn4, fpns[1]),
            (head.adapter3, head.lay5, head.gn5, fpns[2]),
        ]:
            f = adapter(fpn).repeat_interleave(q, dim=0)
            x = F.relu(gn(lay(f + _legacy_nearest(x, f.shape[-2:]))))
        expected = head.out_lay(x)
        assert tuple(out.shape) == (b * q, 1, 25, 38)
        assert torch.allclose(out, expected, atol=1e-4)
        # the check is sensitive: nearest-exact picks other source cells for these sizes
        probe = torch.arange(4 * 5.0).view(1, 1, 4, 5)
        assert not torch.equal(
            F.interpolate(probe, size=(7, 10), mode="nearest-exact"),
            _legacy_nearest(probe, (7, 10)),
        )


def test_forward_shapes_and_feature_masks_on_padded_batch():
    model = build_official_detr(
        depth=18,
        hidden_dim=128,
        enc_layers=1,
        dec_layers=1,
        dim_feedforward=64,
        num_queries=5,
        num_classes=20,
    ).eval()
    images = [torch.randn(3, 70, 90), torch.randn(3, 100, 60)]
    samples = nested_tensor_from_tensor_list(images)
    with torch.no_grad():
        features, _ = model.detr.backbone(samples)
        out = model(samples)
    # stage k of a side n has ceil(n / 2^k) cells; the mask follows with legacy nearest
    assert [tuple(f.tensors.shape[-2:]) for f in features] == [(25, 23), (13, 12), (7, 6), (4, 3)]
    res5_mask = features[-1].mask
    assert torch.equal(res5_mask, F.interpolate(samples.mask[None].float(), size=(4, 3)).bool()[0])
    assert res5_mask[0].any() and res5_mask[1].any()
    assert tuple(out["pred_logits"].shape) == (2, 5, 21)
    assert tuple(out["pred_boxes"].shape) == (2, 5, 4)
    assert out["pred_boxes"].min() >= 0 and out["pred_boxes"].max() <= 1
    assert tuple(out["pred_masks"].shape) == (2, 5, 25, 23)
    assert "aux_outputs" not in out
