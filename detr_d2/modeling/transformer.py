"""DETR's encoder-decoder transformer (post-norm by default, pre-norm optional).

Parameter names equal the official implementation's (``encoder.layers.{i}.self_attn``, ``linear1``,
``norm1`` ...; ``decoder.layers.{i}.multihead_attn`` is the cross-attention; ``decoder.norm``), so
official checkpoints load after stripping the ``detr.`` prefix. Sequences are (L, B, C) as in
``nn.MultiheadAttention`` with ``batch_first=False``.

Group DETR (training only): ``Transformer.forward(..., query_groups=K)`` decodes K groups of queries
in one pass; the decoder's self-attention is restricted to each group
(:func:`group_attention_mask`), the cross-attention and FFN are per query anyway, so each group is
decoded exactly as it would be alone.

Follows ``models/transformer.py`` (facebookresearch/detr at 29901c5).

Every attention is called with ``need_weights=False``: ``nn.MultiheadAttention`` then computes it
with ``F.scaled_dot_product_attention`` (fused on CPU and CUDA) instead of materialising and
head-averaging the (B, L, S) weight matrix that DETR never reads (same result up to float rounding;
``tests/test_modeling_speed_equivalence.py`` compares with the weight-returning computation).
"""

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def _with_pos(t: Tensor, pos: Optional[Tensor]) -> Tensor:
    return t if pos is None else t + pos


def group_attention_mask(
    num_groups: int, group_size: int, device: Optional[torch.device] = None
) -> Optional[Tensor]:
    """(G*Q, G*Q) bool self-attention mask for ``num_groups`` groups of ``group_size`` queries laid
    out
    group-major: True (not allowed) between queries of different groups. None for a single group."""
    if num_groups == 1:
        return None
    group = torch.arange(num_groups * group_size, device=device) // group_size
    return group[:, None] != group[None, :]


class TransformerEncoderLayer(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(
        self, src: Tensor, key_padding_mask: Optional[Tensor], pos: Optional[Tensor]
    ) -> Tensor:
        if self.normalize_before:
            s2 = self.norm1(src)
            q = k = _with_pos(s2, pos)
            src = src + self.dropout1(
                self.self_attn(
                    q, k, value=s2, key_padding_mask=key_padding_mask, need_weights=False
                )[0]
            )
            return src + self.dropout2(self._ffn(self.norm2(src)))
        q = k = _with_pos(src, pos)
        src = self.norm1(
            src
            + self.dropout1(
                self.self_attn(
                    q, k, value=src, key_padding_mask=key_padding_mask, need_weights=False
                )[0]
            )
        )
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, normalize_before: bool
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_key_padding_mask: Optional[Tensor],
        pos: Optional[Tensor],
        query_pos: Optional[Tensor],
        self_attn_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """``self_attn_mask``: optional (Q, Q) bool, True where query i may not attend to query
        j."""
        if self.normalize_before:
            t2 = self.norm1(tgt)
            q = k = _with_pos(t2, query_pos)
            tgt = tgt + self.dropout1(
                self.self_attn(q, k, value=t2, attn_mask=self_attn_mask, need_weights=False)[0]
            )
            t2 = self.norm2(tgt)
            t2 = self.multihead_attn(
                _with_pos(t2, query_pos),
                _with_pos(memory, pos),
                value=memory,
                key_padding_mask=memory_key_padding_mask,
                need_weights=False,
            )[0]
            tgt = tgt + self.dropout2(t2)
            t2 = self.norm3(tgt)
            return tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(t2)))))
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(
            tgt
            + self.dropout1(
                self.self_attn(q, k, value=tgt, attn_mask=self_attn_mask, need_weights=False)[0]
            )
        )
        t2 = self.multihead_attn(
            _with_pos(tgt, query_pos),
            _with_pos(memory, pos),
            value=memory,
            key_padding_mask=memory_key_padding_mask,
            need_weights=False,
        )[0]
        tgt = self.norm2(tgt + self.dropout2(t2))
        return self.norm3(
            tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt)))))
        )


class TransformerEncoder(nn.Module):
    def __init__(
        self, layer: TransformerEncoderLayer, num_layers: int, norm: Optional[nn.LayerNorm]
    ):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = norm  # only with pre-norm layers (the official post-norm model has none)

    def forward(
        self, src: Tensor, key_padding_mask: Optional[Tensor], pos: Optional[Tensor]
    ) -> Tensor:
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    def __init__(self, layer: TransformerDecoderLayer, num_layers: int, norm: nn.LayerNorm):
        super().__init__()
        self.layers = _clones(layer, num_layers)
        self.norm = norm

    def forward(
        self, tgt, memory, memory_key_padding_mask, pos, query_pos, self_attn_mask=None
    ) -> Tensor:
        """Returns (num_layers, Q, B, C): ``norm`` applied to every layer's output (the next layer
        receives the un-normalised one). ``self_attn_mask``: see
        ``TransformerDecoderLayer.forward``."""
        intermediate: List[Tensor] = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key_padding_mask, pos, query_pos, self_attn_mask)
            intermediate.append(self.norm(tgt))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    """DETR transformer. ``forward(src (B,C,H,W), mask (B,H,W) True=pad, query_embed (Q,C), pos
    (B,C,H,W), query_groups=1)`` returns ``hs`` (num_dec_layers, B, Q, C) and ``memory`` (B, C, H,
    W). ``query_groups`` > 1: ``query_embed`` holds that many equal groups, group-major, decoded
    independently (Group DETR; the self-attention between groups is masked)."""

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        normalize_before: bool = False,
    ):
        super().__init__()
        enc_layer = TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        self.encoder = TransformerEncoder(
            enc_layer, num_encoder_layers, nn.LayerNorm(d_model) if normalize_before else None
        )
        dec_layer = TransformerDecoderLayer(
            d_model, nhead, dim_feedforward, dropout, normalize_before
        )
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self,
        src: Tensor,
        mask: Tensor,
        query_embed: Tensor,
        pos_embed: Tensor,
        query_groups: int = 1,
    ) -> Tuple[Tensor, Tensor]:
        if query_groups < 1 or query_embed.shape[0] % query_groups:
            raise ValueError(
                f"Transformer: {query_embed.shape[0]} queries cannot form {query_groups} "
                "equal groups"
            )
        self_attn_mask = group_attention_mask(
            query_groups, query_embed.shape[0] // query_groups, src.device
        )
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)
        mask = mask.flatten(1)
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, mask, pos_embed)
        hs = self.decoder(tgt, memory, mask, pos_embed, query_embed, self_attn_mask)
        return hs.transpose(1, 2), memory.permute(1, 2, 0).reshape(bs, c, h, w)
