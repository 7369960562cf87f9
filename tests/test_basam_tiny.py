"""The bundled demonstration model loads offline and segments."""

import numpy as np
import pytest

import basam
from basam.cli import main
from basam.load import bundled_weights


def test_bundled_weights_load_offline(monkeypatch):
    import basam.hub as hub

    def no_network(*a, **k):
        raise AssertionError("basam_tiny must not download anything")

    monkeypatch.setattr(hub, "download_checkpoint", no_network)
    path = bundled_weights("basam_tiny")
    assert path.stat().st_size <= 25 * 2**20
    model = basam.load_model("basam_tiny")
    assert model.img_size == 256 and not model.training
    assert model.attention_config.preset_name == "vanilla"


@pytest.mark.parametrize("resolution,attention", [(256, "vanilla"), (1024, "basam")])
def test_basam_tiny_segments_a_centred_object(resolution, attention):
    """A bright disc on a dark background: the trained model must find most of it from a click."""
    model = basam.load_model("basam_tiny", attention=attention)
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 150) ** 2 + (xx - 200) ** 2 < 80**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [230, 60, 40], [30, 40, 60]).astype(np.float64) + rng.normal(0, 8, (h, w, 3))
    pred = basam.Predictor(model, resolution=resolution)
    pred.set_image(np.clip(image, 0, 255).astype(np.uint8))
    masks, scores, _ = pred.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))
    best = masks[int(np.argmax(scores))]
    assert best.shape == (h, w)
    iou = (best & disc).sum() / (best | disc).sum()
    assert iou > 0.5, f"IoU {iou:.3f} with the disc at {resolution} px"


def test_segment_command_with_basam_tiny(tmp_path, capsys):
    from PIL import Image

    img = np.full((120, 160, 3), 40, np.uint8)
    img[30:90, 50:110] = (220, 200, 40)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["segment", str(tmp_path / "x.png"), "--point", "80,60", "--model", "basam_tiny", "--resolution", "512",
                 "--attention", "basam", "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png"), "-q"]) == 0
    assert Image.open(tmp_path / "m.png").size == (160, 120)
    assert "predicted IoU" in capsys.readouterr().out


def test_bars_script_reports_every_output_with_intervals(tmp_path):
    """scripts/basam_tiny_bars.py: one row per (dataset, output), a verdict on DUTS-TE's two barred
    rows only, intervals that hold their mean, the commands it ran, and a JSON twin."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import SHARED_DATA

    if not (SHARED_DATA / "duts-te").is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA / 'duts-te'} (../shared/data is absent)")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bars.md"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "basam_tiny_bars.py"), "--data", str(SHARED_DATA / "duts-te"),
                           "--max-images", "2", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 0, proc.stderr
    rows = [l for l in out.read_text().splitlines() if l.startswith("| duts-te |")]
    assert len(rows) == 3
    assert "0.60" in rows[0] and "0.55" in rows[1] and "met" not in rows[2]
    assert "FIRST 2 IMAGES" in out.read_text() and "--multimask oracle" in out.read_text()
    payload = json.loads(out.with_suffix(".json").read_text())
    for mode in ("oracle", "off", "on"):
        iou = payload["results"][mode]["duts-te"]["iou"]
        assert iou["n_images"] == 2 and iou["low"] <= iou["mean"] <= iou["high"]
    # the oracle picks the candidate closest to the ground truth: never worse than the model's pick
    assert payload["results"]["oracle"]["duts-te"]["iou"]["mean"] >= payload["results"]["on"]["duts-te"]["iou"]["mean"] - 1e-9
    # a bad checkpoint: one line, exit 2, no table
    bad = subprocess.run([sys.executable, str(root / "scripts" / "basam_tiny_bars.py"), "--checkpoint", str(tmp_path / "nope.safetensors"),
                          "--data", str(SHARED_DATA / "duts-te"), "--max-images", "1", "--work", str(tmp_path / "w2"),
                          "--out", str(tmp_path / "b2.md")], capture_output=True, text=True, cwd=root)
    assert bad.returncode == 2 and "basam_tiny_bars:" in bad.stderr and not (tmp_path / "b2.md").exists()


def test_ship_script_writes_a_strictly_loading_file_and_refuses_others(tmp_path):
    """scripts/ship_basam_tiny.py: the shipped file has the checkpoint's tensors and the note, loads
    as basam_tiny; a file of another model or architecture is refused in one line, nothing written."""
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from basam.checkpoint import read_metadata, read_state_dict, save_model

    root = Path(__file__).resolve().parents[1]
    script = [sys.executable, str(root / "scripts" / "ship_basam_tiny.py")]
    model = basam.load_model("basam_tiny")
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)  # a "trained" change the shipped file must carry
    ckpt = save_model(model, tmp_path / "ckpt.safetensors", {"step": "42"})
    out = tmp_path / "shipped.safetensors"
    proc = subprocess.run(script + [str(ckpt), "--note", "test weights", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = read_metadata(out)
    assert meta["note"] == "test weights" and meta["architecture"] == "{}" and meta["step"] == "42"
    a, b = read_state_dict(ckpt), read_state_dict(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(basam.load_model("basam_tiny", checkpoint=out).mask_decoder.iou_token.weight,
                       model.mask_decoder.iou_token.weight)
    from basam.models.registry import create_model

    other = save_model(create_model("sam_vit_b", embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,)),
                       tmp_path / "other.safetensors")
    bad = subprocess.run(script + [str(other), "--note", "x", "--out", str(tmp_path / "b.safetensors")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a basam_tiny checkpoint" in bad.stderr
    assert not (tmp_path / "b.safetensors").exists()


def test_diagnostics(tmp_path):
    """scripts/basam_tiny_diagnostics.py on a synthetic folder: the ceiling of a stride-4 mask grid
    is at least the stride-16 one and both are IoUs; the frame check scores both frames; the
    test-time check scores its six rows (best of 3 at least the model's pick); the disc check gives
    a row per attention mode with four resolutions."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "synth"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    for i in range(3):
        yy, xx = np.mgrid[0:150, 0:200]
        m = (yy - 70) ** 2 + (xx - 90 - 10 * i) ** 2 < (30 + 5 * i) ** 2
        Image.fromarray(np.where(m[..., None], 220, 30).repeat(3, 2).astype(np.uint8)).save(data / "images" / f"s{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(data / "masks" / f"s{i}.png")
    script = [sys.executable, str(root / "scripts" / "basam_tiny_diagnostics.py")]
    out = subprocess.run(script + ["ceiling", "--data", str(data)], capture_output=True, text=True, check=True).stdout
    s4, s16 = (float(re.search(rf"stride\s+{s}: ([0-9.]+)", out).group(1)) for s in (4, 16))
    assert 0.8 < s4 <= 1.0 and 0 < s16 <= s4
    weights = str(root / "src" / "basam" / "weights" / "basam_tiny.safetensors")
    out = subprocess.run(script + ["frame", "--checkpoint", weights, "--data", str(data), "--n", "2"],
                         capture_output=True, text=True, check=True).stdout
    scores = [float(x) for x in re.findall(r"(?:best of 3|single-mask) ([0-9.]+)", out)]
    assert len(scores) == 4 and all(0 <= x <= 1 for x in scores) and "SAM's frame" in out and "squashed" in out
    out = subprocess.run(script + ["testtime", "--data", str(data), "--n", "2"], capture_output=True, text=True, check=True).stdout
    rows = dict(re.findall(r"^  (\S.*?)\s+([0-9.]+)$", out, flags=re.M))
    assert len(rows) == 6 and all(0 <= float(v) <= 1 for v in rows.values()), out
    assert float(rows["best of 3"]) >= float(rows["model's pick of 3"]) and "2 images" in out
    out = subprocess.run(script + ["disc", "--label", "bundled"], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.startswith("| bundled ")]
    assert [ln.split()[2] for ln in lines] == ["vanilla", "nsf", "basam"], out
    cells = [[float(x) for x in re.findall(r"([0-9.]+) / ([0-9.]+)", ln) for x in x] for ln in lines]
    assert all(len(c) == 8 and all(0 <= x <= 1 for x in c) for c in cells)
    assert cells[0][0] > 0.5  # the model's pick at 256 px, as test_basam_tiny_segments_a_centred_object asks
