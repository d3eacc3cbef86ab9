"""Reading source checkpoints safely and writing converted ones atomically.

Loading policy: every file is unpickled by :mod:`detr_d2.checkpoint.safe_load`, which admits only
what weight files hold (tensors, numpy arrays, ``argparse.Namespace``, plain containers; DETR's
training checkpoints carry their ``args`` as a pickled ``argparse.Namespace`` and load) and refuses
anything else with an error naming the file, the refused type and the opt-in
(``DETR_D2_TRUST_CHECKPOINTS=1``). Nothing in a file is run by default.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ..utils.atomic_io import atomic_write
from .safe_load import UntrustedCheckpointError, load_pickle_checkpoint, load_torch_checkpoint

__all__ = [
    "check_output_path",
    "d2_checkpoint",
    "extract_state_dict",
    "load_state_dict_file",
    "load_torch_file",
    "write_atomically",
]

logger = logging.getLogger(__name__)


def load_torch_file(path: str) -> Any:
    """``torch.load`` on CPU through the restricted unpickler
    (:func:`detr_d2.checkpoint.safe_load.load_torch_checkpoint`). ``FileNotFoundError`` /
    ``ValueError`` naming ``path`` when it is missing or not a torch file;
    :class:`~detr_d2.checkpoint.safe_load.UntrustedCheckpointError` (a ``ValueError``) when it
    holds more than weights."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return load_torch_checkpoint(path)
    except UntrustedCheckpointError:
        raise
    except Exception as e:  # not a torch file at all, or damaged: report clearly
        raise ValueError(f"{path}: cannot be read by torch.load ({type(e).__name__}: {e})") from e


def extract_state_dict(obj: Any, source: str) -> Dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: ``obj["model"]`` (DETR's format; other top-level keys
    such as ``optimizer``/``args`` are ignored), or ``obj`` itself when it is a flat name -> tensor
    dict (torchvision's format)."""
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        ignored = sorted(str(k) for k in obj if k != "model")
        if ignored:
            logger.info(
                "%s: using checkpoint['model']; ignoring top-level keys %s", source, ignored
            )
        state_dict = dict(obj["model"])
    elif (
        isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
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


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint file as ``{name: tensor}``: a Detectron2 model-zoo ``.pkl``
    (pickle of ``{"model": numpy arrays}``) or a ``.pth`` read by :func:`load_torch_file`
    (``checkpoint["model"]`` or a flat state dict). Errors name ``path``."""
    if path.endswith(".pkl"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        try:
            obj = load_pickle_checkpoint(path)
        except UntrustedCheckpointError:
            raise
        except Exception as e:
            raise ValueError(
                f"{path}: cannot be read as a Detectron2 .pkl checkpoint ({type(e).__name__}: {e})"
            ) from e
        if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
            obj = {"model": {k: torch.as_tensor(v) for k, v in obj["model"].items()}}
        return extract_state_dict(obj, path)
    return extract_state_dict(load_torch_file(path), path)


def d2_checkpoint(
    model: Dict[str, Any], *, author: str, matching_heuristics: bool
) -> Dict[str, Any]:
    """The dict ``DetectionCheckpointer`` expects: ``{"model", "__author__",
    "matching_heuristics"}``.

    ``matching_heuristics=False``: keys are loaded as they are (exact names). ``True``: Detectron2
    renames them by suffix matching (model-zoo ImageNet ``.pkl`` files with prefix-free names).
    """
    return {"model": model, "__author__": author, "matching_heuristics": matching_heuristics}


def check_output_path(output: str, *, sources: Sequence[str] = (), overwrite: bool = False) -> None:
    """Refuse (``ValueError`` / ``FileExistsError`` / ``FileNotFoundError``) to write ``output``
    when it is one of the input files ``sources`` (also through links), exists and ``overwrite`` is
    False, or its folder does not exist. Tools call it before converting, so a refused run does
    no work."""
    output_abs = os.path.abspath(output)
    for source in sources:
        if os.path.realpath(source) == os.path.realpath(output_abs) or (
            os.path.exists(source)
            and os.path.exists(output_abs)
            and os.path.samefile(source, output_abs)
        ):
            raise ValueError(
                f"refusing to overwrite the source checkpoint {source}; choose another --output"
            )
    if os.path.exists(output_abs) and not overwrite:
        raise FileExistsError(
            f"{output} already exists; pass overwrite=True (--overwrite) to replace it"
        )
    out_dir = os.path.dirname(output_abs)
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"output folder does not exist: {out_dir}")


def write_atomically(
    obj: Any,
    output: str,
    *,
    source: Optional[str] = None,
    overwrite: bool = False,
    use_pickle: bool = False,
) -> None:
    """Write ``obj`` to ``output`` atomically (:func:`detr_d2.utils.atomic_io.atomic_write`).

    ``use_pickle`` writes a plain pickle (Detectron2 ``.pkl`` model-zoo files) instead of
    ``torch.save``. Refuses to write over ``source`` and, unless ``overwrite``, over an existing
    file (:func:`check_output_path`).
    """
    check_output_path(output, sources=[source] if source else [], overwrite=overwrite)
    output_abs = os.path.abspath(output)
    if use_pickle:
        atomic_write(output_abs, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))
    else:
        atomic_write(output_abs, lambda f: torch.save(obj, f))
