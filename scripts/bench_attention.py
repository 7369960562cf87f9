"""Attention-kernel benchmark (GPU): the fused BA-SAM Triton kernel against flash SDPA without a bias.

For each shape (heads x head dim on a g x g token grid) and each bias variant, times the forward and
forward+backward of :func:`basam.kernels.triton_attention.fused_attention` (the torch pre-pass that
builds the per-row/per-column tables included) with ``triton.testing.do_bench`` (median), and the
kernel alone (tables prebuilt). Reference points: ``F.scaled_dot_product_attention`` (flash, no bias)
and, where it fits, SDPA with the materialised BA-SAM bias. Also checks each result against the
chunked SDPA backend (relative error) so a fast wrong kernel cannot pass unnoticed.

    python scripts/bench_attention.py --json attention.json            # the default shapes
    python scripts/bench_attention.py --grids 128 --heads 12 --dims 64  # the issue's 16k-token case

Prints a table; TFLOP/s counts 4 * N^2 * d * heads per forward (the two matrix products).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {
    # name: (relative positions, distance or None)
    "plain": (False, None),
    "rel": (True, None),              # vanilla SAM: decomposed relative positions only
    "rel+manhattan": (True, "manhattan"),  # basam default (separable: per-row and per-chunk terms)
    "rel+euclidean": (True, "euclidean"),
    "rel+flat": (True, "flat"),
}


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", nargs="+", type=int, default=[64, 128, 256])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--dims", nargs="+", type=int, default=[64])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--backward", nargs="*", type=int, default=None,
                    help="grids at which to also time the backward (default: all but the largest)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import triton
    from triton.testing import do_bench

    from basam import attention as A
    from basam.kernels import triton_attention as T

    dev = "cuda"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    print(f"gpu {torch.cuda.get_device_name(0)}  torch {torch.__version__}  triton {triton.__version__}", flush=True)
    rows = []
    bwd_grids = args.backward if args.backward is not None else [g for g in args.grids if g < max(args.grids)] or args.grids
    for d in args.dims:
        for g in args.grids:
            H, n = args.heads, g * g
            flops = 4.0 * n * n * d * H
            gen = torch.Generator(device=dev).manual_seed(g * 1000 + d)
            q, k, v = (torch.randn(1, H, n, d, device=dev, generator=gen, dtype=dtype) for _ in range(3))
            rh = 0.1 * torch.randn(g, g, d, device=dev, generator=gen)
            rw = 0.1 * torch.randn(g, g, d, device=dev, generator=gen)
            slopes = A.alibi_slopes(H, 1.0).to(dev)
            scale = d**-0.5
            t = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), warmup=50, rep=200, return_mode="median")
            rows.append(dict(grid=g, d=d, heads=H, variant="sdpa flash (no bias)", fwd_ms=t, tflops=flops / t / 1e9))
            print(rows[-1], flush=True)
            if n <= 4096:
                bias = A._bias_chunk(q, slice(0, n), (rh, rw), (g, g), slopes, "euclidean", None, n).to(dtype)
                t = do_bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), warmup=20, rep=100,
                             return_mode="median")
                rows.append(dict(grid=g, d=d, heads=H, variant="sdpa + materialised bias", fwd_ms=t, tflops=flops / t / 1e9))
                print(rows[-1], flush=True)
                del bias
            for name in args.variants:
                has_rel, dist = VARIANTS[name]
                rel = (rh, rw) if has_rel else None
                sl = slopes if dist else None
                dname = dist or "manhattan"
                row = dict(grid=g, d=d, heads=H, variant="triton " + name)
                try:
                    out = T.fused_attention(q, k, v, scale, rel, (g, g), sl, dname)
                    if n <= 16384:
                        ref = A.attend_sdpa(q.float(), k.float(), v.float(), scale, A.AttentionBias(rel, (g, g), slopes=sl, dist=dname), 2**30)
                        row["rel_err_vs_fp32"] = rel_err(out, ref)
                        del ref
                    t = do_bench(lambda: T.fused_attention(q, k, v, scale, rel, (g, g), sl, dname), warmup=50, rep=200,
                                 return_mode="median")
                    row.update(fwd_ms=t, tflops=flops / t / 1e9)
                    # the kernel alone: tables prebuilt
                    if has_rel:
                        relh, relw = T._rel_tables(q, rel, (g, g))
                        code = T._NO_DIST if dist is None else T._DIST_CODES[dist]
                        ksl = sl.float().contiguous() if code != T._NO_DIST else None
                        t2 = do_bench(lambda: T._forward(q, k, v, relh, relw, ksl, scale, g, g, code, None), warmup=50, rep=200,
                                      return_mode="median")
                        row.update(kernel_fwd_ms=t2, kernel_tflops=flops / t2 / 1e9)
                        del relh, relw
                    if g in bwd_grids:
                        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
                        rhg, rwg = rh.clone().requires_grad_(True), rw.clone().requires_grad_(True)
                        slg = slopes.clone().requires_grad_(True) if dist else None
                        relg = (rhg, rwg) if has_rel else None
                        o = T.fused_attention(qg, kg, vg, scale, relg, (g, g), slg, dname)
                        go = torch.randn_like(o)

                        def fb():
                            o = T.fused_attention(qg, kg, vg, scale, relg, (g, g), slg, dname)
                            o.backward(go)

                        tfb = do_bench(fb, warmup=20, rep=100, return_mode="median", grad_to_none=[qg, kg, vg, rhg, rwg])
                        # forward with grad enabled writes O in fp32; time it alone for the ratio
                        tf = do_bench(lambda: T.fused_attention(qg, kg, vg, scale, relg, (g, g), slg, dname), warmup=20,
                                      rep=100, return_mode="median")
                        row.update(fwd_train_ms=tf, bwd_ms=tfb - tf, bwd_over_fwd=(tfb - tf) / row["fwd_ms"])
                        del qg, kg, vg, o, go
                except Exception as exc:  # noqa: BLE001 - report and go on
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                rows.append(row)
                print(row, flush=True)
                torch.cuda.empty_cache()
    for name, tuner in (("fwd", getattr(T, "_fwd_tuned", None)), ("dq", getattr(T, "_dq_tuned", None)),
                        ("dkdv", getattr(T, "_dkdv_tuned", None))):
        if tuner is not None:
            for key, cfg in getattr(tuner, "cache", {}).items():
                print(f"autotuned {name} {key}: {cfg}", flush=True)
    print()
    head = f"{'grid':>5} {'d':>4} {'variant':<28} {'fwd ms':>8} {'TFLOP/s':>8} {'kernel ms':>9} {'bwd ms':>8} {'bwd/fwd':>7} {'rel err':>8}"
    print(head)
    for r in rows:
        f = lambda k, s: format(r[k], s) if r.get(k) is not None else "-"  # noqa: E731
        print(f"{r['grid']:>5} {r['d']:>4} {r['variant']:<28} {f('fwd_ms', '8.3f')} {f('tflops', '8.1f')} "
              f"{f('kernel_fwd_ms', '9.3f')} {f('bwd_ms', '8.3f')} {f('bwd_over_fwd', '7.2f')} {f('rel_err_vs_fp32', '8.1e')}"
              + (f"  {r['error']}" if "error" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                               "triton": triton.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
