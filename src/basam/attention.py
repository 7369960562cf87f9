"""BA-SAM attention: the one place in basam where attention is computed.

Every attention layer of every model (SAM ViT global and windowed blocks, TinyViT blocks, the
mask decoder's two-way transformer) calls :func:`attend`. For query ``i`` and key ``j`` it computes
(``docs/method.md``)::

    s_ij = lambda * (q_i . k_j) + r_ij + b_ij          a_ij = softmax_j(s_ij)

* ``lambda`` - the New Scaling Factor (NSF): ``d**-0.5 * log(N) / log(N_train)`` with N the keys
  attended over now and N_train the keys at the pretraining resolution (see :func:`nsf_scale`);
  ``d**-0.5`` with NSF off.
* ``r_ij`` - the layer's own bias: SAM's decomposed relative positions (``rel_pos``, row and column
  tables contracted with the *unscaled* query, as SAM does) and/or a dense additive bias (TinyViT's
  ``attention_biases``).
* ``b_ij = -slope_h * dist(p_i, p_j)`` - the Bias-Mode Attention Mask (BM-AM) on the token grid,
  with ``dist`` one of ``manhattan`` (separable: folded into the row/column terms at no cost),
  ``euclidean`` or ``flat`` (|i - j| on the row-major flattened index, the paper's literal formula).

Backends: ``reference`` (explicit fp32 softmax over the whole N x N matrix, for checking) and
``sdpa`` (``torch.nn.functional.scaled_dot_product_attention`` with the bias built per chunk of
queries, so the N x N bias never exists at once and memory stays bounded at any resolution).
A fused GPU kernel registers itself in :data:`_BACKENDS` and is picked by ``backend="auto"``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .attention_config import BACKENDS, DISTANCES, NSF_COUNTS, PRESETS, AttentionConfig
from .errors import InputError

__all__ = [
    "AttentionBias",
    "PRESETS",
    "DISTANCES",
    "AttentionConfig",
    "BiasModeMask",
    "alibi_slopes",
    "nsf_scale",
    "layer_scale",
    "attend",
    "bias_scratch",
    "set_attention",
    "ConfiguresAttention",
]

def alibi_slopes(num_heads: int, beta: float) -> Tensor:
    """ALiBi's geometric schedule scaled by beta: ``beta * 2**(-8h/H)`` for h = 1..H. Shape (H,)."""
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    return (beta * torch.pow(2.0, -8.0 * h / num_heads)).to(torch.float32)


def nsf_scale(head_dim: int, n_keys: int, n_train: Optional[int], enabled: bool) -> float:
    """The New Scaling Factor ``lambda`` for one layer.

    ``d**-0.5 * log(N) / log(N_train)``: keeps the entropy of each attention row invariant to the
    sequence length (paper §4.1). Returns ``d**-0.5`` when disabled, when N == N_train, or when the
    logarithm is undefined (N_train <= 1).
    """
    base = head_dim**-0.5
    if not enabled or n_train is None or n_train <= 1 or n_keys <= 1 or n_keys == n_train:
        return base
    return base * math.log(n_keys) / math.log(n_train)


def layer_scale(
    head_dim: int,
    config: AttentionConfig,
    *,
    window_tokens: Optional[int],
    image_tokens: int,
    stride: int,
    default_train_size: int,
) -> float:
    """lambda for one encoder layer, with N and N_train read as ``config.nsf_count`` says.

    Args:
        window_tokens: tokens per window for a windowed layer (fixed at any resolution), None for a
            global layer (which attends over the whole feature map).
        image_tokens: tokens of the whole feature map this layer runs on now.
        stride: input pixels per token of that feature map (16 for SAM's ViT).
        default_train_size: the model's pretraining input size, used unless the config names one.
    """
    train_size = config.train_resolution or default_train_size
    train_image_tokens = math.ceil(train_size / stride) ** 2
    if config.nsf_count == "image" or window_tokens is None:
        n, n_train = image_tokens, train_image_tokens
    else:
        n, n_train = window_tokens, window_tokens
    return nsf_scale(head_dim, n, n_train, config.nsf)


class ConfiguresAttention:
    """What a module implements to take a new :class:`AttentionConfig` from :func:`set_attention`.

    The one way configuration reaches a layer: every module of a model that inherits this mixin
    gets ``configure_attention(config, reset_slopes)`` (attention layers store it; a model with
    captured CUDA graphs drops them, since they hold the old scales and bias settings).
    """

    def configure_attention(self, config: AttentionConfig, reset_slopes: bool = True) -> None:
        raise NotImplementedError


class BiasModeMask(ConfiguresAttention, nn.Module):
    """Per-layer BA-SAM state: the head slopes of the Bias-Mode Attention Mask.

    ``slopes`` (H,) is always a parameter so that a fine-tuned model saves and loads its slopes; it
    only requires grad when the config says the slopes are trainable. Official SAM checkpoints do
    not have it: the loader fills it from ``beta``.
    """

    def __init__(self, num_heads: int, config: Optional[AttentionConfig] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.config = config or AttentionConfig()
        self.slopes = nn.Parameter(alibi_slopes(num_heads, self.config.beta), requires_grad=False)

    def configure_attention(self, config: AttentionConfig, reset_slopes: bool = True) -> None:
        self.config = config
        if reset_slopes:
            with torch.no_grad():
                self.slopes.copy_(alibi_slopes(self.num_heads, config.beta))
        self.slopes.requires_grad_(config.bias and config.trainable_slopes)

    def active_slopes(self) -> Optional[Tensor]:
        """The slopes to use in :func:`attend`, or ``None`` when BM-AM is off."""
        return self.slopes if self.config.bias else None

    def extra_repr(self) -> str:
        c = self.config
        return f"heads={self.num_heads}, nsf={c.nsf}, bias={c.bias}, dist={c.dist}"


def set_attention(model: nn.Module, config: "AttentionConfig | str", reset_slopes: bool = True, **overrides) -> AttentionConfig:
    """Reconfigure every attention layer of ``model`` in place; returns the config applied.

    ``reset_slopes=False`` keeps learned slopes (e.g. after loading a fine-tuned checkpoint).
    """
    config = AttentionConfig.coerce(config, **overrides)
    for module in model.modules():
        if isinstance(module, ConfiguresAttention):
            module.configure_attention(config, reset_slopes=reset_slopes)
    return config


from .attention_backends import (  # noqa: E402 - re-exported: models and tests use these names from here
    _SCRATCH, NO_BIAS, AttentionBias, _attend_reference, _attend_sdpa, _bias_chunk, _needs_grad, _rel_pos_terms,
    attend_reference, attend_sdpa, bias_scratch, builtin_supports, distance_matrix, grid_coords,
)


#: ``fn(q, k, v, scale, bias: AttentionBias, chunk_bytes) -> Tensor``
AttendFn = Callable[..., Tensor]
#: ``supports(q, k, v, bias) -> bool``: whether a backend can run these inputs
SupportsFn = Callable[[Tensor, Tensor, Tensor, AttentionBias], bool]
#: name -> (function, supports). A fused GPU kernel registers here; ``auto`` takes the first
#: preferred backend that supports the call, else ``sdpa``; a named backend that does not support
#: a call falls back to ``sdpa`` too.
_BACKENDS: dict = {"reference": (_attend_reference, builtin_supports), "sdpa": (_attend_sdpa, builtin_supports)}
_AUTO_ORDER: list = []  # fused kernels, fastest first; "sdpa" is the fallback


def register_backend(name: str, fn: AttendFn, supports: SupportsFn, prefer: bool = True) -> None:
    """Register an attention backend: ``fn(q, k, v, scale, bias, chunk_bytes)`` and its predicate
    ``supports(q, k, v, bias)``; ``prefer``: try it first under ``backend="auto"``."""
    _BACKENDS[name] = (fn, supports)
    if prefer and name not in _AUTO_ORDER:
        _AUTO_ORDER.insert(0, name)


_FUSED_PROBED = False


def _probe_fused_backends() -> None:
    """Register the optional fused kernels (``basam.kernels``) once, on first use; never raises.

    Done lazily rather than at import so that importing basam never imports Triton and a broken
    Triton install only costs the fused path, with SDPA as the fallback.
    """
    global _FUSED_PROBED
    if _FUSED_PROBED:
        return
    _FUSED_PROBED = True
    try:
        from .kernels import fused_backends, maybe_register

        if maybe_register():
            for name, fn, supports in fused_backends():
                register_backend(name, fn, supports=supports, prefer=True)
    except Exception:  # noqa: BLE001 - any failure means: no fused kernel
        pass


def backend_names() -> Tuple[str, ...]:
    """Every backend ``AttentionConfig.backend`` may name: the built-in ones and any fused kernel."""
    _probe_fused_backends()
    return tuple(dict.fromkeys((*BACKENDS, *_BACKENDS)))


def _pick_backend(name: str, q: Tensor, k: Optional[Tensor] = None, v: Optional[Tensor] = None,
                  bias: AttentionBias = NO_BIAS) -> AttendFn:
    """The backend function for a call: ``name`` if it supports the call, else ``sdpa``."""
    if name not in ("sdpa", "reference"):
        _probe_fused_backends()
    k = q if k is None else k
    v = k if v is None else v
    if name == "auto":
        candidates = list(_AUTO_ORDER)
    else:
        if name not in _BACKENDS:
            raise InputError(f"unknown attention backend {name!r}; available: {', '.join(_BACKENDS)}")
        candidates = [name]
    for candidate in candidates + ["sdpa"]:
        fn, supports = _BACKENDS[candidate]
        if supports is None or supports(q, k, v, bias):
            return fn
    raise InputError("no attention backend supports this call (queries and keys on different grids: "
                     f"{bias.q_grid} vs {bias.k_grid})")


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    rel_pos: Optional[Tuple[Tensor, Tensor]] = None,
    grid: Optional[Tuple[int, int]] = None,
    slopes: Optional[Tensor] = None,
    dist: str = "manhattan",
    dense_bias: Optional[Tensor] = None,
    bias: Optional[AttentionBias] = None,
    backend: str = "auto",
    chunk_bytes: int = 256 * 2**20,
) -> Tensor:
    """Multi-head attention with the BA-SAM logits.

    Args:
        q: (B, H, Nq, d) queries. k: (B, H, Nk, d) keys. v: (B, H, Nk, dv) values.
        scale: lambda (from :func:`nsf_scale`).
        rel_pos, grid, slopes, dist, dense_bias: the bias terms (see :class:`AttentionBias`;
            ``grid`` is the shared token grid of a self-attention layer, Nq = Nk = gh*gw).
        bias: the same as one :class:`AttentionBias` (then the five keywords above stay unset);
            it can also describe queries and keys on different grids.
        backend: ``auto``, ``sdpa``, ``reference`` or a registered fused kernel; one that does not
            support the call falls back to ``sdpa``.
    Returns:
        (B, H, Nq, dv) in the dtype of ``v``.
    """
    if bias is None:
        bias = AttentionBias(rel_pos=rel_pos, q_grid=grid, slopes=slopes, dist=dist, dense=dense_bias)
    elif rel_pos is not None or grid is not None or slopes is not None or dense_bias is not None:
        raise ValueError("pass the bias either as bias=AttentionBias(...) or as keywords, not both")
    if bias.dist not in DISTANCES:
        raise InputError(f"unknown attention distance {bias.dist!r}")
    bias.check(q, k)
    fn = _pick_backend(backend, q, k, v, bias)
    return fn(q, k, v, scale, bias, chunk_bytes)
