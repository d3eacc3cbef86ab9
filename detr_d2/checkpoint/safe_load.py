"""Reading checkpoint files without running code from them.

A pickle can name any importable callable (``os.system``, ``builtins.exec``...) and unpickling calls
it. Every checkpoint read in detr_d2 -- ``MODEL.WEIGHTS`` through the checkpointer, ``--resume``,
``MODEL.DETR.FROZEN_WEIGHTS`` / ``MASK_HEAD_WEIGHTS``, the conversion tools, a Hugging Face
``pytorch_model.bin`` -- goes through :func:`load_torch_checkpoint` (``.pth``/``.bin``/``.pyth``)
or :func:`load_pickle_checkpoint` (Detectron2 / Caffe2 model-zoo ``.pkl``). Both unpickle with
:class:`RestrictedUnpickler`, which imports only what published DETR, Detectron2 and torchvision
weights contain: tensors and their storages / dtypes / sizes, numpy arrays and scalars,
``argparse.Namespace`` (DETR's training checkpoints keep their ``args`` so) and ``pathlib`` paths,
plain containers (``OrderedDict``, ``set``...). Any other global is refused before it is imported
or called, with :class:`UntrustedCheckpointError` naming the file, the refused ``module.name`` and
the opt-in: with ``DETR_D2_TRUST_CHECKPOINTS=1`` in the environment a refused file is loaded with
plain ``pickle`` (a warning names it) -- only for files whose origin you trust.

The same allow-list on every torch version: torch >= 2.6 defaults to ``weights_only=True`` but its
allow-list differs between versions and, before 2.4, cannot be extended (no
``torch.serialization.add_safe_globals``), so ``torch.load`` is given this module's unpickler as
its ``pickle_module`` instead (torch still maps its storages itself).
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
from typing import Any, Callable, Dict, Optional

import torch

__all__ = [
    "TRUST_ENV",
    "RestrictedUnpickler",
    "UntrustedCheckpointError",
    "checkpoints_trusted",
    "load_pickle_checkpoint",
    "load_torch_checkpoint",
]

logger = logging.getLogger(__name__)

TRUST_ENV = "DETR_D2_TRUST_CHECKPOINTS"

# module -> names an allowed pickle may import (resolved lazily; missing ones are skipped, so the
# numpy 1 and numpy 2 spellings and torch-version-specific rebuild functions can all be listed).
_ALLOWED: Dict[str, tuple] = {
    "collections": ("OrderedDict",),
    "builtins": ("set", "frozenset", "slice", "complex", "bytearray", "range"),
    "_codecs": ("encode",),  # bytes pickled by Python 3 with protocol < 3 (numpy arrays)
    "argparse": ("Namespace",),
    "pathlib": ("PosixPath", "PurePosixPath", "PureWindowsPath"),
    "torch": ("Size", "Tensor", "device"),
    "torch.nn.parameter": ("Parameter",),
    "torch.serialization": ("_get_layout",),
    "torch._tensor": ("_rebuild_from_type_v2",),
    "torch._utils": (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_nested_tensor",
        "_rebuild_device_tensor_from_numpy",
    ),
    "numpy": ("ndarray", "dtype"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy.core.numeric": ("_frombuffer",),
    "numpy._core.numeric": ("_frombuffer",),
}
_NUMPY_DTYPE_MODULE = "numpy.dtypes"  # numpy >= 1.25 pickles dtypes as numpy.dtypes.Float32DType


class UntrustedCheckpointError(ValueError):
    """A checkpoint file's pickle names something other than tensors, arrays and plain data."""


def checkpoints_trusted() -> bool:
    """Whether the user opted in to full unpickling (``DETR_D2_TRUST_CHECKPOINTS=1``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


class _Refused(pickle.UnpicklingError):
    def __init__(self, global_name: str):
        super().__init__(global_name)
        self.global_name = global_name


def _allowed_global(module: str, name: str) -> Optional[Any]:
    """The object ``module.name`` when the allow-list admits it, else None (nothing imported)."""
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)  # torch.float32, torch.bfloat16... (dtype.__reduce__)
    if module == _NUMPY_DTYPE_MODULE and name.endswith("DType"):
        mod = importlib.import_module(module)
        obj = getattr(mod, name, None)
        return obj if isinstance(obj, type) else None
    if name not in _ALLOWED.get(module, ()):
        return None
    # numpy 1 pickles name numpy.core.*, which numpy 2 renamed numpy._core.* (old name: a warning)
    renamed = module.replace("numpy.core.", "numpy._core.", 1)
    for candidate in dict.fromkeys((renamed, module)):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that imports only the allow-listed globals of the module docstring;
    anything else raises ``pickle.UnpicklingError`` naming ``module.name``."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed_global(module, name)
        if obj is None:
            raise _Refused(f"{module}.{name}")
        return obj


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` uses: ``Unpickler``, ``load`` and ``__name__``."""

    __name__ = "detr_d2_restricted_pickle"
    Unpickler = RestrictedUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs: Any) -> Any:
        return RestrictedUnpickler(file, **kwargs).load()


def _refusal(path: str, refused: str) -> UntrustedCheckpointError:
    return UntrustedCheckpointError(
        f"{path}: refused to load this checkpoint: its pickle imports {refused}, which is not "
        "part of a weight file (tensors, numpy arrays, argparse.Namespace, plain containers) and "
        "could run code when loaded. If you trust where this file comes from, set "
        f"{TRUST_ENV}=1 in the environment to load it anyway (see SECURITY.md)"
    )


def _load(path: str, restricted: Callable[[], Any], unrestricted: Callable[[], Any]) -> Any:
    try:
        return restricted()
    except _Refused as e:
        if not checkpoints_trusted():
            raise _refusal(path, e.global_name) from None
        logger.warning(
            "%s: its pickle imports %s; loading it with full unpickling because %s is set "
            "(this runs any code the file holds)",
            path,
            e.global_name,
            TRUST_ENV,
        )
        return unrestricted()


def load_torch_checkpoint(path: str) -> Any:
    """``torch.load(path)`` on the CPU through :class:`RestrictedUnpickler` (see the module
    docstring). Raises :class:`UntrustedCheckpointError` for a refused file; other errors (a
    damaged or non-torch file) propagate as ``torch.load`` raises them."""
    return _load(
        path,
        lambda: torch.load(
            path, map_location="cpu", pickle_module=_RestrictedPickleModule, weights_only=False
        ),
        lambda: torch.load(path, map_location="cpu", weights_only=False),
    )


def load_pickle_checkpoint(path: str) -> Any:
    """A Detectron2 / Caffe2 model-zoo ``.pkl`` (a pickled dict of numpy arrays; ``latin1`` for
    Python 2 pickles) through :class:`RestrictedUnpickler`; refusals as
    :func:`load_torch_checkpoint`."""

    def read(unpickler: type) -> Any:
        with open(path, "rb") as f:
            return unpickler(f, encoding="latin1").load()

    return _load(path, lambda: read(RestrictedUnpickler), lambda: read(pickle.Unpickler))
