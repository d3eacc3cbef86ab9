"""``build_detr_optimizer``: DETR's full-model gradient clipping under its own key
(``SOLVER.FULL_MODEL_CLIP_GRADIENTS``) trains exactly as the old ``CLIP_TYPE full_model`` did (the
old builder kept as an oracle in ``tests/utils/old_optimizer.py``); Detectron2's own
``build_optimizer`` accepts detr_d2's configs; Detectron2's clip types keep their meaning."""

import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.solver import build_optimizer
from torch import nn

import detr_d2
from detr_d2.engine.optimizer import build_detr_optimizer
from tests.utils.old_optimizer import old_build_detr_optimizer
from tests.utils.paths import ROOT


class _Net(nn.Module):
    """Parameters of each kind the optimiser groups: backbone (LR multiplier), norm, embedding."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.query_embed = nn.Embedding(4, 8)
        self.head = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.backbone(x) + self.query_embed.weight.sum(0))


def _cfg(name="Base-DETR.yaml"):
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    cfg.MODEL.DEVICE = "cpu"
    cfg.SOLVER.BASE_LR = 1e-2
    return cfg


def _train(build, cfg, steps=6):
    torch.manual_seed(0)
    net = _Net()
    opt = build(cfg, net)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 6, generator=g) * 100  # large gradients: the clipping acts
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}, type(opt)


@pytest.mark.parametrize("optimizer", ["ADAMW", "SGD"])
def test_full_model_clipping_trains_as_the_old_key(optimizer):
    new = _cfg()
    new.SOLVER.OPTIMIZER = optimizer
    assert new.SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED and not new.SOLVER.CLIP_GRADIENTS.ENABLED
    old = new.clone()  # the recipe as Base-DETR.yaml wrote it before
    old.SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED = False
    old.SOLVER.CLIP_GRADIENTS.ENABLED = True
    old.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    old.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.1
    got, cls = _train(build_detr_optimizer, new)
    want, old_cls = _train(old_build_detr_optimizer, old)
    assert cls.__name__ == old_cls.__name__ == "FullModelGradientClippingOptimizer"
    for k in want:
        assert torch.equal(got[k], want[k]), k
    unclipped = new.clone()
    unclipped.SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED = False
    free, _ = _train(build_detr_optimizer, unclipped)
    assert not all(torch.equal(free[k], want[k]) for k in want), "the clipping must act here"


@pytest.mark.parametrize(
    "name",
    [
        "Base-DETR.yaml",
        "quickstart/detr_r18_quickstart.yaml",
        "coco_panoptic/detr_r50_official.yaml",
    ],
)
def test_detectron2_build_optimizer_accepts_our_configs(name):
    """Upstream plain_train_net / benchmark call Detectron2's build_optimizer on our config."""
    opt = build_optimizer(_cfg(name), _Net())
    assert isinstance(opt, torch.optim.Optimizer)


def test_detectron2_clip_types_keep_their_meaning():
    """CLIP_GRADIENTS value / norm: Detectron2's per-parameter clipping, as its own builder."""
    for clip_type in ("value", "norm"):
        cfg = _cfg()
        cfg.SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED = False
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
        got, _ = _train(build_detr_optimizer, cfg)
        plain = cfg.clone()
        plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
        free, _ = _train(build_detr_optimizer, plain)
        assert not all(torch.equal(got[k], free[k]) for k in got), clip_type


def test_old_clip_type_refused_before_training():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    with pytest.raises(ValueError, match="SOLVER.FULL_MODEL_CLIP_GRADIENTS.ENABLED True, MAX_NORM"):
        build_detr_optimizer(cfg, _Net())
