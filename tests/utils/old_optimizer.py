"""Test oracle: ``build_detr_optimizer`` as it was before full-model clipping got its own key
(``detr_d2/engine/optimizer.py`` at fae8c94, where ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE full_model``
selected it). Kept unchanged to prove the new key trains identically."""

import itertools
from typing import Any, Dict, List, Set

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups


def _full_model_clipping(optim_cls, clip_norm: float):
    class FullModelGradientClippingOptimizer(optim_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, clip_norm)
            super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def old_build_detr_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Param groups by (lr, weight decay), merged with Detectron2's ``reduce_param_groups`` (one
    group per parameter would make AdamW's foreach kernels useless)."""
    norm_types = (
        torch.nn.BatchNorm1d,
        torch.nn.BatchNorm2d,
        torch.nn.BatchNorm3d,
        torch.nn.SyncBatchNorm,
        torch.nn.GroupNorm,
        torch.nn.InstanceNorm1d,
        torch.nn.InstanceNorm2d,
        torch.nn.LayerNorm,
        torch.nn.LocalResponseNorm,
    )
    params: List[Dict[str, Any]] = []
    memo: Set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for name, value in module.named_parameters(recurse=False):
            if not value.requires_grad or value in memo:
                continue
            memo.add(value)
            hp = {"lr": cfg.SOLVER.BASE_LR, "weight_decay": cfg.SOLVER.WEIGHT_DECAY}
            if module_name.startswith("backbone"):
                hp["lr"] = cfg.SOLVER.BASE_LR * cfg.SOLVER.BACKBONE_MULTIPLIER
            if isinstance(module, norm_types):
                hp["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_NORM
            if isinstance(module, torch.nn.Embedding):
                hp["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY_EMBED
            params.append({"params": [value], **hp})
    params = reduce_param_groups(params)
    if not params:
        raise ValueError("build_detr_optimizer: the model has no trainable parameters")

    name = cfg.SOLVER.OPTIMIZER.upper()
    clip = cfg.SOLVER.CLIP_GRADIENTS
    full_clip = clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0.0
    if name == "ADAMW":
        cls = torch.optim.AdamW
        kwargs = {"lr": cfg.SOLVER.BASE_LR}
    elif name == "SGD":
        cls = torch.optim.SGD
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    if full_clip:
        return _full_model_clipping(cls, clip.CLIP_VALUE)(params, **kwargs)
    optimizer = cls(params, **kwargs)
    return maybe_add_gradient_clipping(cfg, optimizer) if clip.ENABLED else optimizer
