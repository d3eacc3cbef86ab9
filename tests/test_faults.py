"""Fault injection: kills during checkpoint saves and tool runs, damaged checkpoints, unwritable
outputs, same-name inputs, truncated JPEG/PNG, and float / NaN / empty images. Nothing may be lost
or left half written, and every expected failure is one clear message naming the file."""

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.common import DatasetFromList, MapDataset

from detr_d2.annotation import convert_detection_to_panoptic, convert_panoptic_to_detection
from detr_d2.checkpoint import AtomicDetectionCheckpointer
from detr_d2.data import DetrPanopticDatasetMapper
from detr_d2.data.dataset_mappers.corrupt_samples import TooManyCorruptSamplesError
from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import check_image_array
from detr_d2.data.datasets import (
    build_panoptic_metadata,
    load_panoptic_json,
    quickstart,
    register_panoptic_dataset,
)
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import (
    COCO_SAMPLE,
    COCO_SAMPLE_CATEGORIES_JSON,
    COCO_SAMPLE_DETECTION_JSON,
    ROOT,
)
from tests.utils.scripts import detection_to_panoptic_argv, load_script

PAN_JSON = os.path.join(COCO_SAMPLE, "panoptic_examples.json")
PAN_ROOT = os.path.join(COCO_SAMPLE, "panoptic_examples")
DET_JSON, CATS_JSON = COCO_SAMPLE_DETECTION_JSON, COCO_SAMPLE_CATEGORIES_JSON


def _truncate(src, dst, fraction=0.5):
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return str(dst)


def _hidden(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith("."))


@contextlib.contextmanager
def _unwritable(folder):
    """``folder`` in which no file can be created: chmod 0500, or ``chattr +i`` when running as root
    (root ignores permissions); skips the test where neither works."""
    os.makedirs(folder, exist_ok=True)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        if (
            not shutil.which("chattr")
            or subprocess.run(["chattr", "+i", folder], capture_output=True).returncode
        ):
            pytest.skip(
                "running as root, and chattr +i is not available: cannot make a folder unwritable"
            )
    else:
        os.chmod(folder, 0o500)
    try:
        try:
            open(os.path.join(folder, "probe"), "w").close()
        except OSError:
            pass
        else:
            pytest.skip("this filesystem lets us write into a read-only folder")
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", folder], check=True)
        else:
            os.chmod(folder, 0o700)


@contextlib.contextmanager
def _log():
    """INFO+ records of the ``detr_d2`` loggers (caplog misses them once Detectron2's setup_logger
    has set ``propagate = False`` on ``detr_d2`` in this process)."""
    logger, stream = logging.getLogger("detr_d2"), io.StringIO()
    handler, level = logging.StreamHandler(stream), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _wait_for(path, proc, timeout=60):
    start = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, f"{path} never appeared"
        time.sleep(0.05)


# ---------------------------------------------------------------- checkpoints


class _Counter:
    """A checkpointable holding the iteration, like the trainer."""

    def __init__(self, it=0):
        self.iteration = it

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, d):
        self.iteration = d["iteration"]


def _checkpointer(folder, value=0.0):
    model = torch.nn.Linear(64, 64)
    torch.nn.init.constant_(model.weight, value)
    counter = _Counter()
    return (
        AtomicDetectionCheckpointer(model, str(folder), save_to_disk=True, trainer=counter),
        model,
        counter,
    )


def _save(folder, name, iteration, age=0.0):
    ck, _, counter = _checkpointer(folder, float(iteration))
    counter.iteration = iteration
    ck.save(name)
    path = os.path.join(folder, name + ".pth")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


_KILL_CHILD = """
import io, os, sys, time, torch
{import_line}
class Counter:
    iteration = 0
    def state_dict(self):
        return {{"iteration": self.iteration}}
model, counter = torch.nn.Linear(64, 64), Counter()
torch.nn.init.constant_(model.weight, 1.0)
ck = Checkpointer(model, {folder!r}, save_to_disk=True, trainer=counter)
counter.iteration = 1
ck.save("model_final")                      # a finished run
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):     # the next save stops half-way: kill -9 lands here
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    open({marker!r}, "w").close()
    time.sleep(60)
torch.save = slow_save
torch.nn.init.constant_(model.weight, 2.0)
counter.iteration = 2
ck.save("model_final")                      # the run extended with --resume re-saves model_final
"""


@pytest.mark.parametrize("checkpointer", ["atomic", "detectron2"])
def test_kill_9_during_checkpoint_save_then_resume(tmp_path, checkpointer):
    folder, marker = tmp_path / "run", tmp_path / "half_written"
    folder.mkdir()
    script = tmp_path / "child.py"
    import_line = {
        "detectron2": "from detectron2.checkpoint import DetectionCheckpointer as Checkpointer",
        "atomic": "from detr_d2.checkpoint import AtomicDetectionCheckpointer as Checkpointer",  # noqa: E501
    }[checkpointer]
    script.write_text(
        _KILL_CHILD.format(import_line=import_line, folder=str(folder), marker=str(marker))
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    _wait_for(str(marker), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    final = folder / "model_final.pth"
    if checkpointer == "detectron2":  # what this project used before: the only model is destroyed
        with pytest.raises(Exception):
            torch.load(final, map_location="cpu")
        return
    assert torch.load(final, map_location="cpu")["trainer"] == {
        "iteration": 1
    }  # the previous one survives
    assert (folder / "last_checkpoint").read_text() == "model_final.pth"
    assert len(_hidden(folder)) == 1  # the half-written temporary file
    ck, model, counter = _checkpointer(folder, 5.0)
    ck.resume_or_load("", resume=True)
    assert counter.iteration == 1 and torch.all(model.weight == 1.0)
    with _log() as log:
        ck.save("model_0000002")  # the resumed run's first save removes the leftover
    assert _hidden(folder) == [] and "interrupted checkpoint save" in log.getvalue()


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("empty_last_checkpoint", "last_checkpoint is empty"),
        ("missing_file", "which is missing"),
        ("zero_bytes", "which is empty (0 bytes)"),
        ("truncated", "which is unreadable"),
        ("not_a_checkpoint", "not a training checkpoint"),
        ("no_last_checkpoint", "last_checkpoint is missing"),
    ],
)
def test_resume_falls_back_to_newest_complete_checkpoint(tmp_path, damage, reason):
    _save(tmp_path, "model_0000000", 0, age=30)
    _save(tmp_path, "model_0000001", 1, age=20)
    newest = _save(tmp_path, "model_0000002", 2, age=10)
    last = tmp_path / "last_checkpoint"
    if damage == "empty_last_checkpoint":
        last.write_text("")
        expected = 2  # the newest file is fine: use it
    elif damage == "no_last_checkpoint":
        last.unlink()
        expected = 2
    else:
        expected = 1
        if damage == "missing_file":
            os.remove(newest)
        elif damage == "zero_bytes":
            open(newest, "w").close()
        elif damage == "truncated":
            _truncate(newest, newest, 0.6)
        else:
            torch.save([1, 2, 3], newest)
    ck, model, counter = _checkpointer(tmp_path, 9.0)
    with _log() as log:
        ck.resume_or_load("", resume=True)
    assert counter.iteration == expected and torch.all(model.weight == float(expected))
    assert ck.has_checkpoint()
    assert reason in log.getvalue() and f"model_000000{expected}.pth instead" in log.getvalue()


def test_resume_with_no_complete_checkpoint_starts_from_weights(tmp_path):
    weights = _save(tmp_path / "w", "weights", 7)
    for i in range(2):
        path = _save(tmp_path, f"model_000000{i}", i)
        _truncate(path, path, 0.3)
    ck, model, counter = _checkpointer(tmp_path, 9.0)
    with _log() as log:
        ck.resume_or_load(weights, resume=True)
    assert torch.all(model.weight == 7.0) and counter.iteration == 0  # weights only, a new run
    assert not ck.has_checkpoint()
    assert (
        "found no complete checkpoint" in log.getvalue()
        and "new run from MODEL.WEIGHTS" in log.getvalue()
    )


def test_damaged_weights_error_names_the_file(tmp_path):
    path = _truncate(_save(tmp_path, "model_final", 1), tmp_path / "copy.pth", 0.5)
    ck, _, _ = _checkpointer(tmp_path)
    with pytest.raises(RuntimeError, match=r"copy.pth: cannot be read as a checkpoint"):
        ck.load(path)


# ---------------------------------------------------------------- training data


@pytest.fixture(scope="module")
def sample_dicts():
    with open(PAN_JSON) as f:
        meta = build_panoptic_metadata(json.load(f)["categories"])
    return load_panoptic_json(PAN_JSON, os.path.join(COCO_SAMPLE, "input_images"), PAN_ROOT, meta)


def _mapper(is_train=True, **kwargs):
    return DetrPanopticDatasetMapper(is_train, augmentations=[], image_format="BGR", **kwargs)


def test_truncated_jpeg_and_png_errors_name_the_file(tmp_path, sample_dicts):
    d = sample_dicts[0]
    jpg = _truncate(d["file_name"], tmp_path / "cut.jpg")
    for is_train in (True, False):
        with pytest.raises(
            ValueError, match=r"cut.jpg \(file_name\): cannot be decoded as an image: image file is"
        ):
            _mapper(is_train)(dict(d, file_name=jpg))
    png = _truncate(d["pan_seg_file_name"], tmp_path / "cut.png")
    with pytest.raises(ValueError, match=r"cut.png \(pan_seg_file_name\): cannot be decoded"):
        _mapper()(dict(d, pan_seg_file_name=png))


def test_skip_corrupt_samples_counts_and_stops_past_the_limit(tmp_path, sample_dicts):
    good = sample_dicts[0]
    bad = [
        dict(good, file_name=_truncate(good["file_name"], tmp_path / f"cut{i}.jpg"))
        for i in range(3)
    ]
    mapper = _mapper(
        skip_corrupt_samples=True, max_corrupt_fraction=0.002
    )  # 2 allowed in the first 1000
    with _log() as log:
        assert mapper(bad[0]) is None
        # Detectron2's MapDataset draws another sample when the mapper returns None
        out = MapDataset(DatasetFromList([bad[1], good], copy=False), mapper)[0]
    assert out["file_name"] == good["file_name"] and len(out["instances"]) > 0
    assert (
        "cut0.jpg" in log.getvalue()
        and "2 corrupt of 2 samples read by the main data-loading process" in log.getvalue()
    )
    with pytest.raises(TooManyCorruptSamplesError, match=r"3 corrupt of 4 samples .*cut2.jpg"):
        mapper(bad[2])
    with pytest.raises(ValueError, match="MAX_CORRUPT_FRACTION"):
        _mapper(skip_corrupt_samples=True, max_corrupt_fraction=1.0)
    cfg = tiny_detr_cfg()
    cfg.DATALOADER.SKIP_CORRUPT_SAMPLES = True
    assert DetrPanopticDatasetMapper(cfg, True).corrupt_samples is not None
    assert DetrPanopticDatasetMapper(cfg, False).corrupt_samples is None  # evaluation never skips


def test_corrupt_sample_limit_applies_in_each_data_loader_worker(tmp_path, sample_dicts):
    bad = dict(
        sample_dicts[0], file_name=_truncate(sample_dicts[0]["file_name"], tmp_path / "cut.jpg")
    )
    mapper = _mapper(skip_corrupt_samples=True, max_corrupt_fraction=0.0)
    loader = torch.utils.data.DataLoader(
        MapDataset(DatasetFromList([bad]), mapper), num_workers=1, collate_fn=lambda x: x
    )
    with pytest.raises(
        TooManyCorruptSamplesError,
        match=r"1 corrupt of 1 samples read by data-loader worker 0.*cut.jpg",
    ):
        next(iter(loader))


# ---------------------------------------------------------------- training end to end

TRAIN = "_detr_test_faults_train"


@pytest.fixture(scope="module")
def corrupt_train_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("faults_qs"))
    quickstart.generate_quickstart_dataset(
        root, "train", num_images=4, image_size=64, seed=0, workers=1
    )
    _truncate(
        os.path.join(root, "train", "000001.jpg"), os.path.join(root, "train", "000001.jpg"), 0.4
    )
    if TRAIN not in DatasetCatalog.list():
        register_panoptic_dataset(
            TRAIN,
            os.path.join(root, "train"),
            os.path.join(root, "panoptic_train"),
            os.path.join(root, "panoptic_train.json"),
            quickstart.QUICKSTART_CATEGORIES,
        )
    return root


def _train_cfg(out_dir, max_iter):
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TRAIN = (TRAIN,)
    cfg.MODEL.BACKBONE.FREEZE_AT = 5  # a frozen backbone: quicker steps, smaller checkpoints
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.CROP.ENABLED = (64,), 64, False
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 2, max_iter, (max_iter - 1,)
    cfg.SOLVER.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD, cfg.DATALOADER.NUM_WORKERS = 1, 0, 0
    cfg.OUTPUT_DIR = str(out_dir)
    return cfg


def test_training_skips_a_truncated_jpeg_and_resumes_past_a_damaged_checkpoint(
    corrupt_train_set, tmp_path
):
    from detectron2.engine.hooks import PeriodicCheckpointer

    from detr_d2.engine import DetrTrainer

    cfg = _train_cfg(tmp_path, 2)
    cfg.DATALOADER.SKIP_CORRUPT_SAMPLES = (
        True  # without it: the error of test_truncated_jpeg_and_png_...
    )
    trainer = DetrTrainer(cfg)
    assert isinstance(trainer.checkpointer, AtomicDetectionCheckpointer)
    hook = next(h for h in trainer._hooks if isinstance(h, PeriodicCheckpointer))
    assert hook.checkpointer is trainer.checkpointer
    trainer.resume_or_load(resume=False)
    with _log() as log:
        trainer.train()
    assert "skipped a corrupt training sample" in log.getvalue() and "000001.jpg" in log.getvalue()
    assert trainer.storage.history("data/corrupt_samples").latest() >= 1
    assert torch.load(tmp_path / "model_final.pth", map_location="cpu")["iteration"] == 1
    _truncate(tmp_path / "model_final.pth", tmp_path / "model_final.pth", 0.5)

    cfg.SOLVER.MAX_ITER = 3
    resumed = DetrTrainer(cfg)
    with _log() as log:
        resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2  # model_0000001.pth (iteration 1), saved just before model_final
    assert "model_final.pth, which is unreadable" in log.getvalue()
    assert (
        "resuming from the newest complete checkpoint" in log.getvalue()
        and "model_0000001.pth" in log.getvalue()
    )


# ---------------------------------------------------------------- predictor input checks


@pytest.mark.parametrize(
    "image, message",
    [
        (
            np.full((32, 40, 3), 0.5, np.float32),
            r"float32 with values in \[0.5, 0.5\] \(a \[0, 1\] image",
        ),
        (np.full((32, 40, 3), np.nan, np.float32), r"float32 with 3840 NaN/inf values"),
        (np.zeros((0, 40, 3), np.uint8), r"an empty image of shape \(0, 40, 3\)"),
        (np.zeros((32, 40), np.uint8), r"shape \(32, 40\)"),
        (np.zeros((32, 40, 4), np.uint8), r"shape \(32, 40, 4\)"),
        (np.full((32, 40, 3), 300, np.uint16), r"uint16 with values in \[300, 300\]"),
        ([[1, 2, 3]], "got list"),
    ],
)
def test_image_checks(image, message):
    with pytest.raises(ValueError, match="expected an HxWx3 BGR uint8 image.*" + message):
        check_image_array(image, "where")


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TEST = ("detr_quickstart_val",)  # metadata registered on import, no files needed
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.WEIGHTS = ""  # random weights: these tests are about inputs and outputs
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(cfg.dump())
    return cfg, str(path)


def test_predictor_refuses_float_nan_and_empty_images(tiny_yaml):
    from detr_d2.predictor import DetrPanopticPredictor

    predictor = DetrPanopticPredictor(tiny_yaml[0])
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert predictor(image)["panoptic_seg"][0].shape == (48, 64)
    for bad in (image / 255.0, np.full(image.shape, np.nan), image[:0]):
        with pytest.raises(
            ValueError, match="DetrPanopticPredictor input: expected an HxWx3 BGR uint8"
        ):
            predictor(bad)


# ---------------------------------------------------------------- demo


def _images(folder, names):
    rng = np.random.default_rng(0)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    return [os.path.join(folder, n) for n in names]


def test_demo_same_names_unreadable_image_and_panoptic_output(tiny_yaml, tmp_path, capsys):
    demo = load_script("demo")
    inputs = _images(tmp_path, ["a/img.jpg", "b/img.jpg", "c/other.png"])
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not an image" * 10)
    out = tmp_path / "out"
    rc = demo.main(
        [
            "--config-file",
            tiny_yaml[1],
            "--input",
            *inputs[:2],
            str(tmp_path / "c"),
            "--output",
            str(out),
            "--save-panoptic",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "error: skipped 1 unreadable image(s): " in err and "broken.jpg" in err
    assert sorted(os.listdir(out)) == [
        "a_img_panoptic.jpg",
        "b_img_panoptic.jpg",
        "other_panoptic.jpg",
        "panoptic",
        "predictions.json",
    ]
    assert sorted(os.listdir(out / "panoptic")) == ["a_img.png", "b_img.png", "other.png"]
    annotations = json.loads((out / "predictions.json").read_text())["annotations"]
    assert [a["image_id"] for a in annotations] == ["a_img", "b_img", "other"]
    assert _hidden(out) == [] and _hidden(out / "panoptic") == []


def test_demo_output_guards(tiny_yaml, tmp_path, capsys):
    demo = load_script("demo")
    (image,) = _images(tmp_path, ["in/x.jpg"])
    out = tmp_path / "out"

    def run(*args):
        rc = demo.main(["--config-file", tiny_yaml[1], "--input", *args])
        return rc, capsys.readouterr().err.strip()

    rc, err = run(str(tmp_path / "in" / "*.png"), "--output", str(out))
    assert (
        rc == 1
        and err == f"error: --input '{tmp_path / 'in' / '*.png'}': the pattern matches no file"
    )
    # an input inside the output folder (e.g. <out>/panoptic/) could be overwritten: refused
    inside = _images(out, ["panoptic/x.png"])[0]
    rc, err = run(inside, "--output", str(out), "--overwrite", "--save-panoptic")
    assert rc == 1 and "is inside --output" in err and err.count("\n") == 0
    shutil.rmtree(out / "panoptic")
    (out / "old.txt").write_text("keep")
    rc, err = run(image, "--output", str(out))
    assert rc == 1 and err == f"error: {out} is not empty; pass --overwrite to write into it anyway"
    with _unwritable(str(tmp_path / "ro")) as ro:
        rc, err = run(image, "--output", ro)
    assert rc == 1 and err.startswith(f"error: cannot write in {ro}: ")
    assert run(image, "--output", str(out), "--overwrite")[0] == 0
    assert sorted(os.listdir(out)) == ["old.txt", "x_panoptic.jpg"]


# ---------------------------------------------------------------- converters and prepare scripts


def _bad_second_image(tmp_path):
    """The sample's detection JSON with a 2-point polygon in the second image."""
    with open(DET_JSON) as f:
        data = json.load(f)
    second = data["images"][1]["id"]
    next(a for a in data["annotations"] if a["image_id"] == second)["segmentation"] = [[1, 2, 3, 4]]
    path = tmp_path / "bad_det.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_detection_to_panoptic_is_all_or_nothing(tmp_path):
    out_json, out_root = tmp_path / "out" / "p.json", tmp_path / "out" / "png"
    with pytest.raises(ValueError, match=r"annotation id 18 \(image_id 439180\)"):
        convert_detection_to_panoptic(
            _bad_second_image(tmp_path), CATS_JSON, str(out_json), str(out_root)
        )
    assert os.listdir(tmp_path / "out") == []  # no PNG of image 1, no temporary folder

    convert_detection_to_panoptic(
        DET_JSON, CATS_JSON, str(out_json), str(out_root), id_scheme="sequential"
    )
    before = {p: (out_root / p).read_bytes() for p in os.listdir(out_root)}
    with pytest.raises(FileExistsError, match=r"p.json exists; pass --overwrite"):
        convert_detection_to_panoptic(DET_JSON, CATS_JSON, str(out_json), str(out_root))
    with pytest.raises(
        ValueError, match="annotation id 18"
    ):  # a failed re-run leaves the old outputs intact
        convert_detection_to_panoptic(
            _bad_second_image(tmp_path), CATS_JSON, str(out_json), str(out_root), overwrite=True
        )
    assert {p: (out_root / p).read_bytes() for p in os.listdir(out_root)} == before
    assert sorted(os.listdir(tmp_path / "out")) == ["p.json", "png"]
    convert_detection_to_panoptic(DET_JSON, CATS_JSON, str(out_json), str(out_root), overwrite=True)
    assert {
        p: (out_root / p).read_bytes() for p in os.listdir(out_root)
    } != before  # colour ids now
    (out_root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"refusing to replace .*png: it holds 'notes.txt'"):
        convert_detection_to_panoptic(
            DET_JSON, CATS_JSON, str(out_json), str(out_root), overwrite=True
        )


def test_detection_to_panoptic_unwritable_json_folder_fails_before_any_png(tmp_path, capsys):
    tool = load_script("convert_detection_to_panoptic")
    with _unwritable(str(tmp_path / "ro")) as ro:
        rc = tool.main(
            detection_to_panoptic_argv(os.path.join(ro, "p.json"), str(tmp_path / "png"))
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith(f"error: cannot write {tmp_path / 'ro' / 'p.json'}: ")
    assert os.listdir(tmp_path) == ["ro"]


_KILL_TOOL = """
import os, runpy, sys, time
import detr_d2.annotation.detection_to_panoptic as conversion
save = conversion.save_panoptic_png
def slow(path, ids):
    save(path, ids)
    open({marker!r}, "w").close()
    time.sleep(60)
conversion.save_panoptic_png = slow
sys.argv = ["convert_detection_to_panoptic.py"] + sys.argv[1:]
runpy.run_path({tool!r}, run_name="__main__")
"""


def test_detection_to_panoptic_killed_half_way_leaves_nothing(tmp_path):
    script, marker = tmp_path / "child.py", tmp_path / "one_png_written"
    script.write_text(
        _KILL_TOOL.format(
            marker=str(marker), tool=os.path.join(ROOT, "tools", "convert_detection_to_panoptic.py")
        )
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            *detection_to_panoptic_argv(str(out / "p.json"), str(out / "png")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    _wait_for(str(marker), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [
        f for f in os.listdir(out) if not f.startswith(".")
    ] == []  # only hidden temporaries remain


def test_panoptic_to_detection_refuses_existing_output_and_names_a_truncated_png(tmp_path, capsys):
    tool = load_script("convert_panoptic_to_detection")
    out = tmp_path / "det.json"
    out.write_text("precious")
    args = ["--panoptic-json", PAN_JSON, "--panoptic-root", PAN_ROOT, "--output-json", str(out)]
    assert tool.main(args) == 1 and "det.json exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "precious"
    root = tmp_path / "png"
    shutil.copytree(PAN_ROOT, root)
    _truncate(root / "000000439180.png", root / "000000439180.png", 0.6)
    with pytest.raises(
        ValueError, match=r"000000439180.png \(pan_seg_file_name\): cannot be decoded"
    ):
        convert_panoptic_to_detection(PAN_JSON, str(root), str(out), overwrite=True)
    assert out.read_text() == "precious" and _hidden(tmp_path) == []
    assert tool.main(args + ["--overwrite"]) == 0 and json.loads(out.read_text())["annotations"]


def test_coco_subset_missing_png_leaves_nothing_and_existing_output_is_refused(tmp_path, capsys):
    tool = load_script("prepare_coco_panoptic_subset", "datasets")
    root = tmp_path / "in"
    shutil.copytree(PAN_ROOT, root)
    os.remove(root / "000000439180.png")
    out = tmp_path / "out"
    args = [
        "--panoptic-json",
        PAN_JSON,
        "--output-json",
        str(out / "s.json"),
        "--output-root",
        str(out / "png"),
        "-n",
        "2",
    ]
    assert tool.main(args + ["--panoptic-root", str(root)]) == 1
    assert "000000439180.png" in capsys.readouterr().err and not out.exists()
    assert tool.main(args + ["--panoptic-root", PAN_ROOT]) == 0
    assert tool.main(args + ["--panoptic-root", PAN_ROOT]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert tool.main(args + ["--panoptic-root", PAN_ROOT, "--overwrite"]) == 0
    assert sorted(os.listdir(out / "png")) == ["000000142238.png", "000000439180.png"]


def test_interrupted_quickstart_generation_is_redone(tmp_path, monkeypatch):
    root = str(tmp_path)
    json_path = quickstart.generate_quickstart_dataset(
        root, "val", num_images=2, image_size=32, seed=1, workers=1
    )
    make_one = quickstart._make_one

    def interrupted(task):
        if task[2] == 1:
            raise KeyboardInterrupt
        return make_one(task)

    monkeypatch.setattr(quickstart, "_make_one", interrupted)
    with pytest.raises(
        KeyboardInterrupt
    ):  # other settings: image 0 is rewritten at 64 px, then a kill
        quickstart.generate_quickstart_dataset(
            root, "val", num_images=3, image_size=64, seed=1, workers=1
        )
    assert not os.path.exists(json_path)  # the old JSON no longer describes the files: gone
    monkeypatch.setattr(quickstart, "_make_one", make_one)
    quickstart.ensure_quickstart_split(root, "val", 3, seed=1)
    with open(json_path) as f:
        assert len(json.load(f)["images"]) == 3
