"""Detectron2's own tools on detr_d2 (docs/detectron2_tools.md): each "works" row, run as the
upstream tool's steps (facebookresearch/detectron2 at 02b5c4e, ``tools/analyze_model.py``
``do_parameter`` / ``do_structure``, ``tools/benchmark.py`` ``create_data_benchmark`` /
``benchmark_eval`` / ``benchmark_train``, ``tools/visualize_data.py``) with the lines the table
adds, on a tiny synthetic dataset registered only through ``DATASETS.REGISTER_FILES``."""

import itertools
import json
import os
import uuid
from collections import defaultdict

import numpy as np
import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg, instantiate
from detectron2.data import (
    DatasetCatalog,
    DatasetFromList,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.data import detection_utils as utils
from detectron2.data.benchmark import DataLoaderBenchmark
from detectron2.engine import SimpleTrainer
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.analysis import parameter_count_table
from detectron2.utils.visualizer import Visualizer

import detr_d2
from detr_d2.annotation.panoptic_to_detection import convert_panoptic_to_detection
from detr_d2.data.dataset_mappers import DetrPanopticDatasetMapper
from detr_d2.data.datasets.quickstart import generate_quickstart_dataset
from tests.utils.configs import tiny_detr_cfg


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """A config file as a user has it: the datasets only named in DATASETS.REGISTER_FILES."""
    root = tmp_path_factory.mktemp("d2tools")
    suffix = uuid.uuid4().hex[:8]
    entries = []
    for split, n, seed in (("train", 4, 0), ("val", 2, 1)):
        generate_quickstart_dataset(
            str(root), split, num_images=n, image_size=64, seed=seed, workers=1
        )
        entries.append(
            {
                "name": f"d2tools_{split}_{suffix}",
                "image_root": str(root / split),
                "panoptic_root": str(root / f"panoptic_{split}"),
                "panoptic_json": str(root / f"panoptic_{split}.json"),
            }
        )
    # the val split with a COCO instances JSON of its things (box/mask AP, coco_instances_results)
    convert_panoptic_to_detection(
        entries[1]["panoptic_json"], entries[1]["panoptic_root"], str(root / "instances_val.json")
    )
    entries[1]["json_file"] = str(root / "instances_val.json")
    (root / "datasets.yaml").write_text(yaml.safe_dump(entries))
    cfg = tiny_detr_cfg(num_classes=0)
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = False
    cfg.DATASETS.REGISTER_FILES = (str(root / "datasets.yaml"),)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (entries[0]["name"],), (entries[1]["name"],)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.INPUT.CROP.ENABLED = False
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(root / "out")
    (root / "config.yaml").write_text(cfg.dump())
    return str(root / "config.yaml")


def _setup(config_file, register=True):
    """The upstream tools' setup() plus the lines of the table: ``detr_d2.add_detr_config(cfg)``
    before the merge, ``detr_d2.register_datasets_from_config(cfg)`` after it (only needed where
    the tool reads a catalog itself)."""
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    if register:
        detr_d2.register_datasets_from_config(cfg)
    return cfg


def test_analyze_model_parameter_and_structure(config_file):
    cfg = _setup(config_file, register=False)  # as is: build_model registers the datasets
    model = build_model(cfg)
    table = parameter_count_table(model, max_depth=5)
    assert "transformer" in table and "mask_head" in table
    total = sum(p.numel() for p in model.parameters())
    assert total > 0 and "DetrPanoptic" in str(model)


def _numpy_percentile_with_interpolation(monkeypatch):
    """Detectron2's ``DataLoaderBenchmark`` (``detectron2/data/benchmark.py``, 02b5c4e) reports its
    timings with ``np.percentile(..., interpolation="nearest")``, an argument numpy 2.4 removed
    (``method=`` since 1.22): on numpy >= 2.4 Detectron2's own ``benchmark.py --task data`` stops
    there whatever the mapper. Where numpy lacks it, map it to ``method`` so the test measures
    what is ours (docs/detectron2_tools.md says so)."""
    try:
        np.percentile([0.0, 1.0], 50, interpolation="nearest")
    except TypeError:
        percentile = np.percentile

        def with_interpolation(a, q, *args, interpolation=None, **kwargs):
            if interpolation is not None:
                kwargs["method"] = interpolation
            return percentile(a, q, *args, **kwargs)

        monkeypatch.setattr(np, "percentile", with_interpolation)


def test_benchmark_data_measures_detr_mapper_with_one_line(config_file, monkeypatch):
    _numpy_percentile_with_interpolation(monkeypatch)
    cfg = _setup(config_file)
    kwargs = build_detection_train_loader.from_config(cfg)
    assert not isinstance(kwargs["mapper"], DetrPanopticDatasetMapper)  # upstream: Detectron2's
    # the line of the table: our mapper in create_data_benchmark
    kwargs = build_detection_train_loader.from_config(
        cfg, mapper=detr_d2.build_detr_mapper(cfg, True)
    )
    kwargs.pop("aspect_ratio_grouping", None)
    kwargs["_target_"] = DataLoaderBenchmark
    benchmark = instantiate(kwargs)
    assert isinstance(benchmark.mapper, DetrPanopticDatasetMapper)
    benchmark.benchmark_mapper(4, warmup=1)
    sample = benchmark.mapper(benchmark.dataset[0])
    assert len(sample["instances"]) > 0


def test_benchmark_eval_as_is(config_file):
    cfg = _setup(config_file, register=False)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    data_loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])  # Detectron2's mapper
    model.eval()
    dummy_data = DatasetFromList(list(itertools.islice(data_loader, 2)), copy=False)
    with torch.no_grad():
        for d in dummy_data:
            (out,) = model(d)
            assert out["panoptic_seg"][0].shape == (64, 64)


def test_benchmark_train_with_our_builders(config_file):
    cfg = _setup(config_file)
    model = build_model(cfg)
    optimizer = detr_d2.build_detr_optimizer(cfg, model)  # the table's line (was build_optimizer)
    data_loader = detr_d2.build_detr_train_loader(cfg)  # (was build_detection_train_loader)
    dummy_data = list(itertools.islice(data_loader, 2))

    def f():
        data = DatasetFromList(dummy_data, copy=False, serialize=False)
        while True:
            yield from data

    trainer = SimpleTrainer(model, f(), optimizer)
    trainer.train(0, 2)
    assert trainer.iter == 2  # Detectron2 leaves iter == max_iter after train()
    assert torch.isfinite(torch.tensor(trainer.storage.history("total_loss").latest()))


def test_visualize_data_both_sources(config_file, tmp_path):
    cfg = _setup(config_file)  # register: visualize_data reads the catalogs itself
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    # --source dataloader, with detr_d2.build_detr_train_loader(cfg)
    batch = next(iter(detr_d2.build_detr_train_loader(cfg)))
    for per_image in batch:
        img = per_image["image"].permute(1, 2, 0).cpu().detach().numpy()
        img = utils.convert_image_to_rgb(img, cfg.INPUT.FORMAT)
        visualizer = Visualizer(img, metadata=metadata, scale=1.0)
        target_fields = per_image["instances"].get_fields()
        labels = [metadata.thing_classes[i] for i in target_fields["gt_classes"]]
        vis = visualizer.overlay_instances(
            labels=labels,
            boxes=target_fields.get("gt_boxes", None),
            masks=target_fields.get("gt_masks", None),
            keypoints=target_fields.get("gt_keypoints", None),
        )
        vis.save(str(tmp_path / (str(per_image["image_id"]) + ".jpg")))
    # --source annotation
    dicts = list(itertools.chain.from_iterable([DatasetCatalog.get(k) for k in cfg.DATASETS.TRAIN]))
    for dic in dicts:
        img = utils.read_image(dic["file_name"], "RGB")
        vis = Visualizer(img, metadata=metadata, scale=1.0).draw_dataset_dict(dic)
        vis.save(str(tmp_path / os.path.basename(dic["file_name"])))
    assert len(os.listdir(tmp_path)) == len(batch) + len(dicts)


def test_visualize_json_results_on_instance_results(config_file, tmp_path):
    """``TEST.INSTANCE_ON`` evaluation writes coco_instances_results.json; visualize_json_results'
    steps draw it (its ``create_instances`` / ``main`` with ``--conf-threshold 0``)."""
    cfg = _setup(config_file).clone()
    cfg.defrost()
    cfg.TEST.INSTANCE_ON = True
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    name = cfg.DATASETS.TEST[0]
    model = build_model(cfg)
    evaluator = detr_d2.build_detr_evaluator(cfg, name)
    inference_on_dataset(model, detr_d2.build_detr_test_loader(cfg, name), evaluator)
    results = tmp_path / "out" / "inference" / name / "coco_instances_results.json"
    with open(results) as f:
        predictions = json.load(f)
    assert predictions
    # visualize_json_results.main(): it reads the catalogs itself (+ register, done by _setup)
    pred_by_image = defaultdict(list)
    for p in predictions:
        pred_by_image[p["image_id"]].append(p)
    dicts = list(DatasetCatalog.get(name))
    metadata = MetadataCatalog.get(name)
    drawn = 0
    for dic in dicts:
        img = utils.read_image(dic["file_name"], "RGB")
        preds = pred_by_image[dic["image_id"]]
        ret = Instances(img.shape[:2])  # create_instances(predictions, image_size)
        score = np.asarray([x["score"] for x in preds])
        chosen = (score > 0.0).nonzero()[0]
        bbox = np.asarray([preds[i]["bbox"] for i in chosen]).reshape(-1, 4)
        ret.scores = score[chosen]
        ret.pred_boxes = Boxes(BoxMode.convert(bbox, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
        labels = [
            metadata.thing_dataset_id_to_contiguous_id[preds[i]["category_id"]] for i in chosen
        ]
        ret.pred_classes = np.asarray(labels)
        ret.pred_masks = [preds[i]["segmentation"] for i in chosen]
        assert all(metadata.thing_classes[c] for c in labels)
        vis_pred = Visualizer(img, metadata).draw_instance_predictions(ret).get_image()
        vis_gt = Visualizer(img, metadata).draw_dataset_dict(dic).get_image()
        drawn += np.concatenate((vis_pred, vis_gt), axis=1).shape[1] == 2 * img.shape[1]
    assert drawn == len(dicts) == 2
