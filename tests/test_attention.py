"""BA-SAM attention: the formula against a direct computation, NSF per layer, slopes, backends."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import basam
from basam import attention as A
from basam.attention import AttentionConfig, alibi_slopes, attend, nsf_scale
from basam.models import create_model

TINY_VIT = dict(embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3))
TINY_TVIT = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))


def direct_attention(q, k, v, lam, rh, rw, grid, slopes, dist, dense=None):
    """s_ij = lam q_i.k_j + q_i.Rh[r_i, r_j] + q_i.Rw[c_i, c_j] - slope_h dist(i, j), by loops."""
    B, H, N, d = q.shape
    gh, gw = grid
    out = torch.zeros(B, H, N, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            s = torch.zeros(N, N, dtype=torch.float64)
            for i in range(N):
                ri, ci = divmod(i, gw)
                for j in range(N):
                    rj, cj = divmod(j, gw)
                    val = lam * float(q[b, h, i] @ k[b, h, j])
                    if rh is not None:
                        val += float(q[b, h, i] @ rh[ri, rj]) + float(q[b, h, i] @ rw[ci, cj])
                    if slopes is not None:
                        if dist == "manhattan":
                            dd = abs(ri - rj) + abs(ci - cj)
                        elif dist == "euclidean":
                            dd = math.hypot(ri - rj, ci - cj)
                        else:
                            dd = abs(i - j)
                        val -= float(slopes[h]) * dd
                    if dense is not None:
                        val += float(dense[h, i, j])
                    s[i, j] = val
            out[b, h] = torch.softmax(s, dim=-1) @ v[b, h].double()
    return out


@pytest.mark.parametrize("dist", A.DISTANCES)
@pytest.mark.parametrize("backend", ["sdpa", "reference"])
def test_formula_matches_direct_computation(dist, backend):
    g = torch.Generator().manual_seed(0)
    B, H, d, grid = 2, 3, 5, (3, 4)
    N = grid[0] * grid[1]
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    rh = torch.randn(grid[0], grid[0], d, generator=g)
    rw = torch.randn(grid[1], grid[1], d, generator=g)
    slopes = alibi_slopes(H, 0.7)
    lam = nsf_scale(d, N, 6, True)
    # A tiny chunk budget forces the sdpa path to split the queries into several chunks.
    got = attend(q, k, v, scale=lam, rel_pos=(rh, rw), grid=grid, slopes=slopes, dist=dist, backend=backend, chunk_bytes=B * H * N * 8 * 3)
    want = direct_attention(q, k, v, lam, rh, rw, grid, slopes, dist)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


def test_dense_bias_and_no_rel_pos():
    g = torch.Generator().manual_seed(1)
    B, H, d, grid = 1, 2, 4, (2, 3)
    N = 6
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    dense = torch.randn(H, N, N, generator=g)
    slopes = torch.tensor([0.3, 1.1])
    for backend in ("sdpa", "reference"):
        got = attend(q, k, v, scale=0.5, grid=grid, slopes=slopes, dist="euclidean", dense_bias=dense, backend=backend)
        want = direct_attention(q, k, v, 0.5, None, None, grid, slopes, "euclidean", dense)
        assert torch.allclose(got.double(), want, atol=1e-5)


def test_no_bias_is_plain_softmax_attention():
    q, k, v = (torch.randn(1, 2, 7, 4) for _ in range(3))
    got = attend(q, k, v, scale=0.25)
    want = torch.softmax(0.25 * q @ k.transpose(-1, -2), -1) @ v
    assert torch.allclose(got, want, atol=1e-6)


def test_alibi_slopes_schedule():
    s = alibi_slopes(8, 1.0)
    assert torch.allclose(s, torch.tensor([2.0 ** -(h) for h in range(1, 9)]))
    s = alibi_slopes(12, 0.1)
    assert s.shape == (12,)
    assert math.isclose(s[0].item(), 0.1 * 2 ** (-8 / 12), rel_tol=1e-6)
    assert math.isclose(s[-1].item(), 0.1 * 2**-8, rel_tol=1e-6)
    assert torch.all(s[1:] < s[:-1])


def test_nsf_scale_values():
    assert nsf_scale(64, 16384, 4096, True) == pytest.approx(64**-0.5 * math.log(16384) / math.log(4096))
    assert nsf_scale(64, 16384, 4096, False) == 64**-0.5
    assert nsf_scale(64, 4096, 4096, True) == 64**-0.5
    assert nsf_scale(64, 1024, 4096, True) < 64**-0.5  # smaller images get a smaller scale


def test_presets_and_overrides():
    c = AttentionConfig.from_preset("basam", beta=0.1, dist="flat")
    assert (c.nsf, c.bias, c.beta, c.dist) == (True, True, 0.1, "flat")
    assert AttentionConfig.from_preset("nsf").bias is False
    assert AttentionConfig.from_preset("vanilla").preset_name == "vanilla"
    with pytest.raises(basam.InputError, match="unknown attention preset"):
        AttentionConfig.from_preset("fast")
    with pytest.raises(basam.InputError, match="distance"):
        AttentionConfig(dist="chebyshev")
    with pytest.raises(basam.InputError, match="beta"):
        AttentionConfig(beta=-1)


class Recorder:
    """A backend that records each call's scale, grid and slopes, then runs sdpa."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, k, v, scale, bias, chunk_bytes):
        slopes = bias.slopes
        self.calls.append(dict(scale=scale, grid=bias.grid, slopes=None if slopes is None else slopes.detach().clone(),
                               dist=bias.dist, n_keys=k.shape[-2], head_dim=q.shape[-1], dense=bias.dense is not None))
        return A.attend_sdpa(q, k, v, scale, bias, chunk_bytes)


@pytest.fixture
def recorder():
    rec = Recorder()
    A.register_backend("recorder", rec, supports=lambda q, k, v, bias: True, prefer=False)
    yield rec
    A._BACKENDS.pop("recorder", None)


def _encode(model, side):
    with torch.no_grad():
        return model.encode(model.preprocess(torch.rand(1, 3, side, side) * 255, side))


def test_per_layer_n_train_vit(recorder):
    model = create_model("sam_vit_b", attention=AttentionConfig.from_preset("basam", backend="recorder"), img_size=256, **TINY_VIT).eval()
    _encode(model, 512)  # grid 32x32; pretraining grid 16x16
    d = 16
    assert len(recorder.calls) == 4
    for i, call in enumerate(recorder.calls):
        if i in (1, 3):  # global blocks: N = 32*32 keys, N_train = 16*16
            assert call["n_keys"] == 1024 and call["grid"] == (32, 32)
            assert call["scale"] == pytest.approx(d**-0.5 * math.log(1024) / math.log(256))
        else:  # 14x14 windows: lambda = 1/sqrt(d) at any resolution
            assert call["n_keys"] == 196 and call["grid"] == (14, 14)
            assert call["scale"] == pytest.approx(d**-0.5)
        assert torch.allclose(call["slopes"], alibi_slopes(2, 1.0))
    # The user may state another pretraining resolution; and the per-image reading scales windows.
    recorder.calls.clear()
    model.set_attention(AttentionConfig.from_preset("nsf", backend="recorder", train_resolution=128, nsf_count="image"))
    _encode(model, 512)
    for call in recorder.calls:
        assert call["scale"] == pytest.approx(d**-0.5 * math.log(1024) / math.log(64))
        assert call["slopes"] is None


def test_per_layer_n_train_tinyvit(recorder):
    model = create_model("mobile_sam", attention=AttentionConfig.from_preset("nsf", backend="recorder"), **TINY_TVIT).eval()
    _encode(model, 2048)
    assert recorder.calls and all(c["dense"] for c in recorder.calls)
    for c in recorder.calls:  # every TinyViT layer is windowed: lambda_n = 1 per attention row
        assert c["scale"] == pytest.approx(c["head_dim"] ** -0.5)
    recorder.calls.clear()
    model.set_attention(AttentionConfig.from_preset("nsf", backend="recorder", nsf_count="image"))
    _encode(model, 2048)
    # per image: stage 1 runs at stride 8 (256x256 tokens at 2048 vs 128x128 at 1024), stages 2-3 at 16.
    ratios = sorted({round(c["scale"] * c["head_dim"] ** 0.5, 6) for c in recorder.calls})
    assert ratios == sorted({round(math.log(256 * 256) / math.log(128 * 128), 6), round(math.log(128 * 128) / math.log(64 * 64), 6)})


def test_decoder_nsf_option(recorder):
    model = create_model("mobile_sam", attention=AttentionConfig.from_preset("vanilla", backend="recorder"), **TINY_TVIT).eval()
    feats = _encode(model, 2048)
    recorder.calls.clear()
    with torch.no_grad():
        model.decode(feats, torch.tensor([[[100.0, 100.0]]]), torch.tensor([[1]]))
    token_to_image = [c for c in recorder.calls if c["n_keys"] == 128 * 128 and c["head_dim"] == 16]
    assert len(token_to_image) == 3  # two blocks + the final attention
    assert all(c["scale"] == pytest.approx(16**-0.5) for c in token_to_image)
    recorder.calls.clear()
    model.set_attention(AttentionConfig.from_preset("vanilla", backend="recorder", decoder_nsf=True))
    with torch.no_grad():
        model.decode(feats, torch.tensor([[[100.0, 100.0]]]), torch.tensor([[1]]))
    scaled = [c for c in recorder.calls if c["n_keys"] == 128 * 128 and c["head_dim"] == 16]
    assert all(c["scale"] == pytest.approx(16**-0.5 * math.log(128 * 128) / math.log(64 * 64)) for c in scaled)
    others = [c for c in recorder.calls if c["n_keys"] != 128 * 128]
    assert others and all(c["scale"] == pytest.approx(c["head_dim"] ** -0.5) for c in others)


@pytest.mark.parametrize("name,arch", [("sam_vit_b", TINY_VIT), ("mobile_sam", TINY_TVIT)])
def test_basam_with_zero_beta_at_training_resolution_equals_vanilla(name, arch):
    vanilla = create_model(name, **arch).eval()
    x = torch.rand(1, 3, 1024, 1024) * 255
    with torch.no_grad():
        ref = vanilla.encode(vanilla.preprocess(x)).embeddings
        vanilla.set_attention("basam", beta=0.0)
        got = vanilla.encode(vanilla.preprocess(x)).embeddings
        vanilla.set_attention("basam", beta=1.0)
        biased = vanilla.encode(vanilla.preprocess(x)).embeddings
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(biased, ref, atol=1e-3)  # the bias does change the output


def test_gradients_reach_trainable_slopes():
    model = create_model("sam_vit_b", attention=AttentionConfig.from_preset("basam", beta=0.1, trainable_slopes=True), img_size=256, **TINY_VIT)
    slopes = [p for n, p in model.named_parameters() if n.endswith("bam.slopes")]
    assert len(slopes) == 4 and all(p.requires_grad for p in slopes)
    feats = model.encode(model.preprocess(torch.rand(1, 3, 320, 320) * 255, 320))
    feats.embeddings.square().mean().backward()
    for p in slopes:
        assert p.grad is not None and p.grad.abs().sum() > 0
    frozen = create_model("sam_vit_b", attention="basam", img_size=256, **TINY_VIT)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if n.endswith("bam.slopes"))


def test_sdpa_chunks_bound_memory_at_2048(monkeypatch):
    """A 2048 px input (128x128 = 16384 tokens) never materialises more than the chunk budget."""
    sizes = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if attn_mask is not None:
            sizes.append(attn_mask.numel() * attn_mask.element_size())
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    budget = 64 * 2**20
    model = create_model("sam_vit_b", attention=AttentionConfig.from_preset("basam", chunk_bytes=budget), embed_dim=32, depth=2,
                         num_heads=2, global_attn_indexes=(1,)).eval()
    feats = _encode(model, 2048)
    assert feats.embeddings.shape == (1, 256, 128, 128)
    full = 2 * 16384 * 16384 * 4
    assert sizes and max(sizes) <= budget // 2 < full


@pytest.mark.parametrize("dist", A.DISTANCES)
@pytest.mark.parametrize("parts", ["rel_pos", "slopes", "all"])
def test_bias_written_into_scratch_equals_allocated(dist, parts):
    """The sdpa path's in-place bias (scratch buffer) is the functional one, for any chunk of rows."""
    g = torch.Generator().manual_seed(2)
    B, H, d, grid = 2, 3, 4, (3, 5)
    N = grid[0] * grid[1]
    q = torch.randn(B, H, N, d, generator=g)
    rel = (torch.randn(3, 3, d, generator=g), torch.randn(5, 5, d, generator=g)) if parts != "slopes" else None
    slopes = alibi_slopes(H, 0.7) if parts != "rel_pos" else None
    dense = torch.randn(H, N, N, generator=g) if parts == "all" else None
    scratch = torch.full((B * H * N * N,), float("nan"))
    for rows in (slice(0, N), slice(0, 5), slice(3, 11), slice(13, 15)):
        want = A._bias_chunk(q, rows, rel, grid, slopes, dist, dense, N)
        got = A._bias_chunk(q, rows, rel, grid, slopes, dist, dense, N, out=scratch)
        assert got.shape == want.shape == (B, H, rows.stop - rows.start, N)
        assert torch.allclose(got, want, atol=1e-6)


def test_bias_scratch_scope_same_results_and_nothing_kept():
    """attend() inside bias_scratch() (one shared, growing buffer) == outside; the buffer dies with the scope."""
    g = torch.Generator().manual_seed(3)
    cases = []
    for B, H, grid in ((3, 2, (4, 4)), (1, 2, (6, 7)), (2, 2, (4, 4))):  # the buffer grows, then is reused
        N = grid[0] * grid[1]
        q, k, v = (torch.randn(B, H, N, 8, generator=g) for _ in range(3))
        rel = (torch.randn(grid[0], grid[0], 8, generator=g), torch.randn(grid[1], grid[1], 8, generator=g))
        for chunk_bytes in (2**30, B * H * N * 8 * 5):  # one chunk, several chunks
            cases.append(dict(q=q, k=k, v=v, scale=0.3, rel_pos=rel, grid=grid, slopes=alibi_slopes(H, 1.0),
                              backend="sdpa", chunk_bytes=chunk_bytes))
    want = [attend(**c) for c in cases]
    with A.bias_scratch():
        got = [attend(**c) for c in cases]
        assert len(A._SCRATCH.get()) == 1  # one buffer, for the CPU
    assert A._SCRATCH.get() is None
    ref = [A.attend_reference(c["q"], c["k"], c["v"], 0.3, A.AttentionBias(c["rel_pos"], c["grid"], slopes=c["slopes"])) for c in cases]
    for a, b, r in zip(got, want, ref):
        assert torch.equal(a, b)
        assert torch.allclose(a, r, atol=1e-5)


def test_bias_scratch_leaves_autograd_alone():
    """With inputs that need gradients the bias is built out of place, so backward still works."""
    g = torch.Generator().manual_seed(4)
    grid, N = (4, 4), 16
    q, k, v = (torch.randn(1, 2, N, 8, generator=g, requires_grad=True) for _ in range(3))
    slopes = alibi_slopes(2, 1.0).requires_grad_(True)
    rel = (torch.randn(4, 4, 8, generator=g), torch.randn(4, 4, 8, generator=g))
    with A.bias_scratch():
        out = attend(q, k, v, scale=0.3, rel_pos=rel, grid=grid, slopes=slopes, backend="sdpa", chunk_bytes=2 * N * 8 * 5)
    out.square().sum().backward()
    ref = A.attend_reference(q, k, v, 0.3, A.AttentionBias(rel, grid, slopes=slopes))
    assert torch.allclose(out, ref, atol=1e-5)
    assert q.grad is not None and slopes.grad is not None and slopes.grad.abs().sum() > 0


def test_backends_get_one_bias_object_and_the_dispatcher_falls_back():
    """A backend receives one AttentionBias and says what it supports; a call it refuses goes to sdpa,
    under auto and when named; a bias no backend takes (pooled keys) is refused in one line."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    rel = (torch.randn(4, 4, 8, generator=g), torch.randn(4, 4, 8, generator=g))
    seen = []

    def picky(q, k, v, scale, bias, chunk_bytes):
        seen.append(bias)
        return A.attend_sdpa(q, k, v, scale, bias, chunk_bytes)

    A.register_backend("picky", picky, supports=lambda q, k, v, bias: bias.dense is None, prefer=True)
    try:
        out = attend(q, k, v, scale=0.3, rel_pos=rel, grid=(4, 4), slopes=alibi_slopes(2, 1.0))
        assert len(seen) == 1 and isinstance(seen[0], A.AttentionBias) and seen[0].grid == (4, 4)
        assert seen[0].k_grid == (4, 4) and not seen[0].pooled and seen[0].rel_pos is rel
        ref = A.attend_reference(q, k, v, 0.3, seen[0])
        assert torch.allclose(out, ref, atol=1e-5)
        dense = torch.randn(16, 16, generator=g)
        for backend in ("auto", "picky"):
            out = attend(q, k, v, scale=0.3, dense_bias=dense, backend=backend)
            assert len(seen) == 1, f"{backend}: the backend was called for a bias it does not support"
            assert torch.allclose(out, A.attend_reference(q, k, v, 0.3, A.AttentionBias(dense=dense)), atol=1e-5)
    finally:
        A._BACKENDS.pop("picky", None)
        A._AUTO_ORDER.remove("picky")
    pooled = A.AttentionBias(q_grid=(4, 4), k_grid=(2, 2), slopes=alibi_slopes(2, 1.0))
    with pytest.raises(basam.InputError, match="different grids"):
        attend(q, k[:, :, :4], v[:, :, :4], scale=0.3, bias=pooled)
    with pytest.raises(ValueError, match="not both"):
        attend(q, k, v, scale=0.3, bias=pooled, grid=(4, 4))
    with pytest.raises(ValueError, match="do not match"):
        attend(q, k, v, scale=0.3, rel_pos=rel, grid=(4, 3))
