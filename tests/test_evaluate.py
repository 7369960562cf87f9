"""basam evaluate: tables, Δdiff, plot, resume, two processes, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import oracles
from basam import evaluate as ev
from basam.cli import main
from conftest import SHARED_DATA

ARCH = oracles.REDUCED["mobile_sam"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return oracles.official_checkpoint("mobile_sam", ARCH, tmp_path_factory.mktemp("ckpt"))[1]


def _synthetic(root: Path, n=4, seed=0):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = 90 + 10 * i, 120
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        m = np.zeros((h, w), np.uint8)
        m[20 + i : 60, 30 : 80 + i] = 255
        Image.fromarray(img).save(root / "images" / f"img{i}.png")
        Image.fromarray(m).save(root / "masks" / f"img{i}.png")
    return root


def _args(data, out, ckpt, *extra):
    return ["evaluate", "--data", str(data), "--model", "mobile_sam", "--checkpoint", str(ckpt), "--architecture", json.dumps(ARCH),
            "--resolutions", "128", "192", "--attention", "vanilla", "basam", "--prompt", "point", "--out", str(out), "-q", *extra]


def test_tables_plot_and_delta(tmp_path, ckpt, capsys, monkeypatch):
    data = _synthetic(tmp_path / "synth")
    calls = []
    real = ev.evaluate_image
    monkeypatch.setattr(ev, "evaluate_image", lambda pred, *a, **k: calls.append(pred.resolution) or real(pred, *a, **k))
    assert main(_args(data, tmp_path / "out", ckpt)) == 0
    out = tmp_path / "out"
    for f in ("config.json", "per_image.csv", "summary.md", "summary.csv", "summary.json", "plot_synth.png"):
        assert (out / f).is_file(), f
    assert sorted(calls) == [128] * 8 + [192] * 8  # 4 images x 2 presets per resolution: one encode each
    summary = json.loads((out / "summary.json").read_text())["datasets"]["synth"]
    assert [(r["attention"], r["resolution"], r["n"]) for r in summary["rows"]] == [("vanilla", 128, 4), ("vanilla", 192, 4), ("basam", 128, 4), ("basam", 192, 4)]
    for d in summary["delta"]:
        base = next(r for r in summary["rows"] if r["attention"] == d["attention"] and r["resolution"] == 128)
        row = next(r for r in summary["rows"] if r["attention"] == d["attention"] and r["resolution"] == 192)
        assert d["mae"] == pytest.approx(row["mae"] - base["mae"])
    lines = (out / "per_image.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 4 * 2 * 2 and lines[0].startswith("dataset,image,resolution,attention")
    assert "Δdiff" in (out / "summary.md").read_text() and "Δdiff" in capsys.readouterr().out
    assert Image.open(out / "plot_synth.png").size[0] > 400


def test_resume_after_interruption_gives_identical_results(tmp_path, ckpt, monkeypatch):
    data = _synthetic(tmp_path / "synth")
    assert main(_args(data, tmp_path / "full", ckpt)) == 0
    full = json.loads((tmp_path / "full" / "summary.json").read_text())

    real = ev.evaluate_image
    count = {"n": 0}

    def dying(*a, **k):
        count["n"] += 1
        if count["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ev, "evaluate_image", dying)
    assert main(_args(data, tmp_path / "resumed", ckpt)) == 130
    rec = tmp_path / "resumed" / "records.rank0.jsonl"
    assert len(rec.read_text().splitlines()) == 5
    with open(rec, "a") as f:
        f.write('{"dataset": "synth", "ima')  # a line cut short by a kill
    monkeypatch.setattr(ev, "evaluate_image", real)
    assert main(_args(data, tmp_path / "resumed", ckpt)) == 0
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text()) == full
    assert len(rec.read_text().splitlines()) == 16


def test_two_processes_equal_one(tmp_path, ckpt):
    data = _synthetic(tmp_path / "synth", n=5)
    # Same thread count as the two workers (OMP_NUM_THREADS=1): the CPU convolutions' summation
    # order, hence the last bits of the masks' logits, depends on it; sharding must not.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(data, tmp_path / "one", ckpt)) == 0
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "basam.evaluate",
           *_args(data, tmp_path / "two", ckpt)[1:]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two").glob("records.rank*.jsonl")) == ["records.rank0.jsonl", "records.rank1.jsonl"]
    one = json.loads((tmp_path / "one" / "summary.json").read_text())["datasets"]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())["datasets"]
    assert two == one


def test_bad_inputs_are_one_line_errors(tmp_path, ckpt, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        _args(empty, tmp_path / "o1", ckpt),
        _args(tmp_path / "missing", tmp_path / "o2", ckpt),
        _args(f"{_synthetic(tmp_path / 's')}:coco", tmp_path / "o3", ckpt),
    ]
    vit_ckpt = oracles.official_checkpoint("sam_vit_b", oracles.REDUCED["sam_vit_b"], tmp_path)[1]
    cases.append(_args(tmp_path / "s", tmp_path / "o4", vit_ckpt))
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("basam: error:"), err
    assert not (tmp_path / "o4").exists()  # the checkpoint is checked before anything is written
    # Same --out, other settings: refused instead of mixing two runs.
    assert main(_args(tmp_path / "s", tmp_path / "o5", ckpt)) == 0
    assert main(_args(tmp_path / "s", tmp_path / "o5", ckpt, "--seed", "3")) == 2
    assert "other settings (seed)" in capsys.readouterr().err


def test_unreadable_image_is_a_counted_skip(tmp_path, ckpt):
    data = _synthetic(tmp_path / "synth")
    good = (data / "images" / "img1.png").read_bytes()
    (data / "images" / "img1.png").write_bytes(good[: len(good) // 2])  # header fine, body truncated
    assert main(_args(data, tmp_path / "out", ckpt)) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["synth"]
    assert s["skipped"] == 1 and all(r["n"] == 3 for r in s["rows"])


def test_real_data_layouts(tmp_path, ckpt):
    src = SHARED_DATA / "duts-te"
    if not src.is_dir():
        pytest.skip(f"real data not found at {src}")
    duts = tmp_path / "DUTS-TE"
    (duts / "DUTS-TE-Image").mkdir(parents=True)
    (duts / "DUTS-TE-Mask").mkdir()
    for img in sorted((src / "images").iterdir())[:3]:
        (duts / "DUTS-TE-Image" / img.name).symlink_to(img)
        mask = src / "masks" / (img.stem + ".png")
        (duts / "DUTS-TE-Mask" / mask.name).symlink_to(mask)
    argv = _args(duts, tmp_path / "out", ckpt)
    argv[argv.index("--prompt") + 1] = "box+point"
    assert main(argv) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())["datasets"]["DUTS-TE"]
    assert all(r["n"] == 3 for r in s["rows"])
    assert all(0.0 <= r["mae"] <= 1.0 and 0.0 <= r["iou"] <= 1.0 for r in s["rows"])


# ----------------------------------------------------------------------------------------------
# Output errors, skipped pairs, resume with other spellings of the same paths


def _small_args(data, out, ckpt, *extra):
    """One resolution, one preset: the cheapest run that still writes every report."""
    return ["evaluate", "--data", str(data), "--model", "mobile_sam", "--checkpoint", str(ckpt), "--architecture", json.dumps(ARCH),
            "--resolutions", "64", "--attention", "vanilla", "--prompt", "center", "--out", str(out), "-q", *extra]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("basam: error:") and "Traceback" not in err[0], err
    return err[0]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _full_disk_for(monkeypatch, match: str):
    """Make os.fsync fail with ENOSPC for files whose path contains ``match`` (a full disk, seen
    where a writer makes its data durable)."""
    import errno

    real = os.fsync

    def fsync(fd):
        if match in _fd_path(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_out_errors_are_one_line_and_write_nothing(tmp_path, ckpt, capsys, monkeypatch):
    data = _synthetic(tmp_path / "synth", n=1)
    # --out is an existing file: refused before the model loads, the file untouched
    (tmp_path / "taken").write_text("keep me")
    assert main(_small_args(data, tmp_path / "taken", ckpt)) == 2
    assert "is a file, not a folder" in _one_error(capsys) and (tmp_path / "taken").read_text() == "keep me"
    # a folder that cannot be written (root passes os.access everywhere: simulated)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    assert main(_small_args(data, ro / "out", ckpt)) == 2
    assert "is not writable" in _one_error(capsys) and list(ro.iterdir()) == []
    monkeypatch.undo()
    # a full disk at the first file written: one line, no config.json, no temp file
    _full_disk_for(monkeypatch, "config.json")
    assert main(_small_args(data, tmp_path / "full", ckpt)) == 2
    assert "No space left on device" in _one_error(capsys)
    assert [p.name for p in (tmp_path / "full").iterdir()] == []


def test_records_and_reports_are_never_half_written(tmp_path, monkeypatch):
    from types import SimpleNamespace

    out = tmp_path / "out"
    out.mkdir()
    w = ev.RecordWriter(out, 0)
    w.write({"dataset": "d", "image": "a", "resolution": 64, "attention": "vanilla", "skipped": "corrupt"})
    _full_disk_for(monkeypatch, "records.rank0.jsonl")
    with pytest.raises(ev.InputError) as ei:
        w.write({"dataset": "d", "image": "b", "resolution": 64, "attention": "vanilla", "skipped": "corrupt"})
    w.close()
    assert "No space left on device" in str(ei.value) and "\n" not in str(ei.value)
    lines = (out / "records.rank0.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 1 and lines[0].endswith("\n")  # the failed record is not there, not even in part
    monkeypatch.undo()

    settings = ev.EvalSettings(data=["d"], model="basam_tiny", checkpoint=None, resolutions=[64], attention=["vanilla"], prompt="point")
    datasets = [SimpleNamespace(name="d", skipped=[("images/c.png", "no mask")])]
    ev.write_reports(out, settings, datasets)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "records.rank0.jsonl").write_text(json.dumps({"dataset": "d", "image": "z", "resolution": 64, "attention": "vanilla",
                                                          "skipped": "truncated"}) + "\n")
    _full_disk_for(monkeypatch, "summary.md")  # the 4th report file of 5 fails: none is replaced
    with pytest.raises(ev.InputError, match="No space left on device"):
        ev.write_reports(out, settings, datasets)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "records.rank0.jsonl"} == \
        {k: v for k, v in before.items() if k != "records.rank0.jsonl"}


@pytest.fixture(scope="module")
def skip_run(tmp_path_factory, ckpt):
    """One run over 2 good pairs and 4 bad ones: an image without a mask, a mask without an image,
    a mask of another size, and an image cut short (fails only when decoded)."""
    base = tmp_path_factory.mktemp("skips")
    data = _synthetic(base / "synth", n=3)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(data / "images" / "lonely.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(data / "masks" / "orphan.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(data / "masks" / "img0.png")  # image is 90x120
    good = (data / "images" / "img2.png").read_bytes()
    (data / "images" / "img2.png").write_bytes(good[: len(good) // 2])
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(_small_args(data, base / "out", ckpt))
    assert rc == 0, stderr.getvalue()[-2000:]
    return data, base / "out", stdout.getvalue()


def test_every_skipped_pair_is_listed_with_its_reason(skip_run):
    data, out, console = skip_run
    expected = {"images/lonely.png": "no mask", "masks/orphan.png": "no image", "images/img0.png": "size mismatch",
                "img2": "truncated or corrupt"}
    md = (out / "summary.md").read_text()
    for text in (console, md):
        assert "4 pair(s) skipped" in text
        for name, reason in expected.items():
            line = next((ln for ln in text.splitlines() if f"`{name}`" in ln), None)
            assert line is not None and reason in line, (name, text)
    assert "4 pair(s) skipped, listed above" in console
    rows = list(__import__("csv").DictReader((out / "per_image.csv").open()))
    skipped = {r["image"]: r["skipped"] for r in rows if r["skipped"]}
    assert set(skipped) == set(expected) and all(reason in skipped[n] for n, reason in expected.items())
    assert sum(1 for r in rows if not r["skipped"]) == 1  # img1, the one good pair left
    s = json.loads((out / "summary.json").read_text())["datasets"]["synth"]
    assert s["skipped"] == 4 and len(s["skipped_pairs"]) == 4 and s["rows"][0]["n"] == 1


def test_resume_accepts_the_same_folders_spelled_otherwise(skip_run, ckpt, tmp_path, monkeypatch, capsys):
    data, out, _ = skip_run
    monkeypatch.setattr(ev, "evaluate_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    monkeypatch.chdir(data.parent)
    link = tmp_path / "link"
    link.symlink_to(data.parent)
    for spelling in (f"./{data.name}/", str(link / data.name)):  # relative; through a linked parent folder
        argv = _small_args(spelling, os.path.relpath(out), os.path.relpath(ckpt))
        assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(_small_args(data, out, ckpt, "--seed", "1")) == 2  # another setting is still refused
    assert "other settings (seed)" in _one_error(capsys)


def test_paired_differences_with_bootstrap_intervals(tmp_path, ckpt):
    """Every preset against the first at each resolution, and every resolution against the first per
    preset, paired over images: the mean is the mean of the per-image differences in per_image.csv,
    the 95 % interval brackets it, and the table and the interval plot are written."""
    import csv

    from basam.evaluate import PAIRED_METRICS

    data = _synthetic(tmp_path / "synth", n=5)
    out = tmp_path / "out"
    assert main(_args(data, out, ckpt)) == 0
    paired = json.loads((out / "summary.json").read_text())["datasets"]["synth"]["paired"]
    kinds = [(d["kind"], d["attention"], d["vs_attention"], d["resolution"], d["vs_resolution"]) for d in paired]
    assert kinds == [("preset", "basam", "vanilla", 128, 128), ("preset", "basam", "vanilla", 192, 192),
                     ("resolution", "vanilla", "vanilla", 192, 128), ("resolution", "basam", "basam", 192, 128)]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    value = {(r["image"], int(r["resolution"]), r["attention"]): r for r in rows}
    images = sorted({r["image"] for r in rows})
    for d in paired:
        assert d["n_images"] == 5
        for m in PAIRED_METRICS:
            diffs = [float(value[(i, d["resolution"], d["attention"])][m]) - float(value[(i, d["vs_resolution"], d["vs_attention"])][m])
                     for i in images]
            b = d[m]
            assert b["mean"] == pytest.approx(np.mean(diffs), abs=1e-9)
            assert b["low"] <= b["mean"] <= b["high"] and b["ci"] == 0.95
            assert b["low"] >= min(diffs) - 1e-12 and b["high"] <= max(diffs) + 1e-12
    md = (out / "summary.md").read_text()
    assert "95 % bootstrap interval" in md and "basam − vanilla at 192" in md
    assert Image.open(out / "plot_synth_paired.png").size[0] > 400


def test_paired_differences_between_two_runs(tmp_path, ckpt):
    """Two evaluate folders (here: the same model with another BA-SAM beta) compared image by image:
    identical settings give exactly zero, the changed one gives the mean of its per-image differences;
    folders prompted differently are refused."""
    from basam.evaluate import PAIRED_METRICS, paired_between_runs

    data = _synthetic(tmp_path / "synth", n=4)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(_args(data, a, ckpt)) == 0
    assert main(_args(data, b, ckpt, "--beta", "0.1")) == 0
    diffs = paired_between_runs(b, a)
    assert [(d["dataset"], d["attention"], d["resolution"]) for d in diffs] == [
        ("synth", "basam", 128), ("synth", "basam", 192), ("synth", "vanilla", 128), ("synth", "vanilla", 192)]
    recs_a, recs_b = ev.read_records(a), ev.read_records(b)
    for d in diffs:
        assert d["n_images"] == 4
        for m in PAIRED_METRICS:
            per = [recs_b[k][m] - recs_a[k][m] for k in recs_a if k[2] == d["resolution"] and k[3] == d["attention"]]
            assert d[m]["mean"] == pytest.approx(np.mean(per), abs=1e-9) and d[m]["low"] <= d[m]["mean"] <= d[m]["high"]
            if d["attention"] == "vanilla":  # beta does not touch vanilla attention
                assert d[m]["mean"] == 0 and d[m]["low"] == d[m]["high"] == 0
    assert any(d["iou"]["mean"] != 0 or d["mae"]["mean"] != 0 for d in diffs if d["attention"] == "basam")
    # every preset of the run against one preset of the reference (a fine-tuned basam vs the untuned vanilla)
    cross = paired_between_runs(b, a, reference_attention="vanilla")
    assert [(d["attention"], d["vs_attention"]) for d in cross] == [("basam", "vanilla")] * 2 + [("vanilla", "vanilla")] * 2
    for d in cross:
        per = [recs_b[(k[0], k[1], k[2], d["attention"])]["iou"] - recs_a[k]["iou"] for k in recs_a
               if k[2] == d["resolution"] and k[3] == "vanilla"]
        assert d["iou"]["mean"] == pytest.approx(np.mean(per), abs=1e-9)
    assert main(_args(data, c, ckpt, "--seed", "1")) == 0  # another seed: other random points
    with pytest.raises(ev.InputError, match="differently"):
        paired_between_runs(c, a)
    with pytest.raises(ev.InputError, match="no evaluate records"):
        paired_between_runs(tmp_path / "synth", a)
    # the study's table of them (scripts/compare_runs.py): one row per difference, the JSON beside it
    md = tmp_path / "cmp" / "fusion.md"
    md.parent.mkdir()
    script = [sys.executable, str(ROOT / "scripts" / "compare_runs.py"), "--reference", str(a)]
    proc = subprocess.run([*script, f"beta0.1={b}", "--out", str(md)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert md.read_text().count("| beta0.1 | synth |") == 4 and "| beta0.1 | synth | basam | basam | 128 |" in md.read_text()
    assert json.loads(md.with_suffix(".json").read_text())["runs"]["beta0.1"]["differences"] == json.loads(json.dumps(diffs))
    proc = subprocess.run([*script, f"seed1={c}", "--out", str(tmp_path / "cmp" / "bad.md")], capture_output=True, text=True)
    assert proc.returncode == 2 and "prompted differently (seed 1 vs 0)" in proc.stderr
    assert sorted(p.name for p in md.parent.iterdir()) == ["fusion.json", "fusion.md"]  # nothing written for the refused one


def test_oracle_multimask_keeps_the_candidate_closest_to_the_truth(tmp_path, ckpt):
    """--multimask oracle scores the best of the three candidates against the ground truth: per
    image at least the IoU of the candidate the model's own score picks (--multimask on), and equal
    to the best candidate's IoU computed here from the predictor."""
    import basam
    from basam.data.datasets import open_data_spec
    from basam.data.prompts import make_prompt
    from basam.metrics import image_metrics

    data = _synthetic(tmp_path / "synth", n=4)
    runs = {}
    for mode in ("on", "oracle"):
        argv = _args(data, tmp_path / mode, ckpt, "--multimask", mode)
        argv[argv.index("--attention") + 1 : argv.index("--attention") + 3] = ["vanilla"]
        argv[argv.index("--resolutions") + 1 : argv.index("--resolutions") + 3] = ["128"]
        assert main(argv) == 0
        runs[mode] = {k[1]: r for k, r in ev.read_records(tmp_path / mode).items()}
        assert json.loads((tmp_path / mode / "summary.json").read_text())["settings"]["multimask"] == mode
    assert all(runs["oracle"][i]["iou"] >= runs["on"][i]["iou"] - 1e-12 for i in runs["on"])
    model = basam.load_model("mobile_sam", checkpoint=ckpt, architecture=ARCH, attention="vanilla")
    predictor = basam.Predictor(model, resolution=128)
    (ds,) = open_data_spec(str(data))
    for k in range(len(ds)):
        image, gt = ds.load(k)
        prompt = make_prompt(gt, "point", seed=0, key=f"{ds.name}/{ds[k].name}")
        predictor.set_image(image)
        logits, _, _ = predictor.predict(point_coords=prompt.point_coords, point_labels=prompt.point_labels,
                                         multimask_output=True, return_logits=True)
        best = max(image_metrics(lg >= 0, gt)["iou"] for lg in logits)
        assert runs["oracle"][ds[k].name]["iou"] == pytest.approx(best, abs=1e-12)


def test_one_run_compares_every_knob_and_beta_variants_do_not_leak(tmp_path, ckpt, capsys):
    """``--attention`` variants with options (beta=, count=, decoder, a distance) in one run: each is
    the model evaluated with that knob changed; a beta= variant replaces the slopes for itself only
    (the plain basam variant after it gives what a run of basam alone gives)."""
    import csv

    data = _synthetic(tmp_path / "synth", n=3)
    variants = ["vanilla", "basam:beta=0.1", "basam", "nsf:count=image", "basam:decoder", "basam:euclidean:beta=0.3"]
    small = ["--resolutions", "192", "--attention"]

    def run(name, attention):
        argv = _args(data, tmp_path / name, ckpt)
        cut = argv.index("--resolutions")
        argv = argv[:cut] + small + attention + argv[argv.index("--prompt"):]
        assert main(argv) == 0, capsys.readouterr().err
        rows = list(csv.DictReader((tmp_path / name / "per_image.csv").open()))
        return {(r["image"], r["attention"]): float(r["iou_pred"]) for r in rows}

    every = run("every", variants)
    alone = run("alone", ["vanilla", "basam"])
    images = sorted({i for i, _ in every})
    for i in images:
        assert every[(i, "basam")] == alone[(i, "basam")]  # no leak from basam:beta=0.1 before it
        assert every[(i, "vanilla")] == alone[(i, "vanilla")]
    differs = lambda a, b: any(every[(i, a)] != every[(i, b)] for i in images)  # noqa: E731
    for v in ("basam:beta=0.1", "basam:decoder", "basam:euclidean:beta=0.3"):
        assert differs(v, "basam"), v
    assert differs("nsf:count=image", "vanilla")
    summary = json.loads((tmp_path / "every" / "summary.json").read_text())["datasets"]["synth"]
    assert {d["attention"] for d in summary["paired"] if d["kind"] == "preset"} == set(variants[1:])
    for bad, why in (("basam:beta=-1", "beta must be a number"), ("basam:count=all", "unknown option"),
                     ("basam:flat:euclidean", "sets dist twice"), ("fast", "unknown attention preset")):
        assert main(_args(data, tmp_path / "bad", ckpt)[:-1] + ["--attention", bad]) == 2
        assert why in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_decoder_only_variants_reuse_the_encoding(tmp_path, ckpt, capsys, monkeypatch):
    """``X:decoder`` right after ``X`` changes nothing the encoder sees: one encoding serves both,
    and the numbers are those of ``X:decoder`` evaluated alone."""
    import csv

    from basam.predictor import Predictor

    data = _synthetic(tmp_path / "synth", n=3)
    encodes = []
    real = Predictor.set_image
    monkeypatch.setattr(Predictor, "set_image", lambda self, *a, **k: encodes.append(self.resolution) or real(self, *a, **k))

    def run(name, attention):
        argv = _args(data, tmp_path / name, ckpt)
        cut = argv.index("--resolutions")
        argv = argv[:cut] + ["--resolutions", "192", "--attention", *attention] + argv[argv.index("--prompt"):]
        assert main(argv) == 0, capsys.readouterr().err
        rows = list(csv.DictReader((tmp_path / name / "per_image.csv").open()))
        flags.update({(name, r["image"], r["attention"]): r["encoded"] for r in rows})
        return {(r["image"], r["attention"]): (r["iou_pred"], r["iou"]) for r in rows}

    flags = {}
    shared = run("shared", ["basam", "basam:decoder", "nsf", "nsf:decoder"])
    assert len(encodes) == 3 * 2  # basam and nsf per image; their :decoder twins reuse the embedding
    # per_image.csv says which rows' seconds include the encoder
    images = {image for image, _ in shared}
    assert len(images) == 3 and flags == {("shared", image, v): "0" if v.endswith(":decoder") else "1"
                                          for image in images for v in ("basam", "basam:decoder", "nsf", "nsf:decoder")}
    encodes.clear()
    alone = run("alone", ["basam:decoder", "nsf:decoder"])
    assert len(encodes) == 3 * 2
    for (image, variant), value in alone.items():
        assert shared[(image, variant)] == value, (image, variant)
