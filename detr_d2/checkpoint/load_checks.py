"""Weights that would load silently wrong: refused with what the file is and what to do.

Detectron2's checkpointer loads whatever matches and only *warns* about the rest, so

* a torchvision ResNet, an official DETR or a Hugging Face DETR file given as ``MODEL.WEIGHTS``
  loads nothing ("Some model parameters or buffers are not found in the checkpoint") and training
  starts from scratch;
* an inference run (``--eval-only``, ``tools/demo.py``, ``tools/export_model.py``,
  ``DetrPanopticPredictor``) with a class head of another size keeps its random head and reports
  a PQ table, and one whose file lacks parameters (e.g. a detection-only checkpoint with
  ``MODEL.MASK_ON``) uses random ones.

:func:`~detr_d2.checkpoint.foreign.foreign_layout` recognises those files by their tensor names
and names the converter (``AtomicDetectionCheckpointer`` refuses them in every load, training
included); :func:`load_inference_weights` loads weights for inference and refuses any missing,
unexpected or mis-shaped tensor (naming the checkpoint's and the config's class counts for the
class head). Every error is a ``ValueError`` / ``FileNotFoundError`` naming the file, so the tools
print it as their one ``error:`` line.
"""

import os
from typing import List

import torch

from .checkpointer import AtomicDetectionCheckpointer
from .foreign import UnfitWeightsError
from .layout import format_list

__all__ = ["UnfitWeightsError", "WeightsNotFoundError", "load_inference_weights"]


class WeightsNotFoundError(FileNotFoundError):
    """``MODEL.WEIGHTS`` names no file."""


class _CheckedCheckpointer(AtomicDetectionCheckpointer):
    """Keeps the incompatible keys of its last load (foreign layouts are refused by the base)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


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

    Raises :class:`WeightsNotFoundError` (a ``FileNotFoundError``) for a missing local file,
    :class:`UnfitWeightsError` (a ``ValueError``) for a damaged file, a foreign layout
    (:func:`~detr_d2.checkpoint.foreign.foreign_layout`) or any missing / unexpected / mis-shaped
    tensor, each naming ``path`` (the model may be partly loaded then: build a new one).
    """
    if "://" not in path and not os.path.isfile(path):
        raise WeightsNotFoundError(f"MODEL.WEIGHTS not found: {path}")
    checkpointer = _CheckedCheckpointer(model)
    try:
        checkpointer.load(path)
    except RuntimeError as e:  # a damaged file: the message names it
        raise UnfitWeightsError(str(e)) from e
    if checkpointer.incompatible is None:
        return
    problems = _problems(path, checkpointer.incompatible)
    if problems:
        raise UnfitWeightsError(
            f"MODEL.WEIGHTS {path} does not fit the model built from the config: "
            + "; ".join(problems)
        )
