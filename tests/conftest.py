"""Fixtures shared by the test files (helpers live in ``tests/utils/``)."""

import logging
import os

import pytest
import torch
from detectron2.data import DatasetCatalog

from detr_d2.data.datasets import register_panoptic_dataset
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import COCO_SAMPLE, SAMPLE_DATASET


@pytest.fixture(autouse=True)
def _same_global_state():
    """Every test starts from the same global state, whatever ran before it: the seed, torch's
    thread count (in-process benchmark runs set their own) and the named loggers (Detectron2's
    ``setup_logger``, called by in-process train_net / tool runs, attaches handlers to pytest's
    captured streams, closed after that test, and turns off propagation to the root logger that
    ``caplog`` listens to)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    saved = {
        name: (logger.handlers[:], logger.propagate, logger.level)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    torch.set_num_threads(threads)
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            handlers, propagate, level = saved.get(name, ([], True, logging.NOTSET))
            logger.handlers[:] = handlers
            logger.propagate = propagate
            logger.setLevel(level)


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def sample_cfg(tmp_path_factory):
    """A tiny random panoptic model's config (dumped to a YAML) on the COCO sample registered as
    ``SAMPLE_DATASET``: (cfg, yaml path)."""
    if SAMPLE_DATASET not in DatasetCatalog.list():
        register_panoptic_dataset(
            SAMPLE_DATASET,
            os.path.join(COCO_SAMPLE, "input_images"),
            os.path.join(COCO_SAMPLE, "panoptic_examples"),
            os.path.join(COCO_SAMPLE, "panoptic_examples.json"),
        )
    cfg = tiny_detr_cfg(num_classes=133)
    cfg.DATASETS.TEST = (SAMPLE_DATASET,)
    cfg.INPUT.MIN_SIZE_TEST = 160
    cfg.INPUT.MAX_SIZE_TEST = 320
    cfg.TEST.OBJECT_MASK_THRESHOLD = 0.0  # a random model: keep every query so segments exist
    torch.manual_seed(0)
    from detectron2.modeling import build_model

    weights = tmp_path_factory.mktemp("weights") / "tiny.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(cfg.dump())
    return cfg, str(path)
