"""Comparing a state dict with an expected key -> shape layout, with readable error lists."""

from __future__ import annotations

from typing import List, Mapping, Sequence

import torch

__all__ = ["format_list", "layout_errors"]


def format_list(items: Sequence[str], limit: int = 20) -> str:
    """``a, b, c, ... and N more`` (at most ``limit`` items shown)."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def layout_errors(
    state_dict: Mapping[str, torch.Tensor], template: Mapping[str, torch.Size]
) -> List[str]:
    """Differences between ``state_dict`` and ``template`` (key -> expected shape), one string per
    kind: missing keys, unexpected keys, mis-shaped tensors. Empty when the layout matches."""
    missing = [k for k in template if k not in state_dict]
    unexpected = [k for k in state_dict if k not in template]
    misshaped = [
        f"{k}: got {tuple(state_dict[k].shape)}, expected {tuple(template[k])}"
        for k in template
        if k in state_dict and tuple(state_dict[k].shape) != tuple(template[k])
    ]
    errors = []
    if missing:
        errors.append(f"{len(missing)} missing key(s): {format_list(missing)}")
    if unexpected:
        errors.append(f"{len(unexpected)} unexpected key(s): {format_list(unexpected)}")
    if misshaped:
        errors.append(f"{len(misshaped)} mis-shaped tensor(s): {format_list(misshaped)}")
    return errors
