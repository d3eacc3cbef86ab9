"""DETR's two mask losses, sigmoid focal and dice, computed together with a hand-written backward.

Values and gradients are those of DETR's ``sigmoid_focal_loss`` (torchvision's formula: per pixel
``alpha_t * BCE(x, t) * (1 - p_t) ** gamma``, averaged over each mask's pixels, summed over masks,
divided by ``num_boxes``) and ``dice_loss`` (``1 - (2 sum(s t) + 1) / (sum(s) + sum(t) + 1)`` per
mask with ``s = sigmoid(x)``, summed, divided by ``num_boxes``) in ``models/segmentation.py``
(facebookresearch/detr at 29901c5), up to float rounding. Autograd through those formulas makes
and saves about twenty full-size (N, P) tensors forward and as many backward; here the targets are
bool, so with ``u = -x`` where ``t`` else ``x`` (the logit of being wrong) every per-pixel term is a
function of ``u``: ``1 - p_t = sigmoid(u)``, ``BCE = softplus(u)``, ``s = where(t, 1 - q, q)`` and
``s (1 - s) = q (1 - q)`` with ``q = sigmoid(u)``; forward and backward take a few passes each
(docs/speed.md, issue 25).
"""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sigmoid_focal_dice_loss"]


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """(N,) sums over P of ``a * b`` for (N, P) tensors, without the (N, P) product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


class _SigmoidFocalDice(torch.autograd.Function):
    # Only plain vectorised elementwise ops and row dot products: ``torch.where`` with scalars is
    # not vectorised on the CPU (slower than the autograd formulas it would replace).
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, num_boxes: float, alpha: float, gamma: float):
        t = targets.to(logits.dtype)
        u = torch.addcmul(logits, logits, t, value=-2.0)  # -x on target pixels, x elsewhere
        q = torch.sigmoid(u)  # 1 - p_t
        ce = F.softplus(u)  # BCE with logits = -log(p_t)
        focal = (ce * q).mul_(q) if gamma == 2.0 else ce * q.pow(gamma)
        if alpha >= 0:  # alpha_t = 1 - alpha + (2 alpha - 1) t; torchvision: alpha < 0 = none
            focal_rows = focal.sum(1).mul_(1.0 - alpha)
            focal_rows.add_(_row_dot(focal, t), alpha=2 * alpha - 1)
        else:
            focal_rows = focal.sum(1)
        n_pixels = logits.shape[1]
        focal_loss = focal_rows.div_(n_pixels).sum() / num_boxes
        # dice: s = sigmoid(x) is 1 - q on target pixels, q elsewhere
        q_on_target = _row_dot(q, t)
        t_sum = t.sum(1)
        inter = t_sum - q_on_target  # sum(s t)
        s_sum = q.sum(1) - 2 * q_on_target + t_sum  # sum(s)
        numerator = 2 * inter + 1
        denominator = s_sum + t_sum + 1
        dice_loss = (1 - numerator / denominator).sum() / num_boxes
        ctx.save_for_backward(t, q, ce, numerator, denominator)
        ctx.constants = (num_boxes, alpha, gamma, n_pixels)
        return focal_loss, dice_loss

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor):
        t, q, ce, numerator, denominator = ctx.saved_tensors
        num_boxes, alpha, gamma, n_pixels = ctx.constants
        one_minus_q = 1 - q
        # focal, d/du: a_t q^gamma (q + gamma ce (1 - q)); du/dx = -1 on target pixels, else 1,
        # so d/dx has the factor a_t (1 - 2t) = (1 - alpha) - t (alpha >= 0), 1 - 2t (no alpha)
        grad = torch.addcmul(q, ce, one_minus_q, value=gamma)
        if gamma == 2.0:
            grad.mul_(q).mul_(q)
        else:
            grad.mul_(q.pow(gamma))
        scale = grad_focal / (n_pixels * num_boxes)
        if alpha >= 0:
            grad.mul_(t.mul(-scale).add_((1.0 - alpha) * scale))
        else:
            grad.mul_(t.mul(-2 * scale).add_(scale))
        # dice, d/ds_j: (n - 2 d t_j) / d^2 per mask; ds/dx = s (1 - s) = q (1 - q)
        dice_scale = grad_dice / num_boxes
        off = (numerator / (denominator * denominator) * dice_scale).unsqueeze(1)
        per_target = (-2 / denominator * dice_scale).unsqueeze(1)
        dice = torch.addcmul(off, t, per_target)
        dice.mul_(q).mul_(one_minus_q)
        return grad.add_(dice), None, None, None, None


def sigmoid_focal_dice_loss(
    logits: Tensor, targets: Tensor, num_boxes: float, alpha: float = 0.25, gamma: float = 2.0
) -> Tuple[Tensor, Tensor]:
    """``(focal, dice)`` scalar float32 losses of ``logits`` (N, P) mask logits against ``targets``
    (N, P) bool, each normalised by ``num_boxes`` (see the module docstring); computed in float32
    (also under autocast)."""
    if targets.dtype != torch.bool:
        raise TypeError(f"sigmoid_focal_dice_loss: targets must be bool masks, got {targets.dtype}")
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(
            "sigmoid_focal_dice_loss: logits and targets must both be (N, P), got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    # float32 whatever the autocast state (its row sums are matrix products, which autocast would
    # run in half precision)
    with torch.autocast(logits.device.type, enabled=False):
        return _SigmoidFocalDice.apply(
            logits.float(), targets, float(num_boxes), float(alpha), float(gamma)
        )
