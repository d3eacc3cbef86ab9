"""Checkpoints in a layout detr_d2 does not load directly, recognised by their tensor names.

Detectron2's checkpointer would load none of their tensors with only "not found" warnings (training
then starts from scratch); :class:`~detr_d2.checkpoint.checkpointer.AtomicDetectionCheckpointer`
refuses them with :func:`check_not_foreign`, naming the converter to run.
"""

from typing import Iterable, Optional

from .hf_detr import is_hf_detr_state_dict

__all__ = ["UnfitWeightsError", "foreign_layout", "check_not_foreign"]


class UnfitWeightsError(ValueError):
    """Weights that would load silently wrong (another layout, class count or tensor set) or that
    cannot be read; the message names the file and what to do."""


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
    if any(k.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for k in keys):
        return (
            "an official DETR checkpoint (facebookresearch/detr); convert it with " + _DETR_CONVERT
        )
    if "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys):
        return "a torchvision ResNet state dict; convert it with " + _TORCHVISION_CONVERT
    return None


def check_not_foreign(checkpoint: dict, path: str) -> None:
    """Raise :class:`UnfitWeightsError` if ``checkpoint["model"]`` (a loaded checkpoint, before
    Detectron2 matches its names) is in a layout of :func:`foreign_layout`. Detectron2 model-zoo
    ``.pkl`` files (``matching_heuristics``) are matched by name suffix and left alone."""
    if checkpoint.get("matching_heuristics", False) or not isinstance(
        checkpoint.get("model"), dict
    ):
        return
    found = foreign_layout(checkpoint["model"].keys())
    if found is not None:
        raise UnfitWeightsError(
            f"{path}: this is {found.format(path=path)}; loaded as it is, none of its tensors "
            "would reach the model"
        )
