"""Weights that would load silently wrong: refused with what the file is and what to do.

Detectron2's checkpointer loads whatever matches and only *warns* about the rest, so

* a torchvision ResNet, an official DETR or a Hugging Face DETR file given as ``MODEL.WEIGHTS``
  loads nothing ("Some model parameters or buffers are not found in the checkpoint") and training
  starts from scratch;
* an inference run (``--eval-only``, ``tools/demo.py``, ``tools/export_model.py``,
  ``DetrPanopticPredictor``) with a class head of another size keeps its random head and reports
  a PQ table, and one whose file lacks parameters (e.g. a detection-only checkpoint with
  ``MODEL.MASK_ON``) uses random ones.

:func:`foreign_layout` recognises those files by their tensor names and names the converter;
:func:`load_inference_weights` loads weights for inference and refuses any missing, unexpected or
mis-shaped tensor (naming the checkpoint's and the config's class counts for the class head). Every
error is a ``ValueError`` / ``FileNotFoundError`` naming the file, so the tools print it as their
one ``error:`` line.
"""

import os
from typing import Iterable, List, Optional

import torch

from .checkpointer import AtomicDetectionCheckpointer
from .hf_detr import is_hf_detr_state_dict
from .layout import format_list

__all__ = ["foreign_layout", "load_inference_weights", "check_not_foreign"]

_DETR_CONVERT = "python tools/convert_detr_checkpoint.py --source {path} --output detr_d2.pth"
_TORCHVISION_CONVERT = (
    "python tools/convert_torchvision_to_d2.py --source {path} --output r50_torchvision.pkl"
)


def foreign_layout(keys: Iterable[str]) -> Optional[str]:
    """What a state dict with these tensor names is and the command that converts it, when it is a
    torchvision ResNet, an official DETR or a Hugging Face DETR checkpoint; None otherwise (also for
    detr_d2's own names)."""
    keys = list(keys)
    if not keys or any(k.startswith(("backbone.res", "backbone.stem.")) for k in keys):
        return None  # detr_d2 / Detectron2 names
    if is_hf_detr_state_dict(keys):
        return "a Hugging Face transformers DETR checkpoint; convert it with " + _DETR_CONVERT
    if any(
        k.startswith(("transformer.encoder.", "detr.transformer.", "backbone.0.body."))
        for k in keys
    ):
        return (
            "an official DETR checkpoint (facebookresearch/detr); convert it with " + _DETR_CONVERT
        )
    if "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys):
        return "a torchvision ResNet state dict; convert it with " + _TORCHVISION_CONVERT
    return None


def check_not_foreign(checkpoint: dict, path: str) -> None:
    """Raise ``ValueError`` if ``checkpoint["model"]`` (a loaded checkpoint, before Detectron2
    matches its names) is in a layout of :func:`foreign_layout`. Detectron2 model-zoo ``.pkl``
    files (``matching_heuristics``) are matched by name suffix and left alone."""
    if checkpoint.get("matching_heuristics", False) or not isinstance(
        checkpoint.get("model"), dict
    ):
        return
    found = foreign_layout(checkpoint["model"].keys())
    if found is not None:
        raise ValueError(
            f"{path}: this is {found.format(path=path)}; loaded as it is, none of its tensors "
            "would reach the model"
        )


class _CheckedCheckpointer(AtomicDetectionCheckpointer):
    """Keeps the incompatible keys of its last load and refuses foreign layouts."""

    incompatible = None

    def _load_model(self, checkpoint):
        check_not_foreign(checkpoint, self._path)
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def load(self, path, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)


def _class_count(shape) -> int:
    return int(shape[0]) - 1


def _problems(path: str, incompatible) -> List[str]:
    problems = []
    for key, shape_file, shape_model in incompatible.incorrect_shapes:
        if key in ("class_embed.weight", "class_embed.bias"):
            problems.append(
                f"the class head has {_class_count(shape_file)} classes in the checkpoint "
                f"({key} {tuple(shape_file)}) but {_class_count(shape_model)} in the config "
                f"(MODEL.DETR.NUM_CLASSES {_class_count(shape_model)}, {key} {tuple(shape_model)}):"
                " use the config the checkpoint was trained with, or re-target its classes with "
                "tools/convert_detr_checkpoint.py --dataset"
            )
            break
    other = [
        f"{k}: {tuple(a)} in the file, {tuple(b)} in the model"
        for k, a, b in incompatible.incorrect_shapes
        if not k.startswith("class_embed.")
    ]
    if other:
        problems.append(f"{len(other)} mis-shaped tensor(s): {format_list(other, 5)}")
    misshaped = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in misshaped]
    if missing:
        problems.append(
            f"{len(missing)} tensor(s) of the model are not in the file, so they would stay "
            f"random: {format_list(missing, 8)}"
        )
    if incompatible.unexpected_keys:
        problems.append(
            f"{len(incompatible.unexpected_keys)} tensor(s) of the file have no place in the "
            f"model: {format_list(list(incompatible.unexpected_keys), 8)}"
        )
    return problems


def load_inference_weights(model: torch.nn.Module, path: str) -> None:
    """Load ``path`` (``MODEL.WEIGHTS``) into ``model`` for inference, all of it or not at all.

    Raises ``FileNotFoundError`` for a missing local file, ``ValueError`` for a damaged file, a
    foreign layout (:func:`foreign_layout`) or any missing / unexpected / mis-shaped tensor, each
    naming ``path`` (the model may be partly loaded then: build a new one).
    """
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS not found: {path}")
    checkpointer = _CheckedCheckpointer(model)
    try:
        checkpointer.load(path)
    except RuntimeError as e:  # a damaged file: the message names it
        raise ValueError(str(e)) from e
    if checkpointer.incompatible is None:
        return
    problems = _problems(path, checkpointer.incompatible)
    if problems:
        raise ValueError(
            f"MODEL.WEIGHTS {path} does not fit the model built from the config: "
            + "; ".join(problems)
        )
