"""Reading source checkpoints safely and writing converted ones atomically.

Loading policy: ``torch.load(..., weights_only=True)`` first. Published DETR/torchvision weight files
are plain dicts of tensors and load that way without executing pickled code. Checkpoints written by
DETR's *training script* also carry ``args`` (a pickled ``argparse.Namespace``) plus optimizer state,
which ``weights_only=True`` refuses (torch < 2.4 has no allow-list for it). Only then do we fall back
to ``weights_only=False`` -- which can execute arbitrary code from the file, so it is logged as a
warning and should only be used for files from a trusted source -- and keep just the weights.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from typing import Any, Dict, Mapping, Optional

import torch

__all__ = ["d2_checkpoint", "extract_state_dict", "load_torch_file", "write_atomically"]

logger = logging.getLogger(__name__)


def _reason(e: Exception) -> str:
    """The informative tail of a torch.load error (torch prefixes weights_only errors with advice)."""
    return str(e).split("WeightsUnpickler error:")[-1].strip()[:300]


def load_torch_file(path: str) -> Any:
    """``torch.load`` on CPU, trying ``weights_only=True`` first (see the module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported class" not in str(e) and "Unsupported global" not in str(e):  # corrupt, not refused
            raise ValueError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {_reason(e)})") from e
        logger.warning(
            "%s: weights_only=True refused it (%s). Retrying with weights_only=False, which runs the "
            "file's pickled code: only do this for checkpoints from a trusted source (DETR's training "
            "checkpoints contain a pickled argparse.Namespace under 'args').",
            path,
            _reason(e),
        )
    except Exception as e:  # not a torch file at all: report clearly
        raise ValueError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {e})") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {e})") from e


def extract_state_dict(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: ``obj["model"]`` (DETR's format; other top-level keys
    such as ``optimizer``/``args`` are ignored), or ``obj`` itself when it is a flat name -> tensor dict
    (torchvision's format)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        ignored = sorted(str(k) for k in obj if k != "model")
        if ignored:
            logger.info("%s: using checkpoint['model']; ignoring top-level keys %s", source, ignored)
        state_dict = dict(obj["model"])
    elif isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state_dict = dict(obj)  # a bare state dict (torchvision weight files)
    else:
        found = sorted(str(k) for k in obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{source}: expected a dict with a 'model' state dict (DETR checkpoints) or a flat "
            f"name -> tensor dict (torchvision weights); found {found}"
        )
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: state dict entries must be tensors; these are not: {bad[:10]}")
    return state_dict


def d2_checkpoint(model: Dict[str, Any], *, author: str, matching_heuristics: bool) -> Dict[str, Any]:
    """The dict ``DetectionCheckpointer`` expects: ``{"model", "__author__", "matching_heuristics"}``.

    ``matching_heuristics=False``: keys are loaded as they are (exact names). ``True``: Detectron2
    renames them by suffix matching (model-zoo ImageNet ``.pkl`` files with prefix-free names).
    """
    return {"model": model, "__author__": author, "matching_heuristics": matching_heuristics}


def write_atomically(
    obj: Any, output: str, *, source: Optional[str] = None, overwrite: bool = False, use_pickle: bool = False
) -> None:
    """Write ``obj`` to ``output`` via a temporary file in the same folder + ``os.replace``.

    ``use_pickle`` writes a plain pickle (Detectron2 ``.pkl`` model-zoo files) instead of
    ``torch.save``. Refuses to write over ``source`` and, unless ``overwrite``, over an existing file.
    """
    output_abs = os.path.abspath(output)
    same = source is not None and (
        os.path.realpath(source) == os.path.realpath(output_abs)
        or (os.path.exists(source) and os.path.exists(output_abs) and os.path.samefile(source, output_abs))
    )
    if same:
        raise ValueError(f"refusing to overwrite the source checkpoint {source}; choose another --output")
    if os.path.exists(output_abs) and not overwrite:
        raise FileExistsError(f"{output} already exists; pass overwrite=True (--overwrite) to replace it")
    out_dir = os.path.dirname(output_abs)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"output folder does not exist: {out_dir}")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(output_abs) + ".", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            if use_pickle:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            else:
                torch.save(obj, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600 files
        os.replace(tmp, output_abs)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
