"""ONNX export (basam.export): onnxruntime on the CPU == basam in PyTorch, and == the official decoder.

Same random weights on reduced architectures (tests/oracles.py), at 1024 and at other resolutions,
vanilla and basam presets, for SAM ViT, MobileSAM (TinyViT) and HQ-SAM. Tolerance as in
test_parity.py: max abs difference <= 1e-4 x the reference's scale (fp32). The decoder also
against the official ``SamOnnxModel`` exported from the official model with the same weights: same
input / output names, dtypes and shapes, and the same outputs on the same inputs. The quantized
export on basam_tiny's trained weights with a real image: its error is printed and bounded loosely.
"""

import json
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs the onnx package (pip install 'basam[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="the export parity tests need onnxruntime (pip install 'basam[onnx]')")

import onnx  # noqa: E402

import basam  # noqa: E402
import oracles  # noqa: E402
from oracles import prompt_kinds  # noqa: E402
from basam.errors import InputError  # noqa: E402
from basam.export import OnnxPredictor, export_onnx  # noqa: E402
from conftest import shared_images  # noqa: E402

REL_TOL = 1e-4
# A small decoder for the tests that do not compare with the official one (which is 256 wide).
SMALL_DECODER = dict(transformer_dim=64, num_heads=4, mlp_dim=128, iou_head_hidden_dim=64)


def close(ours, ref, what, tol=REL_TOL):
    ours, ref = np.asarray(ours, dtype=np.float32), np.asarray(ref, dtype=np.float32)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-6)
    err = float(np.abs(ours - ref).max())
    assert err <= tol * scale, f"{what}: max abs diff {err:.3g} > {tol} x scale {scale:.3g}"
    return err / scale


def _image(seed, h, w):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128
    return np.clip(base[..., None] + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_graphs(paths, resolution):
    """No control flow (chunk loops, backend branches), standard operators only; the encoder holds no
    resampling (the position embedding and relative-position tables are folded into constants)."""
    for part in ("encoder", "decoder"):
        graph = onnx.load(str(paths[part])).graph
        ops = {n.op_type for n in graph.node}
        assert not ops & {"Loop", "If", "Scan"}, f"{part}: control flow {ops & {'Loop', 'If', 'Scan'}}"
        assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, f"{part}: non-standard operators"
        if part == "encoder":
            assert not ops & {"Resize", "Range", "EyeLike", "Shape"}, f"encoder at {resolution}: tables not folded {ops}"


def _check_predictor(onnx_dir, model, resolution, image, hq=False, multimask=(True, False), **predict_kw):
    """OnnxPredictor == basam.Predictor: embedding, every prompt kind, mask prompt fed back."""
    ours = OnnxPredictor(onnx_dir, threads=2)
    ref = basam.Predictor(model, resolution=resolution)
    ours.set_image(image)
    ref.set_image(image)
    close(ours.get_image_embedding(), ref.get_image_embedding().numpy(), f"{model.name}@{resolution} embedding")
    if hq:
        close(ours.interm_features[0], ref.interm_features[0].numpy(), f"{model.name}@{resolution} interm embedding")
    H, W = image.shape[:2]
    for name, kw in prompt_kinds(H, W).items():
        for mm in multimask:
            what = f"{model.name}@{resolution} {name} multimask={mm}"
            lg, s, low = ours.predict(multimask_output=mm, return_logits=True, **kw, **predict_kw)
            lg_ref, s_ref, low_ref = ref.predict(multimask_output=mm, return_logits=True, **kw, **predict_kw)
            close(low, low_ref, what + " low-res logits")
            close(s, s_ref, what + " IoU predictions")
            close(lg, lg_ref, what + " full-size logits")
    # mask prompt alone (no points: an empty point set) and with a point
    kw = prompt_kinds(H, W)["point"]
    mm = multimask[-1]
    _, _, low_prev = ref.predict(multimask_output=False, **kw, **predict_kw)
    for extra in ({}, kw):
        a = ours.predict(mask_input=low_prev, multimask_output=mm, return_logits=True, **extra, **predict_kw)
        b = ref.predict(mask_input=low_prev, multimask_output=mm, return_logits=True, **extra, **predict_kw)
        for x, y, part in zip(a, b, ("logits", "IoU", "low-res")):
            close(x, y, f"{model.name}@{resolution} mask prompt {sorted(extra)} {part}")
    masks, _, _ = ours.predict(**kw, **predict_kw)
    assert masks.dtype == np.bool_ and masks.shape[1:] == (H, W)
    return ours


def _export_official(sam_onnx_model, inputs, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(sam_onnx_model, tuple(inputs.values()), str(path), dynamo=False, export_params=True, opset_version=17,
                          do_constant_folding=True, input_names=list(inputs), output_names=["masks", "iou_predictions", "low_res_masks"],
                          dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
    return _session(path)


def _signature(values):
    return [(v.name, v.type, v.shape) for v in values]


def _same_contract(ours, official):
    """Same names in the same order, same dtypes and ranks; every dimension both fix is equal."""
    for kind in ("inputs", "outputs"):
        a = _signature(getattr(ours, f"get_{kind}")())
        b = _signature(getattr(official, f"get_{kind}")())
        assert [x[:2] for x in a] == [y[:2] for y in b], f"{kind}: {a} vs official {b}"
        for (name, _, sa), (_, _, sb) in zip(a, b):
            assert len(sa) == len(sb), f"{kind} {name}: rank of {sa} vs official {sb}"
            for da, db in zip(sa, sb):
                if isinstance(da, int) and isinstance(db, int):
                    assert da == db, f"{kind} {name}: shape {sa} vs official {sb}"


def _decoder_feed(embeddings, coords, labels, mask, has_mask, orig):
    return {"image_embeddings": embeddings, "point_coords": np.asarray(coords, np.float32)[None],
            "point_labels": np.asarray(labels, np.float32)[None], "mask_input": mask.astype(np.float32),
            "has_mask_input": np.array([has_mask], np.float32), "orig_im_size": np.asarray(orig, np.float32)}


def _official_dummy(grid=(64, 64)):
    """The dummy inputs of the official export script (orig_im_size 1500 x 2250)."""
    return {"image_embeddings": torch.randn(1, 256, *grid), "point_coords": torch.randint(0, 1024, (1, 5, 2)).float(),
            "point_labels": torch.randint(0, 4, (1, 5)).float(), "mask_input": torch.randn(1, 1, 4 * grid[0], 4 * grid[1]),
            "has_mask_input": torch.tensor([1.0]), "orig_im_size": torch.tensor([1500.0, 2250.0])}


# The official decoder crops with ``int(tensor)``, which its traced graph freezes at the dummy
# orig_im_size (1500 x 2250 -> 683 x 1024 resized): compare on an image of that aspect ratio.
ORIG = (750, 1125)


def test_sam_vit_1024_vanilla_matches_torch_and_official_decoder(tmp_path):
    name, arch = "sam_vit_b", oracles.REDUCED["sam_vit_b"]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=1)
    model = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    paths = export_onnx(model, tmp_path / "onnx", 1024)
    _check_graphs(paths, 1024)
    image = _image(1, *ORIG)
    ours = _check_predictor(paths["encoder"].parent, model, 1024, image)

    from segment_anything.utils.onnx import SamOnnxModel

    theirs = _export_official(SamOnnxModel(official, return_single_mask=False), _official_dummy(), tmp_path / "official.onnx")
    dec = _session(paths["decoder"])
    _same_contract(dec, theirs)
    emb = ours.get_image_embedding()
    H, W = ORIG
    rng = np.random.default_rng(0)
    feeds = [
        _decoder_feed(emb, [[W * 0.4, H * 0.5], [0, 0]], [1, -1], np.zeros((1, 1, 256, 256)), 0.0, ORIG),
        _decoder_feed(emb, [[300, 200], [500, 400], [100, 600]], [1, 0, 1], rng.normal(0, 3, (1, 1, 256, 256)), 1.0, ORIG),
        _decoder_feed(emb, [[100, 120], [700, 600]], [2, 3], np.zeros((1, 1, 256, 256)), 0.0, ORIG),
    ]
    for i, feed in enumerate(feeds):
        for a, b, out in zip(dec.run(None, feed), theirs.run(None, feed), ("masks", "iou_predictions", "low_res_masks")):
            close(a, b, f"decoder vs official, feed {i}: {out}")


def test_sam_hq_1024_basam_matches_torch_and_official_hq_decoder(tmp_path):
    name, arch = "sam_hq_vit_b", oracles.REDUCED["sam_hq_vit_b"]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=2)
    model = basam.load_model(name, checkpoint=ckpt, architecture=arch, attention="basam")
    paths = export_onnx(model, tmp_path / "onnx", 1024)  # the official HQ defaults: SAM + HQ mask, single
    _check_graphs(paths, 1024)
    image = _image(2, *ORIG)
    ours = _check_predictor(paths["encoder"].parent, model, 1024, image, hq=True, multimask=(False,), hq_token_only=False)
    with pytest.raises(InputError, match="hq_token_only"):
        ours.predict(**prompt_kinds(*ORIG)["point"], hq_token_only=True)
    with pytest.raises(InputError, match="multimask_output"):
        ours.predict(**prompt_kinds(*ORIG)["point"], multimask_output=True)

    from segment_anything_hq.utils.onnx import SamOnnxModel

    k = len(arch["global_attn_indexes"])
    dummy = _official_dummy()
    dummy = {"image_embeddings": dummy.pop("image_embeddings"), "interm_embeddings": torch.randn(k, 1, 64, 64, arch["embed_dim"]), **dummy}
    theirs = _export_official(SamOnnxModel(official, hq_token_only=False, multimask_output=False), dummy, tmp_path / "official_hq.onnx")
    dec = _session(paths["decoder"])
    _same_contract(dec, theirs)
    H, W = ORIG
    feed = _decoder_feed(ours.get_image_embedding(), [[W * 0.4, H * 0.5], [0, 0]], [1, -1], np.zeros((1, 1, 256, 256)), 0.0, ORIG)
    interm = ours.interm_features  # (1, 1, h, w, C): the official decoder reads [0] of K
    mine = dec.run(None, {**feed, "interm_embeddings": interm})
    official_out = theirs.run(None, {**feed, "interm_embeddings": np.repeat(interm, k, axis=0)})
    for a, b, out in zip(mine, official_out, ("masks", "iou_predictions", "low_res_masks")):
        close(a, b, f"HQ decoder vs official: {out}")


@pytest.mark.parametrize("name, resolution, preset, options, shape", [
    ("sam_vit_b", 512, "basam", {}, (400, 300)),
    ("mobile_sam", 1024, "basam", {}, (300, 400)),
    ("mobile_sam", 768, "vanilla", {}, (360, 480)),
    ("sam_hq_vit_tiny", 512, "basam", dict(hq_token_only=True, multimask_output=True), (480, 360)),
])
def test_export_matches_torch(tmp_path, name, resolution, preset, options, shape):
    model = basam.create_model(name, attention=preset, decoder=SMALL_DECODER, **oracles.REDUCED[name])
    oracles.randomize(model, seed=3).eval()  # random BM-AM slopes too: the export must keep them
    paths = export_onnx(model, tmp_path, resolution, **options)
    _check_graphs(paths, resolution)
    hq = name.startswith("sam_hq")
    kw = dict(hq=True, multimask=(True,), hq_token_only=True) if hq else {}
    _check_predictor(tmp_path, model, resolution, _image(4, *shape), **kw)


@pytest.mark.parametrize("hq", [False, True])
def test_export_of_a_vit_with_a_detail_branch_matches_torch(tmp_path, hq):
    """basam_tiny's detail branch: the encoder graph also gives the stride-4 / stride-8 maps, the
    decoder graph reads them (after HQ's interm_embeddings), and OnnxPredictor feeds them."""
    arch = dict(depth=2, embed_dim=32, num_heads=2, global_attn_indexes=[1], window_size=4, detail=[8, 16, 24])
    model = basam.create_model("basam_tiny", attention="basam", hq=hq, **arch)
    oracles.randomize(model, seed=4).eval()
    options = dict(hq_token_only=True, multimask_output=True) if hq else {}
    paths = export_onnx(model, tmp_path, 320, **options)
    _check_graphs(paths, 320)
    meta = json.loads(paths["metadata"].read_text())
    assert meta["high_res"] is True
    enc, dec = _session(paths["encoder"]), _session(paths["decoder"])
    assert [o.name for o in enc.get_outputs()][-2:] == ["high_res_feats_0", "high_res_feats_1"]
    assert [o.shape for o in enc.get_outputs()][-2:] == [[1, 16, 80, 80], [1, 24, 40, 40]]
    names = [i.name for i in dec.get_inputs()]
    assert names[: 4 if hq else 3] == ["image_embeddings"] + (["interm_embeddings"] if hq else []) + ["high_res_feats_0", "high_res_feats_1"]
    kw = dict(hq=True, multimask=(True,), hq_token_only=True) if hq else {}
    ours = _check_predictor(tmp_path, model, 320, _image(6, 240, 320), **kw)
    assert ours.high_res_features[0].shape == (1, 16, 80, 80)


def test_return_single_mask_follows_the_official_rule(tmp_path):
    """One mask: the single-mask token with more than one click, else the best multimask token."""
    model = basam.create_model("mobile_sam", attention="basam", decoder=SMALL_DECODER, **oracles.REDUCED["mobile_sam"])
    oracles.randomize(model, seed=5).eval()
    export_onnx(model, tmp_path, 512, return_single_mask=True)
    ours = OnnxPredictor(tmp_path)
    ref = basam.Predictor(model, resolution=512)
    image = _image(5, 300, 420)
    ours.set_image(image)
    ref.set_image(image)
    for name, kw in prompt_kinds(300, 420).items():
        lg, s, low = ours.predict(return_logits=True, **kw)
        assert lg.shape[0] == s.shape[0] == low.shape[0] == 1
        # decoder points: clicks + the padding point, or clicks + 2 box corners
        n_points = len(kw.get("point_labels", [])) + (2 if "box" in kw else 1)
        if n_points > 2:
            lg_ref, s_ref, low_ref = ref.predict(multimask_output=False, return_logits=True, **kw)
        else:
            lg_ref, s_ref, low_ref = ref.predict(multimask_output=True, return_logits=True, **kw)
            best = int(np.argmax(s_ref))
            lg_ref, s_ref, low_ref = lg_ref[best : best + 1], s_ref[best : best + 1], low_ref[best : best + 1]
        close(low, low_ref, f"single mask {name} low-res")
        close(s, s_ref, f"single mask {name} IoU")
        close(lg, lg_ref, f"single mask {name} logits")


def test_quantized_export_on_trained_weights(tmp_path, capsys):
    """basam_tiny (trained, bundled) on real images: fp32 ONNX == PyTorch; int8 close to fp32."""
    files = shared_images("duts-te", 3)
    from PIL import Image

    model = basam.load_model("basam_tiny")
    paths = export_onnx(model, tmp_path, 256, quantize=True)
    assert paths["encoder_quant"].stat().st_size < paths["encoder"].stat().st_size
    fp32, int8 = OnnxPredictor(tmp_path, threads=2), OnnxPredictor(tmp_path, quantized=True, threads=2)
    ref = basam.Predictor(model)
    emb_errs, ious, logit_errs = [], [], []
    for f in files:
        image = np.array(Image.open(f).convert("RGB"))
        H, W = image.shape[:2]
        for p in (ref, fp32, int8):
            p.set_image(image)
        close(fp32.get_image_embedding(), ref.get_image_embedding().numpy(), f"basam_tiny {f.name} embedding")
        e = fp32.get_image_embedding()
        emb_errs.append(float(np.abs(int8.get_image_embedding() - e).max() / np.abs(e).max()))
        for kw in prompt_kinds(H, W).values():
            lg_ref, _, _ = ref.predict(multimask_output=False, return_logits=True, **kw)
            lg, _, _ = fp32.predict(multimask_output=False, return_logits=True, **kw)
            lq, _, _ = int8.predict(multimask_output=False, return_logits=True, **kw)
            close(lg, lg_ref, f"basam_tiny {f.name} logits")
            logit_errs.append(float(np.abs(lq - lg).max() / np.abs(lg).max()))
            a, b = lq[0] > 0, lg[0] > 0
            ious.append(float((a & b).sum() / max(1, (a | b).sum())))
    with capsys.disabled():
        print(f"\n[int8 dynamic quantization, basam_tiny @256, {len(files)} DUTS-TE images x 4 prompts] "
              f"embedding max rel err {max(emb_errs):.4f}; mask-logit max rel err {max(logit_errs):.4f}; "
              f"mask IoU vs fp32 mean {np.mean(ious):.4f} min {min(ious):.4f}")
    assert all(np.isfinite(emb_errs)) and all(np.isfinite(logit_errs))
    assert max(emb_errs) < 0.05 and max(logit_errs) < 0.1
    assert min(ious) > 0.9


def test_export_and_runtime_errors(tmp_path):
    model = basam.create_model("sam_vit_b", decoder=SMALL_DECODER, **oracles.REDUCED["sam_vit_b"]).eval()
    with pytest.raises(InputError, match="HQ-SAM"):
        export_onnx(model, tmp_path / "x", 256, hq_token_only=True)
    with pytest.raises(InputError, match="opset"):
        export_onnx(model, tmp_path / "x", 256, opset=9)
    with pytest.raises(InputError, match="resolution"):
        export_onnx(model, tmp_path / "x", 10)
    with pytest.raises(InputError, match="no basam ONNX export"):
        OnnxPredictor(tmp_path)
    export_onnx(model, tmp_path / "ok", 256)
    with pytest.raises(InputError, match="quantized"):
        OnnxPredictor(tmp_path / "ok", quantized=True)
    p = OnnxPredictor(tmp_path / "ok")
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(point_coords=[[1, 1]], point_labels=[1])
    with pytest.raises(InputError, match="HxWx3"):
        p.set_image(np.zeros((4, 4), np.uint8))
    p.set_image(_image(6, 100, 80))
    with pytest.raises(InputError, match="outside"):
        p.predict(point_coords=[[500, 1]], point_labels=[1])
    with pytest.raises(InputError, match="no prompt"):
        p.predict()
    with pytest.raises(InputError, match="hq_token_only"):
        p.predict(point_coords=[[1, 1]], point_labels=[1], hq_token_only=True)


def test_large_model_path_keeps_weights_beside_the_graph(tmp_path, monkeypatch):
    """Models over protobuf's 2 GiB (ViT-H) keep their weights in ``<file>.data``: the same path,
    forced on a small model."""
    from basam.export import exporter

    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 0)
    model = basam.create_model("sam_vit_b", attention="basam", decoder=SMALL_DECODER, **oracles.REDUCED["sam_vit_b"])
    oracles.randomize(model, seed=7).eval()
    paths = export_onnx(model, tmp_path, 256, quantize=True)
    assert (tmp_path / "encoder.onnx.data").is_file() and (tmp_path / "decoder.onnx.data").is_file()
    assert paths["encoder"].stat().st_size < 1_000_000  # the graph only; weights beside it
    onnx.checker.check_model(str(paths["encoder"]))
    _check_predictor(tmp_path, model, 256, _image(7, 200, 150), multimask=(True,))
    q = OnnxPredictor(tmp_path, quantized=True)
    q.set_image(_image(7, 200, 150))
    masks, scores, _ = q.predict(point_coords=[[50, 60]], point_labels=[1])
    assert masks.shape == (3, 200, 150) and np.all(np.isfinite(scores))


# --- command line: basam export onnx / basam segment --runtime onnx ---------------------------------

def _write_png(path, image):
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


def test_cli_export_then_segment_with_onnx_runtime_matches_torch(tmp_path, capsys):
    """`basam export onnx` writes the pair; `basam segment --runtime onnx` runs it and writes the same
    mask as `basam segment` in PyTorch (basam_tiny's shipped weights, basam preset, 320 px)."""
    from PIL import Image

    from basam.cli import main

    out = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", "basam_tiny", "--resolution", "320", "--attention", "basam",
                 "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "encoder" in printed and "decoder" in printed
    assert sorted(p.name for p in out.iterdir()) == ["basam_onnx.json", "decoder.onnx", "encoder.onnx"]
    img = _write_png(tmp_path / "img.png", _image(3, 300, 420))
    args = ["segment", str(img), "--point", "200,150", "--multimask", "-q"]
    assert main(args + ["--runtime", "onnx", "--onnx-dir", str(out), "--out", str(tmp_path / "o.png")]) == 0
    header = capsys.readouterr().out
    assert "(onnx)" in header and "resolution 320" in header and "attention basam" in header
    assert main(args + ["--model", "basam_tiny", "--resolution", "320", "--attention", "basam",
                        "--out", str(tmp_path / "t.png")]) == 0
    for i in range(3):
        a = np.asarray(Image.open(tmp_path / f"o_{i}.png")) > 0
        b = np.asarray(Image.open(tmp_path / f"t_{i}.png")) > 0
        assert a.shape == (300, 420)
        # thresholded logits that agree to 1e-4 x scale: at most a few border pixels may flip
        assert (a != b).mean() < 1e-3, f"candidate {i}: onnx and torch masks differ in {(a != b).mean():.2%} of pixels"


def test_cli_export_and_onnx_runtime_refuse_bad_input(tmp_path, capsys):
    from basam.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    assert main(["export", "onnx", "--model", "basam_tiny", "--out", str(f), "-q"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", "basam_tiny", "--return-single-mask", "--hq-token-only",
                 "--out", str(tmp_path / "x")]) == 2
    assert "sam_hq" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    img = _write_png(tmp_path / "img.png", _image(1, 64, 64))
    seg = ["segment", str(img), "--point", "10,10", "-q", "--out", str(tmp_path / "m.png"), "--runtime", "onnx"]
    assert main(seg) == 2
    assert "--onnx-dir" in capsys.readouterr().err
    assert main(seg + ["--onnx-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "basam export onnx" in err and err.count("\n") == 1
    assert not (tmp_path / "m.png").exists()


def test_failed_export_leaves_an_earlier_export_intact(tmp_path, monkeypatch):
    """The pair is staged and moved in at the end: an export that fails half-way keeps the old files."""
    from basam.export import exporter

    model = basam.load_model("basam_tiny")
    out = tmp_path / "onnx"
    export_onnx(model, out, resolution=256)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(exporter, "_finalize", broken)
    with pytest.raises(InputError, match="No space left"):
        export_onnx(model, out, resolution=320)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_sam2_export_refuses_hq_options_in_one_line(tmp_path):
    """SAM 2 exports (parity in test_export_sam2.py); HQ-SAM's options on it: a one-line InputError
    naming them, and nothing written."""
    from basam.models.registry import create_model

    model = create_model("sam2.1_hiera_tiny", embed_dim=16, stages=(1, 1, 2, 1), global_att_blocks=(3,))
    with pytest.raises(InputError, match="HQ-SAM") as e:
        export_onnx(model, tmp_path / "out", resolution=256, hq_token_only=True)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()
