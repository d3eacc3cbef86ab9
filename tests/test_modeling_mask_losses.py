"""``mask_losses.sigmoid_focal_dice_loss`` (hand-written backward) against the old computation:
torchvision's ``sigmoid_focal_loss`` and DETR's ``dice_loss`` through autograd
(``tests/utils/speed_oracles.focal_and_dice_composite``, the criterion's code before issue 25)."""

import pytest
import torch

from detr_d2.modeling.mask_losses import sigmoid_focal_dice_loss
from tests.utils.speed_oracles import focal_and_dice_composite


def _losses_and_grad(fn, logits, targets, num_boxes, alpha, gamma, w_focal, w_dice):
    x = logits.clone().requires_grad_(True)
    focal, dice = fn(x, targets, num_boxes, alpha, gamma)
    (w_focal * focal + w_dice * dice).backward()
    return focal.detach(), dice.detach(), x.grad


@pytest.mark.parametrize(
    "alpha,gamma",
    [(0.25, 2.0), (0.5, 2.0), (-1.0, 2.0), (0.25, 1.5), (0.25, 0.0)],
)
@pytest.mark.parametrize("scale", [1.0, 12.0])  # 12: sigmoid saturates on many pixels
def test_values_and_gradients_equal_the_old_computation(alpha, gamma, scale):
    g = torch.Generator().manual_seed(int(scale * 10 + gamma * 100 + alpha * 1000))
    logits = torch.randn(17, 900, generator=g) * scale
    targets = torch.rand(17, 900, generator=g) > 0.6
    targets[3] = False  # a mask with no target pixel (zero-padded / empty)
    targets[4] = True
    args = (logits, targets, 7.0, alpha, gamma, 5.0, 1.0)
    new = _losses_and_grad(sigmoid_focal_dice_loss, *args)
    old = _losses_and_grad(focal_and_dice_composite, *args)
    for name, a, b in zip(("focal", "dice"), new[:2], old[:2]):
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-9), name
    # per element: float rounding only (the formulas differ in their order of operations; where
    # the sigmoid saturates, gradients ~1e-7 of the largest differ by a few % in both directions)
    assert torch.allclose(new[2], old[2], rtol=1e-4, atol=1e-6 * float(old[2].abs().max()))
    assert float((new[2] - old[2]).norm()) <= 1e-5 * float(old[2].norm())


def test_gradient_of_each_loss_alone():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 64, generator=g) * 3
    targets = torch.rand(5, 64, generator=g) > 0.5
    for weights in ((1.0, 0.0), (0.0, 1.0)):
        new = _losses_and_grad(sigmoid_focal_dice_loss, logits, targets, 2.0, 0.25, 2.0, *weights)
        old = _losses_and_grad(focal_and_dice_composite, logits, targets, 2.0, 0.25, 2.0, *weights)
        assert torch.allclose(new[2], old[2], rtol=1e-4, atol=1e-10), weights


def test_no_masks_gives_zero_losses():
    x = torch.zeros(0, 16, requires_grad=True)
    focal, dice = sigmoid_focal_dice_loss(x, torch.zeros(0, 16, dtype=torch.bool), 1.0)
    (focal + dice).backward()
    assert float(focal) == 0.0 and float(dice) == 0.0 and x.grad.shape == (0, 16)


def test_rejects_float_targets_and_mismatched_shapes():
    x = torch.randn(2, 8)
    with pytest.raises(TypeError, match="bool"):
        sigmoid_focal_dice_loss(x, torch.ones(2, 8), 1.0)
    with pytest.raises(ValueError, match=r"\(2, 8\) and \(2, 4\)"):
        sigmoid_focal_dice_loss(x, torch.ones(2, 4, dtype=torch.bool), 1.0)


def test_float32_under_autocast():
    """Under CPU autocast (bfloat16) the losses are computed in float32 as without it: the row sums
    are matrix products, which autocast would run in half precision."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 4096, generator=g) * 3
    targets = torch.rand(6, 4096, generator=g) > 0.5
    plain = sigmoid_focal_dice_loss(logits, targets, 3.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = sigmoid_focal_dice_loss(logits, targets, 3.0)
    for a, b in zip(autocast, plain):
        assert a.dtype == torch.float32 and torch.equal(a, b)
