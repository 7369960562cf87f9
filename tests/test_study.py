"""scripts/study.sh in its quick mode: the study's whole pipeline (study model, zero-shot variants,
fine-tuning at 2x the training grid, paired bootstrap reports) on two images per dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
EVALS = ("zero_shot", "fine_tuned_slopes", "fine_tuned_decoder_slopes", "fine_tuned_decoder", "hq_independent", "hq_add",
         "hq_product")
ZERO_SHOT = ["vanilla", "nsf", "nsf:count=image", "nsf:decoder", "basam", "basam:euclidean", "basam:flat", "basam:beta=0.1",
             "basam:beta=0.3", "basam:count=image", "basam:decoder"]


@pytest.mark.skipif(not all((SHARED / d).is_dir() for d in ("duts-tr", "duts-te", "kvasir-seg")),
                    reason="needs ../shared/data (duts-tr, duts-te, kvasir-seg)")
def test_study_quick_mode_end_to_end(tmp_path):
    from basam.checkpoint import read_state_dict

    env = {**os.environ, "MODE": "quick", "OUT": str(tmp_path / "study"), "SHARED": str(SHARED),
           "BASAM": f"{sys.executable} -m basam", "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    out = tmp_path / "study"
    for name in EVALS:
        summary = json.loads((out / name / "summary.json").read_text())
        assert set(summary["datasets"]) == {"duts-te"}, name  # quick mode: DUTS-TE only
        for ds in summary["datasets"].values():
            assert {r["resolution"] for r in ds["rows"]} == {256, 512} and all(r["n"] == 2 for r in ds["rows"])
            assert all(d["iou"]["low"] <= d["iou"]["mean"] <= d["iou"]["high"] for d in ds["paired"])
            assert ds["paired"]  # one preset: each size against 256 px; several: each against vanilla too
        one_preset = name in ("fine_tuned_slopes", "fine_tuned_decoder")
        assert (out / name / "plot_duts-te_paired.png").is_file() != one_preset  # the preset-difference plot
    # every zero-shot variant in one run, each paired with vanilla; the knobs reached the model
    zs = json.loads((out / "zero_shot" / "summary.json").read_text())["datasets"]["duts-te"]
    assert [r["attention"] for r in zs["rows"] if r["resolution"] == 256] == ZERO_SHOT
    assert {d["attention"] for d in zs["paired"] if d["kind"] == "preset"} == set(ZERO_SHOT[1:])
    at512 = {r["attention"]: r["mae"] for r in zs["rows"] if r["resolution"] == 512}
    for knob in ("basam:beta=0.1", "basam:euclidean", "basam:count=image", "basam:decoder"):
        assert at512[knob] != at512["basam"], knob
    assert at512["nsf"] != at512["vanilla"]
    # the fine-tuned runs against the untuned vanilla and against the decoder-only control
    ft = json.loads((out / "ft_vs_zero_shot.json").read_text())["runs"]
    assert set(ft) == {"slopes", "decoder+slopes", "decoder"}
    assert {d["vs_attention"] for r in ft.values() for d in r["differences"]} == {"vanilla"}
    ctrl = json.loads((out / "ft_vs_decoder_only.json").read_text())["runs"]["decoder+slopes"]["differences"]
    assert {(d["attention"], d["vs_attention"]) for d in ctrl} == {("vanilla", "vanilla"), ("basam", "vanilla")}
    # fine-tuning the slopes at 512 px moved the slopes and nothing else
    def latest(run):
        d = out / run / "checkpoints"
        return d / (d / "latest").read_text().strip() / "model.safetensors"

    base, ft = read_state_dict(latest("study_model")), read_state_dict(latest("ft_slopes"))
    changed = {k for k in ft if not torch.equal(ft[k], base[k])}
    assert changed and all(k.endswith(".bam.slopes") for k in changed)
    # the HQ variants: the study model's weights untouched, HQ-SAM's own modules added and trained,
    # each with its fusion mode recorded; compared with the plain model and with each other
    from basam.checkpoint import read_metadata
    from basam.train.freeze import HQ_MODULES

    for fusion in ("independent", "add", "product"):
        hq = read_state_dict(latest(f"hq_train_{fusion}"))
        assert read_metadata(latest(f"hq_train_{fusion}"))["hq_fusion"] == fusion
        added = set(hq) - set(base)
        assert added and {k.split(".")[1] for k in added} == set(HQ_MODULES)
        assert all(torch.equal(hq[k], base[k]) for k in base if not k.endswith(".bam.slopes"))
    # the report: every section, the plot, and its numbers are the evaluate folders' own
    report = (out / "report" / "study.md").read_text()
    for section in ("### Zero-shot IoU", "each variant minus vanilla", "Each size minus 256 px", "Fine-tuned at 2x: IoU",
                    "minus the decoder-only control", "HQ-SAM fusion modes: IoU", "HQ fusion minus independent"):
        assert section in report, section
    assert "Not in this report" not in report and (out / "report" / "study_duts-te.png").is_file()
    rep = json.loads((out / "report" / "study.json").read_text())["datasets"]["duts-te"]
    assert rep["absolute"]["zero_shot"]["vanilla"]["512"]["mean"] == pytest.approx(
        next(r["iou"] for r in zs["rows"] if r["attention"] == "vanilla" and r["resolution"] == 512), abs=1e-9)
    vs_plain = (out / "hq_fusion_vs_plain.md").read_text()
    assert all(vs_plain.count(f"| {f} | duts-te |") == 4 for f in ("independent", "add", "product"))  # 2 presets x 2 sizes
    vs_ind = json.loads((out / "hq_fusion_vs_independent.json").read_text())["runs"]
    assert set(vs_ind) == {"add", "product"}


@pytest.mark.skipif(not (SHARED / "duts-te").is_dir(), reason="needs ../shared/data/duts-te")
def test_study_parts_run_only_what_they_name(tmp_path):
    """PARTS picks steps 2-4 (so that two can run side by side); a wrong name is refused up front."""
    weights = ROOT / "src" / "basam" / "weights" / "basam_tiny.safetensors"
    env = {**os.environ, "MODE": "quick", "OUT": str(tmp_path / "study"), "SHARED": str(SHARED), "STUDY_CKPT": str(weights),
           "BASAM": f"{sys.executable} -m basam", "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], cwd=ROOT, env={**env, "PARTS": "zero_shot fine_tune"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "PARTS takes zero_shot, ft, hq; got 'fine_tune'" in bad.stderr
    assert not (tmp_path / "study").exists()
    # fine-tuning first, as beside a zero-shot grid still running: its comparison with the untuned
    # model waits (said so), the one with the decoder-only control does not
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], cwd=ROOT, env={**env, "PARTS": "ft"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    assert "ft_vs_zero_shot.md needs zero_shot finished first" in proc.stderr
    assert "the report needs zero_shot finished first" in proc.stderr
    made = {p.name for p in (tmp_path / "study").iterdir()}
    assert {"fine_tuned_slopes", "ft_vs_decoder_only.md"} <= made and not {"ft_vs_zero_shot.md", "report"} & made, made
    assert not any(m.startswith(("zero_shot", "hq")) for m in made), made
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "study.sh")], cwd=ROOT, env={**env, "PARTS": "zero_shot"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-1500:], proc.stderr[-1500:])
    made = {p.name for p in (tmp_path / "study").iterdir()}
    assert {"zero_shot", "report"} <= made and not any(m.startswith("hq") for m in made), made
