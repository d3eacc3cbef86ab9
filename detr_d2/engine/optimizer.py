"""DETR's optimiser as a Detectron2 builder: AdamW (or SGD), a backbone LR multiplier, no weight
decay on norms and embeddings, optional full-model gradient clipping
(``SOLVER.FULL_MODEL_CLIP_GRADIENTS``: the L2 norm of all gradients together, DETR's
``clip_max_norm``). Detectron2's ``SOLVER.CLIP_GRADIENTS`` (per-parameter ``value`` / ``norm``)
keeps its meaning and is applied by Detectron2's ``maybe_add_gradient_clipping``.

Follows the parameter groups of ``main.py`` (facebookresearch/detr at 29901c5) in Detectron2's
``build_optimizer`` shape (``detectron2/solver/build.py``, facebookresearch/detectron2 at 02b5c4e).
"""

import itertools
from typing import Any, Dict, List, Set

import torch
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from ..config_rules import validate_detr_config


def _full_model_clipping(optim_cls, clip_norm: float):
    class FullModelGradientClippingOptimizer(optim_cls):
        def step(self, closure=None):
            all_params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(all_params, clip_norm)
            super().step(closure=closure)

    return FullModelGradientClippingOptimizer


def build_detr_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """DETR's optimiser for ``model`` (after the config's training rules,
    :func:`~detr_d2.config_rules.validate_detr_config`). Param groups by (lr, weight decay), merged
    with Detectron2's ``reduce_param_groups`` (one group per parameter would make AdamW's foreach
    kernels useless)."""
    validate_detr_config(cfg, training=True)
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
    if name == "ADAMW":
        cls = torch.optim.AdamW
        kwargs = {"lr": cfg.SOLVER.BASE_LR}
    elif name == "SGD":
        cls = torch.optim.SGD
        kwargs = {"lr": cfg.SOLVER.BASE_LR, "momentum": cfg.SOLVER.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    full = cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS
    if full.ENABLED:
        cls = _full_model_clipping(cls, full.MAX_NORM)
    optimizer = cls(params, **kwargs)
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        optimizer = maybe_add_gradient_clipping(cfg, optimizer)
    return optimizer
