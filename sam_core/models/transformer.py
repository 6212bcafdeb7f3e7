"""SAM's two-way transformer: prompt tokens and image tokens attend to each other."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from sam_core.models.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by ``downsample_rate``.

    ``fused = True`` (all precisions but ``exact``) lets the decoder's lopsided attentions skip most of
    the work on image tokens. When a few prompt tokens meet thousands of image tokens, the per-head
    products are regrouped: ``(q Wq_h) (k Wk_h)^T = (q Wq_h Wk_h^T) k^T`` and
    ``softmax(.) (v Wv_h) Wo_h = (softmax(.) v) (Wv_h Wo_h)``, so the image tokens are multiplied by
    (heads x prompt tokens) columns instead of the projection width; the estimated cost picks the cheaper
    form. Same values up to float rounding; ``fused = False`` computes exactly the official operations.
    """

    fused: bool = True

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim / downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.fused:
            plain, few_queries, few_keys = self._costs(q, k, v)
            if few_queries < plain and few_queries <= few_keys:
                return self._few_queries(q, k, v)
            if few_keys < plain:
                return self._few_keys(q, k, v)
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention of already projected queries, keys and values (B, n, internal_dim), with the
        output projection; the official operations."""
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        attn = q @ k.permute(0, 1, 3, 2)
        attn = torch.softmax(attn / math.sqrt(q.shape[-1]), dim=-1)
        out = (attn @ v).transpose(1, 2)
        return self.out_proj(out.reshape(out.shape[0], out.shape[1], -1))

    def _costs(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int]:
        """Multiply-adds of the plain form, of the few-queries form and of the few-keys form."""
        c, d, h = self.embedding_dim, self.internal_dim, self.num_heads
        b = max(q.shape[0], k.shape[0], v.shape[0])
        nq, nk = q.shape[1], k.shape[1]
        projections = (q.shape[0] * nq + (k.shape[0] + v.shape[0]) * nk) * c * d
        plain = projections + b * (2 * nq * nk * d + nq * d * c)
        few_queries = b * (2 * h * nq * nk * c + 3 * nq * d * c)
        few_keys = b * (2 * h * nq * nk * c + 3 * nk * d * c)
        return plain, few_queries, few_keys

    def _few_queries(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Few queries (prompt tokens), many keys (image tokens; batch 1 is broadcast)."""
        b, n, _ = q.shape
        h, d, c = self.num_heads, self.internal_dim // self.num_heads, self.embedding_dim
        queries = self._heads(self.q_proj(q)) / math.sqrt(d)  # (b, h, n, d), scaled
        # logits_h = Q_h (k Wk_h^T + bk_h)^T; the bias term is the same for every key: softmax ignores it
        mixed = (queries @ self.k_proj.weight.view(h, d, c)).reshape(b, h * n, c)
        attn = torch.softmax(mixed @ k.transpose(1, 2), dim=-1)  # (b, h*n, keys)
        # rows of attn sum to 1: attn (v Wv_h^T + bv_h) = (attn v) Wv_h^T + bv_h
        mixed = attn @ v
        b = mixed.shape[0]  # the larger of the queries' and keys' batch sizes
        out = mixed.view(b, h, n, c) @ self.v_proj.weight.view(h, d, c).transpose(1, 2)
        out = out + self.v_proj.bias.view(h, 1, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def few_keys_projected_queries(self, projected_q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Many queries given already projected (``q_proj`` of the image tokens, (1 or B, N,
        internal_dim)), few keys and values (prompt tokens, (B, n, C)): the fused form of
        ``forward(q, k, v)``, equal up to float rounding."""
        return self._few_keys(None, k, v, projected_q)

    def _few_keys(self, q: Optional[Tensor], k: Tensor, v: Tensor, projected_q: Optional[Tensor] = None) -> Tensor:
        """Many queries (image tokens; batch 1 is broadcast), few keys (prompt tokens)."""
        h, d, c = self.num_heads, self.internal_dim // self.num_heads, self.embedding_dim
        keys = self._heads(self.k_proj(k)) / math.sqrt(d)  # (b, h, n, d), scaled
        values = self._heads(self.v_proj(v))
        b, _, n, _ = keys.shape
        # logits laid out (b, h*n, queries) so that the softmax over the n keys of each head runs along
        # a long axis
        if projected_q is not None:
            logits = (keys @ self._heads(projected_q).transpose(2, 3)).flatten(1, 2)
        else:
            # logits_h^T = K_h (q Wq_h^T + bq_h)^T = (K_h Wq_h) q^T + K_h bq_h
            mixed = (keys @ self.q_proj.weight.view(h, d, c)).reshape(b, h * n, c)
            offset = (keys @ self.q_proj.bias.view(h, d, 1)).reshape(b, h * n, 1)
            if q.shape[0] == b:
                logits = torch.baddbmm(offset, mixed, q.transpose(1, 2))
            else:  # image tokens shared by all prompts (batch 1), or one prompt for per-prompt image tokens
                logits = mixed @ q.transpose(1, 2) + offset
        batch = logits.shape[0]
        attn = torch.softmax(logits.view(batch, h, n, -1), dim=2).view(batch, h * n, -1)
        # out = sum_h attn_h V_h Wo_h^T + bo, with Wo_h the columns of head h
        projected = (values @ self.out_proj.weight.view(c, h, d).permute(1, 2, 0)).reshape(b, h * n, c)
        return torch.baddbmm(self.out_proj.bias, attn.transpose(1, 2), projected.expand(batch, -1, -1))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention of tokens, tokens->image cross-attention, MLP, image->tokens cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                context: Optional["ImageContext"] = None) -> tuple[Tensor, Tensor]:
        """``context`` (first block only): the image tokens' projections computed once per image."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        to_image = self.cross_attn_token_to_image
        if context is None:
            k = keys + key_pe
            queries = self.norm2(queries + to_image(q=q, k=k, v=keys))
        else:
            queries = self.norm2(queries + to_image.attend(to_image.q_proj(q), context.key_proj, context.value_proj))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        if context is None:
            update = self.cross_attn_image_to_token(q=k, k=q, v=queries)
        else:
            update = self.cross_attn_image_to_token.few_keys_projected_queries(context.query_proj, q, queries)
        keys = self.norm4(keys + update)
        return queries, keys


@dataclass(frozen=True)
class ImageContext:
    """What every prompt decoded on one image shares, computed once (:meth:`TwoWayTransformer.image_context`).

    keys, key_pe: the image tokens and their positional encoding, (1, h*w, C) contiguous. key_proj,
    value_proj: the first block's token->image projections of keys + key_pe and of keys; query_proj:
    its image->token projection of keys + key_pe; each (1, h*w, C / attention_downsample_rate).
    """

    keys: Tensor
    key_pe: Tensor
    key_proj: Tensor
    value_proj: Tensor
    query_proj: Tensor


class TwoWayTransformer(nn.Module):
    """Decoder transformer: (B, C, h, w) image embedding + (B, N, C) tokens -> updated tokens and image.

    ``fused = True`` (all precisions but ``exact``) lays the image tokens and their positional encoding
    out contiguously once, so that the element-wise sums of every layer run at memory speed.
    """

    fused: bool = True

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, skip_first_layer_pe=(i == 0),
                                 attention_downsample_rate=attention_downsample_rate)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def image_context(self, image_embedding: Tensor, image_pe: Tensor) -> ImageContext:
        """The prompt-independent part of decoding on one (1, C, h, w) image embedding (the dense prompt
        embedding already added) with its (1, C, h, w) positional encoding; pass it to :meth:`forward`
        to decode any number of later prompts without recomputing it."""
        keys = image_embedding.flatten(2).permute(0, 2, 1).contiguous()
        key_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
        first = self.layers[0]
        with_pe = keys + key_pe
        return ImageContext(
            keys=keys,
            key_pe=key_pe,
            key_proj=first.cross_attn_token_to_image.k_proj(with_pe),
            value_proj=first.cross_attn_token_to_image.v_proj(keys),
            query_proj=first.cross_attn_image_to_token.q_proj(with_pe),
        )

    def forward(self, image_embedding: Optional[Tensor], image_pe: Optional[Tensor], point_embedding: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """Returns the processed tokens (B, N, C) and image tokens (B, h*w, C).

        ``image_embedding`` and ``image_pe`` may have batch size 1: shared by all B prompts, they are
        projected once and broadcast (the first block's image->token update makes them per prompt).
        With a ``context`` from :meth:`image_context` (fused forms only), the image tokens come from it
        and ``image_embedding`` and ``image_pe`` are not used.
        """
        if context is not None:
            keys, key_pe = context.keys, context.key_pe
        else:
            keys = image_embedding.flatten(2).permute(0, 2, 1)
            key_pe = image_pe.flatten(2).permute(0, 2, 1)
            if self.fused:
                keys, key_pe = keys.contiguous(), key_pe.contiguous()
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe,
                                  context=context if i == 0 else None)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
