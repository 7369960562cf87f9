"""SAM 2 / SAM 2.1 image models: parity with the official ``sam2`` package (random weights, 1024 px,
vanilla, fp32 CPU), checkpoint loading through basam's loader, any resolution and BA-SAM on Hiera.

The official model is built from its own configs (hydra, as ``sam2.build_sam.build_sam2`` does,
with the image predictor's post-processing options), with the trunk reduced by config overrides
for CI; one test runs the full-size tiny model.
"""

from __future__ import annotations

import logging
from pathlib import Path
import time
import warnings

import numpy as np
import pytest
import torch

from basam.errors import CheckpointError, InputError
from basam.load import load_model
from basam.models.registry import MODEL_SPECS, SAM2_OFFICIAL_FILES, create_model, get_spec
from basam.models.sam2 import VIDEO_ONLY_PREFIXES, Sam2, split_video_keys
from basam.sam2_predictor import Sam2Predictor
from oracles import randomize

SAM2_NAMES = [n for n in MODEL_SPECS if n.startswith(("sam2.1_hiera_", "sam2_hiera_"))]


def _sam2_oracle():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sam2.build_sam  # noqa: F401
            from sam2.sam2_image_predictor import SAM2ImagePredictor  # noqa: F401
        return sam2
    except Exception as e:  # noqa: BLE001 - any install problem: skip with the reason
        pytest.skip(f"the official sam2 package is not importable ({type(e).__name__}: {e}); "
                    "install it with SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2")


def reduced_arch(name: str) -> dict:
    """A small trunk with the variant's own heads, windows and position tables: 5 blocks, one of each kind
    (block 1 pools inside windows, 2 pools, 3 is global, 4 pools)."""
    h = get_spec(name).encoder
    return dict(embed_dim=16 * h.num_heads, stages=(1, 1, 2, 1), global_att_blocks=(3,))


def build_official(name: str, arch: dict = None, seed: int = 0):
    """The official SAM2Base for ``name`` (with ``arch`` trunk overrides), randomised, eval mode."""
    _sam2_oracle()
    from sam2.build_sam import build_sam2

    overrides = []
    if arch:
        spec = get_spec(name).encoder
        dim = arch.get("embed_dim", spec.embed_dim)
        stages = arch.get("stages", spec.stages)
        glob = arch.get("global_att_blocks", spec.global_att_blocks)
        chans = [dim * 2**i for i in range(len(stages))][::-1]
        overrides = [f"++model.image_encoder.trunk.embed_dim={dim}", f"++model.image_encoder.trunk.stages=[{','.join(map(str, stages))}]",
                     f"++model.image_encoder.trunk.global_att_blocks=[{','.join(map(str, glob))}]",
                     f"++model.image_encoder.neck.backbone_channel_list=[{','.join(map(str, chans))}]"]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_sam2(get_spec(name).oracle.key, None, device="cpu", hydra_overrides_extra=overrides)
    return randomize(model, seed).eval()


@pytest.fixture
def oracle():
    """The sam2 package (the test skips, with the reason, where it is not installed)."""
    return _sam2_oracle()


def save_official(model, tmp_path, name):
    path = tmp_path / f"{name}.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float32)), torch.as_tensor(np.asarray(b, dtype=np.float32))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


BAR = 1e-4


def image(h=600, w=800, seed=0):
    g = np.random.default_rng(seed)
    base = g.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
    up = np.kron(base, np.ones((8, 8, 1)))[:h, :w]  # blocky, so resizing does not average it away
    return up.astype(np.uint8)


def official_features(predictor):
    return [predictor._features["high_res_feats"][0], predictor._features["high_res_feats"][1], predictor._features["image_embed"]]


def compare_predictors(ours: Sam2Predictor, theirs, prompts, figures: dict) -> None:
    """Run every prompt set through both predictors; record and check the worst relative differences."""
    for kw in prompts:
        for multimask in (True, False):
            m1, s1, l1 = ours.predict(**kw, multimask_output=multimask, return_logits=True)
            m2, s2, l2 = theirs.predict(**kw, multimask_output=multimask, return_logits=True)
            for key, a, b in (("logits", l1, l2), ("iou", s1, s2), ("masks", m1, m2)):
                figures[key] = max(figures.get(key, 0.0), rel(a, b))
    assert max(figures.values()) <= BAR, figures


def prompts_for(h, w, low_res=None):
    out = [dict(point_coords=np.array([[w * 0.4, h * 0.55]]), point_labels=np.array([1])),
           dict(point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6]]), point_labels=np.array([1, 0])),
           dict(box=np.array([w * 0.1, h * 0.2, w * 0.8, h * 0.9])),
           dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]), box=np.array([w * 0.2, h * 0.2, w * 0.9, h * 0.7]))]
    if low_res is not None:
        out.append(dict(point_coords=np.array([[w * 0.5, h * 0.5]]), point_labels=np.array([1]), mask_input=low_res))
    return out


def check_parity(name, arch, tmp_path, img, all_prompts=True):
    from sam2.modeling.sam2_base import SAM2Base
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    official = build_official(name, arch)
    assert isinstance(official, SAM2Base)
    path = save_official(official, tmp_path, name)
    ours = load_model(name, checkpoint=path, architecture=arch or None)
    assert isinstance(ours, Sam2)
    p_ours, p_theirs = Sam2Predictor(ours), SAM2ImagePredictor(official)
    with torch.no_grad():
        p_ours.set_image(img)
        p_theirs.set_image(img)
    figures = {}
    mine = [*p_ours.features.multiscale, p_ours.features.embeddings]
    for level, (a, b) in enumerate(zip(mine, official_features(p_theirs))):
        figures[f"features_{level}"] = rel(a, b)
    with torch.no_grad():
        trunk_ours = ours.image_encoder.trunk(torch.zeros(1, 3, 256, 256) + 0.3)
        trunk_theirs = official.image_encoder.trunk(torch.zeros(1, 3, 256, 256) + 0.3)
    figures["trunk_256px"] = max(rel(a, b) for a, b in zip(trunk_ours, trunk_theirs))
    _, _, low = p_theirs.predict(point_coords=np.array([[100, 100]]), point_labels=np.array([1]), multimask_output=False)
    prompts = prompts_for(*img.shape[:2], low_res=low)
    # reduced models: a point, a box and a mask (with a point); the full-size one: two points (one
    # negative), point + box and the mask (both sets together cover all five)
    compare_predictors(p_ours, p_theirs, [prompts[i] for i in ((1, 3, 4) if all_prompts else (0, 2, 4))], figures)
    # object scores: the decoder's fourth output, for a point prompt
    with torch.no_grad():
        pts = torch.tensor([[[300.0, 500.0]]])
        lab = torch.tensor([[1]], dtype=torch.int)
        _, _, obj_ours = ours.decode_with_object_scores(p_ours.features, pts, lab, multimask_output=True)
        sparse, dense = official.sam_prompt_encoder(points=(pts, lab), boxes=None, masks=None)
        _, _, _, obj_theirs = official.sam_mask_decoder(
            image_embeddings=p_theirs._features["image_embed"], image_pe=official.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False,
            high_res_features=p_theirs._features["high_res_feats"])
    figures["object_score"] = rel(obj_ours, obj_theirs)
    assert max(figures.values()) <= BAR, figures
    return figures, ours, official


# Through the predictor at 1024 px: the other two 2.1 window/table layouts (sam2.1_hiera_tiny runs at
# full size below) and the 2.0 key set; sam2_hiera_small runs through the batch test below.
PREDICTOR_PARITY = ["sam2.1_hiera_base_plus", "sam2.1_hiera_large", "sam2_hiera_tiny"]


@pytest.mark.parametrize("name", PREDICTOR_PARITY)
def test_parity_reduced(name, tmp_path, oracle):
    figures, _, _ = check_parity(name, reduced_arch(name), tmp_path, image(300, 400), all_prompts=False)
    print(name, "reduced", {k: f"{v:.1e}" for k, v in figures.items()})


@pytest.mark.parametrize("name", [n for n in SAM2_NAMES if n not in PREDICTOR_PARITY and n not in ("sam2_hiera_small", "sam2.1_hiera_tiny")])
def test_parity_encoder_reduced(name, tmp_path, oracle):
    """The other names: their official file loads strictly and every neck level matches (256 px)."""
    arch = reduced_arch(name)
    official = build_official(name, arch, seed=2)
    ours = load_model(name, checkpoint=save_official(official, tmp_path, name), architecture=arch)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        emb, _, fine = ours.image_encoder(x)
        ref = official.image_encoder(x)["backbone_fpn"]
    figures = [rel(a, b) for a, b in zip([*fine, emb], ref)]
    assert len(figures) == 3 and max(figures) <= BAR, figures


def test_parity_full_tiny(tmp_path, oracle):
    t = time.perf_counter()
    figures, _, _ = check_parity("sam2.1_hiera_tiny", None, tmp_path, image(480, 640, seed=1))
    print("sam2.1_hiera_tiny full", {k: f"{v:.1e}" for k, v in figures.items()}, f"{time.perf_counter() - t:.1f} s")


def test_pooled_global_block(tmp_path, oracle):
    """A global block that also pools its queries (queries on one grid, keys on the twice finer one).
    The official classes cannot run it (their window arithmetic divides by the zero window size);
    basam runs it through basam.attention, with NSF counted on the key grid and the pooled BM-AM bias."""
    name = "sam2.1_hiera_small"
    arch = dict(embed_dim=16, stages=(1, 1, 2, 1), global_att_blocks=(1, 2, 3))
    official = build_official(name, arch, seed=4)
    x = torch.randn(1, 3, 256, 256)
    with pytest.raises(ZeroDivisionError), torch.no_grad():
        official.image_encoder.trunk(x)
    ours = load_model(name, checkpoint=save_official(official, tmp_path, name), architecture=arch)
    blk = ours.image_encoder.trunk.blocks[1]
    assert blk.attn.q_stride and blk.window_size == 0 and blk.attn.stride == 4  # keys on the stride-4 map
    with torch.no_grad():
        vanilla = ours.image_encoder.trunk(x)
        assert [tuple(t.shape[-2:]) for t in vanilla] == [(64, 64), (32, 32), (16, 16), (8, 8)]
        ours.set_attention("basam")
        assert rel(ours.image_encoder.trunk(x)[1], vanilla[1]) > 1e-3


def test_batch_interface_matches_official(tmp_path, oracle):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    name = "sam2_hiera_small"
    arch = reduced_arch(name)
    official = build_official(name, arch, seed=3)
    ours = load_model(name, checkpoint=save_official(official, tmp_path, name), architecture=arch)
    imgs = [image(300, 500, 1), image(520, 400, 2)]
    p_ours, p_theirs = Sam2Predictor(ours), SAM2ImagePredictor(official)
    with torch.no_grad():
        p_ours.set_image_batch(imgs)
        p_theirs.set_image_batch(imgs)
    pts = [np.array([[100.0, 120.0]]), np.array([[0.5, 0.25]])]
    labels = [np.array([1]), np.array([1])]
    boxes = [np.array([10, 20, 300, 250]), None]
    for normalize in (True, False):
        pc = pts if normalize else [p / np.array([[im.shape[1], im.shape[0]]]) for p, im in zip(pts, imgs)]
        bb = boxes if normalize else None
        a = p_ours.predict_batch(pc, labels, bb, multimask_output=True, return_logits=True, normalize_coords=normalize)
        b = p_theirs.predict_batch(pc, labels, bb, multimask_output=True, return_logits=True, normalize_coords=normalize)
        for xs, ys in zip(a, b):
            for x, y in zip(xs, ys):
                assert rel(x, y) <= BAR
    assert p_ours.get_image_embedding().shape == (2, 256, 64, 64)


def test_checkpoint_filter_drops_video_keys_by_name(tmp_path, oracle, caplog):
    name = "sam2.1_hiera_tiny"
    arch = reduced_arch(name)
    official = build_official(name, arch)
    sd = official.state_dict()
    _, dropped = split_video_keys(sd)
    assert dropped and all(k.startswith(VIDEO_ONLY_PREFIXES) for k in dropped)
    assert "no_mem_embed" in sd and "no_mem_embed" not in dropped  # the image path uses it
    path = save_official(official, tmp_path, name)
    with caplog.at_level(logging.INFO, logger="basam.models.sam2"):
        load_model(name, checkpoint=path, architecture=arch)
    assert f"dropped {len(dropped)} video-only tensors" in caplog.text
    # anything else that does not fit is still refused (strict): an unknown key, then a missing one
    torch.save({"model": {**sd, "sam_mask_decoder.extra": torch.zeros(1)}}, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_model(name, checkpoint=tmp_path / "extra.pt", architecture=arch)
    torch.save({"model": {k: v for k, v in sd.items() if k != "no_mem_embed"}}, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_model(name, checkpoint=tmp_path / "short.pt", architecture=arch)


def test_registry_names_urls_and_oracle():
    for size in ("tiny", "small", "base_plus", "large"):
        for version, release in (("sam2.1", "092824"), ("sam2", "072824")):
            spec = get_spec(f"{version}_hiera_{size}")
            info = SAM2_OFFICIAL_FILES[spec.name]
            assert info.url == f"https://dl.fbaipublicfiles.com/segment_anything_2/{release}/{version}_hiera_{size}.pt"
            assert info.filename == f"{spec.name}.pt" and info.sha256 is None  # none found published
            assert spec.checkpoint is info  # downloadable (trust on first use)
            assert spec.oracle.package == "sam2" and spec.oracle.key.endswith(".yaml")
    assert get_spec("sam2.1_hiera_large").encoder.window_spec == (8, 4, 16, 8)
    assert get_spec("sam2.1_hiera_base_plus").encoder.window_pos_embed_bkg_spatial_size == (14, 14)


def _small(attention="vanilla", **kw):
    torch.manual_seed(0)
    m = create_model("sam2.1_hiera_tiny", attention=attention, **reduced_arch("sam2.1_hiera_tiny"), **kw)
    return randomize(m, 0).eval()


def _run(model, h, w):
    g = torch.Generator().manual_seed(h * 10000 + w)  # the same input for the same size
    x = model.preprocess(torch.rand(1, 3, h, w, generator=g) * 255, max(h, w)) if h == w else torch.randn(1, 3, h, w, generator=g)
    with torch.no_grad():
        f = model.encode(x)
        low, iou = model.decode(f, torch.tensor([[[w * 0.3, h * 0.6]]]), torch.tensor([[1]]))
    return f, low, iou


def test_any_resolution_square_and_non_square():
    m = _small("basam")
    f, low, iou = _run(m, 1536, 1536)
    assert f.embeddings.shape[-2:] == (96, 96) and [t.shape[-1] for t in f.multiscale] == [384, 192]
    assert low.shape == (1, 3, 384, 384) and torch.isfinite(low).all() and torch.isfinite(iou).all()
    f, low, _ = _run(m, 320, 544)  # not square; 544/16 = 34 tokens is not a whole number of 14-token windows
    assert f.embeddings.shape[-2:] == (20, 34) and low.shape == (1, 3, 80, 136) and torch.isfinite(low).all()
    with pytest.raises(ValueError, match="multiples of 32"):
        m.image_encoder(torch.randn(1, 3, 320, 336))


def test_predictor_at_other_resolutions_and_basam_predictor():
    import basam

    m = _small("basam")
    img = image(300, 420)
    p = Sam2Predictor(m, resolution=384)
    p.set_image(img)
    masks, scores, low = p.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))
    assert masks.shape == (3, 300, 420) and low.shape == (3, 96, 96) and scores.shape == (3,)
    p = Sam2Predictor(m, resolution=360)  # not a multiple of 32: padded to 384, then cropped back
    p.set_image(img)
    masks, _, low = p.predict(box=np.array([10, 10, 300, 200]), multimask_output=False)
    assert masks.shape == (1, 300, 420) and low.shape == (1, 96, 96)
    # basam's own predictor (aspect-preserving resize + padding) runs SAM 2 unchanged
    q = basam.Predictor(m, resolution=320)
    q.set_image(img)
    masks, scores, _ = q.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]), multimask_output=False)
    assert masks.shape == (1, 300, 420) and scores.shape == (1,)
    with pytest.raises(InputError, match="outside"):
        p.predict(point_coords=np.array([[500, 150]]), point_labels=np.array([1]))
    with pytest.raises(InputError, match="no prompt"):
        p.predict()
    with pytest.raises(InputError, match="SAM 2 model"):
        Sam2Predictor(create_model("basam_tiny"))


def test_nsf_identity_at_train_size_and_bias_changes_output():
    """At the training size NSF is the identity (N = N_train in every layer); above it NSF changes
    the global layers; BM-AM changes the output at any size. (train_resolution=256 keeps it fast.)"""
    outs = {}
    m = _small()
    for preset in ("vanilla", "nsf", "basam"):
        m.set_attention(preset, train_resolution=256)
        outs[preset, 256] = _run(m, 256, 256)[1]
        outs[preset, 384] = _run(m, 384, 384)[1]
    assert torch.allclose(outs["vanilla", 256], outs["nsf", 256], atol=1e-6)
    assert not torch.allclose(outs["vanilla", 384], outs["nsf", 384], atol=1e-4)
    assert not torch.allclose(outs["nsf", 256], outs["basam", 256], atol=1e-4)


def test_nsf_uses_each_layers_own_n():
    from basam.attention import AttentionConfig, layer_scale

    m = _small("nsf")
    cfg = m.attention_config
    blocks = m.image_encoder.trunk.blocks
    glob = blocks[3].attn  # global, stage 3: keys on the stride-16 grid
    assert glob.window_tokens is None and glob.stride == 16
    pooled = blocks[4].attn  # pools stage 3 -> 4: window of 14 on the stride-16 key grid
    assert pooled.window_tokens == 14 * 14 and pooled.stride == 16
    d = glob.head_dim
    assert layer_scale(d, cfg, window_tokens=None, image_tokens=96 * 96, stride=16, default_train_size=1024) == pytest.approx(
        d**-0.5 * np.log(96 * 96) / np.log(64 * 64))
    image_count = AttentionConfig.coerce("nsf", nsf_count="image")
    assert layer_scale(pooled.head_dim, image_count, window_tokens=196, image_tokens=96 * 96, stride=16,
                       default_train_size=1024) != pooled.head_dim**-0.5


def test_pooled_bias_distances_in_key_tokens():
    from basam.models.hiera import pooled_distance

    d = pooled_distance((2, 2), (4, 4), (2, 2), "manhattan")
    # the query pooled from keys (0..1, 0..1) sits at key position (0.5, 0.5)
    assert d.shape == (4, 16)
    assert d[0, 0].item() == pytest.approx(1.0) and d[0, 5].item() == pytest.approx(1.0) and d[0, 15].item() == pytest.approx(5.0)
    same = pooled_distance((4, 4), (4, 4), (1, 1), "euclidean")
    assert torch.allclose(same.diagonal(), torch.zeros(16))


def test_slopes_trainable_through_hiera():
    m = _small("basam")
    m.set_attention("basam", trainable_slopes=True)
    m.train()
    x = torch.randn(1, 3, 256, 256)
    f = m.encode(x)
    low, iou = m.decode(f, torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]]))
    (low.mean() + iou.mean()).backward()
    slopes = [blk.attn.bam.slopes for blk in m.image_encoder.trunk.blocks]
    assert all(s.requires_grad for s in slopes)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in slopes)  # pooled ones included


def test_cli_segment_with_random_weights(tmp_path, capsys):
    """``basam segment --model sam2.1_hiera_tiny`` on random weights (a reduced trunk, at 256 px and 512 px)."""
    import json

    from PIL import Image

    from basam.checkpoint import save_model
    from basam.cli import main

    arch = reduced_arch("sam2.1_hiera_tiny")
    ckpt = save_model(_small(), tmp_path / "sam2_random.safetensors")
    img = tmp_path / "img.png"
    Image.fromarray(image(120, 200)).save(img)
    for res in (256, 512):
        out = tmp_path / f"mask_{res}.png"
        rc = main(["segment", str(img), "--model", "sam2.1_hiera_tiny", "--checkpoint", str(ckpt), "--architecture",
                   json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}),
                   "--point", "50,60", "--resolution", str(res), "--out", str(out), "-q"])
        assert rc == 0
        mask = np.asarray(Image.open(out))
        assert mask.shape[:2] == (120, 200)
        # the CLI runs SAM 2 through Sam2Predictor (the official square resize), as its ONNX runtime does
        pred = Sam2Predictor(load_model("sam2.1_hiera_tiny", checkpoint=ckpt, architecture=arch), resolution=res)
        pred.set_image(image(120, 200))
        want, _, _ = pred.predict(np.array([[50.0, 60.0]]), np.array([1]), multimask_output=False)
        assert np.array_equal(mask > 0, want[0] > 0)
    rc = main(["segment", str(img), "--model", "sam2.1_hiera_tiny", "--checkpoint", str(ckpt), "--hq-token-only",
               "--architecture", json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}),
               "--point", "50,60", "--resolution", "256", "--out", str(tmp_path / "x.png"), "-q"])
    assert rc == 2 and "basam: error:" in capsys.readouterr().err


def test_decoder_training_behind_a_frozen_encoder_reaches_the_projections():
    """The trainer encodes under no_grad when the encoder is frozen: the decoder's conv_s0/conv_s1
    (which project the fine maps) must still get gradients."""
    m = _small()
    m.train()
    for n, p in m.named_parameters():
        p.requires_grad_(n.startswith("mask_decoder."))
    with torch.no_grad():
        f = m.encode(torch.randn(1, 3, 256, 256))
    low, iou = m.decode(f, torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]]))
    all_low, all_iou = m.decode_all_tokens(f, torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]]))
    assert all_low.shape == (1, 4, 64, 64) and all_iou.shape == (1, 4)
    m.eval()
    assert torch.allclose(m.decode(f, torch.tensor([[[100.0, 120.0]]]), torch.tensor([[1]]))[0], all_low[:, 1:], atol=1e-5)
    m.train()
    (low.mean() + iou.mean() + all_low.mean()).backward()
    assert m.mask_decoder.conv_s0.weight.grad is not None and m.mask_decoder.conv_s1.weight.grad.abs().sum() > 0
    m.eval()
    with torch.no_grad():  # inference: projected once, in encode
        assert m.encode(torch.randn(1, 3, 256, 256)).multiscale[0].shape[1] == m.mask_decoder.transformer_dim // 8


def test_automatic_mask_generator_runs_on_sam2():
    import basam

    amg = basam.AutomaticMaskGenerator(_small("basam"), points_per_side=4, resolution=256, pred_iou_thresh=0.0,
                                       stability_score_thresh=0.0)
    recs = amg.generate(image(200, 300))
    assert recs and all(r["segmentation"].shape == (200, 300) for r in recs)


# --------------------------------------------------------------------------------------------
# the rest of basam on SAM 2: download, evaluate, train


def test_download_through_the_hub_and_strict_load(tmp_path, oracle, monkeypatch, capsys):
    """``load_model("sam2.1_hiera_tiny")`` with no checkpoint downloads the official file (from a local
    server standing in for dl.fbaipublicfiles.com), says it is unverified (no published SHA-256) and
    loads it strictly; the second call uses the cache and checks it against the recorded hash."""
    import functools
    import http.server
    import threading

    name = "sam2.1_hiera_tiny"
    arch = reduced_arch(name)
    served = tmp_path / "served"
    served.mkdir()
    official = build_official(name, arch)
    save_official(official, served, name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("BASAM_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("BASAM_HUB_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
        model = load_model(name, architecture=arch, progress=False)
        err = capsys.readouterr().err
        assert "UNVERIFIED" in err and "sam2.1_hiera_tiny.pt" in err
        cached = tmp_path / "home" / "checkpoints" / "sam2.1_hiera_tiny.pt"
        assert cached.is_file() and (cached.parent / "sam2.1_hiera_tiny.pt.sha256").is_file()
        # every image-path tensor came over unchanged (the outputs are compared in the parity tests)
        from basam.models.sam2 import sam2_checkpoint_filter

        ours, ref = model.state_dict(), sam2_checkpoint_filter(official.state_dict())
        assert set(ref) == {k for k in ours if not k.endswith(".bam.slopes")}
        assert all(torch.equal(ours[k], v) for k, v in ref.items())
    finally:
        httpd.shutdown()
        httpd.server_close()
    again = load_model(name, architecture=arch, progress=False)  # the server is gone: from the cache
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def _sam2_arch_json() -> str:
    import json

    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in reduced_arch("sam2.1_hiera_tiny").items()})


def _folder(root, n=3, seed=0):
    """images/ + masks/ PNGs: a bright rectangle (the mask) on noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = 100 + 12 * i, 140
        img = rng.integers(0, 70, (h, w, 3)).astype(np.uint8)
        m = np.zeros((h, w), bool)
        m[20 + i: 70, 30: 90 + i] = True
        img[m] += np.array([160, 110, 60], np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"s{i}.png")
    return root


def test_cli_evaluate_on_sam2(tmp_path):
    import json

    from basam.checkpoint import save_model
    from basam.cli import main

    data = _folder(tmp_path / "synth")
    ckpt = save_model(_small("basam"), tmp_path / "sam2.safetensors")
    out = tmp_path / "out"
    rc = main(["evaluate", "--data", str(data), "--model", "sam2.1_hiera_tiny", "--checkpoint", str(ckpt),
               "--architecture", _sam2_arch_json(), "--resolutions", "128", "256", "--attention", "vanilla", "basam",
               "--prompt", "point", "--out", str(out), "-q"])
    assert rc == 0
    rows = json.loads((out / "summary.json").read_text())["datasets"]["synth"]["rows"]
    assert sorted((r["attention"], r["resolution"], r["n"]) for r in rows) == [
        ("basam", 128, 3), ("basam", 256, 3), ("vanilla", 128, 3), ("vanilla", 256, 3)]
    assert all(0.0 <= r["iou"] <= 1.0 and 0.0 <= r["mae"] <= 1.0 for r in rows)
    # the BA-SAM bias changes what the model sees at 256 px (a grid 2x the 128 px one)
    per = {(r["attention"], r["resolution"]): r["mae"] for r in rows}
    assert per[("basam", 256)] != per[("vanilla", 256)]


@pytest.mark.parametrize("policy", ["slopes", "decoder", "full"])
def test_train_policies_on_sam2(tmp_path, policy):
    from basam.checkpoint import read_state_dict, save_model
    from basam.train import config as tc
    from basam.train import load_trained, run

    data = _folder(tmp_path / "synth", n=4)
    model = _small("basam")
    # untrained slopes at their beta init (randomize() moved them; the trainer would reset them to beta)
    fresh = create_model("sam2.1_hiera_tiny", attention="basam", **reduced_arch("sam2.1_hiera_tiny")).state_dict()
    model.load_state_dict({**model.state_dict(), **{k: v for k, v in fresh.items() if k.endswith(".bam.slopes")}})
    init = save_model(model, tmp_path / "init.safetensors")
    arch = {k: list(v) if isinstance(v, tuple) else v for k, v in reduced_arch("sam2.1_hiera_tiny").items()}
    cfg = tc.resolve_config(dict(
        model="sam2.1_hiera_tiny", architecture=arch, checkpoint=str(init), data=[str(data)], out=str(tmp_path / "out"),
        resolution=128, steps=2, batch_size=2, num_workers=0, log_every=1, eval_every=0, save_every=0, warmup=1,
        lr=1e-2 if policy == "slopes" else 1e-3, quiet=True, tensorboard=False, train=policy, attention="basam",
        beta=1.0, prompt="mixed"))  # beta: the preset's, which the init checkpoint's untrained slopes hold
    summary = run(cfg)
    after_path = Path(summary["checkpoint"]) / "model.safetensors"
    before, after = read_state_dict(init), read_state_dict(after_path)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    slopes = {k for k in before if k.endswith(".bam.slopes")}
    assert slopes, "the basam preset gives every Hiera block slopes"
    if policy == "slopes":
        assert changed == slopes
    elif policy == "decoder":
        assert changed and all(k.startswith("mask_decoder.") for k in changed)
        assert any(k.startswith("mask_decoder.conv_s0.") for k in changed)  # the high-resolution projections learn
    else:
        for part in ("image_encoder.trunk.", "image_encoder.neck.", "prompt_encoder.", "mask_decoder."):
            assert any(k.startswith(part) for k in changed), part
    model = load_trained(after_path)
    assert isinstance(model, Sam2)


def test_bench_official_baseline_on_sam2(oracle):
    """``bench --baseline official`` builds the official SAM 2 model (hydra config, random weights), hands
    its weights to basam and pairs the two; the official predictor refuses sizes other than 1024."""
    from basam import bench

    name = "sam2.1_hiera_tiny"
    official = bench.build_official(name)
    assert type(official).__module__.startswith("sam2.") and bench.official_img_size(official) == 1024
    predictor_cls, generator_cls = bench.official_api(official)
    assert predictor_cls.__name__ == "SAM2ImagePredictor" and generator_cls.__name__ == "SAM2AutomaticMaskGenerator"
    ours = bench.build_basam(name, "vanilla", state_dict=official.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = official.forward_image(x)
        got = ours.encode(x)
    assert rel(got.multiscale[0], want["backbone_fpn"][0]) <= BAR  # both projected by the decoder's conv_s0
    torch.set_num_threads(1)
    results = bench.run_bench([name], [128], presets=["vanilla"], parts=["encoder"], baseline="official", device="cpu",
                              warmup=0, iters=1, progress=False)
    theirs, mine = results
    assert theirs.case.impl == "official" and theirs.status == "ok" and mine.status == "ok"
    assert mine.extra["time_vs_official"] == pytest.approx(mine.ms / theirs.ms)
    assert 0 <= mine.params_m - theirs.params_m < 1e-4  # the same encoder plus one BA-SAM slope per head
    refused = bench.run_case(bench.BenchCase("official", name, "predictor", 512, "fp32", "vanilla", False, 1), official,
                             torch.device("cpu"), 0, 1, False)
    assert refused.status == "unsupported: the official predictor runs at 1024 px only"


def test_cli_help_and_package_name_every_sam2_model():
    import re

    import basam
    from basam.cli.options import MODEL_NAMES_HELP

    named = set()
    for group in re.findall(r"[\w.]+(?:\|\w+)*", MODEL_NAMES_HELP.split(":", 1)[1]):
        first, *rest = group.split("|")
        stem = first.rsplit("_", 1)[0] if rest else first
        named |= {first, *(f"{stem}_{r}" for r in rest)}
    assert set(MODEL_SPECS) <= named, sorted(set(MODEL_SPECS) - named)
    assert basam.Sam2Predictor is Sam2Predictor and "Sam2Predictor" in basam.__all__
