"""DETR's panoptic mask head: per-query attention maps over the encoder memory (``MHAttentionMap``)
and the FPN-style convolutional head (``MaskHeadSmallConv``) that upsamples them to stride 4.

Parameter names equal the official ``bbox_attention.*`` / ``mask_head.*`` keys. Every query's mask
is independent of the other queries' (the attention softmax is per query, GroupNorm per sample), so
the head can run on any subset of the queries (see ``DetrPanoptic.query_masks``).

Follows ``MHAttentionMap`` and ``MaskHeadSmallConv`` in ``models/segmentation.py``
(facebookresearch/detr at 29901c5).
"""

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _RowsOfImages(torch.autograd.Function):
    """``src[index]`` along dim 0 whose backward sums the rows' gradients per image as one matrix
    product, (B, N) 0/1 matrix @ (N, features): the backward of advanced indexing (``index_put_``
    with accumulation) and ``index_add_`` are serial scatters on the CPU (3 ms and 1 ms per (123,
    16, 32, 32) gradient at 2 threads)."""

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_images = src.shape[0]
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        n = grad.shape[0]
        owner = grad.new_zeros((ctx.num_images, n))
        owner[index, torch.arange(n, device=index.device)] = 1
        if grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last):
            rows = grad.permute(0, 2, 3, 1)  # (N, H, W, C), contiguous: a view
            summed = (owner @ rows.reshape(n, -1)).view(-1, *rows.shape[1:])
            return summed.permute(0, 3, 1, 2), None  # channels_last, like grad
        rows = grad.contiguous()
        return (owner @ rows.view(n, -1)).view(-1, *rows.shape[1:]), None


def rows_of_images(src: Tensor, image_index: Tensor) -> Tensor:
    """(N, ...) rows ``src[image_index]`` of a per-image tensor ``src`` (B, ...): each query row
    gets its image's features (``forward_rows``)."""
    return _RowsOfImages.apply(src, image_index)


class MHAttentionMap(nn.Module):
    """Attention weights of each query over the memory, softmax taken jointly over heads and
    positions.

    ``forward(q (B,Q,C), k (B,C,H,W), mask (B,H,W) True=pad) -> (B, Q, nheads, H, W)``.
    """

    def __init__(self, query_dim: int, hidden_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.q_linear = nn.Linear(query_dim, hidden_dim, bias=True)
        self.k_linear = nn.Linear(query_dim, hidden_dim, bias=True)
        nn.init.zeros_(self.k_linear.bias)
        nn.init.zeros_(self.q_linear.bias)
        nn.init.xavier_uniform_(self.k_linear.weight)
        nn.init.xavier_uniform_(self.q_linear.weight)
        self.normalize_fact = float(hidden_dim / num_heads) ** -0.5

    def forward(self, q: Tensor, k: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        q = self.q_linear(q)
        k = self._keys(k)
        qh = q.view(q.shape[0], q.shape[1], self.num_heads, self.hidden_dim // self.num_heads)
        kh = k.view(
            k.shape[0], self.num_heads, self.hidden_dim // self.num_heads, k.shape[-2], k.shape[-1]
        )
        weights = torch.einsum("bqnc,bnchw->bqnhw", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask.unsqueeze(1).unsqueeze(1), float("-inf"))
        weights = F.softmax(weights.flatten(2), dim=-1).view(weights.size())
        return self.dropout(weights)

    def _keys(self, k: Tensor) -> Tensor:
        return F.conv2d(k, self.k_linear.weight.unsqueeze(-1).unsqueeze(-1), self.k_linear.bias)

    def forward_rows(
        self, q: Tensor, k: Tensor, image_index: Tensor, mask: Optional[Tensor] = None
    ) -> Tensor:
        """``forward`` for queries of several images in one batch: ``q`` (N, C) queries, row n of
        image ``image_index[n]``; ``k`` (B, C, H, W), ``mask`` (B, H, W) -> (N, nheads, H, W) (the
        same values as ``forward`` per image, up to float rounding)."""
        q = self.q_linear(q)
        k = self._keys(k)
        qh = q.view(q.shape[0], self.num_heads, self.hidden_dim // self.num_heads)
        kh = rows_of_images(k, image_index).view(
            q.shape[0], self.num_heads, self.hidden_dim // self.num_heads, k.shape[-2], k.shape[-1]
        )
        weights = torch.einsum("nhc,nhcyx->nhyx", qh * self.normalize_fact, kh)
        if mask is not None:
            weights = weights.masked_fill(mask[image_index].unsqueeze(1), float("-inf"))
        weights = F.softmax(weights.flatten(1), dim=-1).view(weights.size())
        return self.dropout(weights)


def group_norm_relu(norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """``relu(norm(x))``, the ReLU in place on the norm's fresh output. When autograd records on
    the CPU, the norm runs on an NCHW copy of a channels_last ``x``: PyTorch's CPU GroupNorm is
    much slower on channels_last, its backward most (torch 2.3.1, (123, 8, 32, 32): forward +
    backward 18.9 ms channels_last, 1.5 ms NCHW; docs/speed.md). Same values; inference keeps the
    channels_last path."""
    if x.requires_grad and x.device.type == "cpu" and torch.is_grad_enabled():
        x = x.contiguous()
    return F.relu_(norm(x))


class MaskHeadSmallConv(nn.Module):
    """FPN-style head: (projected features ++ attention maps) at stride 32, refined with the
    backbone's stride-16/8/4 features, to one mask logit map per query at stride 4.

    Args:
        dim: input channels = hidden_dim + nheads (projected features first, attention maps last).
        fpn_dims: channels of the stride-16, 8, 4 backbone features (res4, res3, res2).
        context_dim: hidden_dim; the inner widths are context_dim // 2, // 4, // 8, // 16.
    """

    def __init__(self, dim: int, fpn_dims: Sequence[int], context_dim: int):
        super().__init__()
        self.num_attention_maps = dim - context_dim
        inter_dims = [dim, context_dim // 2, context_dim // 4, context_dim // 8, context_dim // 16]
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(8, dim)
        self.lay2 = nn.Conv2d(dim, inter_dims[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(8, inter_dims[1])
        self.lay3 = nn.Conv2d(inter_dims[1], inter_dims[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(8, inter_dims[2])
        self.lay4 = nn.Conv2d(inter_dims[2], inter_dims[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(8, inter_dims[3])
        self.lay5 = nn.Conv2d(inter_dims[3], inter_dims[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(8, inter_dims[4])
        self.out_lay = nn.Conv2d(inter_dims[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], inter_dims[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], inter_dims[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], inter_dims[3], 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        # channels_last like the backbone whose features it reads: no per-convolution reorders
        # (same values; issue 25, docs/speed.md)
        self.to(memory_format=torch.channels_last)

    @staticmethod
    def _add_upsampled(
        fpn: Tensor, x: Tensor, num_queries: int, image_index: Optional[Tensor]
    ) -> Tensor:
        """``fpn`` (B, C, H, W) broadcast over queries + legacy-nearest upsample of ``x`` (B*Q, C,
        h, w) to exactly (H, W). Broadcasting avoids DETR's per-query copy of ``fpn`` (same
        values, computed in place). With ``image_index`` (:meth:`forward_rows`), ``x`` is (N, C,
        h, w) and row n belongs to image ``image_index[n]`` (``num_queries`` unused)."""
        up = F.interpolate(x, size=fpn.shape[-2:], mode="nearest")
        # in place into the fresh upsampled tensor: no second (B*Q, C, H, W) allocation
        if image_index is not None:
            return up.add_(rows_of_images(fpn, image_index))
        return (
            up.view(fpn.shape[0], num_queries, *up.shape[1:]).add_(fpn.unsqueeze(1)).flatten(0, 1)
        )

    def project_features(self, x: Tensor) -> Tensor:
        """The image-feature part of the first convolution, with its bias: ``(B, C, H5, W5)``
        projected res5 -> ``(B, dim, H5, W5)``. The first convolution sees the same features for
        every query, concatenated with that query's attention maps; convolution being linear, this
        part is computed once per image instead of once per query (``forward(...,
        projected=...)``)."""
        return F.conv2d(x, self.lay1.weight[:, : self.feature_channels], self.lay1.bias, padding=1)

    @property
    def feature_channels(self) -> int:
        """Channels of the image features at the head's input (the attention maps follow them)."""
        return self.lay1.in_channels - self.num_attention_maps

    def forward(
        self, x: Tensor, bbox_mask: Tensor, fpns: List[Tensor], projected: Optional[Tensor] = None
    ) -> Tensor:
        """x: (B, C, H5, W5) projected res5; bbox_mask: (B, Q, nheads, H5, W5);
        fpns: [res4, res3, res2]. Returns (B*Q, 1, H2, W2) mask logits, rows batch-major (b*Q + q).

        ``projected``: ``project_features(x)`` computed beforehand; the first convolution then only
        runs over each query's attention maps (same result up to float rounding). Without it, DETR's
        own computation (features concatenated with the attention maps of each query)."""
        num_queries = bbox_mask.shape[1]
        if projected is None:
            x = torch.cat(
                [x.unsqueeze(1).expand(-1, num_queries, -1, -1, -1), bbox_mask], 2
            ).flatten(0, 1)
            x = self.lay1(x)
        else:
            att = self._attention_part(bbox_mask.flatten(0, 1))
            att = att.view(projected.shape[0], num_queries, *att.shape[1:])
            x = att.add_(projected.unsqueeze(1)).flatten(0, 1)
        return self._refine(x, fpns, num_queries, None)

    def forward_rows(
        self, bbox_mask: Tensor, fpns: List[Tensor], projected: Tensor, image_index: Tensor
    ) -> Tensor:
        """``forward`` for queries of several images in one batch: ``bbox_mask`` (N, nheads, H5,
        W5) attention maps, row n of image ``image_index[n]``; ``projected``
        (``project_features``) (B, dim, H5, W5); ``fpns`` [res4, res3, res2] of the B images.
        Returns (N, 1, H2, W2) mask logits (the same values as ``forward`` per image, up to float
        rounding)."""
        att = self._attention_part(bbox_mask)
        return self._refine(att.add_(rows_of_images(projected, image_index)), fpns, 0, image_index)

    def _attention_part(self, maps: Tensor) -> Tensor:
        """The attention-map part of the first convolution, without bias (it comes with
        ``project_features``): (N, nheads, H5, W5) -> (N, dim, H5, W5)."""
        return F.conv2d(maps, self.lay1.weight[:, self.feature_channels :], None, padding=1)

    def _refine(
        self, x: Tensor, fpns: List[Tensor], num_queries: int, image_index: Optional[Tensor]
    ) -> Tensor:
        """From the first convolution's output (rows of queries) to the mask logits
        (``num_queries`` per image, or the image of each row: :meth:`_add_upsampled`)."""
        # ReLU and the additions in place on tensors made just before (same values, no extra
        # (B*Q, C, H, W) allocations: 1.2x on the head at 2 threads; docs/speed.md)
        x = group_norm_relu(self.gn1, x)
        x = group_norm_relu(self.gn2, self.lay2(x))
        x = self._add_upsampled(self.adapter1(fpns[0]), x, num_queries, image_index)
        x = group_norm_relu(self.gn3, self.lay3(x))
        x = self._add_upsampled(self.adapter2(fpns[1]), x, num_queries, image_index)
        x = group_norm_relu(self.gn4, self.lay4(x))
        x = self._add_upsampled(self.adapter3(fpns[2]), x, num_queries, image_index)
        x = group_norm_relu(self.gn5, self.lay5(x))
        return self.out_lay(x)
