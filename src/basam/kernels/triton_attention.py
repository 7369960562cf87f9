"""Fused BA-SAM attention in Triton: flash attention with the decomposed relative-position and
distance biases computed per key tile, so no N x N tensor ever exists (forward or backward).

Logits (``basam.attention``, ``docs/method.md``)::

    s_ij = scale * q_i.k_j + REL_H[i, row(j)] + REL_W[i, col(j)] - slope_h * dist(p_i, p_j)

* ``REL_H`` and ``REL_W`` (B, H, gh, gw, g_k), in q's dtype, come from a small differentiable torch
  pre-pass (:func:`_rel_tables`, two matrix products): ``REL_H[i, kr] = q_i . Rh[row(i), kr]`` (SAM's
  decomposed relative positions, unscaled q) and likewise by column. Their cost is O(N (gh + gw) d),
  negligible next to attention. The kernels return their gradients and autograd carries those to
  q, Rh and Rw.
* Manhattan distance is separable: with one key row per tile (the usual tiling), its row part is
  one value per query and tile and its column part joins the column term, which is built once per
  column chunk, so BA-SAM's default bias costs nothing per logit.
* Euclidean and flat distances (and Manhattan on tiles of several key rows) are computed in the kernel
  from the token indices; the slope gradient ``-sum dS * dist`` is reduced per program.

Key tiles follow the token grid: a tile is ``R`` grid rows x ``CB`` grid columns (``CB`` = the
column block, ``R * CB`` = BLOCK_N keys), so that for a query block the column term of a tile
(BLOCK_M x CB values of REL_W) is loaded once per column chunk and reused for every row of keys, the
row term is one value per query and grid row, and the backward's bias gradients reduce without
one-hot products: ``dREL_W`` is summed over the row tiles in registers, ``dREL_H`` is a row sum.

Kernels: forward (online softmax, stores O and the log-sum-exp in base 2), backward ``dq`` (one
program per query block: dq, dREL_H, dREL_W, slope partials) and backward ``dk/dv`` (one program per
key tile), as in FlashAttention-2. Accumulation is fp32 for fp32/bf16/fp16 inputs; head dims up to
128 (padded to a power of two >= 16 with masking: 80 -> 128), value head dim may differ.

Training with 16-bit inputs: the forward writes O in fp32 and the backward's ``delta = rowsum(dO * O)``
uses it (see :class:`_FusedAttention`), so the gradients of the slopes and relative-position
tables match the fp32 reference to the inputs' rounding (about 1e-2 in bf16, against a few 1e-2
with the rounded O that FlashAttention uses). Inference writes O in the input dtype.

Block sizes: autotuned on the GPU (small config lists keyed on (N, grid, head dim)); fixed with
``BASAM_TRITON_BLOCK_M`` / ``BASAM_TRITON_BLOCK_N`` (or the ``blocks`` argument of
:func:`fused_attention`); 16 x 16 under Triton's interpreter. ``BASAM_TRITON_AUTOTUNE=0`` uses the
first config of each list without benchmarking.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
from torch import Tensor

import triton
import triton.language as tl

from .. import attention_backends as _backends  # the computation only: no dispatcher, no circle

__all__ = ["triton_attend", "fused_attention", "supports", "register"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_MAX_HEAD_DIM = 128
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# dist modes computed in the kernel
_NO_DIST, _MANHATTAN, _EUCLIDEAN, _FLAT = 0, 1, 2, 3
_DIST_CODES = {"manhattan": _MANHATTAN, "euclidean": _EUCLIDEAN, "flat": _FLAT}


# ----------------------------------------------------------------------------------------------
# Triton kernels

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: Triton's interpreter multiplies bf16 operands as raw integers; compute in fp32 there.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _distance(dr, dc, di, DIST: tl.constexpr):
    """Token distance from broadcast index differences (row, column, flat), as fp32."""
    if DIST == 1:
        d = (tl.abs(dr) + tl.abs(dc)).to(tl.float32)
    elif DIST == 2:
        fr = dr.to(tl.float32)
        fc = dc.to(tl.float32)
        d = tl.sqrt(fr * fr + fc * fc)
    else:
        d = tl.abs(di).to(tl.float32)
    return d


@triton.jit
def _fwd_kernel(
    Q, K, V, O, LSE, RELH, RELW, SLOPES,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    so_b, so_h, so_n, so_d,
    srh_b, srh_h, srh_r, srh_c, srh_k,
    srw_b, srw_h, srw_r, srw_c, srw_k,
    H, NQ, GH, GW, D, DV, scale,
    HAS_REL: tl.constexpr, DIST: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CB: tl.constexpr, R: tl.constexpr,
    EVEN_N: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < NQ
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_valid = offs_d < D
    dv_valid = offs_dv < DV

    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    q_row = offs_m // GW
    q_col = offs_m % GW
    if HAS_REL:
        # per-query base pointers into the (B, H, gh, gw, g_k) tables (any strides)
        relh_q = RELH + b * srh_b + h * srh_h + q_row * srh_r + q_col * srh_c
        relw_q = RELW + b * srw_b + h * srw_h + q_row * srw_r + q_col * srw_c
    if DIST != 0:
        slope = tl.load(SLOPES + h).to(tl.float32)
    # Manhattan with one key row per tile is separable: its row part is one value per query and
    # tile, its column part joins the loop-invariant column term. Nothing per element.
    SEPARABLE: tl.constexpr = DIST == 1 and R == 1
    COL_TERM: tl.constexpr = HAS_REL or SEPARABLE
    qk_scale = scale * LOG2E  # logits in base-2 units throughout: exp2, no per-element rescale

    offs_j = tl.arange(0, CB * R)
    j_row = offs_j // CB
    j_col = offs_j % CB

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)

    for c0 in range(0, GW, CB):
        kc = c0 + j_col
        c_valid = kc < GW
        if COL_TERM:
            # the column term of every tile of this column chunk: built once, reused for all rows
            col_term = tl.zeros([BLOCK_M, CB * R], dtype=tl.float32)
            if HAS_REL:
                col_term += tl.load(relw_q[:, None] + kc[None, :] * srw_k,
                                    mask=m_valid[:, None] & c_valid[None, :], other=0.0).to(tl.float32)
            if SEPARABLE:
                col_term -= slope * tl.abs(q_col[:, None] - kc[None, :]).to(tl.float32)
            col_term = col_term * LOG2E
        for kr0 in range(0, GH, R):
            kr = kr0 + j_row
            n = kr * GW + kc
            if EVEN_N:
                k = tl.load(K + n[:, None] * sk_n + offs_d[None, :] * sk_d, mask=d_valid[None, :], other=0.0)
                v = tl.load(V + n[:, None] * sv_n + offs_dv[None, :] * sv_d, mask=dv_valid[None, :], other=0.0)
            else:
                k_valid = c_valid & (kr < GH)
                k = tl.load(K + n[:, None] * sk_n + offs_d[None, :] * sk_d,
                            mask=k_valid[:, None] & d_valid[None, :], other=0.0)
                v = tl.load(V + n[:, None] * sv_n + offs_dv[None, :] * sv_d,
                            mask=k_valid[:, None] & dv_valid[None, :], other=0.0)
            s = _dot(q, tl.trans(k), PREC, UPCAST) * qk_scale
            if COL_TERM:
                s += col_term
            if R == 1:
                if COL_TERM:
                    row_term = tl.zeros([BLOCK_M], dtype=tl.float32)
                    if HAS_REL:
                        row_term += tl.load(relh_q + kr0 * srh_k, mask=m_valid, other=0.0).to(tl.float32)
                    if SEPARABLE:
                        row_term -= slope * tl.abs(q_row - kr0).to(tl.float32)
                    s += (row_term * LOG2E)[:, None]
            else:
                if HAS_REL:
                    s += tl.load(relh_q[:, None] + kr[None, :] * srh_k,
                                 mask=m_valid[:, None] & (kr < GH)[None, :], other=0.0).to(tl.float32) * LOG2E
            if DIST != 0 and not SEPARABLE:
                dist = _distance(q_row[:, None] - kr[None, :], q_col[:, None] - kc[None, :],
                                 offs_m[:, None] - n[None, :], DIST)
                s -= (slope * LOG2E) * dist
            if not EVEN_N:
                s = tl.where((c_valid & (kr < GH))[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC, UPCAST)
            m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_n + offs_dv[None, :] * so_d,
             acc.to(O.dtype.element_ty), mask=m_valid[:, None] & dv_valid[None, :])
    tl.store(LSE + bh.to(tl.int64) * NQ + offs_m, m_i + tl.log2(l_i), mask=m_valid)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, DQ, LSE, DELTA, RELH, RELW, SLOPES, DRELH, DRELW, DSLOPE,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_n, sdo_d,
    sdq_b, sdq_h, sdq_n, sdq_d,
    srh_b, srh_h, srh_r, srh_c, srh_k,
    srw_b, srw_h, srw_r, srw_c, srw_k,
    H, NQ, GH, GW, D, DV, scale, N_MBLOCKS,
    HAS_REL: tl.constexpr, DIST: tl.constexpr, DREL: tl.constexpr, DSL: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CB: tl.constexpr, R: tl.constexpr,
    ROW_ATOMIC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_valid = offs_m < NQ
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_valid = offs_d < D
    dv_valid = offs_dv < DV

    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                mask=m_valid[:, None] & d_valid[None, :], other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_n + offs_dv[None, :] * sdo_d,
                 mask=m_valid[:, None] & dv_valid[None, :], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * NQ + offs_m, mask=m_valid, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * NQ + offs_m, mask=m_valid, other=0.0)
    K += b * sk_b + h * sk_h
    V += b * sv_b + h * sv_h
    # gradient tables are contiguous (B, H, NQ, GH) / (B, H, NQ, GW) fp32
    DRELH += bh.to(tl.int64) * NQ * GH
    DRELW += bh.to(tl.int64) * NQ * GW
    q_row = offs_m // GW
    q_col = offs_m % GW
    if HAS_REL:
        relh_q = RELH + b * srh_b + h * srh_h + q_row * srh_r + q_col * srh_c
        relw_q = RELW + b * srw_b + h * srw_h + q_row * srw_r + q_col * srw_c
    if DIST != 0:
        slope = tl.load(SLOPES + h).to(tl.float32)

    offs_j = tl.arange(0, CB * R)
    j_row = offs_j // CB
    j_col = offs_j % CB

    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    dsl = tl.zeros([BLOCK_M], dtype=tl.float32)

    for c0 in range(0, GW, CB):
        kc = c0 + j_col
        c_valid = kc < GW
        if HAS_REL:
            col_bias = tl.load(relw_q[:, None] + kc[None, :] * srw_k,
                               mask=m_valid[:, None] & c_valid[None, :], other=0.0).to(tl.float32)
        if DREL:
            dcol = tl.zeros([BLOCK_M, CB * R], dtype=tl.float32)
        for kr0 in range(0, GH, R):
            kr = kr0 + j_row
            k_valid = c_valid & (kr < GH)
            n = kr * GW + kc
            k = tl.load(K + n[:, None] * sk_n + offs_d[None, :] * sk_d,
                        mask=k_valid[:, None] & d_valid[None, :], other=0.0)
            v = tl.load(V + n[:, None] * sv_n + offs_dv[None, :] * sv_d,
                        mask=k_valid[:, None] & dv_valid[None, :], other=0.0)
            s = _dot(q, tl.trans(k), PREC, UPCAST) * scale
            if HAS_REL:
                if R == 1:
                    row_bias = tl.load(relh_q + kr0 * srh_k, mask=m_valid, other=0.0).to(tl.float32)
                    s += row_bias[:, None] + col_bias
                else:
                    row_bias = tl.load(relh_q[:, None] + kr[None, :] * srh_k,
                                       mask=m_valid[:, None] & k_valid[None, :], other=0.0).to(tl.float32)
                    s += row_bias + col_bias
            if DIST != 0:
                dist = _distance(q_row[:, None] - kr[None, :], q_col[:, None] - kc[None, :],
                                 offs_m[:, None] - n[None, :], DIST)
                s -= slope * dist
            p = tl.exp2(s * LOG2E - lse[:, None])
            p = tl.where(m_valid[:, None] & k_valid[None, :], p, 0.0)
            dp = _dot(do, tl.trans(v), PREC, UPCAST)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, PREC, UPCAST)
            if DIST != 0:
                if DSL:
                    dsl += tl.sum(ds * dist, 1)
            if DREL:
                dcol += ds
                if R == 1:
                    drow = tl.sum(ds, 1)
                    if ROW_ATOMIC:
                        tl.atomic_add(DRELH + offs_m * GH + kr0, drow, mask=m_valid, sem="relaxed")
                    else:
                        tl.store(DRELH + offs_m * GH + kr0, drow, mask=m_valid)
                else:
                    # R > 1 only when one column chunk covers the grid: each row is written once
                    drow = tl.sum(tl.reshape(ds, (BLOCK_M, R, CB)), 2)
                    r_idx = kr0 + tl.arange(0, R)
                    tl.store(DRELH + offs_m[:, None] * GH + r_idx[None, :], drow,
                             mask=m_valid[:, None] & (r_idx < GH)[None, :])
        if DREL:
            if R == 1:
                tl.store(DRELW + offs_m[:, None] * GW + kc[None, :], dcol,
                         mask=m_valid[:, None] & c_valid[None, :])
            else:
                dcol_c = tl.sum(tl.reshape(dcol, (BLOCK_M, R, CB)), 1)
                c_idx = c0 + tl.arange(0, CB)
                tl.store(DRELW + offs_m[:, None] * GW + c_idx[None, :], dcol_c,
                         mask=m_valid[:, None] & (c_idx < GW)[None, :])

    dq = dq * scale
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_n + offs_d[None, :] * sdq_d,
             dq.to(DQ.dtype.element_ty), mask=m_valid[:, None] & d_valid[None, :])
    if DIST != 0:
        if DSL:
            # d slope = sum dS * (-dist); one partial per program
            tl.store(DSLOPE + bh.to(tl.int64) * N_MBLOCKS + pid_m, -tl.sum(dsl, 0))


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV_, LSE, DELTA, RELH, RELW, SLOPES,
    sq_b, sq_h, sq_n, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    sdo_b, sdo_h, sdo_n, sdo_d,
    sdk_b, sdk_h, sdk_n, sdk_d,
    sdv_b, sdv_h, sdv_n, sdv_d,
    srh_b, srh_h, srh_r, srh_c, srh_k,
    srw_b, srw_h, srw_r, srw_c, srw_k,
    H, NQ, GH, GW, D, DV, scale,
    HAS_REL: tl.constexpr, DIST: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CB: tl.constexpr, R: tl.constexpr,
    PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    n_ctiles = tl.cdiv(GW, CB)
    c0 = (pid % n_ctiles) * CB
    kr0 = (pid // n_ctiles) * R

    offs_j = tl.arange(0, CB * R)
    kr = kr0 + offs_j // CB
    kc = c0 + offs_j % CB
    k_valid = (kr < GH) & (kc < GW)
    n = kr * GW + kc
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    d_valid = offs_d < D
    dv_valid = offs_dv < DV

    k = tl.load(K + b * sk_b + h * sk_h + n[:, None] * sk_n + offs_d[None, :] * sk_d,
                mask=k_valid[:, None] & d_valid[None, :], other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + n[:, None] * sv_n + offs_dv[None, :] * sv_d,
                mask=k_valid[:, None] & dv_valid[None, :], other=0.0)
    Q += b * sq_b + h * sq_h
    DO += b * sdo_b + h * sdo_h
    LSE += bh.to(tl.int64) * NQ
    DELTA += bh.to(tl.int64) * NQ
    RELH += b * srh_b + h * srh_h
    RELW += b * srw_b + h * srw_h
    if DIST != 0:
        slope = tl.load(SLOPES + h).to(tl.float32)

    dk = tl.zeros([CB * R, D_PAD], dtype=tl.float32)
    dv = tl.zeros([CB * R, DV_PAD], dtype=tl.float32)
    for start_m in range(0, NQ, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < NQ
        q = tl.load(Q + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
                    mask=m_valid[:, None] & d_valid[None, :], other=0.0)
        do = tl.load(DO + offs_m[:, None] * sdo_n + offs_dv[None, :] * sdo_d,
                     mask=m_valid[:, None] & dv_valid[None, :], other=0.0)
        lse = tl.load(LSE + offs_m, mask=m_valid, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=m_valid, other=0.0)
        # transposed tile: keys x queries
        st = _dot(k, tl.trans(q), PREC, UPCAST) * scale
        q_row = offs_m // GW
        q_col = offs_m % GW
        if HAS_REL:
            both = k_valid[:, None] & m_valid[None, :]
            relh_q = RELH + q_row * srh_r + q_col * srh_c
            relw_q = RELW + q_row * srw_r + q_col * srw_c
            if R == 1:
                row_bias = tl.load(relh_q + kr0 * srh_k, mask=m_valid, other=0.0).to(tl.float32)
                st += row_bias[None, :]
            else:
                st += tl.load(relh_q[None, :] + kr[:, None] * srh_k, mask=both, other=0.0).to(tl.float32)
            st += tl.load(relw_q[None, :] + kc[:, None] * srw_k, mask=both, other=0.0).to(tl.float32)
        if DIST != 0:
            dist = _distance(kr[:, None] - q_row[None, :], kc[:, None] - q_col[None, :],
                             n[:, None] - offs_m[None, :], DIST)
            st -= slope * dist
        pt = tl.exp2(st * LOG2E - lse[None, :])
        pt = tl.where(k_valid[:, None] & m_valid[None, :], pt, 0.0)
        dv += _dot(pt.to(do.dtype), do, PREC, UPCAST)
        dpt = _dot(v, tl.trans(do), PREC, UPCAST)
        dst = pt * (dpt - delta[None, :])
        dk += _dot(dst.to(q.dtype), q, PREC, UPCAST)

    dk = dk * scale
    tl.store(DK + b * sdk_b + h * sdk_h + n[:, None] * sdk_n + offs_d[None, :] * sdk_d,
             dk.to(DK.dtype.element_ty), mask=k_valid[:, None] & d_valid[None, :])
    tl.store(DV_ + b * sdv_b + h * sdv_h + n[:, None] * sdv_n + offs_dv[None, :] * sdv_d,
             dv.to(DV_.dtype.element_ty), mask=k_valid[:, None] & dv_valid[None, :])


# ----------------------------------------------------------------------------------------------
# Tiling, block sizes, autotuning


def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _tile(block_n: int, gh: int, gw: int) -> Tuple[int, int]:
    """Key tile (CB grid columns, R grid rows) for a nominal BLOCK_N; R * CB >= 16 (tl.dot's minimum)."""
    cb = min(block_n, _pow2(gw))
    r = max(1, block_n // cb)
    r = min(r, max(_pow2(gh), 16 // cb if cb < 16 else 1))
    return cb, r


def _heuristics(args) -> dict:
    cb, r = _tile(args["BLOCK_N"], args["GH"], args["GW"])
    return {"CB": cb, "R": r}


def _even_n(args) -> bool:
    """Every key tile is full: no key masks (the common case: SAM grids are multiples of 16)."""
    cb, r = _tile(args["BLOCK_N"], args["GH"], args["GW"])
    return args["GW"] % cb == 0 and args["GH"] % r == 0


_HEUR = {"CB": lambda a: _heuristics(a)["CB"], "R": lambda a: _heuristics(a)["R"]}
_HEUR_FWD = dict(_HEUR, EVEN_N=_even_n)
_HEUR_DQ = dict(_HEUR, ROW_ATOMIC=lambda a: triton.cdiv(a["GW"], _heuristics(a)["CB"]) > 1)

# H100-oriented candidates (BLOCK_M, BLOCK_N, num_warps, num_stages); the first is the default.
_FWD_CONFIGS = [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (128, 128, 8, 3),
                (64, 128, 4, 3), (128, 32, 4, 3)]
_DQ_CONFIGS = [(128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 4, 2)]
_DKDV_CONFIGS = [(32, 128, 4, 3), (64, 64, 4, 2), (64, 128, 8, 2)]
_KEY = ["NQ", "GH", "GW", "D_PAD", "DV_PAD", "HAS_REL", "DIST"]


def _configs(spec):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in spec]


def _autotune_enabled() -> bool:
    return os.environ.get("BASAM_TRITON_AUTOTUNE", "1") != "0"


_fwd_fixed = triton.heuristics(_HEUR_FWD)(_fwd_kernel)
_dq_fixed = triton.heuristics(_HEUR_DQ)(_bwd_dq_kernel)
_dkdv_fixed = triton.heuristics(_HEUR)(_bwd_dkdv_kernel)


def _smallest(configs):
    return min(configs, key=lambda c: (c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"], c.num_stages))


def _prune(configs, nargs, **kwargs):
    # exact fp32 ("ieee") dots run on CUDA cores, need the most shared memory and compile slowly:
    # no tuning, the smallest config (fits any GPU's shared memory)
    return [_smallest(configs)] if kwargs.get("PREC") == "ieee" else configs


if not _INTERPRET:
    _PRUNE = {"early_config_prune": _prune}
    _fwd_tuned = triton.autotune(_configs(_FWD_CONFIGS), key=_KEY, prune_configs_by=_PRUNE)(_fwd_fixed)
    _dq_tuned = triton.autotune(_configs(_DQ_CONFIGS), key=_KEY + ["DREL", "DSL"], prune_configs_by=_PRUNE,
                                reset_to_zero=["DRELH", "DSLOPE"])(_dq_fixed)
    _dkdv_tuned = triton.autotune(_configs(_DKDV_CONFIGS), key=_KEY, prune_configs_by=_PRUNE)(_dkdv_fixed)


def _env_blocks() -> Optional[Tuple[int, int]]:
    bm, bn = os.environ.get("BASAM_TRITON_BLOCK_M"), os.environ.get("BASAM_TRITON_BLOCK_N")
    if bm is None and bn is None:
        return (16, 16) if _INTERPRET else None
    return int(bm or 64), int(bn or 64)


def _launch(kind: str, args: tuple, consts: dict, grid_fn, blocks: Optional[Tuple[int, int]], fallback):
    """Run a kernel with fixed blocks (explicit, env, interpreter) or through the autotuner."""
    fixed = {"fwd": _fwd_fixed, "dq": _dq_fixed, "dkdv": _dkdv_fixed}[kind]
    if blocks is None:
        blocks = _env_blocks()
    if blocks is None and _autotune_enabled():
        tuned = {"fwd": _fwd_tuned, "dq": _dq_tuned, "dkdv": _dkdv_tuned}[kind]
        tuned[grid_fn](*args, **consts)
        return
    if blocks is None:  # autotuning off: the first config (the smallest for exact fp32)
        if consts.get("PREC") == "ieee":
            fallback = min(fallback, key=lambda c: (c[0] * c[1], c[3]))
        else:
            fallback = fallback[0]
        bm, bn, warps, stages = fallback
    else:
        bm, bn = blocks
        if bm < 16 or bn < 16 or bm & (bm - 1) or bn & (bn - 1):
            raise ValueError(f"block sizes must be powers of two >= 16, got {blocks}")
        warps, stages = (4, 2) if bm * bn <= 64 * 64 else (8, 2)
    fixed[grid_fn](*args, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **consts)


# ----------------------------------------------------------------------------------------------
# Host side


def _dot_precision(dtype: torch.dtype) -> str:
    if dtype != torch.float32:
        return "tf32"  # ignored for 16-bit operands
    try:
        allow = torch.get_float32_matmul_precision() != "highest"
    except Exception:  # pragma: no cover
        allow = bool(torch.backends.cuda.matmul.allow_tf32)
    return "tf32" if allow else "ieee"


def _strides(t: Optional[Tensor], n: int = 5):
    return tuple(t.stride()) if t is not None else (0,) * n


def _forward(q, k, v, rel_h, rel_w, slopes, scale, gh, gw, dist_code, blocks, out_dtype=None):
    B, H, NQ, D = q.shape
    DV = v.shape[-1]
    # O is written in (B, N, H, dv) memory order: the caller's merge of the heads, out.permute(0, 2,
    # 1, 3).reshape(B, N, H * dv), is then a view instead of a copy of the whole output.
    o = torch.empty((B, NQ, H, DV), device=q.device, dtype=out_dtype or v.dtype).permute(0, 2, 1, 3)
    lse = torch.empty((B, H, NQ), device=q.device, dtype=torch.float32)
    has_rel = rel_h is not None
    dummy = lse
    args = (
        q, k, v, o, lse,
        rel_h if has_rel else dummy, rel_w if has_rel else dummy, slopes if slopes is not None else dummy,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        *_strides(rel_h), *_strides(rel_w),
        H, NQ, gh, gw, D, DV, float(scale),
    )
    consts = dict(
        HAS_REL=has_rel, DIST=dist_code, D_PAD=max(16, _pow2(D)), DV_PAD=max(16, _pow2(DV)),
        PREC=_dot_precision(q.dtype), UPCAST=_INTERPRET and q.dtype == torch.bfloat16,
    )
    grid = lambda meta: (triton.cdiv(NQ, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch("fwd", args, consts, grid, blocks, _FWD_CONFIGS)
    return o, lse


def _backward(do, q, k, v, o, lse, rel_h, rel_w, slopes, scale, gh, gw, dist_code, blocks, need_rel, need_slope):
    B, H, NQ, D = q.shape
    DV = v.shape[-1]
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, NQ)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    has_rel = rel_h is not None
    need_rel = bool(need_rel and has_rel)
    need_slope = bool(need_slope and dist_code != _NO_DIST)
    f32 = dict(device=q.device, dtype=torch.float32)
    # unused outputs get their own scratch (the autotuner zeroes DRELH / DSLOPE between runs)
    drel_h = torch.zeros((B, H, NQ, gh) if need_rel else (1,), **f32)
    drel_w = torch.empty((B, H, NQ, gw) if need_rel else (1,), **f32)
    n_mblocks = triton.cdiv(NQ, 16)  # enough partial slots for any BLOCK_M >= 16
    dslope = torch.zeros((B, H, n_mblocks) if need_slope else (1,), **f32)
    dummy = lse
    common = dict(
        HAS_REL=has_rel, DIST=dist_code, D_PAD=max(16, _pow2(D)), DV_PAD=max(16, _pow2(DV)),
        PREC=_dot_precision(q.dtype), UPCAST=_INTERPRET and q.dtype == torch.bfloat16,
    )
    rel_ptrs = (rel_h if has_rel else dummy, rel_w if has_rel else dummy, slopes if slopes is not None else dummy)

    args = (
        q, k, v, do, dq, lse, delta, *rel_ptrs, drel_h, drel_w, dslope,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        *_strides(rel_h), *_strides(rel_w),
        H, NQ, gh, gw, D, DV, float(scale), n_mblocks,
    )
    grid = lambda meta: (triton.cdiv(NQ, meta["BLOCK_M"]), B * H)  # noqa: E731
    _launch("dq", args, dict(common, DREL=need_rel, DSL=need_slope), grid, blocks, _DQ_CONFIGS)

    args = (
        q, k, v, do, dk, dv, lse, delta, *rel_ptrs,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        *_strides(rel_h), *_strides(rel_w),
        H, NQ, gh, gw, D, DV, float(scale),
    )

    def grid_kv(meta):
        return (triton.cdiv(gh, meta["R"]) * triton.cdiv(gw, meta["CB"]), B * H)

    _launch("dkdv", args, common, grid_kv, blocks, _DKDV_CONFIGS)
    # (B, H, NQ, g) contiguous is (B, H, gh, gw, g) contiguous: the tables' logical shape
    d_rel_h = drel_h.view(B, H, gh, gw, gh).to(rel_h.dtype) if need_rel else None
    d_rel_w = drel_w.view(B, H, gh, gw, gw).to(rel_w.dtype) if need_rel else None
    d_slopes = dslope.sum(dim=(0, 2)) if need_slope else None
    return dq, dk, dv, d_rel_h, d_rel_w, d_slopes


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, slopes, scale, gh, gw, dist_code, blocks):
        # For training with 16-bit inputs the kernel writes O in fp32: the backward's
        # delta = rowsum(dO * O) then uses the exact O. With the rounded O (FlashAttention's usual
        # choice) the gradients of the reduced parameters (slopes, relative-position tables), sums
        # of many cancelling terms, are off by a few percent in bf16; with the fp32 O they match the
        # fp32 reference to the rounding of the inputs. Costs one fp32 copy of O per layer.
        exact = any(ctx.needs_input_grad) and v.dtype != torch.float32
        o, lse = _forward(q, k, v, rel_h, rel_w, slopes, scale, gh, gw, dist_code, blocks,
                          out_dtype=torch.float32 if exact else None)
        ctx.save_for_backward(q, k, v, o, lse, rel_h, rel_w, slopes)
        ctx.cfg = (scale, gh, gw, dist_code, blocks)
        return o.to(v.dtype) if exact else o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, rel_h, rel_w, slopes = ctx.saved_tensors
        scale, gh, gw, dist_code, blocks = ctx.cfg
        need = ctx.needs_input_grad
        do = do.to(v.dtype)
        dq, dk, dv, drh, drw, dsl = _backward(
            do, q, k, v, o, lse, rel_h, rel_w, slopes, scale, gh, gw, dist_code, blocks,
            need_rel=need[3] or need[4], need_slope=need[5],
        )
        if dsl is not None and slopes is not None:
            dsl = dsl.to(slopes.dtype)
        return dq, dk, dv, drh, drw, dsl, None, None, None, None, None


def _rel_tables(q: Tensor, rel_pos, grid, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """SAM's decomposed relative-position terms per query, by two differentiable matrix products.

    ``REL_H[b, h, r, c, k] = q[b, h, (r, c)] . Rh[r, k]`` and ``REL_W[b, h, r, c, k] = q[b, h, (r, c)] .
    Rw[c, k]``, both (B, H, gh, gw, g_k) in ``dtype`` (default q's: for inference, 16-bit tables as
    the official code computes them under autocast; training asks for fp32, see
    :func:`fused_attention`). The memory layouts are chosen for the kernel's loads, not contiguous:
    REL_H keeps the queries of a grid row innermost (one key row's term for a block of queries is one
    contiguous load per tile), REL_W keeps the key columns innermost (the column term is a
    (queries x key columns) tile loaded once per column chunk). No copy beyond the two permuted
    views of q the products need.
    """
    B, H, N, d = q.shape
    gh, gw = grid
    rh, rw = rel_pos
    dtype = dtype or q.dtype
    # One copy of q, grid row outermost: (gh, B, H, gw, d). Both products read it as strided views.
    q_rc = q.to(dtype).reshape(B, H, gh, gw, d).permute(2, 0, 1, 3, 4).contiguous()
    # REL_H: per grid row r, Rh[r] (gh_k, d) @ q[r]^T (d, B*H*gw) -> memory (r, k, b, h, c)
    rel_h = torch.matmul(rh.to(dtype), q_rc.view(gh, B * H * gw, d).transpose(1, 2))
    rel_h = rel_h.view(gh, gh, B, H, gw).permute(2, 3, 0, 4, 1)
    # REL_W: per grid column c, q[:, c] (gh*B*H, d) @ Rw[c]^T (d, gw_k) -> memory (c, r, b, h, k)
    q_c = q_rc.permute(3, 0, 1, 2, 4).reshape(gw, gh * B * H, d)  # a view: (r, b, h) share one stride
    rel_w = torch.matmul(q_c, rw.to(dtype).transpose(1, 2))
    rel_w = rel_w.view(gw, gh, B, H, gw).permute(2, 3, 1, 0, 4)
    return rel_h, rel_w


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float,
    rel_pos: Optional[Tuple[Tensor, Tensor]] = None,
    grid: Optional[Tuple[int, int]] = None,
    slopes: Optional[Tensor] = None,
    dist: str = "manhattan",
    blocks: Optional[Tuple[int, int]] = None,
) -> Tensor:
    """The fused kernel proper (no fallback): see the module docstring. ``blocks`` = (BLOCK_M,
    BLOCK_N) fixes the block sizes (powers of two >= 16) instead of autotuning."""
    B, H, NQ, D = q.shape
    NK = k.shape[-2]
    has_bias = rel_pos is not None or slopes is not None
    if has_bias:
        if grid is None:
            raise ValueError("a grid is needed for relative positions or distance bias")
        gh, gw = int(grid[0]), int(grid[1])
        if gh * gw != NQ or NQ != NK:
            raise ValueError(f"grid {grid} does not match {NQ} queries / {NK} keys")
    else:
        gh, gw = 1, NK  # plain attention: the keys as one grid row
    if slopes is not None and slopes.numel() != H:
        raise ValueError(f"slopes has {slopes.numel()} entries for {H} heads")
    rel_h = rel_w = None
    dist_code = _NO_DIST
    if slopes is not None:
        dist_code = _DIST_CODES[dist]
    if rel_pos is not None:
        # Training keeps the tables in fp32: their gradients (to the relative-position weights and,
        # through the softmax, to the slopes) are sums of many cancelling terms, and 16-bit tables
        # put them off by a few percent. Inference uses the input dtype (half the table traffic).
        # (slopes count too: with a frozen encoder the first layer's q needs no grad, its slopes do)
        training = _backends.needs_grad(q, rel_pos, slopes, None)
        rel_h, rel_w = _rel_tables(q, rel_pos, (gh, gw), torch.float32 if training else None)
    kernel_slopes = slopes.float().reshape(H).contiguous() if dist_code != _NO_DIST else None
    with torch.cuda.device(q.device) if q.is_cuda else _nullcontext():
        return _FusedAttention.apply(q, k, v, rel_h, rel_w, kernel_slopes, float(scale), gh, gw, dist_code, blocks)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# ----------------------------------------------------------------------------------------------
# Backend registration


def _device_ok(q: Tensor) -> bool:
    """Whether the kernel can run on ``q``'s device, dtype and head dim."""
    if q.dim() != 4 or q.dtype not in _DTYPES or not 1 <= q.shape[-1] <= _MAX_HEAD_DIM:
        return False
    if q.is_cuda:
        return True
    return (
        q.device.type == "cpu"
        and _INTERPRET
        and os.environ.get("TRITON_INTERPRET") == "1"
        and os.environ.get("BASAM_TRITON_ON_CPU") == "1"
    )


def _rel_shapes_ok(rel_pos, grid, d: int) -> bool:
    rh, rw = rel_pos
    gh, gw = grid
    return tuple(rh.shape) == (gh, gh, d) and tuple(rw.shape) == (gw, gw, d)


def supports(q: Tensor, k: Tensor, v: Tensor, bias: _backends.AttentionBias) -> bool:
    """Whether the kernel takes this call. It does not take a dense bias (TinyViT's table), keys on
    another grid than the queries, mismatched dtypes/devices or head dims above 128: the dispatcher
    (:func:`basam.attention.attend`) sends those to the sdpa backend."""
    return (
        bias.dense is None
        and not bias.pooled
        and _device_ok(q)
        and k.dim() == 4 and v.dim() == 4
        and k.dtype == q.dtype and v.dtype == q.dtype
        and k.device == q.device and v.device == q.device
        and k.shape[:2] == q.shape[:2] and v.shape[:2] == q.shape[:2]
        and k.shape[-1] == q.shape[-1] and v.shape[-2] == k.shape[-2]
        and 1 <= v.shape[-1] <= _MAX_HEAD_DIM
        and q.shape[-2] > 0 and k.shape[-2] > 0
        and 0 < q.shape[0] * q.shape[1] <= 65535  # grid axis 1
        and (not bias.has_grid_terms or bias.grid is not None)
        and (bias.rel_pos is None or _rel_shapes_ok(bias.rel_pos, bias.grid, q.shape[-1]))
    )


def triton_attend(q, k, v, scale: float, bias: _backends.AttentionBias = _backends.NO_BIAS, chunk_bytes: int = 0):
    """``basam.attention`` backend: the fused kernel (call it where :func:`supports` accepts)."""
    return fused_attention(q, k, v, scale, bias.rel_pos, bias.grid, bias.slopes, bias.dist)


BACKEND = ("triton", triton_attend, supports)
"""What :mod:`basam.attention` registers: ``backend="triton"``, preferred by ``auto`` where
:func:`supports` accepts the inputs."""
