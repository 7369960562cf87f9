"""Tests for the ``basam`` command line (``basam.cli``).

Reduced official checkpoints (random weights, see ``oracles.py``) stand in for the real ones, loaded
with ``--architecture``. Most runs are in-process through ``main([...])``; two go through a real
``python -m basam`` subprocess to check the exit code and the absence of a traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oracles
from basam.cli import main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DUTS_IMAGES = DATA / "duts-te" / "images"

MOBILE = "mobile_sam"
VIT = "sam_vit_b"
ARCH = {name: json.dumps(oracles.REDUCED[name]) for name in (MOBILE, VIT)}

IOU_LINE = re.compile(r"^mask (\d+): predicted IoU -?\d+\.\d{3}  -> (.+)$")
SYN_W, SYN_H = 160, 120  # synthetic image size (non-square, W != H, to catch transposes)


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Reduced official checkpoints, built once: mobile_sam, sam_vit_b, and a truncated mobile_sam."""
    d = tmp_path_factory.mktemp("ckpts")
    paths = {}
    for name in (MOBILE, VIT):
        _, paths[name] = oracles.official_checkpoint(name, oracles.REDUCED[name], d)
    data = paths[MOBILE].read_bytes()
    truncated = d / "mobile_sam_truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    paths["truncated"] = truncated
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic images: a PNG and a JPEG (SYN_W x SYN_H), and a truncated JPEG."""
    d = tmp_path_factory.mktemp("images")
    yy, xx = np.mgrid[0:SYN_H, 0:SYN_W]
    rgb = np.zeros((SYN_H, SYN_W, 3), np.uint8)
    rgb[..., 0] = (xx * 255 // SYN_W).astype(np.uint8)
    rgb[..., 1] = (yy * 255 // SYN_H).astype(np.uint8)
    disk = (xx - 60) ** 2 + (yy - 50) ** 2 < 30**2
    rgb[disk] = (250, 250, 250)
    png = d / "synthetic.png"
    jpg = d / "synthetic.jpg"
    Image.fromarray(rgb).save(png)
    Image.fromarray(rgb).save(jpg, quality=90)
    data = jpg.read_bytes()
    truncated = d / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    return {"png": png, "jpg": jpg, "truncated": truncated, "array": rgb}


@pytest.fixture(scope="module")
def real_image():
    """A small real photo from DUTS-TE (skipped where the shared data is absent)."""
    found = sorted(DUTS_IMAGES.glob("*.jpg")) if DUTS_IMAGES.is_dir() else []
    if not found:
        pytest.skip(f"no DUTS-TE images under {DUTS_IMAGES} (shared data not present)")
    return found[0]


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def model_args(ckpts, name=MOBILE, resolution="256"):
    args = ["--model", name, "--checkpoint", str(ckpts[name]), "--architecture", ARCH[name], "--device", "cpu"]
    if resolution is not None:
        args += ["--resolution", str(resolution)]
    return args


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def mask_lines(stdout):
    """The (index, path) of every ``mask i: predicted IoU ...`` line."""
    found = []
    for line in stdout.splitlines():
        m = IOU_LINE.match(line)
        if m:
            found.append((int(m.group(1)), Path(m.group(2))))
    return found


def check_mask(path, size):
    """The file is a binary 8-bit PNG of PIL size ``size`` = (W, H)."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == size
        values = set(np.unique(np.asarray(im)).tolist())
    assert values <= {0, 255}


# ----------------------------------------------------------------------------------------------
# Successful runs


def test_point_writes_mask_at_image_size_default_resolution(capsys, ckpts, images, out_dir):
    out = out_dir / "mask.png"
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--out", out,
                                      *model_args(ckpts, resolution=None)])
    assert rc == 0, stderr
    check_mask(out, (SYN_W, SYN_H))
    assert mask_lines(stdout) == [(0, out)]
    header = stdout.splitlines()[0]
    assert "model mobile_sam" in header and "resolution 1024" in header and "attention vanilla" in header
    assert re.search(r"encoded in \d+\.\d\d s", stderr)
    assert sorted(p.name for p in out_dir.iterdir()) == ["mask.png"]


def test_real_image_point(capsys, ckpts, real_image, out_dir):
    with Image.open(real_image) as im:
        w, h = im.size
    out = out_dir / "real.png"
    rc, stdout, stderr = run(capsys, ["segment", real_image, "--point", f"{w // 2},{h // 2}", "--out", out,
                                      *model_args(ckpts, resolution=512)])
    assert rc == 0, stderr
    check_mask(out, (w, h))
    assert mask_lines(stdout) == [(0, out)]
    assert "resolution 512" in stdout.splitlines()[0]


def test_box_prompt_vit(capsys, ckpts, images, out_dir):
    out = out_dir / "box.png"
    rc, stdout, stderr = run(capsys, ["segment", images["jpg"], "--box", "20,10,110,95", "--out", out,
                                      *model_args(ckpts, VIT)])
    assert rc == 0, stderr
    check_mask(out, (SYN_W, SYN_H))
    assert mask_lines(stdout) == [(0, out)]
    assert "model sam_vit_b" in stdout.splitlines()[0]


def test_points_and_box_with_overlay(capsys, ckpts, images, out_dir):
    out = out_dir / "m.png"
    overlay = out_dir / "overlay.png"
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--point", "140,110,0",
                                      "--box", "20,10,110,95", "--out", out, "--overlay", overlay,
                                      *model_args(ckpts)])
    assert rc == 0, stderr
    check_mask(out, (SYN_W, SYN_H))
    with Image.open(overlay) as im:
        assert im.size == (SYN_W, SYN_H)
        drawn = np.asarray(im.convert("RGB"))
    assert not np.array_equal(drawn, images["array"])
    assert f"overlay  -> {overlay}" in stdout
    assert sorted(p.name for p in out_dir.iterdir()) == ["m.png", "overlay.png"]


def test_multimask_writes_three_files_and_jpeg_overlay(capsys, ckpts, images, out_dir):
    out = out_dir / "mask.png"
    overlay = out_dir / "overlay.jpg"
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--multimask",
                                      "--out", out, "--overlay", overlay, "--quiet", *model_args(ckpts)])
    assert rc == 0, stderr
    expected = [out_dir / f"mask_{i}.png" for i in range(3)]
    assert mask_lines(stdout) == list(enumerate(expected))
    for p in expected:
        check_mask(p, (SYN_W, SYN_H))
    assert not out.exists()
    with Image.open(overlay) as im:
        assert im.format == "JPEG" and im.size == (SYN_W, SYN_H)
    assert stderr == ""  # --quiet: no timing
    assert sorted(p.name for p in out_dir.iterdir()) == ["mask_0.png", "mask_1.png", "mask_2.png", "overlay.jpg"]


@pytest.mark.parametrize("resolution", [512, 1536])
def test_other_resolutions_keep_original_size(capsys, ckpts, images, out_dir, resolution):
    out = out_dir / "mask.png"
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--out", out,
                                      *model_args(ckpts, resolution=resolution)])
    assert rc == 0, stderr
    check_mask(out, (SYN_W, SYN_H))
    assert f"resolution {resolution}" in stdout.splitlines()[0]


def test_basam_attention_options(capsys, ckpts, images, out_dir):
    out = out_dir / "mask.png"
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--out", out,
                                      "--attention", "basam", "--beta", "0.5", "--dist", "euclidean",
                                      *model_args(ckpts, VIT)])
    assert rc == 0, stderr
    check_mask(out, (SYN_W, SYN_H))
    assert "attention basam (beta 0.5, dist euclidean)" in stdout.splitlines()[0]


def test_default_out_is_image_stem_in_cwd(capsys, ckpts, images, out_dir, monkeypatch):
    monkeypatch.chdir(out_dir)
    rc, stdout, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", *model_args(ckpts)])
    assert rc == 0, stderr
    expected = out_dir / "synthetic_mask.png"
    check_mask(expected, (SYN_W, SYN_H))
    assert mask_lines(stdout) == [(0, expected)]


def test_help_lists_testing_architecture_option(capsys):
    rc, stdout, _ = run(capsys, ["segment", "--help"])
    assert rc == 0
    assert "(testing) override the architecture" in stdout
    rc, stdout, _ = run(capsys, ["--help"])
    assert rc == 0 and "segment" in stdout


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit 2, no traceback, nothing written


def _bad_cases():
    """(id, argv builder, expected message fragment). Builders take (ckpts, images, out_dir)."""

    def seg(image_key, *extra, model=MOBILE, resolution="256"):
        def build(ckpts, images, out_dir):
            image = images[image_key] if image_key in images else out_dir.parent / image_key
            argv = ["segment", image, "--out", out_dir / "mask.png", "--overlay", out_dir / "overlay.png"]
            argv += [e(ckpts) if callable(e) else e for e in extra]
            if resolution is not None:
                argv += ["--resolution", resolution]
            return argv + ["--model", model, "--device", "cpu"]

        return build

    ckpt = lambda name: (lambda c: str(c[name]))  # noqa: E731
    mob = ("--checkpoint", ckpt(MOBILE), "--architecture", ARCH[MOBILE])
    return [
        ("corrupt-image", seg("truncated", "--point", "5,5", *mob), "truncated or corrupt"),
        ("missing-image", seg("does_not_exist.jpg", "--point", "5,5", *mob), "no such file"),
        ("point-outside", seg("png", "--point", "500,50", *mob), "outside the 160x120 image"),
        ("negative-point", seg("png", "--point=-3,50", *mob), "outside"),
        ("box-outside", seg("png", "--box", "0,0,161,50", *mob), "outside the 160x120 image"),
        ("box-reversed", seg("png", "--box", "100,10,20,50", *mob), "'100,10,20,50'"),
        ("two-boxes", seg("png", "--box", "1,1,5,5", "--box", "2,2,6,6", *mob), "only one --box"),
        ("no-prompt", seg("png", *mob), "no prompt"),
        ("bad-label", seg("png", "--point", "5,5,2", *mob), "LABEL"),
        ("malformed-point", seg("png", "--point", "3,x", *mob), "'3,x'"),
        ("short-point", seg("png", "--point", "3", *mob), "'3'"),
        ("malformed-box", seg("png", "--box", "1,2,3", *mob), "'1,2,3'"),
        ("other-model-checkpoint",
         seg("png", "--point", "5,5", "--checkpoint", ckpt(VIT), "--architecture", ARCH[MOBILE]),
         "does not fit mobile_sam"),
        ("truncated-checkpoint",
         seg("png", "--point", "5,5", "--checkpoint", ckpt("truncated"), "--architecture", ARCH[MOBILE]),
         "cannot read checkpoint"),
        ("missing-checkpoint", seg("png", "--point", "5,5", "--checkpoint", "/nonexistent/x.pt",
                                   "--architecture", ARCH[MOBILE]), "not found"),
        ("unknown-model", seg("png", "--point", "5,5", *mob, model="sam_vit_x"), "sam_vit_b"),
        ("resolution-abc", seg("png", "--point", "5,5", *mob, resolution="abc"), "'abc'"),
        ("resolution-negative", seg("png", "--point", "5,5", *mob, resolution="-5"), "positive integer"),
        ("resolution-zero", seg("png", "--point", "5,5", *mob, resolution="0"), "positive integer"),
        ("resolution-small", seg("png", "--point", "5,5", *mob, resolution="32"), "at least 64"),
        ("bad-beta", seg("png", "--point", "5,5", "--beta", "-1", *mob), "beta"),
        ("bad-attention", seg("png", "--point", "5,5", "--attention", "fancy", *mob), "fancy"),
        ("hq-token-only-on-plain-model", seg("png", "--point", "5,5", "--hq-token-only", *mob), "sam_hq"),
        ("bad-architecture-json", seg("png", "--point", "5,5", "--checkpoint", ckpt(MOBILE),
                                      "--architecture", "{depth:"), "JSON"),
        ("bad-architecture-field", seg("png", "--point", "5,5", "--checkpoint", ckpt(MOBILE),
                                       "--architecture", '{"embed_dim": 64}'), "embed_dim"),
        ("unknown-option", seg("png", "--point", "5,5", "--frobnicate", *mob), "--frobnicate"),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("build, fragment", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_one_line_exit_2_nothing_written(capsys, ckpts, images, out_dir, build, fragment):
    rc, stdout, stderr = run(capsys, build(ckpts, images, out_dir))
    assert rc == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("basam: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in stderr
    assert stdout == ""
    assert list(out_dir.iterdir()) == []


def test_unknown_model_lists_valid_names(capsys, images, out_dir):
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5", "--model", "nope",
                                 "--out", out_dir / "m.png"])
    assert rc == 2
    for name in ("sam_vit_b", "sam_vit_h", "mobile_sam", "sam_hq_vit_tiny"):
        assert name in stderr


def test_bad_output_suffix_writes_nothing(capsys, ckpts, images, out_dir):
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5", "--out", out_dir / "m.png",
                                 "--overlay", out_dir / "o.gif", *model_args(ckpts)])
    assert rc == 2 and stderr.startswith("basam: error:") and ".gif" in stderr
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5", "--out", out_dir / "m.jpg",
                                 *model_args(ckpts)])
    assert rc == 2 and ".png" in stderr
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5",
                                 "--out", out_dir / "missing" / "m.png", *model_args(ckpts)])
    assert rc == 2 and "does not exist" in stderr
    assert list(out_dir.iterdir()) == []


def test_existing_outputs_untouched_on_error(capsys, images, out_dir):
    out = out_dir / "mask.png"
    out.write_bytes(b"old")
    rc, _, _ = run(capsys, ["segment", images["png"], "--point", "999,5", "--out", out])
    assert rc == 2
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in out_dir.iterdir()) == ["mask.png"]


def test_cuda_requested_without_cuda(capsys, images, out_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5", "--device", "cuda",
                                 "--out", out_dir / "m.png"])
    assert rc == 2 and len(stderr.splitlines()) == 1 and "CUDA is not available" in stderr
    assert list(out_dir.iterdir()) == []


def test_missing_command_is_usage_error(capsys):
    rc, stdout, stderr = run(capsys, [])
    assert rc == 2 and stdout == ""
    assert len(stderr.splitlines()) == 1 and stderr.startswith("basam: error:")


def test_keyboard_interrupt_exits_130(capsys, images, out_dir, monkeypatch):
    import basam.io

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(basam.io, "read_image", interrupted)
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "5,5", "--out", out_dir / "m.png"])
    assert rc == 130
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert list(out_dir.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# Real subprocesses: `python -m basam`


def _subprocess(argv, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "basam", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_subprocess_success(ckpts, images, out_dir):
    out = out_dir / "mask.png"
    proc = _subprocess(["segment", images["png"], "--point", "60,50", "--out", out, *model_args(ckpts)], out_dir)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    check_mask(out, (SYN_W, SYN_H))
    assert [line for line in proc.stdout.splitlines() if IOU_LINE.match(line)]


def test_subprocess_error(ckpts, images, out_dir):
    proc = _subprocess(["segment", images["truncated"], "--point", "5,5", "--out", out_dir / "mask.png",
                        *model_args(ckpts)], out_dir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("basam: error:")
    assert list(out_dir.iterdir()) == []


def test_failed_overlay_write_leaves_earlier_masks_untouched(capsys, ckpts, images, out_dir, monkeypatch):
    """Masks and overlay are staged and renamed together: when the overlay cannot be written (disk
    full), the masks of an earlier run keep their content and no temp file stays behind."""
    out = out_dir / "mask.png"
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "60,50", "--multimask", "--out", out,
                                 "--quiet", *model_args(ckpts)])
    assert rc == 0, stderr
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    real_save = Image.Image.save

    def full_disk_for_jpeg(self, fp, format=None, **kw):
        if format == "JPEG":
            raise OSError(28, "No space left on device")
        return real_save(self, fp, format=format, **kw)

    monkeypatch.setattr(Image.Image, "save", full_disk_for_jpeg)
    rc, _, stderr = run(capsys, ["segment", images["png"], "--point", "140,110", "--box", "80,60,159,119", "--multimask",
                                 "--out", out, "--overlay", out_dir / "overlay.jpg", "--quiet", *model_args(ckpts)])
    assert rc == 2 and stderr.count("\n") == 1 and "No space left" in stderr
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
