"""CUDA-graph replay of the image encoder (basam.models.cuda_graph): same results as eager, graphs
dropped when the weights move or the attention changes. Needs a CUDA GPU; the CPU fallback is
checked everywhere."""

import pytest
import torch

from basam.models import create_model
from basam.models.cuda_graph import GraphCache

ARCH = dict(embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,))


def _model(device):
    torch.manual_seed(0)
    return create_model("sam_vit_b", attention="basam", **ARCH).eval().to(device)


def test_cpu_and_grad_run_eagerly():
    model = _model("cpu")
    model.cuda_graphs = True
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model.encode(x).embeddings
    model.cuda_graphs = False
    with torch.no_grad():
        b = model.encode(x).embeddings
    assert torch.equal(a, b)
    from basam.models.cuda_graph import graph_cache_of

    assert len(graph_cache_of(model)) == 0  # nothing captured off CUDA


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replay_matches_eager(dtype):
    from basam.models.cuda_graph import graph_cache_of

    model = _model("cuda").to(dtype)
    xs = [torch.randn(1, 3, s, s, device="cuda", dtype=dtype) for s in (128, 128, 160)]
    with torch.inference_mode():
        eager = [model.encode(x) for x in xs]
        model.cuda_graphs = True
        graphed = [model.encode(x) for x in xs]
    assert len(graph_cache_of(model)) == 2  # one graph per input shape
    for e, g in zip(eager, graphed):
        torch.testing.assert_close(g.embeddings, e.embeddings, rtol=0, atol=0)
    # outputs are copies: a later replay does not overwrite what the caller holds
    first = graphed[0].embeddings.clone()
    with torch.inference_mode():
        model.encode(torch.randn_like(xs[0]))
    assert torch.equal(graphed[0].embeddings, first)


@cuda
def test_graphs_dropped_on_move_and_attention_change():
    from basam.models.cuda_graph import graph_cache_of

    model = _model("cuda")
    model.cuda_graphs = True
    x = torch.randn(1, 3, 128, 128, device="cuda")
    with torch.inference_mode():
        model.encode(x)
        assert len(graph_cache_of(model)) == 1
        model.set_attention("vanilla")
        assert len(graph_cache_of(model)) == 0
        out = model.encode(x).embeddings
        model.cuda_graphs = False
        ref = model.encode(x).embeddings
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        model.cuda_graphs = True
        model.to(torch.bfloat16)
        assert len(graph_cache_of(model)) == 0


def test_cache_keeps_at_most_max_graphs():
    cache = GraphCache(max_graphs=2)
    assert len(cache) == 0
    x = torch.randn(2, 2)
    assert torch.equal(cache(lambda t: t * 2, x), x * 2)  # CPU: runs eagerly, captures nothing
    assert len(cache) == 0


def test_pos_embed_resample_matches_bicubic_interpolate():
    """The separable (two matrix products) resample equals F.interpolate's bicubic, up and down."""
    import torch.nn.functional as F

    from basam.models.image_encoder import ImageEncoderViT

    enc = ImageEncoderViT(img_size=256, embed_dim=32, depth=1, num_heads=2, global_attn_indexes=(0,))
    torch.nn.init.normal_(enc.pos_embed)
    for grid in [(24, 24), (8, 8), (16, 20), (33, 17)]:
        got = enc.resampled_pos_embed(grid)
        want = F.interpolate(enc.pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
        torch.testing.assert_close(got, want.permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    assert enc.resampled_pos_embed((16, 16)) is enc.pos_embed
