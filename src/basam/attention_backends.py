"""The attention backends' computation: BA-SAM logits built and applied, with no registry.

:mod:`basam.attention` (the one entry point, :func:`basam.attention.attend`) dispatches to the
functions here or to a fused kernel (:mod:`basam.kernels`); both import this module and neither
imports the other's internals, so there is no import circle.

Every backend is ``fn(q, k, v, scale, bias: AttentionBias, chunk_bytes) -> Tensor`` with a
predicate ``supports(q, k, v, bias) -> bool``; the dispatcher (:func:`basam.attention.attend`)
asks the predicates and falls back to ``sdpa``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AttentionBias", "NO_BIAS", "grid_coords", "distance_matrix", "bias_scratch", "attend_reference", "attend_sdpa",
           "builtin_supports", "needs_grad"]


@dataclass(frozen=True, eq=False)
class AttentionBias:
    """Everything added to the scaled logits of one attention call, described (not built).

    ``s_ij = scale * q_i.k_j + r_ij - slope_h * dist(p_i, p_j) + dense_ij``.

    Attributes:
        rel_pos: SAM's decomposed relative-position tables resized to the grids, ``(Rh, Rw)`` of
            shapes (gh_q, gh_k, d) and (gw_q, gw_k, d); ``r_ij = q_i.Rh[row_i, row_j] +
            q_i.Rw[col_i, col_j]`` with the unscaled query.
        q_grid: (gh, gw) token grid of the queries (row-major), needed for rel_pos / slopes.
        k_grid: the keys' grid; None: the same as ``q_grid`` (self-attention). A different one
            (keys pooled to a coarser grid, as in hierarchical encoders) is described here so that
            a backend can say whether it supports it; the built-in backends do not.
        slopes: (H,) BM-AM head slopes, or None for no distance bias.
        dist: ``manhattan``, ``euclidean`` or ``flat`` (the BM-AM distance).
        dense: an extra additive bias broadcastable to (B, H, Nq, Nk) (TinyViT's table).
    """

    rel_pos: Optional[Tuple[Tensor, Tensor]] = None
    q_grid: Optional[Tuple[int, int]] = None
    k_grid: Optional[Tuple[int, int]] = None
    slopes: Optional[Tensor] = None
    dist: str = "manhattan"
    dense: Optional[Tensor] = None

    def __post_init__(self) -> None:
        if self.q_grid is not None:
            object.__setattr__(self, "q_grid", tuple(int(x) for x in self.q_grid))
            object.__setattr__(self, "k_grid", self.q_grid if self.k_grid is None else tuple(int(x) for x in self.k_grid))

    @property
    def grid(self) -> Optional[Tuple[int, int]]:
        """The shared grid of a self-attention layer (None without grid terms)."""
        return self.q_grid

    @property
    def pooled(self) -> bool:
        """Queries and keys on different grids."""
        return self.q_grid is not None and self.k_grid != self.q_grid

    @property
    def has_grid_terms(self) -> bool:
        return self.rel_pos is not None or self.slopes is not None

    @property
    def empty(self) -> bool:
        return not self.has_grid_terms and self.dense is None

    def check(self, q: Tensor, k: Tensor) -> None:
        """ValueError if the grids do not cover the queries and keys."""
        if self.has_grid_terms:
            if self.q_grid is None:
                raise ValueError("relative positions or a distance bias need the token grid")
            nq, nk = self.q_grid[0] * self.q_grid[1], self.k_grid[0] * self.k_grid[1]
            if nq != q.shape[-2] or nk != k.shape[-2]:
                raise ValueError(f"grids {self.q_grid} / {self.k_grid} do not match {q.shape[-2]} queries / "
                                 f"{k.shape[-2]} keys")


NO_BIAS = AttentionBias()


def builtin_supports(q: Tensor, k: Tensor, v: Tensor, bias: AttentionBias) -> bool:
    """The reference and sdpa backends take every bias on one shared grid."""
    return not bias.pooled


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


def _attend_reference(q, k, v, scale: float, bias: AttentionBias = NO_BIAS, chunk_bytes: int = 0):
    """Explicit fp32 softmax over the full N x N logits. For checking, not for speed."""
    n = q.shape[-2]
    logits = scale * (q.float() @ k.float().transpose(-2, -1))
    bias = _bias_chunk(q, slice(0, n), bias.rel_pos, bias.grid, bias.slopes, bias.dist, bias.dense, k.shape[-2])
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


def _attend_sdpa(q, k, v, scale: float, bias: AttentionBias = NO_BIAS, chunk_bytes: int = 256 * 2**20):
    """SDPA with the bias built for one chunk of queries at a time (bounded memory)."""
    rel_pos, grid, slopes, dist, dense_bias = bias.rel_pos, bias.grid, bias.slopes, bias.dist, bias.dense
    has_bias = not bias.empty
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
        mask = _bias_chunk(q, rows, rel_pos, grid, slopes, dist, dense_bias, n_k, out=scratch).to(q.dtype)
        outs.append(F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=mask, scale=scale))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def _needs_grad(q, rel_pos, slopes, dense_bias) -> bool:
    """Whether autograd must see the bias (in-place writes into a scratch buffer would break it)."""
    if not torch.is_grad_enabled():
        return False
    ts = [q, slopes, dense_bias] + (list(rel_pos) if rel_pos is not None else [])
    return any(t is not None and t.requires_grad for t in ts)


# public names of the two built-in backends
attend_reference = _attend_reference
attend_sdpa = _attend_sdpa
needs_grad = _needs_grad
