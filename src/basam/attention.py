"""BA-SAM attention: the one place in basam where attention is computed.

Every attention layer of every model (SAM ViT global and windowed blocks, TinyViT blocks, the
mask decoder's two-way transformer) calls :func:`attend`. For query ``i`` and key ``j`` it computes
(``../shared/SPEC.md``)::

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

import contextlib
import contextvars
import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError

__all__ = [
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
]

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
        if self.backend not in BACKENDS and self.backend not in _BACKENDS:
            _probe_fused_backends()
        if self.backend not in BACKENDS and self.backend not in _BACKENDS:
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


class BiasModeMask(nn.Module):
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

    def configure(self, config: AttentionConfig, reset_slopes: bool = True) -> None:
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
        if isinstance(module, BiasModeMask):
            module.configure(config, reset_slopes=reset_slopes)
        elif hasattr(module, "attention_config") and not isinstance(module, BiasModeMask):
            module.attention_config = config
        cache = module.__dict__.get("_graph_cache")
        if cache is not None:  # captured CUDA graphs hold the old scales and bias settings
            cache.clear()
    return config


# ----------------------------------------------------------------------------------------------
# Distances on the token grid


def grid_coords(grid: Tuple[int, int], device=None) -> Tuple[Tensor, Tensor]:
    """Row and column index of every token of a row-major ``grid`` (h, w). Two (h*w,) long tensors."""
    h, w = grid
    idx = torch.arange(h * w, device=device)
    return idx // w, idx % w


def distance_matrix(grid: Tuple[int, int], dist: str, rows: Optional[slice] = None, device=None) -> Tensor:
    """Token distances on ``grid`` for the queries in ``rows`` against all keys. Shape (Nq, N), fp32."""
    h, w = grid
    r, c = grid_coords(grid, device)
    qr, qc = (r, c) if rows is None else (r[rows], c[rows])
    if dist == "flat":
        qi = qr * w + qc
        ki = r * w + c
        return (qi[:, None] - ki[None, :]).abs().float()
    dr = (qr[:, None] - r[None, :]).abs().float()
    dc = (qc[:, None] - c[None, :]).abs().float()
    if dist == "manhattan":
        return dr + dc
    return torch.sqrt(dr * dr + dc * dc)


# ----------------------------------------------------------------------------------------------
# Bias assembly (shared by both backends)


def _rel_pos_terms(q: Tensor, rows: slice, rel_pos: Tuple[Tensor, Tensor], grid: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """``q_i . Rh[r_i, :]`` and ``q_i . Rw[c_i, :]`` for the queries ``rows``: (B, H, nq, gh) and
    (B, H, nq, gw), fp32.

    Computed over the whole grid rows that cover ``rows`` (then sliced), so that both are batched
    matmuls against a slice of the tables instead of a per-query gather of (nq, gh, d) tables.
    """
    gh, gw = grid
    rh, rw = rel_pos  # (gh_q, gh_k, d), (gw_q, gw_k, d)
    B, H, _, d = q.shape
    r0, r1 = rows.start // gw, -(-rows.stop // gw)
    qg = q[:, :, r0 * gw : r1 * gw].float().reshape(B, H, r1 - r0, gw, d)
    row = torch.einsum("bhxyd,xkd->bhxyk", qg, rh[r0:r1].float()).reshape(B, H, -1, gh)
    col = torch.einsum("bhxyd,ykd->bhxyk", qg, rw.float()).reshape(B, H, -1, gw)
    off = rows.start - r0 * gw
    n = rows.stop - rows.start
    return row[:, :, off : off + n], col[:, :, off : off + n]


def _bias_chunk(
    q: Tensor,
    rows: slice,
    rel_pos: Optional[Tuple[Tensor, Tensor]],
    grid: Optional[Tuple[int, int]],
    slopes: Optional[Tensor],
    dist: str,
    dense_bias: Optional[Tensor],
    n_keys: int,
    out: Optional[Tensor] = None,
) -> Optional[Tensor]:
    """The additive logit bias ``r + b`` for queries ``rows``. Shape (B, H, Nq_chunk, N_keys), fp32.

    ``q`` is the full (B, H, Nq, d) query tensor (unscaled); only ``q[:, :, rows]`` is read.
    ``out``: optional flat fp32 scratch tensor with room for the chunk's bias; the bias is then
    written into it in place (no autograd) rather than allocated.
    """
    rows = slice(*rows.indices(q.shape[-2]))
    bias: Optional[Tensor] = None
    B, Hh = q.shape[0], q.shape[1]
    n_q = rows.stop - rows.start
    row = col = None
    if rel_pos is not None or slopes is not None:
        assert grid is not None, "a grid is needed for relative positions or distance bias"
        gh, gw = grid
        if gh * gw != n_keys:
            raise ValueError(f"bias covers {gh * gw} keys but attention has {n_keys}")
        qr, qc = grid_coords(grid, q.device)
        qr, qc = qr[rows], qc[rows]
        if rel_pos is not None:
            row, col = _rel_pos_terms(q, rows, rel_pos, grid)
        else:
            row = q.new_zeros((1, 1, n_q, gh), dtype=torch.float32)
            col = q.new_zeros((1, 1, n_q, gw), dtype=torch.float32)
        if slopes is not None and dist == "manhattan":
            # Separable: -s * (|dr| + |dc|) goes into the row and column terms.
            s = slopes.float().view(1, -1, 1, 1)
            kr = torch.arange(gh, device=q.device)
            kc = torch.arange(gw, device=q.device)
            row = row - s * (qr[:, None] - kr[None, :]).abs().float()
            col = col - s * (qc[:, None] - kc[None, :]).abs().float()
    nonsep = slopes is not None and dist != "manhattan"
    db = None if dense_bias is None else dense_bias[..., rows, :].float()
    if db is not None and db.shape[-1] != n_keys:
        raise ValueError(f"bias covers {db.shape[-1]} keys but attention has {n_keys}")
    if out is not None and row is not None:
        # Same sums as below, written into the scratch buffer: one pass for row + col, then the
        # optional non-separable and dense terms added in place.
        shapes = [row.shape[:-1] + (n_keys,), col.shape[:-1] + (n_keys,)]
        if nonsep:
            shapes.append((1, slopes.shape[0], n_q, n_keys))
        if db is not None:
            shapes.append(db.shape)
        final = torch.broadcast_shapes(*shapes)
        lead = final[:-1]
        bias = out[: math.prod(final)].view(final)
        torch.add(row.expand(lead + (gh,))[..., :, None], col.expand(lead + (gw,))[..., None, :],
                  out=bias.view(lead + (gh, gw)))
        if nonsep:
            bias.sub_(slopes.float().view(1, -1, 1, 1) * distance_matrix(grid, dist, rows, q.device))
        if db is not None:
            bias.add_(db)
    else:
        if row is not None:
            bias = (row[..., :, None] + col[..., None, :]).flatten(-2)
            if nonsep:
                d = distance_matrix(grid, dist, rows, q.device)
                bias = bias - slopes.float().view(1, -1, 1, 1) * d
        if db is not None:
            bias = db if bias is None else bias + db
    if bias is not None:
        bias = bias.expand(B, Hh, bias.shape[-2], n_keys)
    return bias


def _attend_reference(q, k, v, scale, rel_pos, grid, slopes, dist, dense_bias, chunk_bytes):
    """Explicit fp32 softmax over the full N x N logits. For checking, not for speed."""
    n = q.shape[-2]
    logits = scale * (q.float() @ k.float().transpose(-2, -1))
    bias = _bias_chunk(q, slice(0, n), rel_pos, grid, slopes, dist, dense_bias, k.shape[-2])
    if bias is not None:
        logits = logits + bias
    return (logits.softmax(dim=-1) @ v.float()).to(v.dtype)


#: The scratch of the innermost :func:`bias_scratch` scope of this thread / task (None outside).
_SCRATCH: contextvars.ContextVar = contextvars.ContextVar("basam_bias_scratch", default=None)


@contextlib.contextmanager
def bias_scratch():
    """Let every CPU :func:`attend` call inside share one fp32 buffer for its materialised bias.

    On the CPU a fresh bias tensor of tens to hundreds of MB is paid for in page faults on every
    call (more than the additions that fill it); an encoder forward enters this scope so that its
    layers reuse one buffer. The buffer lives only as long as the scope: no state outlives it.
    """
    token = _SCRATCH.set({})
    try:
        yield
    finally:
        _SCRATCH.reset(token)


def _scratch(numel: int, device: torch.device, scope: Optional[dict]) -> Tensor:
    """A flat fp32 buffer of at least ``numel`` elements: the scope's (grown if needed) or a new one."""
    if scope is None:
        return torch.empty(numel, dtype=torch.float32, device=device)
    buf = scope.get(device)
    if buf is None or buf.numel() < numel:
        scope[device] = None  # drop the old buffer before allocating the bigger one
        buf = scope[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf


def _attend_sdpa(q, k, v, scale, rel_pos, grid, slopes, dist, dense_bias, chunk_bytes):
    """SDPA with the bias built for one chunk of queries at a time (bounded memory)."""
    has_bias = rel_pos is not None or slopes is not None or dense_bias is not None
    if not has_bias:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    B, H, n_q, _ = q.shape
    n_k = k.shape[-2]
    # Bias chunk plus the attention weights a non-fused kernel may keep: ~2 fp32 rows per query.
    per_row = max(1, B * H * n_k * 4 * 2)
    chunk = max(1, min(n_q, chunk_bytes // per_row))
    if grid is not None and grid[1] <= chunk < n_q:
        chunk -= chunk % grid[1]  # whole grid rows, so no chunk computes rel-pos terms twice
    scratch = None
    separable = rel_pos is not None or slopes is not None
    if separable and not _needs_grad(q, rel_pos, slopes, dense_bias):
        # Write each chunk's bias into one reused buffer instead of a fresh tensor per chunk (a
        # fresh one costs page faults on every chunk); shared across calls in a bias_scratch()
        # scope on the CPU (CUDA's caching allocator already reuses memory).
        scope = _SCRATCH.get() if q.device.type == "cpu" else None
        if chunk < n_q or scope is not None:
            scratch = _scratch(B * H * chunk * n_k, q.device, scope)
    outs = []
    for start in range(0, n_q, chunk):
        rows = slice(start, min(n_q, start + chunk))
        bias = _bias_chunk(q, rows, rel_pos, grid, slopes, dist, dense_bias, n_k, out=scratch).to(q.dtype)
        outs.append(F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=bias, scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _needs_grad(q, rel_pos, slopes, dense_bias) -> bool:
    """Whether autograd must see the bias (in-place writes into a scratch buffer would break it)."""
    if not torch.is_grad_enabled():
        return False
    ts = [q, slopes, dense_bias] + (list(rel_pos) if rel_pos is not None else [])
    return any(t is not None and t.requires_grad for t in ts)


AttendFn = Callable[..., Tensor]
#: name -> (function, predicate(q) telling whether it can run these inputs). A fused GPU kernel
#: registers here; ``auto`` takes the first registered backend whose predicate accepts.
_BACKENDS: dict = {"reference": (_attend_reference, None), "sdpa": (_attend_sdpa, None)}
_AUTO_ORDER: list = []  # fused kernels, fastest first; "sdpa" is the fallback


def register_backend(name: str, fn: AttendFn, supports: Callable[[Tensor], bool], prefer: bool = True) -> None:
    """Register a fused attention backend (same signature as :func:`_attend_sdpa`)."""
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
        from .kernels import maybe_register

        maybe_register()
    except Exception:  # noqa: BLE001 - any failure means: no fused kernel
        pass


def _pick_backend(name: str, q: Tensor) -> AttendFn:
    if name not in ("sdpa", "reference"):
        _probe_fused_backends()
    if name == "auto":
        for candidate in _AUTO_ORDER:
            fn, supports = _BACKENDS[candidate]
            if supports is None or supports(q):
                return fn
        return _attend_sdpa
    try:
        return _BACKENDS[name][0]
    except KeyError:
        raise InputError(f"unknown attention backend {name!r}; available: {', '.join(_BACKENDS)}") from None


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
    backend: str = "auto",
    chunk_bytes: int = 256 * 2**20,
) -> Tensor:
    """Multi-head attention with the BA-SAM logits.

    Args:
        q: (B, H, Nq, d) queries. k: (B, H, Nk, d) keys. v: (B, H, Nk, dv) values.
        scale: lambda (from :func:`nsf_scale`).
        rel_pos: SAM's decomposed relative-position tables already resized to the grid:
            ``(Rh, Rw)`` of shapes (gh, gh, d) and (gw, gw, d); ``r_ij = q_i.Rh[row_i, row_j] +
            q_i.Rw[col_i, col_j]`` with the unscaled query.
        grid: (gh, gw) token grid of a self-attention layer (Nq = Nk = gh*gw, row-major).
        slopes: (H,) BM-AM head slopes, or None for no distance bias.
        dist: distance for the BM-AM.
        dense_bias: extra additive bias broadcastable to (B, H, Nq, Nk) (TinyViT's table).
        backend: ``auto``, ``sdpa``, ``reference`` or a registered fused kernel.
    Returns:
        (B, H, Nq, dv) in the dtype of ``v``.
    """
    if dist not in DISTANCES:
        raise InputError(f"unknown attention distance {dist!r}")
    if (rel_pos is not None or slopes is not None) and grid is not None:
        if grid[0] * grid[1] != q.shape[-2] or q.shape[-2] != k.shape[-2]:
            raise ValueError(f"grid {grid} does not match {q.shape[-2]} queries / {k.shape[-2]} keys")
    fn = _pick_backend(backend, q)
    return fn(q, k, v, scale, rel_pos, grid, slopes, dist, dense_bias, chunk_bytes)
