"""Deployment exports (``detr_d2.export``) against the eager model, on CPU.

TorchScript (the whole model, fusion included): the panoptic map and segments are identical to
``model(batched_inputs)``, and the saved file runs in a process that imports neither detr_d2 nor
Detectron2. ONNX (the network) through onnxruntime: raw outputs within the official-checkpoint
converter's tolerances and, with the numpy post-processor, >= 99.9% of the pixels equal with the
same segments.

Two models: a tiny one (ResNet-18, hidden 128, quickstart classes: 3 things + 3 stuff, so stuff
merges happen) and the R50 layout (Bottleneck ResNet-50 with frozen BN, hidden 256 / 8 heads so the
mask head has DETR's widths, the official 250 dataset-id class slots with COCO's metadata; 2+2
transformer layers and 20 queries to stay fast). The score threshold is DETR's 0.85. Random weights,
calibrated as in test_checkpoint_faithfulness.py so that queries get chosen classes and distinct,
decisive masks (random masks nearly tie everywhere and a comparison would only compare float
rounding); the two test images keep different numbers of queries: one trace must serve any number of
kept queries (and none). Images: the real COCO sample image at two sizes (two short sides), outputs
at its original 427x640 size.
"""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from detr_d2.export import (
    PanopticPostprocessor,
    export_metadata,
    export_torchscript,
    onnx_postprocess,
    save_torchscript,
    torch_export,
)
from detr_d2.export.network import PanopticNetwork
from detr_d2.export.onnx_export import max_opset
from detr_d2.modeling import fusion
from detr_d2.modeling.panoptic_inference import panoptic_fusion
from tests.utils import legacy_fusion
from tests.utils.calibrated_models import (
    calibrate_,
    r50_export_cfg,
    sample_images,
    tiny_export_cfg,
)
from tests.utils.paths import COCO_SAMPLE

IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg")  # 427x640
ONNX_TOLERANCES = {
    "pred_logits": 1e-3,
    "pred_boxes": 1e-4,
    "pred_masks": 5e-2,
}  # test_checkpoint_faithfulness


def _onnxruntime():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        pytest.skip("onnx / onnxruntime not installed (pip install 'detr_d2[export]')")
    return onnxruntime


# ----------------------------------------------------------------------------------------------
# models
def _setup(cfg, short_sides, plans, threshold=0.85, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    images, orig_hw = sample_images(cfg, short_sides)
    calibrate_(model, images, plans)
    model.object_mask_threshold = threshold
    meta = export_metadata(model, cfg, MetadataCatalog.get(cfg.DATASETS.TEST[0]))
    raw = []  # the eager model's own network outputs, captured on their way to its post-processing
    postprocess = model.postprocess

    def capture(outputs, batched_inputs, image_sizes, masks, selections):
        queries = selections[0].masks  # the queries whose masks were computed
        raw.append((outputs["pred_logits"][0], outputs["pred_boxes"][0], queries, masks[0]))
        return postprocess(outputs, batched_inputs, image_sizes, masks, selections)

    model.postprocess = capture
    with torch.no_grad():
        eager = [
            model([{"image": x, "height": orig_hw[0], "width": orig_hw[1]}])[0]["panoptic_seg"]
            for x in images
        ]
    del model.postprocess
    assert [r[2].tolist() for r in raw] == [
        list(range(len(p))) for p in plans
    ]  # different numbers kept
    assert all(len(segs) >= 2 for _, segs in eager)
    return {
        "cfg": cfg,
        "model": model,
        "images": images,
        "orig_hw": orig_hw,
        "meta": meta,
        "eager": eager,
        "raw": raw,
    }


@pytest.fixture(scope="module")
def tiny():
    # contiguous classes: things 0-2, stuff 3-5; stuff 3 twice (merged), thing 0 twice (two
    # instances)
    return _setup(tiny_export_cfg(), (128, 96), plans=[[0, 3, 1, 3, 4, 2, 0], [0, 3, 1, 3]])


@pytest.fixture(scope="module")
def r50():
    # COCO dataset-id slots: things 1, 3, 18; stuff 184 twice (merged), 187, 193
    return _setup(
        r50_export_cfg(),
        (160, 192),
        plans=[[1, 184, 3, 184, 187, 18, 1, 193], [1, 184, 3, 184, 187]],
    )


def _labels(segments):
    return [(s["id"], s["category_id"], s["isthing"]) for s in segments]


def _segments_from_tensors(out):
    return [
        {"id": int(i), "category_id": int(c), "isthing": bool(t), "score": float(s), "area": int(a)}
        for i, c, t, s, a in zip(
            out["segment_ids"], out["category_ids"], out["isthing"], out["scores"], out["areas"]
        )
    ]


# ----------------------------------------------------------------------------------------------
# fusion pieces
def test_index_tables_equal_the_models_own():
    """PIL NEAREST index tables and bilinear taps: the fusion's (eager and scripted) and the numpy
    twin's equal the old eager ones (numpy ``add.accumulate``; tests/utils/legacy_fusion.py) for
    every size pair up to 40 and some large ones."""
    nearest = torch.jit.script(fusion.pil_nearest_indices)
    taps = torch.jit.script(fusion.bilinear_taps)
    pairs = [(a, b) for a in range(1, 41) for b in range(1, 41)] + [
        (800, 427),
        (1199, 640),
        (96, 50),
        (200, 1333),
    ]
    for n_in, n_out in pairs:
        ref = legacy_fusion.pil_nearest_indices(n_in, n_out)
        assert torch.equal(nearest(n_in, n_out), ref), (n_in, n_out)
        assert torch.equal(fusion.pil_nearest_indices(n_in, n_out), ref), (n_in, n_out)
        assert np.array_equal(onnx_postprocess.pil_nearest_indices(n_in, n_out), ref.numpy()), (
            n_in,
            n_out,
        )
        sel = torch.arange(n_out)
        for a, b, c in zip(
            taps(n_in, n_out, sel),
            legacy_fusion.bilinear_taps(n_in, n_out, sel),
            onnx_postprocess.bilinear_taps(n_in, n_out, sel.numpy()),
        ):
            assert torch.equal(a, b) and np.array_equal(c, b.numpy()), (n_in, n_out)


def test_fusions_equal_panoptic_fusion_on_the_same_raw_outputs(tiny, r50):
    """On the same network outputs, the scripted fusion gives panoptic_fusion's map and segments
    exactly; the numpy twin too (scores to 1e-6: PyTorch's float32 exp is not correctly rounded,
    which could also flip a pixel where two masks tie to float precision; none here)."""
    fuse = torch.jit.script(fusion.fuse_panoptic)
    for setup in (tiny, r50):
        model, (h_out, w_out) = setup["model"], setup["orig_hw"]
        post = PanopticPostprocessor.from_metadata(setup["meta"])
        label_map = (
            model.label_map if model.label_map is not None else torch.arange(len(model.is_thing))
        )
        for img, (logits, boxes, queries, masks) in zip(setup["images"], setup["raw"]):
            h, w = img.shape[1:]
            for out_hw in ((h_out, w_out), (h // 3, w // 2 + 1)):
                ids, segs = panoptic_fusion(
                    logits,
                    masks,
                    (h, w),
                    out_hw,
                    model.is_thing,
                    threshold=model.object_mask_threshold,
                    min_area=model.min_segment_area,
                    label_map=model.label_map,
                    mask_queries=queries,
                )
                got = fuse(
                    logits,
                    masks,
                    queries,
                    h,
                    w,
                    out_hw[0],
                    out_hw[1],
                    model.is_thing,
                    label_map,
                    model.min_segment_area,
                    model.mask_stride,
                    True,
                )
                assert torch.equal(got["panoptic_seg"], ids) and _segments_from_tensors(got) == segs
                np_ids, np_segs = post(
                    [logits.numpy(), boxes.numpy(), queries.numpy(), masks.numpy()], (h, w), out_hw
                )
                assert np.array_equal(np_ids, ids.numpy())
                assert [{**s, "score": 0} for s in segs] == [
                    {k: v for k, v in {**s, "score": 0}.items() if k != "dataset_category_id"}
                    for s in np_segs
                ]
                assert np.allclose(
                    [s["score"] for s in np_segs], [s["score"] for s in segs], atol=1e-6, rtol=0
                )
    merged = [s for s in tiny["eager"][0][1] + tiny["eager"][1][1] if not s["isthing"]]
    assert merged, "the tiny model's outputs should include stuff segments"


def test_segment_removal_and_nothing_kept_in_the_scripted_fusion(tiny):
    """Queries whose segments are too small are dropped (and the argmax redone); all dropped or none
    kept -> an all-zero map, no segments, as panoptic_fusion."""
    fuse = torch.jit.script(fusion.fuse_panoptic)
    model = tiny["model"]
    logits, _, queries, masks = tiny["raw"][0]
    h, w = tiny["images"][0].shape[1:]
    label_map = torch.arange(len(model.is_thing))
    for min_area, keep in ((0, None), (300, None), (10**7, None), (4, 0)):
        q = queries if keep is None else queries[:keep]
        m = masks if keep is None else masks[:keep]
        threshold = model.object_mask_threshold if keep is None else 1.0
        ids, segs = panoptic_fusion(
            logits,
            m,
            (h, w),
            (h, w),
            model.is_thing,
            threshold=threshold,
            min_area=min_area,
            mask_queries=q,
        )
        got = fuse(logits, m, q, h, w, h, w, model.is_thing, label_map, min_area, 4, True)
        assert torch.equal(got["panoptic_seg"], ids) and _segments_from_tensors(got) == segs
        if min_area == 10**7 or keep == 0:
            assert not segs and not ids.any()
        if min_area == 300:
            assert 0 < len(segs) < len(queries)


# ----------------------------------------------------------------------------------------------
# TorchScript
_RUN_TORCHSCRIPT = textwrap.dedent(
    """
    import sys, torch
    model_path, inputs_path, out_path = sys.argv[1:]
    model = torch.jit.load(model_path)
    outs = [model(image, list(size)) for image, size in torch.load(inputs_path)]
    image, size = torch.load(inputs_path)[0]
    outs.append(model(image, list(size)))  # again: the optimised graph after profiling runs
    model.network.object_mask_threshold.fill_(1.0)  # keep no query
    outs.append(model(image, list(size)))
    try:
        model(image[None])
    except Exception as e:
        outs.append(str(e))
    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("detr_d2", "detectron2"))
    assert not imported, imported
    torch.save(outs, out_path)
    """
)


def _assert_torchscript_equals_eager(setup, outs):
    for out, (ids, segs) in zip(outs, setup["eager"]):
        assert torch.equal(out["panoptic_seg"], ids)
        assert _segments_from_tensors(out) == segs
        assert out["panoptic_seg"].shape == setup["orig_hw"]


def test_torchscript_runs_without_detr_d2_and_equals_eager(tiny, tmp_path):
    """Saved, then loaded and run in a fresh process that imports neither detr_d2 nor Detectron2."""
    module = export_torchscript(tiny["model"], tiny["images"][0], tiny["meta"])
    save_torchscript(module, str(tmp_path / "model.ts"), tiny["meta"])
    torch.save([(x, tiny["orig_hw"]) for x in tiny["images"]], tmp_path / "inputs.pt")
    subprocess.run(
        [
            sys.executable,
            "-c",
            _RUN_TORCHSCRIPT,
            *(str(tmp_path / f) for f in ("model.ts", "inputs.pt", "out.pt")),
        ],
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    outs = torch.load(tmp_path / "out.pt")
    _assert_torchscript_equals_eager(tiny, outs[:2])
    _assert_torchscript_equals_eager(tiny, outs[2:3])
    nothing = outs[3]
    assert not nothing["panoptic_seg"].any() and nothing["panoptic_seg"].shape == tiny["orig_hw"]
    assert all(len(v) == 0 for k, v in nothing.items() if k != "panoptic_seg")
    assert "image must be a (3, H, W) tensor" in outs[4] and "[1, 3," in outs[4]
    # dataset ids and the stored settings
    assert all(
        int(d) == int(c) + 1
        for o in outs[:2]
        for c, d in zip(o["category_ids"], o["dataset_category_ids"])
    )
    extra = {"detr_d2_export.json": ""}
    loaded = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert b'"input_format": "RGB"' in extra["detr_d2_export.json"] and loaded.input_format == "RGB"


def test_torchscript_r50_equals_eager(r50):
    module = export_torchscript(r50["model"], r50["images"][0], r50["meta"])
    outs = [module(x, list(r50["orig_hw"])) for x in r50["images"]]
    _assert_torchscript_equals_eager(r50, outs)
    coco = r50["meta"]["dataset_category_ids"]
    for out in outs:  # dataset ids: COCO category ids of the contiguous ones
        assert [int(d) for d in out["dataset_category_ids"]] == [
            coco[int(c)] for c in out["category_ids"]
        ]


def test_export_refuses_bad_input(tiny):
    with pytest.raises(ValueError, match=r"\(3, H, W\) tensor.*got \(1, 3, 96, 128\)"):
        export_torchscript(tiny["model"], torch.zeros(1, 3, 96, 128), tiny["meta"])
    with pytest.raises(ValueError, match="got \\(96, 128\\)"):
        export_torchscript(tiny["model"], torch.zeros(96, 128), tiny["meta"])
    cfg = tiny_export_cfg()
    cfg.TEST.PANOPTIC_ON, cfg.TEST.INSTANCE_ON = False, True
    with pytest.raises(ValueError, match="TEST.PANOPTIC_ON"):
        PanopticNetwork(build_model(cfg))


# ----------------------------------------------------------------------------------------------
# ONNX
def _check_onnx(setup):
    from detr_d2.export import export_onnx

    ort_module = _onnxruntime()
    data = export_onnx(setup["model"], setup["images"][0], setup["meta"])
    session = ort_module.InferenceSession(data, providers=["CPUExecutionProvider"])
    post = PanopticPostprocessor.from_onnx_session(session)
    h_out, w_out = setup["orig_hw"]
    for img, raw, (ids, segs) in zip(setup["images"], setup["raw"], setup["eager"]):
        outputs = session.run(None, {"image": img.float().numpy()})
        names = [o.name for o in session.get_outputs()]
        assert names == list(onnx_postprocess.OUTPUT_NAMES)
        assert np.array_equal(outputs[2], raw[2].numpy())  # the same kept queries
        for name, got, ref in zip(names, outputs, raw):
            assert got.shape == tuple(ref.shape), name
            if name in ONNX_TOLERANCES:
                assert np.abs(got - ref.numpy()).max() <= ONNX_TOLERANCES[name], name
        got_ids, got_segs = post(outputs, img.shape[1:], (h_out, w_out))
        assert (got_ids == ids.numpy()).mean() >= 0.999
        assert _labels(got_segs) == _labels(segs)
        assert all(
            abs(a["area"] - b["area"]) <= 0.001 * h_out * w_out for a, b in zip(got_segs, segs)
        )
        assert np.allclose(
            [s["score"] for s in got_segs], [s["score"] for s in segs], atol=1e-4, rtol=0
        )
    return data


def test_onnx_tiny_matches_eager(tiny):
    _check_onnx(tiny)


def test_onnx_r50_matches_eager(r50):
    import onnx

    data = _check_onnx(r50)
    proto = onnx.load_from_string(data)
    assert proto.opset_import[0].version == 17
    ops = {n.op_type for n in proto.graph.node}
    assert {
        "NonZero",
        "InstanceNormalization",
        "Softmax",
        "Einsum",
    } <= ops  # kept queries, GroupNorm, joint softmax
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in proto.graph.input
    }
    assert dims == {"image": [3, "height", "width"]}


def test_onnx_opset_out_of_range_is_refused(tiny):
    from detr_d2.export import export_onnx

    _onnxruntime()
    top = max_opset()
    assert top >= 17  # torch 2.3: 17; torch 2.14: 20
    for bad in (12, top + 1):
        with pytest.raises(ValueError, match=f"opset {bad} is not supported: use 13..{top}"):
            export_onnx(tiny["model"], tiny["images"][0], tiny["meta"], opset=bad)


def test_onnx_export_uses_the_torchscript_exporter(tiny, monkeypatch):
    """torch >= 2.9 defaults to the dynamo exporter (needs onnxscript, fails on the kept queries'
    data-dependent shapes): export_onnx must ask for the TorchScript-based one where torch has the
    choice, and pass no such argument where it has not (torch 2.3)."""
    import inspect

    from detr_d2.export import export_onnx

    _onnxruntime()
    has_choice = "dynamo" in inspect.signature(torch.onnx.export).parameters
    seen = {}
    real_export = torch.onnx.export

    @functools.wraps(real_export)  # keeps its signature, which export_onnx inspects
    def recording_export(*args, **kwargs):
        seen.update(kwargs)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", recording_export)
    export_onnx(tiny["model"], tiny["images"][0], tiny["meta"])
    assert seen["opset_version"] == 17
    if has_choice:
        assert seen["dynamo"] is False
    else:
        assert "dynamo" not in seen


def test_numpy_postprocessor_needs_no_torch(tiny, tmp_path):
    """onnx_postprocess.py runs in a process where importing torch fails (loaded from its file)."""
    logits, boxes, queries, masks = (t.numpy() for t in tiny["raw"][0])
    h, w = tiny["images"][0].shape[1:]
    np.savez(tmp_path / "raw.npz", logits=logits, boxes=boxes, queries=queries, masks=masks)
    ids, _ = PanopticPostprocessor.from_metadata(tiny["meta"])(
        [logits, boxes, queries, masks], (h, w), tiny["orig_hw"]
    )
    np.save(tmp_path / "expected.npy", ids)
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        sys.modules["torch"] = None  # any torch import raises ImportError
        import numpy as np
        path = {onnx_postprocess.__file__!r}
        spec = importlib.util.spec_from_file_location("onnx_postprocess", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        raw = np.load("raw.npz")
        post = mod.PanopticPostprocessor.from_metadata(json.loads(open("meta.json").read()))
        outputs = [raw["logits"], raw["boxes"], raw["queries"], raw["masks"]]
        ids, segs = post(outputs, ({h}, {w}), {tuple(tiny["orig_hw"])})
        assert np.array_equal(ids, np.load("expected.npy")) and segs
        """
    )
    import json

    (tmp_path / "meta.json").write_text(json.dumps(tiny["meta"]))
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)


# ----------------------------------------------------------------------------------------------
# torch.export (.pt2): on torch >= MIN_TORCH the same parity as TorchScript; on older torch (the
# pinned 2.3.1) the refusal naming the version needed
def _torch_export_refused() -> bool:
    """True (after checking the refusal) where the installed torch is older than MIN_TORCH."""
    if torch_export._torch_version() >= torch_export.MIN_TORCH:
        torch_export.check_torch_export()  # no refusal
        return False
    need = ".".join(map(str, torch_export.MIN_TORCH))
    installed = re.escape(torch.__version__)
    with pytest.raises(ValueError, match=rf"needs torch >= {need} \(installed: {installed}"):
        torch_export.check_torch_export()
    return True


_RUN_PT2 = textwrap.dedent(
    """
    import sys, torch
    program_path, inputs_path, out_path = sys.argv[1:]
    extra = {"detr_d2_export.json": ""}
    network = torch.export.load(program_path, extra_files=extra).module()
    outs = [tuple(network(image.float())) for image, _ in torch.load(inputs_path)]
    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("detr_d2", "detectron2"))
    assert not imported, imported
    torch.save((outs, extra["detr_d2_export.json"]), out_path)
    """
)


def test_torch_export_refusal_names_the_torch_version(tiny, monkeypatch):
    monkeypatch.setattr(torch_export, "_torch_version", lambda: (2, 3))
    with pytest.raises(ValueError, match=r"needs torch >= 2\.14 .*--format torchscript or onnx"):
        torch_export.export_program(tiny["model"], tiny["images"][0])


def test_torch_export_equals_eager_and_loads_with_torch_alone(tiny, tmp_path):
    """Saved as .pt2 and loaded: with the fusion (load_exported_program) the panoptic maps and
    segments equal the eager model's on both image sizes (dynamic H, W; different numbers of kept
    queries, and none); torch.export.load alone, in a process that imports neither detr_d2 nor
    Detectron2, runs the network and returns the eager network's raw outputs."""
    if _torch_export_refused():
        return
    path = str(tmp_path / "model.pt2")
    torch_export.save_program(
        torch_export.export_program(tiny["model"], tiny["images"][0]), path, tiny["meta"]
    )
    loaded, meta = torch_export.load_exported_program(path)
    assert meta == json.loads(json.dumps(tiny["meta"]))
    with torch.no_grad():
        outs = [loaded(x, list(tiny["orig_hw"])) for x in tiny["images"]]
        _assert_torchscript_equals_eager(tiny, outs)
        loaded.network.object_mask_threshold.fill_(1.0)  # keep no query
        nothing = loaded(tiny["images"][0], list(tiny["orig_hw"]))
    assert not nothing["panoptic_seg"].any() and all(
        len(v) == 0 for k, v in nothing.items() if k != "panoptic_seg"
    )

    torch.save([(x, tiny["orig_hw"]) for x in tiny["images"]], tmp_path / "inputs.pt")
    subprocess.run(
        [sys.executable, "-c", _RUN_PT2, path, str(tmp_path / "inputs.pt"), str(tmp_path / "o.pt")],
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    raw_outs, stored = torch.load(tmp_path / "o.pt")
    assert json.loads(stored) == meta
    for got, ref in zip(raw_outs, tiny["raw"]):
        assert torch.equal(got[2], ref[2])  # the same kept queries
        for name, a, b in zip(PanopticNetwork.output_names, got, ref):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=0), name


def test_torch_export_r50_equals_eager(r50):
    if _torch_export_refused():
        return
    loaded = torch_export.ScriptedPanopticModel(
        torch_export.export_program(r50["model"], r50["images"][0]).module(),
        r50["meta"],
        3,
        r50["model"].device,
    )
    with torch.no_grad():
        _assert_torchscript_equals_eager(
            r50, [loaded(x, list(r50["orig_hw"])) for x in r50["images"]]
        )
