"""DETR's box head: a small feed-forward network.

Follows ``MLP`` in ``models/detr.py`` (facebookresearch/detr at 29901c5).
"""

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """(Linear -> ReLU) * (num_layers - 1) -> Linear; parameter names ``layers.{i}`` as DETR's
    ``bbox_embed``."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim])
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x
