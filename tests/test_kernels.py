"""The fused Triton BA-SAM attention kernel (basam.kernels.triton_attention) against the fp32 reference.

CPU: the kernels run under Triton's interpreter (TRITON_INTERPRET=1), which must be chosen before
the kernels are defined, so every check runs in fresh subprocesses (this file is also the driver:
``python tests/test_kernels.py CASES_JSON``) with ``TRITON_INTERPRET=1`` and
``BASAM_TRITON_ON_CPU=1``; the pytest process itself never imports triton for these. Shapes are
tiny (B<=2, H=2, N<=64, 16 x 16 blocks) to keep the interpreter fast.

Note: the interpreter multiplies bfloat16 ``tl.dot`` operands as raw integers (triton 3.8), so under
the interpreter the kernel upcasts bf16 dot operands to fp32 (after the same bf16 rounding of P and
dS that the GPU path does). The bf16 cases therefore check everything but the bf16 tensor-core dot
itself, which the GPU class below covers. 16-bit tolerances are max|err| / max|ref| <= 2e-2 against
the fp32 reference on the same (rounded) inputs; fp32 ones 1e-4.

GPU: ``TestGPU`` runs the compiled kernels (autotuned and fixed blocks) on SAM-sized grids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
import zlib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

TOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}


def _case(id, grid=(5, 3), d=16, dist="manhattan", rel=True, slopes=True, dtype="float32", **kw):
    return dict(id=id, grid=list(grid), d=d, dist=dist, rel=rel, slopes=slopes, dtype=dtype, **kw)


CASES = []
# every grid x every distance, relative positions + slopes, fp32, d=16
for _g in [(4, 4), (5, 3), (8, 8), (3, 20)]:  # (3, 20): several column chunks per key row (atomics path)
    for _dist in ["manhattan", "euclidean", "flat"]:
        CASES.append(_case(f"fp32-{_g[0]}x{_g[1]}-{_dist}-rel-slopes", _g, dist=_dist))
# slopes only / relative positions only / neither
for _dist in ["manhattan", "euclidean", "flat"]:
    CASES.append(_case(f"fp32-5x3-{_dist}-slopes-only", (5, 3), dist=_dist, rel=False))
CASES.append(_case("fp32-3x20-euclidean-slopes-only", (3, 20), dist="euclidean", rel=False))
CASES.append(_case("fp32-5x3-rel-only", (5, 3), slopes=False))
CASES.append(_case("fp32-3x20-rel-only", (3, 20), slopes=False))
CASES.append(_case("fp32-4x4-plain", (4, 4), rel=False, slopes=False))
# one key row per tile on full tiles: the separable Manhattan path and the mask-free (EVEN_N) loads
CASES.append(_case("fp32-4x16-manhattan-separable-even", (4, 16)))
CASES.append(_case("fp32-4x16-manhattan-slopes-only-separable", (4, 16), rel=False))
CASES.append(_case("bf16-2x32-manhattan-separable-even", (2, 32), dtype="bfloat16"))
# head dim 80: padded to 128 in the kernel
CASES.append(_case("fp32-8x8-euclidean-d80", (8, 8), d=80, dist="euclidean"))
CASES.append(_case("fp32-5x3-manhattan-d80", (5, 3), d=80))
CASES.append(_case("fp32-4x4-flat-slopes-only-d80", (4, 4), d=80, dist="flat", rel=False))
# 16-bit inputs
CASES.append(_case("bf16-5x3-euclidean", (5, 3), dist="euclidean", dtype="bfloat16"))
CASES.append(_case("bf16-8x8-manhattan-d80", (8, 8), d=80, dtype="bfloat16"))
CASES.append(_case("bf16-3x20-flat", (3, 20), dist="flat", dtype="bfloat16"))
CASES.append(_case("fp16-4x4-manhattan", (4, 4), dtype="float16"))
CASES.append(_case("fp16-5x3-flat-slopes-only-d80", (5, 3), d=80, dist="flat", rel=False, dtype="float16"))
CASES.append(_case("bf16-5x3-manhattan-inference", (5, 3), dtype="bfloat16", nograd=True))  # O written in bf16
# other block sizes, batch 2 with SAM's non-contiguous q/k/v, value head dim != key head dim
CASES.append(_case("fp32-8x8-euclidean-blocks32x16", (8, 8), dist="euclidean", blocks=[32, 16]))
CASES.append(_case("fp32-8x8-flat-blocks16x32", (8, 8), dist="flat", blocks=[16, 32]))
CASES.append(_case("fp32-5x3-manhattan-blocks16x64", (5, 3), blocks=[16, 64]))
CASES.append(_case("fp32-4x5-euclidean-B2-noncontig", (4, 5), dist="euclidean", B=2, noncontig=True))
CASES.append(_case("fp32-plain-dv32", (4, 4), rel=False, slopes=False, dv=32))
# cross-attention (mask decoder): Nq != Nk, no bias
CASES.append(dict(id="fp32-cross-7x40", kind="cross", nq=7, nk=40, d=16, dtype="float32"))
CASES.append(dict(id="bf16-cross-40x7", kind="cross", nq=40, nk=7, d=16, dtype="bfloat16"))
# through basam.attention.attend after maybe_register(); dense bias falls back to sdpa
CASES.append(_case("attend-auto-picks-triton", (5, 3), dist="euclidean", kind="attend"))
CASES.append(_case("attend-dense-bias-falls-back", (4, 4), dist="flat", kind="dense"))


# ----------------------------------------------------------------------------------------------
# Driver (runs in the subprocess)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _run_case(case: dict) -> dict:
    from basam import attention as A
    from basam.kernels import triton_attention as T

    g = torch.Generator().manual_seed(zlib.crc32(case.get("seed", case["id"]).encode()))
    dtype = getattr(torch, case["dtype"])
    kind = case.get("kind", "attn")
    B, H = case.get("B", 1), 2
    d = case["d"]
    dv = case.get("dv", d)

    def rnd(*shape, dt=torch.float32, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    if kind == "cross":
        nq, nk = case["nq"], case["nk"]
        grid, rel, use_slopes, dist = None, False, False, "manhattan"
    else:
        grid = tuple(case["grid"])
        nq = nk = grid[0] * grid[1]
        rel, use_slopes, dist = case["rel"], case["slopes"], case["dist"]

    q16 = rnd(B, H, nq, d, dt=dtype).requires_grad_(True)
    k16 = rnd(B, H, nk, d, dt=dtype).requires_grad_(True)
    v16 = rnd(B, H, nk, dv, dt=dtype).requires_grad_(True)
    q_in, k_in, v_in = q16, k16, v16
    if case.get("noncontig"):
        base = torch.stack([q16.detach(), k16.detach(), v16.detach()]).permute(1, 3, 0, 2, 4).contiguous()
        base.requires_grad_(True)  # SAM's qkv storage (B, N, 3, H, d), viewed as (3, B, H, N, d)
        view = base.permute(2, 0, 3, 1, 4)
        q_in, k_in, v_in = view.unbind(0)
        assert not q_in.is_contiguous()
    rh = rnd(grid[0], grid[0], d, scale=0.3).requires_grad_(True) if rel else None
    rw = rnd(grid[1], grid[1], d, scale=0.3).requires_grad_(True) if rel else None
    slopes = (torch.rand(H, generator=g) * 0.5 + 0.1).requires_grad_(True) if use_slopes else None
    rel_pos = (rh, rw) if rel else None
    scale = d**-0.5 * 1.1
    blocks = tuple(case["blocks"]) if case.get("blocks") else None

    t0 = time.perf_counter()
    info = {}
    if kind == "attend":
        from basam import kernels

        info["registered"] = kernels.maybe_register()
        info["picked"] = A._pick_backend("auto", q_in, k_in, v_in, A.AttentionBias(rel_pos, grid, slopes=slopes, dist=dist)) \
            is T.triton_attend
        out = A.attend(q_in, k_in, v_in, scale=scale, rel_pos=rel_pos, grid=grid, slopes=slopes, dist=dist)
    elif kind == "dense":
        dense = rnd(H, nq, nk)
        called = []
        real = T.fused_attention
        T.fused_attention = lambda *a, **k: called.append(1) or real(*a, **k)
        try:
            # the dispatcher sends what the kernel does not take (a dense bias) to sdpa
            out = A.attend(q_in, k_in, v_in, scale=scale, rel_pos=rel_pos, grid=grid, slopes=slopes, dist=dist,
                           dense_bias=dense, backend="triton", chunk_bytes=2**20)
        finally:
            T.fused_attention = real
        info["kernel_called"] = bool(called)
    elif case.get("nograd"):
        with torch.no_grad():
            out = T.triton_attend(q_in, k_in, v_in, scale, A.AttentionBias(rel_pos, grid, slopes=slopes, dist=dist))
        ref = A.attend_reference(q16.detach().float(), k16.detach().float(), v16.detach().float(), scale,
                                 A.AttentionBias(rel_pos, grid, slopes=slopes, dist=dist))
        return dict(errs={"out": _rel_err(out, ref)}, time=time.perf_counter() - t0, info=info,
                    dtype_ok=out.dtype == dtype, shape_ok=tuple(out.shape) == tuple(ref.shape))
    elif blocks is not None:
        out = T.fused_attention(q_in, k_in, v_in, scale, rel_pos, grid, slopes, dist, blocks=blocks)
    else:
        out = T.triton_attend(q_in, k_in, v_in, scale, A.AttentionBias(rel_pos, grid, slopes=slopes, dist=dist))
    go = rnd(*out.shape)
    leaves = [x for x in (rh, rw, slopes) if x is not None]
    if case.get("noncontig"):
        grads = torch.autograd.grad(out, [base] + leaves, go.to(out.dtype))
        gb = grads[0].permute(2, 0, 3, 1, 4)
        grads = (gb[0], gb[1], gb[2]) + tuple(grads[1:])
    else:
        grads = torch.autograd.grad(out, [q16, k16, v16] + leaves, go.to(out.dtype))
    elapsed = time.perf_counter() - t0

    # fp32 reference on the same (rounded) inputs
    q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q16, k16, v16))
    dense_ref = dense if kind == "dense" else None
    ref = A.attend_reference(q32, k32, v32, scale, A.AttentionBias(rel_pos, grid, slopes=slopes, dist=dist, dense=dense_ref))
    ref_grads = torch.autograd.grad(ref, [q32, k32, v32] + leaves, go.to(out.dtype).float())
    names = ["q", "k", "v"] + [n for n, x in (("Rh", rh), ("Rw", rw), ("slopes", slopes)) if x is not None]
    errs = {"out": _rel_err(out, ref)}
    for name, a, b in zip(names, grads, ref_grads):
        errs["d" + name] = _rel_err(a, b)
    return dict(errs=errs, time=elapsed, info=info, dtype_ok=out.dtype == dtype, shape_ok=tuple(out.shape) == tuple(ref.shape))


def _driver_main(path: str) -> None:
    cases = json.loads(Path(path).read_text())
    results = {}
    for case in cases:
        try:
            results[case["id"]] = _run_case(case)
        except Exception:
            results[case["id"]] = {"error": traceback.format_exc()}
    print("@@RESULTS@@" + json.dumps(results))


# ----------------------------------------------------------------------------------------------
# Tests (pytest process)


def _subprocess_env(extra: dict) -> dict:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _spawn(cases, tmp_path: Path, tag: str, extra_env: dict):
    spec = tmp_path / f"cases-{tag}.json"
    spec.write_text(json.dumps(cases))
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), str(spec)],
        env=_subprocess_env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )


def _collect(proc, timeout=600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    marker = "@@RESULTS@@"
    if proc.returncode != 0 or marker not in out:
        raise RuntimeError(f"kernel driver failed (rc={proc.returncode}):\n{out[-4000:]}\n{err[-4000:]}")
    return json.loads(out.split(marker, 1)[1])


INTERP_ENV = {"TRITON_INTERPRET": "1", "BASAM_TRITON_ON_CPU": "1"}


@pytest.fixture(scope="module")
def interp_results(tmp_path_factory):
    """Run every case under the interpreter, split over two concurrent subprocesses."""
    tmp = tmp_path_factory.mktemp("kernels")
    halves = [CASES[0::2], CASES[1::2]]
    procs = [_spawn(h, tmp, str(i), INTERP_ENV) for i, h in enumerate(halves)]
    results = {}
    for p in procs:
        results.update(_collect(p))
    return results


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_kernel_matches_reference(case, interp_results):
    res = interp_results[case["id"]]
    assert "error" not in res, res.get("error")
    tol = TOL[case["dtype"]]
    bad = {k: v for k, v in res["errs"].items() if not v <= tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {res['errs']})"
    assert res["dtype_ok"] and res["shape_ok"]
    if case.get("kind") == "attend":
        assert res["info"] == {"registered": True, "picked": True}
    if case.get("kind") == "dense":
        assert res["info"] == {"kernel_called": False}


def test_not_registered_on_cpu_without_interpreter(tmp_path):
    """Without CUDA and without the interpreter opt-in, maybe_register does nothing and imports no triton."""
    code = (
        "import sys, torch\n"
        "from basam import kernels, attention as A\n"
        "ok = kernels.maybe_register()\n"
        "q = torch.zeros(1, 1, 4, 16)\n"
        "print('@@', ok, 'triton' in sys.modules, 'triton' in A._BACKENDS, A._pick_backend('auto', q) is A.attend_sdpa)\n"
    )
    env = _subprocess_env({})
    for key in ("TRITON_INTERPRET", "BASAM_TRITON_ON_CPU"):
        env.pop(key, None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = out.stdout.split("@@", 1)[1].split()
    assert line == ["False", "False", "False", "True"], out.stdout


def test_supports_predicate(tmp_path):
    """supports(): dtype, head dim, CPU only with both opt-ins; no dense bias, no pooled keys."""
    code = (
        "import torch\n"
        "from basam.kernels import triton_attention as T\n"
        "from basam.attention import AttentionBias\n"
        "def s(q, bias=AttentionBias()):\n"
        "    return T.supports(q, q, q, bias)\n"
        "r = [s(torch.zeros(1, 2, 8, 16)), s(torch.zeros(1, 2, 8, 80, dtype=torch.bfloat16)),\n"
        "     s(torch.zeros(1, 2, 8, 256)), s(torch.zeros(1, 2, 8, 16, dtype=torch.float64)), s(torch.zeros(2, 8, 16)),\n"
        "     s(torch.zeros(1, 2, 8, 16), AttentionBias(dense=torch.zeros(8, 8))),\n"
        "     s(torch.zeros(1, 2, 8, 16), AttentionBias(q_grid=(2, 4), k_grid=(1, 2), slopes=torch.ones(2)))]\n"
        "print('@@', *r)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_subprocess_env(INTERP_ENV), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("@@", 1)[1].split() == ["True", "True", "False", "False", "False", "False", "False"], out.stdout


# ----------------------------------------------------------------------------------------------
# GPU (compiled kernels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter forced in this process")
class TestGPU:
    @pytest.fixture(autouse=True)
    def _mod(self):
        from basam import kernels

        assert kernels.maybe_register()
        from basam.kernels import triton_attention as T

        self.T = T

    def _check(self, grid, d, dist, dtype=torch.bfloat16, backward=True, blocks=None, H=2, tol=3e-2):
        from basam import attention as A

        g = torch.Generator(device="cuda").manual_seed(0)
        gh, gw = grid
        n = gh * gw
        dev = "cuda"
        q, k, v = (torch.randn(1, H, n, d, device=dev, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
        rh = (0.3 * torch.randn(gh, gh, d, device=dev, generator=g)).requires_grad_(True)
        rw = (0.3 * torch.randn(gw, gw, d, device=dev, generator=g)).requires_grad_(True)
        slopes = A.alibi_slopes(H, 1.0).to(dev).requires_grad_(True)
        scale = d**-0.5
        out = self.T.fused_attention(q, k, v, scale, (rh, rw), grid, slopes, dist, blocks=blocks)
        q32, k32, v32 = (t.detach().float().requires_grad_(True) for t in (q, k, v))
        ref = A.attend_reference(q32, k32, v32, scale, A.AttentionBias((rh, rw), grid, slopes=slopes, dist=dist))
        assert _rel_err(out, ref) < tol
        if backward:
            go = torch.randn(out.shape, device=dev, generator=g)
            got = torch.autograd.grad(out, [q, k, v, rh, rw, slopes], go.to(out.dtype))
            want = torch.autograd.grad(ref, [q32, k32, v32, rh, rw, slopes], go)
            errs = {name: _rel_err(a, b) for name, a, b in zip(["q", "k", "v", "Rh", "Rw", "slopes"], got, want)}
            assert all(e < tol for e in errs.values()), errs

    @pytest.mark.parametrize("dist", ["manhattan", "euclidean", "flat"])
    @pytest.mark.parametrize("d", [64, 80])
    def test_64x64_bf16(self, d, dist):
        self._check((64, 64), d, dist)

    @pytest.mark.parametrize("d", [64, 80])
    def test_128x128_bf16(self, d):
        self._check((128, 128), d, "euclidean", backward=(d == 64))

    def test_fixed_blocks_and_windows(self):
        self._check((14, 14), 64, "manhattan", blocks=(64, 64))
        self._check((64, 64), 64, "flat", blocks=(128, 64))

    def test_fp32(self):
        self._check((32, 48), 64, "euclidean", dtype=torch.float32, tol=1e-3)

    def test_attend_auto_picks_triton(self):
        from basam import attention as A

        q = torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16)
        assert A._pick_backend("auto", q, q, q) is self.T.triton_attend


if __name__ == "__main__":
    _driver_main(sys.argv[1])


def test_tables_fp32_whenever_a_gradient_is_needed(monkeypatch):
    """16-bit inputs get fp32 relative-position tables as soon as anything upstream trains, including
    only the slopes (a frozen encoder's first layer: q needs no grad); inference keeps 16-bit tables."""
    from basam.kernels import triton_attention as T

    seen = []
    monkeypatch.setattr(T, "_rel_tables", lambda q, rel_pos, grid, dtype=None: seen.append(dtype) or (None, None))
    monkeypatch.setattr(T._FusedAttention, "apply", staticmethod(lambda q, *a: q))
    q, k, v = (torch.randn(1, 2, 6, 16, dtype=torch.bfloat16) for _ in range(3))
    rel = (torch.randn(2, 2, 16), torch.randn(3, 3, 16))
    slopes = torch.ones(2, requires_grad=True)
    T.fused_attention(q, k, v, 0.25, rel, (2, 3), slopes, "euclidean")
    with torch.no_grad():
        T.fused_attention(q, k, v, 0.25, rel, (2, 3), slopes, "euclidean")
    T.fused_attention(q, k, v, 0.25, rel, (2, 3), slopes.detach(), "euclidean")
    assert seen == [torch.float32, None, None]
