"""``AtomicDetectionCheckpointer``: Detectron2's ``DetectionCheckpointer`` with crash-safe saves and
resume.

* ``save()`` writes ``<name>.pth`` to a temporary file in the same folder, fsyncs it and renames it
  over the target (:func:`detr_d2.utils.atomic_io.atomic_write`); ``last_checkpoint`` is written the
  same way, after the checkpoint. A kill at any moment leaves the previous checkpoint and
  ``last_checkpoint`` intact (at worst a hidden ``.<name>.pth.*.tmp`` file, removed by the first
  save of the next run; not earlier, since an ``--eval-only`` process may read the folder while a
  training run writes it).
* ``resume_or_load(path, resume=True)`` resumes from the file ``last_checkpoint`` names when it is a
  complete checkpoint (``torch.load`` succeeds and gives a dict with a ``"model"`` dict). When
  ``last_checkpoint`` is missing, empty, or names a missing / empty / truncated file, it falls back
  to the newest complete ``model_*.pth`` of the folder (by modification time) and logs a warning
  naming what it skipped; with none, it loads ``path`` (``MODEL.WEIGHTS``) as a fresh run, with a
  warning. ``has_checkpoint()`` / ``get_checkpoint_file()`` give that same choice, so
  ``DefaultTrainer`` sets its start iteration from the checkpoint actually loaded.
* A checkpoint file that cannot be read raises an error naming it.
* Every read (``MODEL.WEIGHTS``, ``--resume``, the fallback scan, Detectron2 / Caffe2 ``.pkl``
  files) unpickles through :mod:`detr_d2.checkpoint.safe_load`: a file holding more than weights is
  refused (``UntrustedCheckpointError`` naming it and the opt-in ``DETR_D2_TRUST_CHECKPOINTS=1``),
  also during the scan, which never skips it silently.
* ``last_checkpoint`` must name a file inside the folder (Detectron2 writes a base name); a name
  that leaves it (absolute, ``..``) is refused (``ValueError``).
* Temporary files of a killed save are removed only while no other live process holds the folder's
  run lock (:mod:`detr_d2.utils.output_dir`).

Folders that are not local paths (``s3://``...) keep Detectron2's own writes through
``PathManager``.
"""

import glob
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_io import atomic_write, atomic_write_bytes
from ..utils.output_dir import held_by_another_process
from .foreign import check_not_foreign
from .safe_load import (
    UntrustedCheckpointError,
    load_pickle_checkpoint,
    load_torch_checkpoint,
)

__all__ = ["AtomicDetectionCheckpointer"]

logger = logging.getLogger(__name__)

_LAST = "last_checkpoint"
# Detectron2's PeriodicCheckpointer names: model_0004999.pth ... model_final.pth.
_PATTERN = "model_*.pth"


def _stat_key(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose saves are atomic and whose resume survives a damaged last
    checkpoint (see the module docstring). Same constructor and methods."""

    def __init__(
        self, model, save_dir: str = "", *, save_to_disk: Optional[bool] = None, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        # path -> (size, mtime_ns) of files known to be complete checkpoints (saved or verified
        # here)
        self._complete: Dict[str, Tuple[int, int]] = {}
        # (path, stat key, loaded dict) of the file last verified, handed to load() to avoid a 2nd
        # read
        self._verified: Optional[Tuple[str, Tuple[int, int], Dict[str, Any]]] = None
        self._resume_file: Optional[Tuple[Tuple, str]] = None
        self._cleaned = False

    # ------------------------------------------------------------------ saving
    def _local(self) -> bool:
        return bool(self.save_dir) and "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it
        (atomically)."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._local():
            return super().save(name, **kwargs)
        if (
            not self._cleaned
        ):  # this process writes checkpoints here: leftovers of a killed save can go
            self._remove_stale_temporaries()
            self._cleaned = True
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        key = _stat_key(save_file)
        if key is not None:
            self._complete[os.path.abspath(save_file)] = key
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically write ``last_checkpoint`` (the basename of the newest checkpoint)."""
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write_bytes(
            os.path.join(self.save_dir, _LAST), last_filename_basename.encode("utf-8")
        )

    # ------------------------------------------------------------------ reading
    def _torch_load(self, f: str) -> Dict[str, Any]:
        if self._verified is not None and self._verified[0] == os.path.abspath(f):
            path, key, data = self._verified
            self._verified = None
            if _stat_key(path) == key:
                return data
        try:
            return load_torch_checkpoint(f)
        except UntrustedCheckpointError:
            raise
        except Exception as e:
            raise RuntimeError(
                f"{f}: cannot be read as a checkpoint ({type(e).__name__}: {e}); the file is "
                "damaged "
                "(e.g. truncated by an interrupted copy or save) or not a torch checkpoint"
            ) from e

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Detectron2's ``_load_file`` with its ``.pkl`` / ``.pyth`` branches read through the
        restricted unpickler (same dict layout as detectron2/checkpoint/detection_checkpoint.py,
        facebookresearch/detectron2 v0.6+); ``.pth`` goes to :meth:`_torch_load`."""
        if filename.endswith(".pkl"):
            data = load_pickle_checkpoint(filename)
            if "model" in data and "__author__" in data:  # Detectron2 model zoo
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            if "blobs" in data:  # Caffe2 / Detectron1 detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = load_torch_checkpoint(filename)
            if "model_state" not in data:
                raise ValueError(f"{filename}: pycls checkpoints must contain 'model_state'")
            model_state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._loading = None

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        """Detectron2's, but a torchvision / official DETR / Hugging Face file is refused naming
        its converter (:mod:`.foreign`) instead of loading none of its tensors."""
        check_not_foreign(checkpoint, getattr(self, "_loading", None) or "the checkpoint")
        return super()._load_model(checkpoint)

    def _complete_checkpoint(self, path: str) -> Tuple[bool, str]:
        """(whether ``path`` is a complete checkpoint, why not). Reads the file unless it was saved
        or verified here unchanged; the loaded dict is kept for the ``load()`` that follows."""
        path = os.path.abspath(path)
        key = _stat_key(path)
        if key is None:
            return False, "missing"
        if key[0] == 0:
            return False, "empty (0 bytes)"
        if self._complete.get(path) == key:
            return True, ""
        try:
            data = load_torch_checkpoint(path)
        except UntrustedCheckpointError:
            raise  # never skipped silently: a file that holds code is refused, naming it
        except Exception as e:  # truncated zip, EOFError, unpickling error...
            return False, f"unreadable ({type(e).__name__}: {str(e)[:120]})"
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            return False, "not a training checkpoint (no 'model' dict)"
        self._complete[path] = key
        self._verified = (path, key, data)
        return True, ""

    def _folder_key(self) -> Tuple:
        files = [os.path.join(self.save_dir, _LAST)] + sorted(
            glob.glob(os.path.join(self.save_dir, _PATTERN))
        )
        return tuple((f, _stat_key(f)) for f in files)

    def _find_resume_file(self) -> str:
        """The checkpoint ``--resume`` loads ('' for none), warning about each damaged file
        skipped."""
        if not self._local():
            return super().get_checkpoint_file() if super().has_checkpoint() else ""
        folder_key = self._folder_key()
        if self._resume_file is not None and self._resume_file[0] == folder_key:
            return self._resume_file[1]
        found = self._search_resume_file()
        self._resume_file = (folder_key, found)
        return found

    def _search_resume_file(self) -> str:
        last_path = os.path.join(self.save_dir, _LAST)
        problems: List[str] = []
        named = None
        if os.path.isfile(last_path):
            try:
                with open(last_path, "r", encoding="utf-8") as f:
                    named = f.read().strip()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{last_path} cannot be read ({e})")
            if named == "":
                problems.append(f"{last_path} is empty")
            elif named:
                path = self._inside_folder(named, last_path)
                ok, why = self._complete_checkpoint(path)
                if ok:
                    return path
                problems.append(f"{last_path} names {path}, which is {why}")
        candidates = glob.glob(os.path.join(self.save_dir, _PATTERN))
        candidates.sort(key=lambda p: ((_stat_key(p) or (0, 0))[1], p), reverse=True)
        for path in candidates:
            if named and os.path.abspath(path) == os.path.abspath(
                os.path.join(self.save_dir, named)
            ):
                continue
            ok, why = self._complete_checkpoint(path)
            if ok:
                if problems or not os.path.isfile(last_path):
                    reason = "; ".join(problems) if problems else f"{last_path} is missing"
                    logger.warning(
                        f"{reason}: resuming from the newest complete checkpoint {path} instead"
                    )
                return path
            problems.append(f"{path} is {why}")
        if problems:
            logger.warning(
                f"--resume found no complete checkpoint in {self.save_dir} "
                f"({'; '.join(problems)}); "
                "starting a new run from MODEL.WEIGHTS"
            )
        return ""

    def _inside_folder(self, named: str, last_path: str) -> str:
        """The path ``last_checkpoint`` names, refused when it leaves the folder."""
        norm = os.path.normpath(named)
        if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
            raise ValueError(
                f"{last_path} names {named!r}, which is outside the output folder "
                f"{self.save_dir}: it must name a checkpoint file in that folder (Detectron2 "
                "writes its base name, e.g. model_final.pth); fix or delete that file"
            )
        return os.path.join(self.save_dir, norm)

    def has_checkpoint(self) -> bool:
        """Whether ``--resume`` finds a complete checkpoint (see :meth:`get_checkpoint_file`)."""
        return bool(self._find_resume_file())

    def get_checkpoint_file(self) -> str:
        """The checkpoint to resume from: ``last_checkpoint``'s file when complete, else the newest
        complete ``model_*.pth``; '' when there is none."""
        return self._find_resume_file()

    def _remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a save that was killed, unless another live process
        holds the folder's run lock (its save may be under way)."""
        if not os.path.isdir(self.save_dir):
            return
        holder = held_by_another_process(self.save_dir)
        if holder:
            logger.info(f"Not removing checkpoint temporary files in {self.save_dir}: {holder}")
            return
        stale = glob.glob(os.path.join(self.save_dir, ".model_*.pth.*.tmp"))
        stale += glob.glob(os.path.join(self.save_dir, f".{_LAST}.*.tmp"))
        for path in stale:
            try:
                os.remove(path)
            except OSError:
                continue
            logger.info(f"Removed {path}, left by an interrupted checkpoint save")

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume``: load the checkpoint of :meth:`get_checkpoint_file` with all
        checkpointables, or ``path`` (model only) when there is none. Without: load ``path``
        (model only)."""
        if resume:
            found = self._find_resume_file()
            try:
                if found:
                    return self.load(found)
            finally:
                self._verified = None  # never keep a loaded checkpoint around
        return self.load(path, checkpointables=[])
