"""SAM's two-way transformer (the mask decoder's attention), routed through basam.attention."""

import math
from typing import Optional, Tuple, Type

from torch import Tensor, nn

from ..attention import AttentionConfig, ConfiguresAttention, attend, nsf_scale
from .common import MLPBlock


class TwoWayTransformer(nn.Module):
    """Tokens attend to the image and the image to the tokens, ``depth`` times.

    ``image_embedding`` (B, C, h, w) and ``image_pe`` (B, C, h, w) for any h, w; ``point_embedding``
    (B, N, C). Returns the processed tokens (B, N, C) and image (B, h*w, C).
    """

    def __init__(self, depth: int = 2, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048,
                 activation: Type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate, keys_are_image=True)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> Tuple[Tensor, Tensor]:
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe)
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image cross-attention, token MLP, image-to-token cross-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048, activation: Type[nn.Module] = nn.ReLU,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate, keys_are_image=True)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> Tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)
        q = queries + query_pe
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        k = keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(q=k, k=q, v=queries))
        return queries, keys


class Attention(ConfiguresAttention, nn.Module):
    """Attention with an optional down-projection of the channels. q (B, Nq, C), k/v (B, Nk, C).

    ``keys_are_image``: the keys are the image tokens, whose number grows with the resolution;
    with ``decoder_nsf`` on, such a layer is scaled by NSF against the pretraining grid.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, keys_are_image: bool = False) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.keys_are_image = keys_are_image
        self.attention_config = AttentionConfig()
        self.train_image_tokens: Optional[int] = None  # set by the model: h*w at pretraining size
        self.token_stride = 16  # set by the model: the image encoder's pixels per token

    def configure_attention(self, config: AttentionConfig, reset_slopes: bool = True) -> None:
        self.attention_config = config  # read per call: NSF on the cross-attention if config.decoder_nsf

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._separate_heads(self.q_proj(q))
        k = self._separate_heads(self.k_proj(k))
        v = self._separate_heads(self.v_proj(v))
        cfg = self.attention_config
        n_train = self.train_image_tokens
        if cfg.train_resolution is not None and n_train is not None:
            n_train = math.ceil(cfg.train_resolution / self.token_stride) ** 2
        scale = nsf_scale(q.shape[-1], k.shape[-2], n_train, cfg.decoder_nsf and self.keys_are_image)
        out = attend(q, k, v, scale=scale, backend=cfg.backend, chunk_bytes=cfg.chunk_bytes)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))
