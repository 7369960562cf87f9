"""Any resolution: grids, padding, prompts and masks follow the real input size."""

import numpy as np
import pytest
import torch

import basam
from basam.models import create_model
from basam.predictor import Predictor

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))
TINY_TVIT = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4))
MODELS = [("sam_vit_b", TINY_VIT), ("mobile_sam", TINY_TVIT), ("sam_hq_vit_b", TINY_VIT), ("sam_hq_vit_tiny", TINY_TVIT)]


def _img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,arch", MODELS)
@pytest.mark.parametrize("resolution", [256, 600, 2048])
def test_predictor_any_resolution(name, arch, resolution):
    model = create_model(name, attention="basam", **arch).eval()
    pred = Predictor(model, resolution=resolution)
    image = _img(300, 500)
    pred.set_image(image)
    side = -(-resolution // 16) * 16
    grid = side // 16
    assert pred.input_size == (round(300 * resolution / 500), resolution)
    assert pred.get_image_embedding().shape == (1, 256, grid, grid)
    assert pred.mask_input_size == (4 * grid, 4 * grid)
    masks, scores, low = pred.predict(point_coords=np.array([[250, 150]]), point_labels=np.array([1]), multimask_output=True)
    n = 1 if name.startswith("sam_hq") else 3
    assert masks.shape == (n, 300, 500) and masks.dtype == np.bool_
    assert scores.shape == (n,) and low.shape == (n, 4 * grid, 4 * grid)
    # The low-res logits feed back as a mask prompt at this resolution.
    m2, _, _ = pred.predict(mask_input=low[:1], multimask_output=False)
    assert m2.shape == (1, 300, 500)


def test_prompts_map_with_the_image():
    """A box around an object must land on the same tokens at every resolution and aspect."""
    model = create_model("mobile_sam", **TINY_TVIT).eval()
    for res in (256, 1024):
        pred = Predictor(model, resolution=res)
        pred.set_image(_img(200, 800))
        sx = pred.input_size[1] / 800
        sy = pred.input_size[0] / 200
        mapped = pred.transform.apply_boxes(np.array([[80.0, 20.0, 400.0, 180.0]]), pred.original_size)
        assert np.allclose(mapped, [[80 * sx, 20 * sy, 400 * sx, 180 * sy]])
        assert pred.input_size[1] == res


def test_mask_input_of_another_resolution_is_resized():
    model = create_model("sam_vit_b", **TINY_VIT).eval()
    pred = Predictor(model, resolution=512)
    pred.set_image(_img(128, 128))
    masks, _, low = pred.predict(point_coords=np.array([[64, 64]]), point_labels=np.array([1]), mask_input=np.zeros((1, 256, 256), np.float32), multimask_output=False)
    assert low.shape == (1, 128, 128)


def test_predict_validates_prompts():
    model = create_model("sam_vit_b", **TINY_VIT).eval()
    pred = Predictor(model, resolution=256)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    pred.set_image(_img(100, 200))
    with pytest.raises(basam.InputError, match="outside"):
        pred.predict(point_coords=np.array([[250, 10]]), point_labels=np.array([1]))
    with pytest.raises(basam.InputError, match="x1 < x0"):
        pred.predict(box=np.array([50, 10, 20, 40]))
    with pytest.raises(basam.InputError, match="no prompt"):
        pred.predict()
    with pytest.raises(basam.InputError, match="labels"):
        pred.predict(point_coords=np.array([[5, 5]]), point_labels=np.array([3]))
    with pytest.raises(basam.InputError, match="hq_token_only"):
        pred.predict(point_coords=np.array([[5, 5]]), point_labels=np.array([1]), hq_token_only=True)
    for bad in (0, -5, 32, "abc", 2.5, True):
        with pytest.raises(basam.InputError, match="resolution"):
            Predictor(model, resolution=bad)
    with pytest.raises(basam.InputError, match="uint8"):
        pred.set_image(np.zeros((10, 10), np.uint8))


def test_bgr_input_equals_rgb():
    model = create_model("mobile_sam", **TINY_TVIT).eval()
    pred = Predictor(model, resolution=256)
    img = _img(64, 96)
    pred.set_image(img)
    a = pred.get_image_embedding().clone()
    pred.set_image(img[..., ::-1].copy(), image_format="BGR")
    assert torch.equal(a, pred.get_image_embedding())


def test_hq_fusion_modes():
    model = create_model("sam_hq_vit_b", **TINY_VIT).eval()
    with torch.no_grad():
        for p in model.mask_decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    pred = Predictor(model, resolution=256)
    pred.set_image(_img(100, 100))
    kw = dict(point_coords=np.array([[50, 50]]), point_labels=np.array([1]), multimask_output=False, return_logits=True)
    outs = {}
    for mode in ("independent", "add", "product"):
        model.set_hq_fusion(mode)
        outs[mode] = pred.predict(**kw)[2]
    assert not np.allclose(outs["independent"], outs["add"])
    assert not np.allclose(outs["product"], outs["independent"])
    model.set_hq_fusion("add")
    assert np.allclose(pred.predict(hq_token_only=True, **kw)[2], outs["independent"])
    assert np.allclose(pred.predict(hq_token_only=False, **kw)[2], outs["add"])
    with pytest.raises(basam.InputError, match="HQ fusion"):
        model.set_hq_fusion("mean")


def test_forward_has_gradients():
    """Training goes through the model: no no_grad on forward."""
    model = create_model("sam_hq_vit_tiny", **TINY_TVIT).train()
    rec = {"image": torch.rand(3, 256, 192) * 255, "original_size": (256, 192), "point_coords": torch.tensor([[[50.0, 60.0]]]),
           "point_labels": torch.tensor([[1]])}
    out = model([rec], multimask_output=False)
    out[0]["low_res_logits"].mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > 0.8 * len(grads)


def test_tinyvit_conv_bn_folded_in_eval_equals_conv_then_bn():
    """Conv2d_BN folds BatchNorm into the convolution in eval mode; training mode still runs the BN."""
    from basam.models.tiny_vit import Conv2d_BN

    torch.manual_seed(0)
    for groups, ks in ((1, 1), (8, 3)):
        m = Conv2d_BN(8, 8, ks=ks, pad=ks // 2, groups=groups)
        with torch.no_grad():
            m.bn.running_mean.normal_(0, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
            m.bn.weight.normal_(1, 0.2)
            m.bn.bias.normal_(0, 0.2)
        x = torch.randn(2, 8, 9, 11)
        m.eval()
        with torch.no_grad():
            want = m.bn(m.c(x))
            assert torch.allclose(m(x), want, atol=1e-5)
            assert torch.allclose(m(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)
        m.train()
        out = m(x)
        assert torch.allclose(out.mean((0, 2, 3)), m.bn.bias, atol=1e-4)  # batch statistics, not running ones


def test_bf16_model_predicts_like_fp32():
    """A model cast to bf16 (the fast GPU setting) runs the whole predictor (point, box, mask prompt)
    and agrees with fp32 on nearly every pixel."""
    import numpy as np

    import basam

    img = (np.random.default_rng(0).random((120, 180, 3)) * 255).astype(np.uint8)
    outs = []
    for dtype in (torch.float32, torch.bfloat16):
        p = basam.Predictor(basam.load_model("basam_tiny").to(dtype), resolution=192)
        p.set_image(img)
        masks, scores, low = p.predict(point_coords=[[90, 60]], point_labels=[1], box=[30, 20, 150, 100])
        masks2, _, _ = p.predict(point_coords=[[90, 60]], point_labels=[1], mask_input=low[:1])
        assert scores.dtype == np.float32 and low.dtype == np.float32
        outs.append((masks, scores, masks2))
    (m32, s32, r32), (m16, s16, r16) = outs
    assert (m32 == m16).mean() > 0.97 and (r32 == r16).mean() > 0.97
    assert np.abs(s32 - s16).max() < 0.05


@pytest.mark.parametrize("dist", ["manhattan", "euclidean", "flat"])
def test_tinyvit_attention_folds_bmam_into_dense_bias(dist):
    """TinyViT's window attention adds the BM-AM distance to its own dense bias once per call: same
    logits as the generic path that builds the distance from grid coordinates, gradients included."""
    from basam.attention import AttentionConfig, attend, layer_scale
    from basam.models.tiny_vit import Attention

    torch.manual_seed(0)
    cfg = AttentionConfig.from_preset("basam", dist=dist, trainable_slopes=True, beta=0.5)
    attn = Attention(dim=32, key_dim=8, num_heads=4, window_size=5, attention=cfg)
    attn.bam.configure_attention(cfg)
    torch.nn.init.normal_(attn.attention_biases)
    x = torch.randn(3, 25, 32)
    got = attn(x)
    # the generic path: slopes and the dense table handed to attend separately
    B, N, _ = x.shape
    q, k, v = attn.qkv(attn.norm(x)).view(B, N, attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=3)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    scale = layer_scale(attn.key_dim, cfg, window_tokens=N, image_tokens=N, stride=attn.stride, default_train_size=attn.train_size)
    ref = attend(q, k, v, scale=scale, grid=(5, 5), slopes=attn.bam.slopes, dist=dist,
                 dense_bias=attn.attention_biases[:, attn.attention_bias_idxs], backend="reference")
    want = attn.proj(ref.transpose(1, 2).reshape(B, N, -1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(got.square().sum(), [attn.bam.slopes, attn.attention_biases])
    g2 = torch.autograd.grad(want.square().sum(), [attn.bam.slopes, attn.attention_biases])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert g1[0].abs().sum() > 0


def test_conv_stem_replaces_the_patch_projection_at_any_resolution(tmp_path):
    from basam.checkpoint import save_model
    from basam.models.image_encoder import ConvStem, PatchEmbed

    arch = dict(depth=2, embed_dim=32, num_heads=2, global_attn_indexes=[1], window_size=4)
    plain = create_model("basam_tiny", **arch)
    stem = create_model("basam_tiny", stem=[8, 8, 16, 16], **arch)
    assert isinstance(plain.image_encoder.patch_embed, PatchEmbed) and isinstance(stem.image_encoder.patch_embed, ConvStem)
    names = {k for k in stem.state_dict() if k.startswith("image_encoder.patch_embed.")}
    assert "image_encoder.patch_embed.proj.weight" in names and "image_encoder.patch_embed.stem.0.weight" in names
    assert {k for k in plain.state_dict() if k.startswith("image_encoder.patch_embed.")} == {
        "image_encoder.patch_embed.proj.weight", "image_encoder.patch_embed.proj.bias"}  # SAM's names untouched
    for side in (64, 96, 160):
        emb, _ = stem.image_encoder(torch.randn(1, 3, side, side))
        assert emb.shape == (1, 128, side // 16, side // 16)
    # every pixel of a 16 x 16 patch and its neighbours reach the token (overlapping 3x3 convs)
    x = torch.zeros(1, 3, 64, 64, requires_grad=True)
    stem.image_encoder.patch_embed(x)[0, 1, 1].sum().backward()
    reach = x.grad.abs().sum((0, 1)) > 0
    assert reach[16:32, 16:32].all() and reach[15, 16:32].any()
    with pytest.raises(ValueError, match="stride-2 stages"):
        create_model("basam_tiny", stem=[8, 8, 16], **arch)
    # the architecture travels in the file: the model loads back with its stem, strictly
    path = tmp_path / "stem.safetensors"
    save_model(stem, path, metadata={"architecture": __import__("json").dumps({**arch, "stem": [8, 8, 16, 16]})})
    again = basam.load_model("basam_tiny", checkpoint=path)
    assert torch.equal(again.image_encoder.patch_embed.stem[0].weight, stem.image_encoder.patch_embed.stem[0].weight)
