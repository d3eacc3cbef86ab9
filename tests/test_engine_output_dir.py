"""One owner per OUTPUT_DIR (issue 21 item 2): two real concurrent train_net runs into one folder
(the second is refused naming the first's PID and host; once the first is killed its lock is taken
over with a message), a fresh run into a finished run's folder (refused unless --resume or
--overwrite-output), ``last_checkpoint`` naming a file outside the folder (refused), and checkpoint
temporary files left alone while another live process owns the folder."""

import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from detr_d2.checkpoint import AtomicDetectionCheckpointer
from detr_d2.utils.output_dir import (
    LOCK_NAME,
    OutputDirHasCheckpointsError,
    OutputDirInUseError,
    OutputDirLock,
    claim_output_dir,
    held_by_another_process,
)
from tests.utils.paths import ROOT
from tests.utils.scripts import load_script
from tests.utils.tiny_training import make_tiny_data, tiny_train_cfg, write_cfg


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny_quickstart")))


@contextlib.contextmanager
def _log():
    """WARNING+ records of the ``detr_d2`` loggers (Detectron2's setup_logger stops their
    propagation to caplog)."""
    logger, stream = logging.getLogger("detr_d2"), io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def _cfg(out, **kwargs):
    cfg = tiny_train_cfg(out, **kwargs)
    cfg.DATASETS.TEST = ()  # no evaluation at the end: these tests are about the folder
    return cfg


def _train_net(argv, capsys):
    """train_net's ``cli`` in this process: (exit code, stderr)."""
    try:
        load_script("train_net").cli(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def _record(folder):
    text = (folder / LOCK_NAME).read_text() if (folder / LOCK_NAME).exists() else ""
    return json.loads(text) if text.strip() else {}


@contextlib.contextmanager
def _lock_held_by_another_process(folder):
    """A second process holding ``folder``'s OutputDirLock inside the block (yielded: its Popen);
    killed on exit."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[1]);"
         "from detr_d2.utils.output_dir import OutputDirLock;"
         "OutputDirLock(sys.argv[2]).acquire(); print('held', flush=True); time.sleep(120)",
         ROOT, str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _wait_for_lock(folder, proc, timeout=180):
    """Until ``proc`` holds the lock and has written its config.yaml."""
    start = time.time()
    config = folder / "config.yaml"
    while _record(folder).get("pid") != proc.pid or "MAX_ITER: 100000" not in (
        config.read_text() if config.exists() else ""
    ):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - start < timeout, "the first run never took the lock"
        time.sleep(0.1)


def test_two_concurrent_runs_second_refused_then_stale_lock_taken_over(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    cfg = _cfg(out, max_iter=100000, period=100000)
    cfg.DATASETS.TRAIN = ("first_run_train",)
    yaml = write_cfg(cfg, tmp_path / "first.yaml")
    first = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", yaml,
         "--register-dataset", "first_run_train", os.path.join(tiny_data, "train"),
         os.path.join(tiny_data, "panoptic_train"), os.path.join(tiny_data, "panoptic_train.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT),
    )  # fmt: skip
    try:
        _wait_for_lock(out, first)
        second = write_cfg(_cfg(out, max_iter=2), tmp_path / "second.yaml")
        code, err = _train_net(["--config-file", second], capsys)
        assert code == 1
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: OUTPUT_DIR {out} is in use by PID {first.pid}"), line
        assert socket.gethostname() in line
        assert first.poll() is None  # the first run goes on, its files untouched
        assert "MAX_ITER: 100000" in (out / "config.yaml").read_text()  # not the second's (2)
        code, err = _train_net(["--config-file", second, "--resume"], capsys)
        assert code == 1 and f"PID {first.pid}" in err  # --resume does not take it over either
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the first run was killed: its record is stale, the next run takes the lock over and trains
    with _log() as log:
        code, err = _train_net(["--config-file", second, "--resume"], capsys)
    assert code == 0, err
    assert f"taking over the lock of PID {first.pid}" in log.getvalue()
    assert (out / "model_final.pth").exists()
    assert _record(out) == {}  # released at the end


def test_fresh_run_into_finished_runs_folder(tiny_data, tmp_path, capsys):
    out = tmp_path / "out"
    yaml = write_cfg(_cfg(out, max_iter=2), tmp_path / "cfg.yaml")
    assert _train_net(["--config-file", yaml], capsys)[0] == 0
    final = out / "model_final.pth"
    before = final.read_bytes()

    code, err = _train_net(["--config-file", yaml], capsys)  # the same command again
    line = err.strip().splitlines()[-1]
    assert code == 1 and line.startswith(f"error: OUTPUT_DIR {out} already holds checkpoints")
    assert "model_final.pth" in line and "--resume" in line and "--overwrite-output" in line
    assert final.read_bytes() == before

    code, _ = _train_net(["--config-file", yaml, "--resume"], capsys)  # continuing is allowed
    assert code == 0 and final.read_bytes() == before  # already at MAX_ITER: nothing to do

    with _log() as log:
        code, err = _train_net(["--config-file", yaml, "--overwrite-output"], capsys)
    assert code == 0, err
    assert "deleting the earlier run's" in log.getvalue() and "model_final.pth" in log.getvalue()
    assert final.read_bytes() != before  # a new run's weights
    lines = (out / "metrics.json").read_text().splitlines()
    assert len([x for x in lines if '"iteration": 1' in x]) == 1  # no metrics of the old run


def test_lock_refuses_a_second_process_and_names_it(tmp_path):
    folder = tmp_path / "out"
    with _lock_held_by_another_process(folder) as holder:
        with pytest.raises(OutputDirInUseError, match=f"PID {holder.pid} on host "):
            OutputDirLock(str(folder)).acquire()
        assert f"PID {holder.pid}" in held_by_another_process(str(folder))
    assert held_by_another_process(str(folder)) == ""
    with OutputDirLock(str(folder)):  # the kernel dropped the dead holder's lock
        assert _record(folder)["pid"] == os.getpid()


def test_record_of_another_host_is_refused(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    record = {"pid": 1234, "host": "some-other-host", "started": "x", "command": "y"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(OutputDirInUseError, match="some-other-host.*delete .*" + LOCK_NAME):
        claim_output_dir(str(folder), resume=True)


def test_fresh_run_refused_before_lock_is_kept(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(OutputDirHasCheckpointsError, match="last_checkpoint"):
        claim_output_dir(str(folder), resume=False)
    assert _record(folder) == {}  # refused: the lock is released
    claim_output_dir(str(folder), resume=False, eval_only=True).release()  # eval-only: allowed


def _checkpointer(folder):
    model = torch.nn.Linear(2, 2)
    return AtomicDetectionCheckpointer(model, str(folder), save_to_disk=True), model


@pytest.mark.parametrize("named", ["../elsewhere/model_final.pth", "ABSOLUTE"])
def test_last_checkpoint_outside_output_dir_is_refused(named, tmp_path):
    folder, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, str(elsewhere / "model_final.pth"))
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, str(folder / "model_0000001.pth"))
    if named == "ABSOLUTE":
        named = str(elsewhere / "model_final.pth")
    (folder / "last_checkpoint").write_text(named)
    ck, _ = _checkpointer(folder)
    with pytest.raises(ValueError, match="outside the output folder") as e:
        ck.resume_or_load("", resume=True)
    assert str(folder / "last_checkpoint") in str(e.value) and named in str(e.value)


def test_temporaries_kept_while_another_process_owns_the_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    temp = folder / ".model_0000004.pth.abc123.tmp"  # a save under way in the owning run
    temp.write_bytes(b"half")
    with _lock_held_by_another_process(folder):
        _checkpointer(folder)[0].save("model_0000002")
        assert temp.exists()  # the owner's temporary file is left alone
    _checkpointer(folder)[0].save("model_0000003")  # no live owner: a leftover, removed
    assert not temp.exists()
