"""Disk full and other write errors during saves (issue 21 item 3): a checkpoint save on a full
disk ended with ``RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos``,
naming neither the file nor the cause. Now every save through ``detr_d2.utils.atomic_io``
(checkpoints, ``last_checkpoint``, tool outputs) raises ``OSError`` naming the path and the cause,
the tools print it as their one ``error:`` line, and nothing half-written is left.

ENOSPC is injected into the writes (everywhere), and produced for real on an 8 KiB tmpfs where
``mount`` works (root)."""

import errno
import io
import json
import os
import subprocess

import pytest
import torch

from detr_d2.checkpoint.checkpointer import AtomicDetectionCheckpointer
from detr_d2.utils import atomic_io
from detr_d2.utils.atomic_io import atomic_file, atomic_write_bytes
from tests.utils.scripts import detection_to_panoptic_argv, load_script


class _FullDiskFile(io.BufferedWriter):
    """A binary file on a disk with ``room`` bytes left: writes past it raise ENOSPC."""

    room = 1000

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.fixture
def full_disk(monkeypatch):
    """Writes through atomic_io fail with ENOSPC after 1000 bytes."""
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            return _FullDiskFile(real_open(path, mode.replace("b", "") + "b", buffering=0))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_io, "open", fake_open, raising=False)


class _Counter:
    iteration = 0

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def _checkpointer(folder, size=256):
    model = torch.nn.Linear(size, size)
    return AtomicDetectionCheckpointer(model, str(folder), save_to_disk=True, trainer=_Counter())


def _assert_no_temporaries(folder):
    assert [f for f in os.listdir(folder) if f.startswith(".")] == []


def test_checkpoint_save_on_a_full_disk_names_path_and_cause(tmp_path, full_disk):
    """torch.save alone reports this as RuntimeError 'unexpected pos' (shown in the next test)."""
    ck = _checkpointer(tmp_path)
    with pytest.raises(OSError) as e:
        ck.save("model_0000999")
    path = str(tmp_path / "model_0000999.pth")
    assert e.value.errno == errno.ENOSPC and e.value.filename == path
    assert str(e.value) == f"[Errno 28] No space left on device: '{path}'"
    assert os.listdir(tmp_path) == []  # no last_checkpoint pointing at nothing, no temp file


def test_torch_save_alone_hides_the_cause(tmp_path, full_disk):
    """The failure mode the recorder exists for: torch.save swallows the write's OSError."""
    with atomic_io.open(str(tmp_path / "x"), "wb") as f:
        with pytest.raises(RuntimeError, match="unexpected pos|file write failed"):
            torch.save({"w": torch.zeros(10000)}, f)


def test_earlier_checkpoint_and_last_checkpoint_survive(tmp_path, monkeypatch):
    ck = _checkpointer(tmp_path, size=4)
    ck.save("model_0000001")
    before = (tmp_path / "last_checkpoint").read_text()
    big = _checkpointer(tmp_path)
    real_open = open

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            return _FullDiskFile(real_open(path, "wb", buffering=0))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic_io, "open", fake_open, raising=False)
    with pytest.raises(OSError, match="No space left on device"):
        big.save("model_0000002")
    assert (tmp_path / "last_checkpoint").read_text() == before == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_writes_in_an_atomic_file_block_name_the_target(tmp_path, monkeypatch):
    """A caller writing into the temporary file itself (json.dump) gets the target named."""
    target = str(tmp_path / "out.json")

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as e:
        with atomic_file(target):
            json.dump({"a": 1}, Full())
    assert e.value.filename == target and e.value.errno == errno.ENOSPC
    # errors that name another file (reading an input) are left as they are
    with pytest.raises(FileNotFoundError) as e:
        with atomic_file(target):
            open(tmp_path / "missing.json")
    assert e.value.filename == str(tmp_path / "missing.json")
    _assert_no_temporaries(tmp_path)


def test_converter_tool_on_a_full_disk_prints_one_error_line(tmp_path, full_disk, capsys):
    out = tmp_path / "out"
    rc = load_script("convert_detection_to_panoptic").main(
        detection_to_panoptic_argv(str(out / "p.json"), str(out / "png"))
    )
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err
    assert "No space left on device" in lines[0] and "000000142238.png" in lines[0]
    assert os.listdir(out) == []


# ------------------------------------------------------------------ a real full filesystem


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """An 8 KiB tmpfs mounted at ``tmp_path / "disk"`` (skips where mount is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()[:200]}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_real_full_tmpfs_checkpoint_and_bytes(tiny_tmpfs):
    ck = _checkpointer(tiny_tmpfs)
    with pytest.raises(OSError) as e:
        ck.save("model_final")
    path = str(tiny_tmpfs / "model_final.pth")
    assert str(e.value) == f"[Errno 28] No space left on device: '{path}'"
    with pytest.raises(OSError, match=r"No space left on device: '.*x\.bin'"):
        atomic_write_bytes(str(tiny_tmpfs / "x.bin"), b"0" * 200_000)
    assert os.listdir(tiny_tmpfs) == []


def test_real_full_tmpfs_converter_tool(tiny_tmpfs, capsys):
    rc = load_script("convert_detection_to_panoptic").main(
        detection_to_panoptic_argv(str(tiny_tmpfs / "p.json"), str(tiny_tmpfs / "png"))
    )
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert rc == 1 and len(lines) == 1 and "No space left on device" in lines[0]
    assert os.listdir(tiny_tmpfs) == []
