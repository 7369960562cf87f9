"""basam bench (src/basam/bench.py): the command runs on the CPU, reports every case, writes JSON and
a plot atomically, measures the official implementation on the same weights, and rejects bad input
with one line."""

import json

import pytest
import torch

from basam import bench
from basam.cli import main


def test_cli_table_json_plot(tmp_path, capsys):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", "-q", "--model", "basam_tiny", "--resolution", "128", "192", "--part", "encoder", "predictor",
               "--device", "cpu", "--iters", "1", "--warmup", "1", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "basam_tiny" in text and "ms/call" in text
    payload = json.loads(out_json.read_text())
    rows = payload["results"]
    assert len(rows) == 2 * 2 * 2  # parts x resolutions x presets (vanilla, basam)
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert all(r["params_m"] > 1 for r in rows)
    assert {r["preset"] for r in rows} == {"vanilla", "basam"}
    assert all(r["predict_ms"] > 0 for r in rows if r["part"] == "predictor")
    assert all("time_vs_vanilla" in r["extra"] for r in rows if r["preset"] == "basam")
    assert out_png.stat().st_size > 1000 and out_png.read_bytes()[:4] == b"\x89PNG"
    assert "torch" in payload["environment"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_official_baseline_same_weights_and_ratios():
    """ViT-B at 256 px on the CPU: the official encoder runs with its position embedding resampled,
    basam gets the official weights, and the ratios are computed from the measured times."""
    pytest.importorskip("segment_anything")
    results = bench.run_bench(["sam_vit_b"], [256], presets=["vanilla"], baseline="official", device="cpu",
                              warmup=1, iters=1, progress=False)
    official, ours = results
    assert official.case.impl == "official" and official.status == "ok" and official.ms > 0
    assert ours.case.impl == "basam" and ours.status == "ok"
    assert ours.extra["time_vs_official"] == pytest.approx(ours.ms / official.ms)
    # same architecture: only basam's BA-SAM slopes (heads x blocks) are extra
    assert (ours.params_m - official.params_m) * 1e6 == pytest.approx(12 * 12)


def test_resampled_official_encoder_matches_basam():
    """What the baseline runs at a non-native size is the same function as basam's vanilla encoder."""
    pytest.importorskip("segment_anything")
    official = bench.build_official("sam_vit_b")
    ours = bench.build_basam("sam_vit_b", "vanilla", state_dict=official.state_dict())
    torch.nn.init.normal_(official.image_encoder.pos_embed, std=0.5)
    ours.image_encoder.pos_embed.data.copy_(official.image_encoder.pos_embed.data)
    bench.resample_official_pos_embed(official.image_encoder, 12)
    x = torch.randn(1, 3, 192, 192)
    with torch.inference_mode():
        want = official.image_encoder(x)
        got = ours.image_encoder(x)[0]
    assert (got - want).abs().max() / want.abs().max() < 1e-4


@pytest.mark.parametrize("argv, message", [
    (["--json", "out.txt"], "--json must end in .json"),
    (["--plot", "/nonexistent-dir/p.png"], "does not exist"),
    (["--model", "nope"], "nope"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
])
def test_bad_input_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main(["bench", "-q", "--model", "basam_tiny", "--device", "cpu", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_baseline_needs_a_known_official_model(capsys):
    rc = main(["bench", "-q", "--model", "basam_tiny", "--device", "cpu", "--baseline", "official"])
    assert rc == 2 and "no official implementation" in capsys.readouterr().err


def test_plot_and_ratios_from_results(tmp_path):
    """Ratios pair each basam case with the official one of the same size; out-of-memory cases are
    kept in the table and marked on the plot."""
    C = bench.BenchCase
    results = [
        bench.BenchResult(C("official", "sam_vit_b", "encoder", 1024, "bf16", "vanilla", False), ms=20.0, peak_gib=2.0),
        bench.BenchResult(C("basam", "sam_vit_b", "encoder", 1024, "bf16", "vanilla", False), ms=5.0, peak_gib=0.5),
        bench.BenchResult(C("basam", "sam_vit_b", "encoder", 1024, "bf16", "basam", False), ms=5.5, peak_gib=0.5),
        bench.BenchResult(C("official", "sam_vit_b", "encoder", 4096, "bf16", "vanilla", False), status="oom"),
        bench.BenchResult(C("basam", "sam_vit_b", "encoder", 4096, "bf16", "basam", False), ms=200.0, peak_gib=1.5),
    ]
    bench._add_ratios(results)
    assert results[1].extra["time_vs_official"] == pytest.approx(0.25)
    assert results[2].extra["time_vs_vanilla"] == pytest.approx(1.1)
    assert "time_vs_official" not in results[4].extra  # the official case did not fit
    table = bench.format_table(results)
    assert "oom" in table and "0.250" in table
    path = tmp_path / "p.png"
    bench.plot_results(results, path)
    assert path.read_bytes()[:4] == b"\x89PNG"
