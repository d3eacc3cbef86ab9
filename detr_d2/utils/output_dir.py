"""One owner per OUTPUT_DIR: the run lock of ``tools/train_net.py``.

* :func:`claim_output_dir` takes ``OUTPUT_DIR/.detr_d2_run.lock`` for the whole run (an exclusive
  ``flock`` the kernel drops when the process ends, plus a record of the holder's PID, host, start
  time and command). A second run into the same folder is refused
  (:class:`OutputDirInUseError`, naming the holder's PID and host). A record left by a process
  that died on this host is taken over, with a warning naming it; a record of a run on another host
  is refused (its process cannot be checked from here), with how to clear it.
* A training run without ``--resume`` into a folder that holds checkpoints (``model_*.pth``,
  ``last_checkpoint``) is refused (:class:`OutputDirHasCheckpointsError`) unless the overwrite
  option is given; then the earlier run's checkpoints, ``last_checkpoint``, ``metrics.json`` and
  TensorBoard event files are deleted first (listed in the log), so the two runs never mix.
* Only the main process of a ``launch`` takes the lock; ``--eval-only`` runs take it too (they
  write ``config.yaml``, logs and ``inference/`` there) but never refuse because of checkpoints.
* :func:`held_by_another_process` tells the checkpointer whether another live process owns the
  folder (then it leaves temporary files alone: they may be a save under way).

Folders that are not local paths (``s3://``...) are not locked.
"""

from __future__ import annotations

import atexit
import datetime
import glob
import json
import logging
import os
import socket
import sys
import time
from typing import Dict, List, Optional

try:
    import fcntl
except ImportError:  # Windows: the PID record alone
    fcntl = None

__all__ = [
    "LOCK_NAME",
    "OutputDirHasCheckpointsError",
    "OutputDirInUseError",
    "OutputDirLock",
    "claim_output_dir",
    "held_by_another_process",
    "release_output_dir",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".detr_d2_run.lock"
_RUN_FILES = ("model_*.pth", "last_checkpoint")
_OVERWRITTEN = _RUN_FILES + ("metrics.json", "events.out.tfevents.*")
_HELD: Dict[str, "OutputDirLock"] = {}  # realpath of the folder -> lock held by this process


class OutputDirInUseError(RuntimeError):
    """Another run holds the OUTPUT_DIR lock."""


class OutputDirHasCheckpointsError(FileExistsError):
    """A fresh run (no ``--resume``) into a folder that holds an earlier run's checkpoints."""


def _local(folder: str) -> bool:
    return "://" not in folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _read_record(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read().strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _describe(record: dict) -> str:
    if not record:
        return "another process (its PID is not recorded yet)"
    return (
        f"PID {record.get('pid')} on host {record.get('host')} (started "
        f"{record.get('started')}: {record.get('command')})"
    )


class OutputDirLock:
    """The run lock of one folder (see the module docstring). ``acquire()`` / ``release()`` or
    ``with``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputDirLock":
        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flocked = self._flock(fd)
            previous = _read_record(self.path)
            self._check_previous(previous, flocked)
            record = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:500],
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        _HELD[os.path.realpath(self.folder)] = self
        return self

    def _flock(self, fd: int) -> bool:
        """Take the exclusive ``flock``; False where the filesystem has none."""
        if fcntl is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            record = _read_record(self.path)
            if not record:  # the holder has just taken it: give it a moment to write its record
                time.sleep(0.5)
                record = _read_record(self.path)
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.folder} is in use by {_describe(record)}; wait for that run "
                "to end or choose another OUTPUT_DIR"
            ) from None
        except OSError:  # e.g. ENOLCK on some network filesystems
            return False

    def _check_previous(self, previous: dict, flocked: bool) -> None:
        if not previous or previous.get("pid") == os.getpid():
            return
        host, pid = previous.get("host"), previous.get("pid")
        if host != socket.gethostname():
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.folder} is in use by {_describe(previous)}: a run on another "
                f"host, which cannot be checked from here. If that run has ended, delete "
                f"{self.path}; else choose another OUTPUT_DIR"
            )
        if not flocked and isinstance(pid, int) and _pid_alive(pid):
            raise OutputDirInUseError(
                f"OUTPUT_DIR {self.folder} is in use by {_describe(previous)}; wait for that run "
                "to end or choose another OUTPUT_DIR"
            )
        logger.warning(
            "%s: taking over the lock of %s, which is no longer running", self.folder,
            _describe(previous),
        )  # fmt: skip

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.pop(os.path.realpath(self.folder), None)
        try:
            os.ftruncate(fd, 0)  # a clean end leaves no record to take over
        except OSError:
            pass
        os.close(fd)  # drops the flock

    def __enter__(self) -> "OutputDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _checkpoint_files(folder: str, patterns) -> List[str]:
    found: List[str] = []
    for pattern in patterns:
        found += glob.glob(os.path.join(glob.escape(folder), pattern))
    return sorted(found)


def claim_output_dir(
    folder: str, *, resume: bool, eval_only: bool = False, overwrite: bool = False
) -> Optional[OutputDirLock]:
    """Take ``folder``'s run lock and refuse a fresh training run over an earlier run's checkpoints
    (see the module docstring). Returns the held lock (None for a non-local folder)."""
    if not _local(folder):
        return None
    lock = OutputDirLock(folder).acquire()
    try:
        found = [] if (resume or eval_only) else _checkpoint_files(folder, _RUN_FILES)
        if found and not overwrite:
            names = ", ".join(os.path.basename(p) for p in found[:5])
            raise OutputDirHasCheckpointsError(
                f"OUTPUT_DIR {folder} already holds checkpoints of an earlier run ({names}"
                f"{', ...' if len(found) > 5 else ''}): pass --resume to continue that run, "
                "choose another OUTPUT_DIR, or pass --overwrite-output to delete them and start "
                "a new run there"
            )
        if found:
            old = _checkpoint_files(folder, _OVERWRITTEN)
            names = [os.path.basename(p) for p in old]
            logger.warning("--overwrite-output: deleting the earlier run's %s", names)
            for path in old:
                os.remove(path)
    except BaseException:
        lock.release()
        raise
    return lock


def release_output_dir(folder: str) -> None:
    """Release ``folder``'s run lock if this process holds it."""
    lock = _HELD.get(os.path.realpath(folder)) if _local(folder) else None
    if lock is not None:
        lock.release()


def held_by_another_process(folder: str) -> str:
    """A description of the live process (not this one) that holds ``folder``'s run lock, '' for
    none."""
    path = os.path.join(folder, LOCK_NAME)
    if os.path.realpath(folder) in _HELD or not os.path.isfile(path):
        return ""
    record = _read_record(path)
    if fcntl is not None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return ""
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return ""
        except BlockingIOError:
            return f"the run lock {path} is held by {_describe(record)}"
        except OSError:
            pass
        finally:
            os.close(fd)
    pid = record.get("pid")
    if record.get("host") == socket.gethostname() and isinstance(pid, int) and _pid_alive(pid):
        return f"the run lock {path} is held by {_describe(record)}"
    return ""


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()
