"""The eager model traces end to end, panoptic fusion included (issue 23 item 1).

* ``torch.jit.trace`` through Detectron2's ``TracingAdapter`` of a model that keeps queries gives
  the eager outputs, on the traced image and on another size with another number of segments (the
  fusion runs scripted inside the trace: ``detr_d2.modeling.fusion.fuse_panoptic_traceable``).
* The steps of Detectron2's ``tools/deploy/export_model.py --export-method tracing --format
  torchscript --sample-image`` (detectron2 02b5c4e): its input, ``TracingAdapter(model, inputs,
  None)``, ``torch.jit.trace`` with its default trace check, save, ``dump_torchscript_IR``; with
  ``TEST.PANOPTIC_SEGMENTS_AS_TENSORS True`` (the check runs the model eagerly too).
* The steps of Detectron2's ``tools/analyze_model.py --tasks flop activation``:
  ``build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])``, ``FlopCountAnalysis`` per input,
  ``by_operator``, ``total``, ``flop_count_table``, ``activation_count_operators``: real, non-zero
  counts, with kept queries (mask head counted) and with none (it printed "Total GFlops: 0.0").

Tiny random model (ResNet-18, quickstart classes: 3 things + 3 stuff); threshold 0 so that its
queries are kept; the real COCO sample images.
"""

import os
import warnings

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter, dump_torchscript_IR
from detectron2.modeling import build_model
from detectron2.utils.analysis import (
    FlopCountAnalysis,
    activation_count_operators,
    flop_count_operators,
)
from fvcore.nn import flop_count_table

from detr_d2.modeling.fusion import segments_info_from_tensors
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import COCO_SAMPLE

IMAGES = [
    os.path.join(COCO_SAMPLE, "input_images", f) for f in ("000000142238.jpg", "000000439180.jpg")
]
DATASET = "detr_trace_test_coco_sample"


def _cfg(**test):
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TEST = ("detr_quickstart_val",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 96, 160
    cfg.TEST.OBJECT_MASK_THRESHOLD, cfg.TEST.MIN_SEGMENT_AREA = 0.0, 0
    for k, v in test.items():
        setattr(cfg.TEST, k, v)
    return cfg


# class of each query on each sample image (None: no object); stuff 3 twice (merged), thing 0 twice
PLANS = [[0, 3, 1, 3, 4, 2, None, 0, None, 1], [0, 3, 1, 3, 4, 2, 5, None, None, None]]


def _model(cfg):
    """The tiny random model, its class head set (least squares on the decoder outputs of both
    sample images) so that the queries predict ``PLANS`` with margin 8: different numbers of kept
    queries and segments per image, stuff merges."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    states, targets = [], []
    with torch.no_grad():
        for path, plan in zip(IMAGES, PLANS):
            images, mask = model.preprocess_image([_sample_input(cfg, path)])
            states.append(model.forward_detector(images.tensor, mask)[1]["hs"][0])
            t = torch.zeros(len(plan), model.class_embed.out_features)
            t[torch.arange(len(plan)), [-1 if c is None else c for c in plan]] = 8
            targets.append(t)
        hs = torch.cat(states).cpu()
        design = torch.cat([hs, torch.ones(len(hs), 1)], 1).double()
        sol = torch.linalg.lstsq(design, torch.cat(targets).double()).solution.float()
        sol = sol.to(model.class_embed.weight.device)
        model.class_embed.weight.copy_(sol[:-1].T)
        model.class_embed.bias.copy_(sol[-1])
    return model


def _sample_input(cfg, path):
    """export_model.py's get_sample_inputs (--sample-image): DefaultPredictor's resize, float32."""
    original = read_image(path, format=cfg.INPUT.FORMAT)
    aug = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = aug.get_transform(original).apply_image(original)
    image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    return {"image": image, "height": original.shape[0], "width": original.shape[1]}


def _as_list(panoptic_seg):
    ids, segments = panoptic_seg
    return ids, segments if isinstance(segments, list) else segments_info_from_tensors(segments)


def _assert_same(got, ref):
    got_ids, got_segs = _as_list(got)
    ref_ids, ref_segs = _as_list(ref)
    assert got_ids.dtype == torch.int32 and torch.equal(got_ids, ref_ids)
    assert got_segs == ref_segs


def _trace(adapter, image, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(adapter, (image,), **kw)


def test_trace_with_kept_queries_equals_eager():
    model = _model(_cfg())
    first, second = (_sample_input(_cfg(), p)["image"] for p in IMAGES)
    assert first.shape != second.shape
    adapter = TracingAdapter(model, [{"image": first}])
    traced = _trace(adapter, first, check_trace=False)  # eager segments are Python numbers
    with torch.no_grad():
        eager = [model([{"image": x}])[0]["panoptic_seg"] for x in (first, second)]
    assert [len(e[1]) for e in eager] == [7, 6]  # 8 and 7 kept queries, one stuff merge each
    for x, ref in zip((first, second), eager):
        out = adapter.outputs_schema(traced(x))[0]["panoptic_seg"]
        assert isinstance(out[1], dict)  # traced: per-segment tensors
        _assert_same(out, ref)
    assert "prim::Loop" in str(traced.inlined_graph)  # the scripted fusion's removal loop


def test_export_model_tracing_steps(tmp_path):
    """tools/deploy/export_model.py --export-method tracing --format torchscript --sample-image
    IMAGE TEST.PANOPTIC_SEGMENTS_AS_TENSORS True, step by step (no evaluation: its --run-eval
    supports GeneralizedRCNN/RetinaNet only)."""
    cfg = _cfg(PANOPTIC_SEGMENTS_AS_TENSORS=True)
    torch_model = _model(cfg)
    sample = _sample_input(cfg, IMAGES[0])
    image = sample["image"]
    inputs = [{"image": image}]  # export_tracing: remove other unused keys
    traceable_model = TracingAdapter(torch_model, inputs, None)
    ts_model = _trace(traceable_model, image)  # default check_trace=True, as the tool
    ts_model.save(str(tmp_path / "model.ts"))
    dump_torchscript_IR(ts_model, str(tmp_path))
    assert (tmp_path / "model_ts_code.txt").exists()

    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    for path in IMAGES:
        x = _sample_input(cfg, path)["image"]
        with torch.no_grad():
            ref = torch_model([{"image": x}])[0]["panoptic_seg"]
        assert isinstance(ref[1], dict)  # the option: tensors in eager mode too
        got = traceable_model.outputs_schema(loaded(x))[0]["panoptic_seg"]
        _assert_same(got, ref)
        assert len(ref[1]["segment_ids"]) >= 3


@pytest.fixture(scope="module")
def sample_dataset():
    """The COCO sample images as a test dataset with the quickstart classes' metadata."""
    if DATASET not in DatasetCatalog.list():
        records = [
            {"file_name": p, "image_id": i, "height": h, "width": w}
            for i, (p, (h, w)) in enumerate(zip(IMAGES, [(427, 640), (360, 640)]))
        ]
        DatasetCatalog.register(DATASET, lambda: records)
        meta = MetadataCatalog.get("detr_quickstart_val").as_dict()
        meta.pop("name")
        MetadataCatalog.get(DATASET).set(**meta)
    return DATASET


def _analyze(cfg, num_inputs=2):
    """analyze_model.py's setup, do_flop and do_activation (without their logging)."""
    cfg.DATALOADER.NUM_WORKERS = 0
    data_loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    model = _model(cfg)  # build_model + the class head set
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # no weights: keeps them
    model.eval()
    totals, activations, table = [], [], ""
    for idx, data in zip(range(num_inputs), data_loader):
        flops = FlopCountAnalysis(model, data)
        if idx > 0:
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_operator = flops.by_operator()
        totals.append(flops.total())
        table = flop_count_table(flops)
        activations.append(sum(activation_count_operators(model, data).values()))
        assert sum(by_operator.values()) == totals[-1]
        assert (
            flops.by_module()["model.backbone"] > 0 and flops.by_module()["model.transformer"] > 0
        )
        mask_head = flops.by_module()["model.mask_head"]
    return np.array(totals), np.array(activations), table, mask_head


def test_analyze_model_flop_and_activation_steps(sample_dataset):
    cfg = _cfg()
    cfg.DATASETS.TEST = (sample_dataset,)
    kept_flops, kept_act, table, mask_head = _analyze(cfg)
    assert (kept_flops > 1e8).all() and (kept_act > 0).all() and mask_head > 0
    assert "| backbone " in table and "| mask_head " in table

    cfg.TEST.OBJECT_MASK_THRESHOLD = 1.0  # nothing kept: the mask head does not run
    none_flops, none_act, _, mask_head = _analyze(cfg)
    assert (none_flops > 1e8).all() and (none_act > 0).all() and mask_head == 0
    assert (kept_flops > none_flops).all()

    with torch.no_grad():
        data = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))
    gflops = flop_count_operators(_model(cfg), data)
    assert gflops["conv"] > 0 and gflops["linear"] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (tools/gpu_check.sh)")
def test_cuda_trace_with_kept_queries_equals_eager():
    """On the GPU: the same trace on both sample images against eager (same segments; pixels equal
    but where float rounding of near-tied random masks may differ between kernels)."""
    cfg = _cfg()
    cfg.MODEL.DEVICE = "cuda"
    model = _model(cfg)
    first, second = (_sample_input(cfg, p)["image"].cuda() for p in IMAGES)
    adapter = TracingAdapter(model, [{"image": first}])
    traced = _trace(adapter, first, check_trace=False)
    for x in (first, second):
        with torch.no_grad():
            ref_ids, ref_segs = model([{"image": x}])[0]["panoptic_seg"]
        ids, segs = _as_list(adapter.outputs_schema(traced(x))[0]["panoptic_seg"])
        assert ids.is_cuda and (ids == ref_ids).float().mean() >= 0.999
        key = [(s["id"], s["category_id"], s["isthing"]) for s in segs]
        assert key == [(s["id"], s["category_id"], s["isthing"]) for s in ref_segs] and key
