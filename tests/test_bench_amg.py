"""basam bench --part amg (src/basam/bench_amg.py): basam's AutomaticMaskGenerator and the official
SamAutomaticMaskGenerator timed side by side in one run, on the same weights, with the ratio printed.

The command builds full-size models; here bench.build_official / build_basam are swapped for a
reduced ViT-B at 256 px (4 blocks of 64, tests/oracles.py; a decoder 32 wide) and its official twin
(``bench_amg.official_twin``: the segment_anything classes with the same sizes and weights), so the
test runs in seconds. Random weights give masks covering the whole image, which the official
thresholds (0.88 / 0.95) drop; a hook on both models alike turns each point prompt into a disc
(predicted IoU 0.95, stability ~0.96), so both generators keep masks and the test can check that
they did the same work.
"""

import json

import numpy as np
import pytest
import torch

import oracles
from basam import bench
from basam.bench_amg import official_twin
from basam.cli import main
from basam.errors import InputError
from basam.load import load_weights_into
from basam.models.registry import create_model, get_spec, shrink

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

SIZE = 256
ARCH = dict(oracles.REDUCED["sam_vit_b"], img_size=SIZE,
            decoder=dict(transformer_dim=32, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32))


def discs(sam, radius=12.0, slope=8.0):
    """Hook ``sam`` (official or basam): the mask of a point is a disc of ``radius`` low-res px
    (48 image px) around it (logits ``slope * (radius - distance)``, all three outputs alike),
    predicted IoU 0.95. Stability at offset 1: ((r - 1/slope) / (r + 1/slope))^2 = 0.96 > 0.95."""
    seen = {}

    def keep_points(module, args, kwargs):
        points = args[0] if args else kwargs.get("points")  # the official predictor passes keywords
        seen["points"] = None if points is None else points[0]

    def bump(module, args, output):
        low, iou = output[0], output[1]
        pts = seen["points"]
        if pts is None:
            return output
        h, w = low.shape[-2:]
        stride = SIZE / w  # low-res px -> input px (both encode at SIZE here)
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        p = pts[:, 0, :].float() / stride - 0.5  # (B, 2) in low-res pixel centres
        d = ((xx[None] - p[:, 0, None, None]) ** 2 + (yy[None] - p[:, 1, None, None]) ** 2).sqrt()  # (B, h, w)
        new = (slope * (radius - d))[:, None].expand_as(low).to(low.dtype)
        return (new, torch.full_like(iou, 0.95), *output[2:])

    sam.prompt_encoder.register_forward_pre_hook(keep_points, with_kwargs=True)
    sam.mask_decoder.register_forward_hook(bump)
    return sam


@pytest.fixture
def reduced_vit_b(monkeypatch):
    """Make the bench build the reduced ViT-B and its official twin (same random weights, hooked)."""
    ref = oracles.randomize(create_model("sam_vit_b", **ARCH), seed=1).eval()
    spec = shrink(get_spec("sam_vit_b"), **ARCH)
    built = []

    def build_official(model):
        assert model == "sam_vit_b"
        built.append("official")
        return discs(official_twin(spec, ref.state_dict()))

    def build_basam(model, preset, state_dict=None, checkpoint=None):
        assert model == "sam_vit_b" and state_dict is not None  # the baseline's weights are passed on
        m = create_model("sam_vit_b", attention=preset, **ARCH)
        load_weights_into(m, state_dict, model_name=model, label="official random weights")
        built.append("basam")
        return discs(m.eval())

    monkeypatch.setattr(bench, "build_official", build_official)
    monkeypatch.setattr(bench, "build_basam", build_basam)
    return built


def test_cli_amg_official_and_basam_with_ratio(reduced_vit_b, tmp_path, capsys):
    out = tmp_path / "amg.json"
    rc = main(["bench", "-q", "--model", "sam_vit_b", "--part", "amg", "--baseline", "official", "--attention", "vanilla",
               "--resolution", str(SIZE), "--points-per-side", "2", "--device", "cpu", "--warmup", "1", "--iters", "1",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    official, ours = rows
    assert official["impl"] == "official" and ours["impl"] == "basam"
    assert all(r["part"] == "amg" and r["status"] == "ok" and r["ms"] > 0 for r in rows)
    # same weights, same grid: the same masks (tests/test_amg.py checks the records themselves)
    assert official["extra"]["masks"] == ours["extra"]["masks"] == 4  # one disc per point, no overlaps
    assert official["extra"]["points_per_side"] == ours["extra"]["points_per_side"] == 2
    assert ours["extra"]["time_vs_official"] == pytest.approx(ours["ms"] / official["ms"])
    # both figures and the ratio on screen
    lines = [line for line in text.splitlines() if line.startswith("amg ")]
    assert len(lines) == 2 and lines[0].startswith("amg official") and lines[1].startswith("amg basam")
    assert f"x{ours['extra']['time_vs_official']:.3f} official" in lines[1]
    assert f"{official['ms']:.2f}" in text and f"{ours['ms']:.2f}" in text
    assert reduced_vit_b == ["official", "official", "basam"]  # the baseline, its weights for basam, basam


def test_official_generator_only_at_its_own_size(reduced_vit_b):
    """basam runs at any resolution; the official generator only at its model's img_size."""
    results = bench.run_bench(["sam_vit_b"], [128], presets=["vanilla"], parts=["amg"], baseline="official",
                              device="cpu", warmup=1, iters=1, progress=False, amg_points_per_side=2)
    official, ours = results
    assert official.status == f"unsupported: the official mask generator runs at {SIZE} px only"
    assert ours.status == "ok" and ours.ms > 0 and ours.extra["image"] == "85x128"
    assert "time_vs_official" not in ours.extra


@pytest.mark.parametrize("argv, message", [
    (["--points-per-side", "0"], "--points-per-side must be at least 1"),
])
def test_bad_points_one_line(argv, message, capsys):
    rc = main(["bench", "-q", "--model", "basam_tiny", "--part", "amg", "--device", "cpu", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1


def test_library_rejects_bad_grid():
    with pytest.raises(InputError, match="positive integer"):
        bench.run_bench(["basam_tiny"], [128], parts=["amg"], amg_points_per_side=0, progress=False)


@pytest.mark.parametrize("run_size", [SIZE, 2 * SIZE])
def test_official_twin_is_basam_vanilla(run_size):
    """The official classes built by official_twin compute basam's vanilla model, at its own size and
    at another (position embedding resampled, relative positions interpolated by the official code)."""
    from segment_anything import SamPredictor

    from basam.bench_amg import scene
    from basam.predictor import Predictor

    ours = oracles.randomize(create_model("sam_vit_b", **ARCH), seed=2).eval()
    twin = official_twin(shrink(get_spec("sam_vit_b"), **ARCH), ours.state_dict(), run_size=run_size)
    assert twin.image_encoder.img_size == run_size and twin.image_encoder.pos_embed.shape[1] == run_size // 16
    image = scene(150, 200, seed=3)
    point, label = np.array([[60.0, 70.0]]), np.array([1])
    theirs = SamPredictor(twin)
    theirs.set_image(image)
    _, iou_t, low_t = theirs.predict(point_coords=point, point_labels=label, multimask_output=True)
    mine = Predictor(ours, resolution=run_size)
    mine.set_image(image)
    _, iou_m, low_m = mine.predict(point_coords=point, point_labels=label, multimask_output=True)
    assert low_m.shape == low_t.shape == (3, run_size // 4, run_size // 4)
    assert np.abs(iou_m - iou_t).max() <= 1e-4 * np.abs(iou_t).max()
    assert np.abs(low_m - low_t).max() <= 1e-4 * np.abs(low_t).max()


def test_official_twin_refuses_other_weights():
    ours = create_model("sam_vit_b", **ARCH)
    sd = dict(ours.state_dict(), **{"extra.weight": torch.zeros(1)})
    with pytest.raises(InputError, match="do not fit"):
        official_twin(shrink(get_spec("sam_vit_b"), **ARCH), sd)
    with pytest.raises(InputError, match="ViT model"):
        official_twin(get_spec("mobile_sam"), ours.state_dict())
