"""basam.memory: the encode-memory estimate, the limit, and the commands that refuse what would not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import oracles
from basam import memory as bm
from basam.cli import main
from basam.errors import InputError
from basam.models.registry import create_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text,expected", [
    ("8G", 8 * 2**30), ("8GB", 8 * 2**30), ("8GiB", 8 * 2**30), ("512M", 512 * 2**20), ("512m", 512 * 2**20),
    ("1.5g", int(1.5 * 2**30)), ("2048MB", 2 * 2**30), ("1073741824", 2**30), ("100b", 100), ("auto", None), (" AUTO ", None),
])
def test_parse_memory(text, expected):
    assert bm.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "x", "8X", "-1G", "0", "0.1b", "G", "8iB", "8 G B"])
def test_parse_memory_rejects(text):
    with pytest.raises(InputError, match="memory must be"):
        bm.parse_memory(text)


def test_available_memory_sources(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n")
    assert bm._meminfo_available(tmp_path / "meminfo") == 8000000 * 1024
    assert bm._meminfo_available(tmp_path / "missing") is None
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.max").write_text("max\n")
    (cg / "memory.current").write_text("100\n")
    assert bm._cgroup_available(cg) is None  # no limit
    (cg / "memory.max").write_text("1000\n")
    assert bm._cgroup_available(cg) == 900
    free = bm.cpu_available_bytes()
    assert free is None or free > 0
    assert (bm.device_free_bytes("cpu") is None) == (free is None)  # the CPU's free memory is cpu_available_bytes


@pytest.mark.parametrize("name,arch", [
    ("basam_tiny", {}), ("mobile_sam", {}), ("sam_vit_b", oracles.REDUCED["sam_vit_b"]),
    ("sam_hq_vit_b", oracles.REDUCED["sam_hq_vit_b"]), ("sam_hq_vit_tiny", {}),
])
def test_parameter_count_from_the_architecture(name, arch):
    """The weights term is computed, not built: within 2% of the real parameter count."""
    model = create_model(name, **arch)
    real = sum(p.numel() for p in model.parameters())
    enc, loaded = bm._encoder_of(name, arch or None)
    assert not loaded and abs(enc.params - real) / real < 0.02, (enc.params, real)
    from_module, loaded = bm._encoder_of(model, None)
    assert loaded and from_module.params == real and from_module.family == enc.family and from_module.widths == enc.widths
    # a built model's weights are already in memory: not counted again
    assert bm.estimate_encode_bytes(name, 512, architecture=arch or None) - bm.estimate_encode_bytes(model, 512) \
        == pytest.approx(enc.params * 4, rel=0.03)


def test_estimate_grows_with_resolution_and_backend():
    sizes = [bm.estimate_encode_bytes("sam_vit_b", r) for r in (256, 512, 1024, 2048, 4096)]
    assert sizes == sorted(sizes) and sizes[-1] > 4 * sizes[2] / 2
    # the activations are linear in tokens once the attention chunk is saturated
    a, b = bm.estimate_encode_bytes("sam_vit_b", 4096, include_weights=False), bm.estimate_encode_bytes("sam_vit_b", 8192, include_weights=False)
    assert 3.5 < b / a < 4.1
    # the reference backend keeps N x N logits: quadratic; the fused kernel none
    assert bm.estimate_encode_bytes("sam_vit_b", 2048, backend="reference") > 20 * 2**30
    assert bm.estimate_encode_bytes("sam_vit_b", 2048, backend="triton", device="cuda") < bm.estimate_encode_bytes(
        "sam_vit_b", 2048, backend="sdpa", device="cuda")
    assert bm.estimate_encode_bytes("sam_vit_b", 1024, dtype_bytes=2) < bm.estimate_encode_bytes("sam_vit_b", 1024)
    assert bm.estimate_encode_bytes("sam_vit_b", 99999) > 1000 * 2**30
    with pytest.raises(InputError):
        bm.estimate_encode_bytes("sam_vit_b", 0)
    with pytest.raises(InputError, match="unknown model"):
        bm.estimate_encode_bytes("sam_vit_x", 1024)


_MEASURE = r"""
import resource, sys, torch
from basam.models.registry import create_model
torch.set_num_threads(1)
m = create_model(sys.argv[1], attention="basam").eval()
R = int(sys.argv[2])
with torch.no_grad():
    x = m.preprocess(torch.rand(1, 3, R, R) * 255, R)
    m.encode(m.preprocess(torch.rand(1, 3, 64, 64) * 255, 64))
    base = int(open("/proc/self/statm").read().split()[1]) * 4096
    # reset the peak RSS (VmHWM) so that earlier transients (imports, building) do not count
    open("/proc/self/clear_refs", "w").write("5")
    m.encode(x)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
print(peak - base)
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_estimate_covers_a_measured_encode():
    """basam_tiny at 512 px on the CPU: measured peak RSS of one encode (above the RSS before it,
    weights loaded) <= the estimate without weights <= 3x the measurement (the docstring's table)."""
    r = subprocess.run([sys.executable, "-c", _MEASURE, "basam_tiny", "512"], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr[-1500:]
    measured = int(r.stdout.strip().splitlines()[-1])
    estimated = bm.estimate_encode_bytes("basam_tiny", 512, include_weights=False)
    assert measured <= estimated <= 3 * measured, (measured / 2**20, estimated / 2**20)


def test_check_memory(monkeypatch):
    bm.check_memory(10, 100, "cpu", resolution=1024)  # fits
    with pytest.raises(InputError) as ei:
        bm.check_memory(3 * 2**30, 2**30, "cpu", resolution=4096)
    assert str(ei.value) == "encoding at 4096 px needs about 3.0 GiB; the limit is 1.0 GiB (--max-memory)"
    monkeypatch.setattr(bm, "device_free_bytes", lambda device: 2**30 // 2)
    with pytest.raises(InputError) as ei:
        bm.check_memory(2**30, None, "cpu", resolution=2048)
    assert str(ei.value) == "encoding at 2048 px needs about 1.0 GiB; the limit is 0.5 GiB (free on cpu; --max-memory sets it)"
    monkeypatch.setattr(bm, "device_free_bytes", lambda device: None)
    bm.check_memory(2**40, None, "cpu", resolution=2048)  # the limit cannot be read: nothing refused


# ----------------------------------------------------------------------------------------------
# The commands refuse before loading the model


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(path)
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    import basam.load

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the memory check")

    monkeypatch.setattr(basam.load, "load_model", refuse)


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("basam: error:"), err
    return err[0]


def test_segment_refuses_a_huge_resolution_before_any_allocation(tmp_path, image, capsys, no_model_load):
    out = tmp_path / "out"
    out.mkdir()
    argv = ["segment", str(image), "--point", "5,5", "--model", "basam_tiny", "--out", str(out / "m.png"), "-q"]
    assert main([*argv, "--resolution", "99999"]) == 2
    assert "encoding at 99999 px needs about" in _one_error(capsys)
    assert main([*argv, "--max-memory", "1M"]) == 2  # default resolution, limit given
    assert _one_error(capsys).endswith("the limit is 0.0 GiB (--max-memory)")
    assert main([*argv, "--max-memory", "lots"]) == 2
    assert "--max-memory" in _one_error(capsys)
    assert list(out.iterdir()) == []


def test_amg_and_evaluate_refuse_before_loading(tmp_path, image, capsys, no_model_load):
    assert main(["amg", str(image), "--out", str(tmp_path / "amg"), "--model", "basam_tiny", "--resolution", "99999", "-q"]) == 2
    assert "encoding at 99999 px" in _one_error(capsys)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    Image.open(image).save(data / "images" / "a.png")
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(data / "masks" / "a.png")
    argv = ["evaluate", "--data", str(data), "--model", "sam_vit_b", "--architecture", json.dumps(oracles.REDUCED["sam_vit_b"]),
            "--resolutions", "256", "1024", "--out", str(tmp_path / "ev"), "-q", "--max-memory", "64M"]
    assert main(argv) == 2
    assert "encoding at 1024 px needs about" in _one_error(capsys)  # the largest resolution decides
    assert not (tmp_path / "ev").exists()


def test_a_plug_in_family_gets_a_generic_estimate():
    from dataclasses import dataclass

    from basam.models.registry import ModelSpec

    @dataclass(frozen=True)
    class ToyConfig:  # a family this module has never heard of
        embed_dim: int = 96
        num_heads: int = 3

    spec = ModelSpec("toy", ToyConfig())
    small, big = bm.estimate_encode_bytes(spec, 1024), bm.estimate_encode_bytes(spec, 4096)
    assert 0 < small < big and big > 10 * 2**20
