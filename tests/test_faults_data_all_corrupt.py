"""Every training image corrupt with ``DATALOADER.SKIP_CORRUPT_SAMPLES`` (issue 21, poor): the
mapper skipped each one until Detectron2's ``MapDataset`` had nothing left to draw and training
died with ``ValueError: Sample larger than population or is negative``. Now the mapper knows the
dataset's size (``DetrTrainer.build_train_loader``) and stops with a clear error once every sample
has been found corrupt, naming the last file."""

import os
import uuid

import pytest
from detectron2.data import DatasetCatalog
from detectron2.data.common import DatasetFromList, MapDataset

from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.dataset_mappers.corrupt_samples import (
    CorruptSampleCounter,
    TooManyCorruptSamplesError,
)
from detr_d2.data.datasets import quickstart, register_panoptic_dataset
from detr_d2.engine import DetrTrainer
from tests.utils.configs import tiny_detr_cfg


def _corrupt_all(folder):
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "r+b") as f:
            f.truncate(100)


@pytest.fixture(scope="module")
def all_corrupt(tmp_path_factory):
    """A registered 3-image quickstart training set whose every JPEG is truncated."""
    root = str(tmp_path_factory.mktemp("all_corrupt"))
    quickstart.generate_quickstart_dataset(
        root, "train", num_images=3, image_size=64, seed=0, workers=1
    )
    _corrupt_all(os.path.join(root, "train"))
    name = f"_detr_test_all_corrupt_{uuid.uuid4().hex[:6]}"
    register_panoptic_dataset(
        name,
        os.path.join(root, "train"),
        os.path.join(root, "panoptic_train"),
        os.path.join(root, "panoptic_train.json"),
        quickstart.QUICKSTART_CATEGORIES,
    )
    yield name
    DatasetCatalog.remove(name)


def _mapper(dataset_size=None):
    mapper = DetrPanopticDatasetMapper(
        True, augmentations=[], image_format="BGR", skip_corrupt_samples=True
    )
    mapper.corrupt_samples.dataset_size = dataset_size
    return mapper


def test_detectron2_alone_fails_with_sample_larger_than_population(all_corrupt):
    """What users saw: the mapper without the dataset size."""
    dicts = DatasetCatalog.get(all_corrupt)
    with pytest.raises(ValueError, match="Sample larger than population"):
        MapDataset(DatasetFromList(dicts, copy=False), _mapper())[0]


def test_all_corrupt_is_a_clear_error_naming_the_last_file(all_corrupt):
    dicts = DatasetCatalog.get(all_corrupt)
    with pytest.raises(TooManyCorruptSamplesError) as e:
        MapDataset(DatasetFromList(dicts, copy=False), _mapper(len(dicts)))[0]
    msg = str(e.value)
    assert "all 3 training samples are corrupt" in msg and ".jpg (file_name)" in msg


def test_trainer_loader_tells_the_mapper_the_dataset_size(all_corrupt, tmp_path):
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TRAIN = (all_corrupt,)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.CROP.ENABLED = (64,), 64, False
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
    cfg.DATALOADER.SKIP_CORRUPT_SAMPLES = True
    cfg.OUTPUT_DIR = str(tmp_path)
    loader = DetrTrainer.build_train_loader(cfg)
    with pytest.raises(TooManyCorruptSamplesError, match="all 3 training samples are corrupt"):
        next(iter(loader))


def test_repeated_corrupt_sample_counts_once_towards_the_dataset_size():
    counter = CorruptSampleCounter(0.5, dataset_size=2)
    error = ValueError("x.jpg (file_name): cannot be decoded")
    for _ in range(3):
        counter.read()
        counter.skip(error, key=(1, "x.jpg"))  # the same sample again: 1 of 2 samples
    counter.read()
    with pytest.raises(TooManyCorruptSamplesError, match="all 2 training samples"):
        counter.skip(error, key=(2, "y.jpg"))
