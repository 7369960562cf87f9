"""Attention configuration: the names and the one config object, importable without torch.

Kept apart from :mod:`basam.attention` (which computes attention and needs torch) so that the
command line can offer the preset and distance names in ``basam --help`` without importing torch.
:mod:`basam.attention` re-exports everything here. The method: ``docs/method.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

from .errors import InputError

__all__ = ["PRESETS", "DISTANCES", "NSF_COUNTS", "BACKENDS", "AttentionConfig"]

DISTANCES = ("manhattan", "euclidean", "flat")
NSF_COUNTS = ("row", "image")
BACKENDS = ("auto", "sdpa", "reference")

#: Named combinations of NSF and BM-AM; every other field keeps its default unless overridden.
PRESETS = {
    "vanilla": dict(nsf=False, bias=False),
    "nsf": dict(nsf=True, bias=False),
    "basam": dict(nsf=True, bias=True),
}


@dataclass(frozen=True)
class AttentionConfig:
    """How every attention layer of a model computes its logits.

    Attributes:
        nsf: apply the New Scaling Factor in the image encoder.
        bias: add the Bias-Mode Attention Mask in the image encoder.
        beta: slope scale; head ``h`` of ``H`` gets ``beta * 2**(-8h/H)``. Paper: 1.0 zero-shot,
            0.1 as the start for fine-tuning.
        trainable_slopes: make the per-layer, per-head slopes learnable parameters.
        dist: ``manhattan``, ``euclidean`` or ``flat`` token distance.
        train_resolution: input size (px) at which the model was pretrained; sets each layer's
            N_train. ``None`` means the model's own ``img_size`` (1024 for the SAM family).
        nsf_count: ``row`` counts N as the keys one attention row sees (windowed layers get
            lambda = 1/sqrt(d)); ``image`` counts the tokens of the whole feature map (the reading of
            the BA-SAM authors' TinyViT code), so windowed layers are scaled too.
        decoder_nsf: also apply NSF to the mask decoder's token-to-image cross-attention.
        backend: ``auto``, ``sdpa`` or ``reference``.
        chunk_bytes: memory budget for one chunk of the materialised bias in the ``sdpa`` backend.
    """

    nsf: bool = False
    bias: bool = False
    beta: float = 1.0
    trainable_slopes: bool = False
    dist: str = "manhattan"
    train_resolution: Optional[int] = None
    nsf_count: str = "row"
    decoder_nsf: bool = False
    backend: str = "auto"
    chunk_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        if self.dist not in DISTANCES:
            raise InputError(f"unknown attention distance {self.dist!r}; choose one of {', '.join(DISTANCES)}")
        if self.nsf_count not in NSF_COUNTS:
            raise InputError(f"unknown nsf_count {self.nsf_count!r}; choose one of {', '.join(NSF_COUNTS)}")
        if self.backend not in BACKENDS:
            from .attention import backend_names  # a fused kernel registers there, on first use

            if self.backend not in backend_names():
                raise InputError(f"unknown attention backend {self.backend!r}")
        if not math.isfinite(self.beta) or self.beta < 0:
            raise InputError(f"beta must be a finite number >= 0, got {self.beta}")
        if self.train_resolution is not None and self.train_resolution <= 0:
            raise InputError(f"train_resolution must be positive, got {self.train_resolution}")
        if self.chunk_bytes <= 0:
            raise InputError(f"chunk_bytes must be positive, got {self.chunk_bytes}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "AttentionConfig":
        """Build a config from a preset name (``vanilla``, ``nsf``, ``basam``) plus overrides."""
        if name not in PRESETS:
            raise InputError(f"unknown attention preset {name!r}; choose one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise InputError(f"unknown attention option(s): {', '.join(bad)}")
        return cls(**{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def coerce(cls, value: "AttentionConfig | str | None", **overrides) -> "AttentionConfig":
        """Accept a config, a preset name or ``None`` (vanilla)."""
        if value is None:
            value = "vanilla"
        if isinstance(value, str):
            return cls.from_preset(value, **overrides)
        if isinstance(value, AttentionConfig):
            return replace(value, **{k: v for k, v in overrides.items() if v is not None})
        raise InputError(f"attention must be a preset name or AttentionConfig, got {type(value).__name__}")

    @property
    def preset_name(self) -> Optional[str]:
        """The preset this config equals on (nsf, bias), if any."""
        for name, values in PRESETS.items():
            if all(getattr(self, k) == v for k, v in values.items()):
                return name
        return None
