"""Named model variants: ``create_model("sam_vit_b")`` builds the architecture with random weights.

Each entry records the official architecture. Keyword overrides shrink a variant (depth, width,
heads, ...) for tests and experiments; the component classes are the same.
"""

from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from ..attention import AttentionConfig
from ..errors import InputError
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class TinyViTConfig:
    embed_dims: Tuple[int, ...] = (64, 128, 160, 320)
    depths: Tuple[int, ...] = (2, 2, 6, 2)
    num_heads: Tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: Tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0


@dataclass(frozen=True)
class DecoderConfig:
    transformer_dim: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: which encoder, whether the decoder is HQ-SAM's, and sizes."""

    name: str
    encoder: object  # ViTConfig | TinyViTConfig
    hq: bool = False
    decoder: DecoderConfig = DecoderConfig()
    img_size: int = 1024
    description: str = ""
    bundled: Optional[str] = None  # weights shipped inside the package (basam/weights/<file>)


MODEL_SPECS: Dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODEL_SPECS[spec.name] = spec
    return spec


_VIT_B = ViTConfig(768, 12, 12, (2, 5, 8, 11))
_VIT_L = ViTConfig(1024, 24, 16, (5, 11, 17, 23))
_VIT_H = ViTConfig(1280, 32, 16, (7, 15, 23, 31))
_TINY = TinyViTConfig()

register(ModelSpec("sam_vit_b", _VIT_B, description="SAM ViT-B (91M encoder)"))
register(ModelSpec("sam_vit_l", _VIT_L, description="SAM ViT-L (308M encoder)"))
register(ModelSpec("sam_vit_h", _VIT_H, description="SAM ViT-H (632M encoder)"))
register(ModelSpec("mobile_sam", _TINY, description="MobileSAM: TinyViT-5M encoder + SAM decoder"))
register(ModelSpec("sam_hq_vit_b", _VIT_B, hq=True, description="HQ-SAM on ViT-B"))
register(ModelSpec("sam_hq_vit_l", _VIT_L, hq=True, description="HQ-SAM on ViT-L"))
register(ModelSpec("sam_hq_vit_h", _VIT_H, hq=True, description="HQ-SAM on ViT-H"))
register(ModelSpec("sam_hq_vit_tiny", _TINY, hq=True, description="HQ-SAM on MobileSAM's TinyViT"))
# basam's own demonstration model: SAM's architecture, small, trained from scratch at 256 px on a few
# thousand salient-object and polyp images (see the README for what it is and how good it is).
register(ModelSpec(
    "basam_tiny",
    ViTConfig(embed_dim=192, depth=6, num_heads=6, global_attn_indexes=(2, 5), window_size=8),
    decoder=DecoderConfig(transformer_dim=128, depth=2, num_heads=4, mlp_dim=512, iou_head_hidden_dim=128),
    img_size=256,
    description="basam's demonstration model (ViT 192x6, trained from scratch at 256 px; not SAM)",
    bundled="basam_tiny.safetensors",
))


def list_models() -> Tuple[str, ...]:
    return tuple(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SPECS)}") from None


def shrink(spec: ModelSpec, **overrides) -> ModelSpec:
    """A copy of ``spec`` with encoder fields (``embed_dim``, ``depth``, ...), ``img_size`` or
    ``decoder`` replaced: for reduced models in tests."""
    top = {k: overrides.pop(k) for k in ("img_size", "decoder", "hq") if k in overrides}
    if isinstance(top.get("decoder"), dict):
        top["decoder"] = _replace_checked(spec.decoder, top["decoder"], "decoder")
    enc = _replace_checked(spec.encoder, overrides, "encoder") if overrides else spec.encoder
    return replace(spec, encoder=enc, **top)


def _replace_checked(cfg, overrides: dict, what: str):
    known = {f.name for f in fields(cfg)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise InputError(f"unknown {what} architecture field(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def build_sam(spec: ModelSpec, attention: Optional[AttentionConfig] = None, hq_fusion: str = "add") -> Sam:
    """Instantiate ``spec`` with freshly initialised weights (train mode)."""
    attention = attention or AttentionConfig()
    enc_cfg = spec.encoder
    if isinstance(enc_cfg, ViTConfig):
        encoder = ImageEncoderViT(
            img_size=spec.img_size,
            patch_size=enc_cfg.patch_size,
            embed_dim=enc_cfg.embed_dim,
            depth=enc_cfg.depth,
            num_heads=enc_cfg.num_heads,
            mlp_ratio=enc_cfg.mlp_ratio,
            out_chans=spec.decoder.transformer_dim,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=enc_cfg.window_size,
            global_attn_indexes=enc_cfg.global_attn_indexes,
            attention=attention,
        )
        vit_dim = enc_cfg.embed_dim
    else:
        encoder = TinyViT(
            img_size=spec.img_size,
            embed_dims=enc_cfg.embed_dims,
            depths=enc_cfg.depths,
            num_heads=enc_cfg.num_heads,
            window_sizes=enc_cfg.window_sizes,
            mlp_ratio=enc_cfg.mlp_ratio,
            out_chans=spec.decoder.transformer_dim,
            attention=attention,
        )
        vit_dim = enc_cfg.embed_dims[2]
    d = spec.decoder
    transformer = TwoWayTransformer(depth=d.depth, embedding_dim=d.transformer_dim, num_heads=d.num_heads, mlp_dim=d.mlp_dim)
    common = dict(transformer_dim=d.transformer_dim, transformer=transformer, num_multimask_outputs=3, iou_head_depth=3,
                  iou_head_hidden_dim=d.iou_head_hidden_dim)
    decoder = MaskDecoderHQ(vit_dim=vit_dim, hq_fusion=hq_fusion, **common) if spec.hq else MaskDecoder(**common)
    sam = Sam(encoder, PromptEncoder(embed_dim=d.transformer_dim, mask_in_chans=d.mask_in_chans), decoder, name=spec.name)
    sam.set_attention(attention)
    return sam


def create_model(name: str, attention: "AttentionConfig | str | None" = None, hq_fusion: str = "add", **overrides) -> Sam:
    """Build a registered model with random weights; ``overrides`` shrink it (see :func:`shrink`)."""
    spec = get_spec(name)
    if overrides:
        spec = shrink(spec, **overrides)
    return build_sam(spec, AttentionConfig.coerce(attention), hq_fusion=hq_fusion)
