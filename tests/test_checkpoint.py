"""Strict loading of official files, our safetensors saves, and bad checkpoints."""

import pickle

import pytest
import torch

import basam
import oracles
from basam.checkpoint import identify_checkpoint, load_weights, read_metadata, read_state_dict, save_model
from basam.models import create_model

ARCH = oracles.REDUCED["mobile_sam"]
VIT = oracles.REDUCED["sam_vit_b"]


@pytest.fixture(scope="module")
def mobile_ckpt(tmp_path_factory):
    return oracles.official_checkpoint("mobile_sam", ARCH, tmp_path_factory.mktemp("ckpt"))


def test_official_file_loads_strictly_and_drops_classifier(mobile_ckpt):
    official, path = mobile_ckpt
    raw = torch.load(path, weights_only=True)
    assert any(k.startswith("image_encoder.head.") for k in raw)  # the official file has it...
    model = basam.load_model("mobile_sam", checkpoint=path, architecture=ARCH)
    assert not model.training
    own = model.state_dict()
    for k, v in raw.items():
        if k.startswith(("image_encoder.head.", "image_encoder.norm_head.")):
            assert k not in own  # ...basam does not build it
        else:
            assert torch.equal(own[k], v), k


def test_mismatch_names_keys_and_model(tmp_path):
    _, path = oracles.official_checkpoint("sam_vit_b", oracles.FULL["sam_vit_b"] | {"depth": 2, "global_attn_indexes": (1,)}, tmp_path)
    with pytest.raises(basam.CheckpointError) as e:
        basam.load_model("mobile_sam", checkpoint=path, architecture=ARCH)
    msg = str(e.value)
    assert "\n" not in msg
    assert "missing" in msg and "unexpected" in msg and "image_encoder.blocks.0" in msg
    assert "looks like a sam_vit_b checkpoint" in msg


def test_shape_mismatch_is_reported(tmp_path):
    _, path = oracles.official_checkpoint("sam_vit_b", VIT, tmp_path)
    with pytest.raises(basam.CheckpointError, match="of another shape"):
        basam.load_model("sam_vit_b", checkpoint=path, architecture=VIT | {"embed_dim": 128})


def test_identify_checkpoint(mobile_ckpt):
    assert identify_checkpoint(torch.load(mobile_ckpt[1], weights_only=True)) == "mobile_sam"
    sd = {"image_encoder.patch_embed.proj.weight": torch.zeros(1280, 3, 16, 16), "mask_decoder.hf_token.weight": torch.zeros(1, 256)}
    assert identify_checkpoint(sd) == "sam_hq_vit_h"
    assert identify_checkpoint({"foo": torch.zeros(1)}) is None


def test_truncated_empty_and_foreign_files(tmp_path, mobile_ckpt):
    data = mobile_ckpt[1].read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(basam.CheckpointError, match="truncated, corrupt"):
        read_state_dict(cut)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(basam.CheckpointError, match="empty"):
        read_state_dict(empty)
    with pytest.raises(basam.CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(basam.CheckpointError):
        read_state_dict(text)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(basam.CheckpointError):
        read_state_dict(path)
    assert "this must never run" not in capsys.readouterr().out


def test_wrapped_and_ddp_state_dicts(tmp_path, mobile_ckpt):
    raw = torch.load(mobile_ckpt[1], weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in raw.items()}}, wrapped)
    model = basam.load_model("mobile_sam", checkpoint=wrapped, architecture=ARCH)
    assert torch.equal(model.state_dict()["mask_decoder.iou_token.weight"], raw["mask_decoder.iou_token.weight"])


def test_safetensors_round_trip_keeps_slopes(tmp_path, mobile_ckpt):
    model = basam.load_model("mobile_sam", checkpoint=mobile_ckpt[1], architecture=ARCH, attention="basam", beta=0.1, trainable_slopes=True)
    slopes = [p for n, p in model.named_parameters() if n.endswith("bam.slopes")]
    with torch.no_grad():
        for p in slopes:
            p.mul_(3.0)  # as if fine-tuned
    path = save_model(model, tmp_path / "tuned.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))
    meta = read_metadata(path)
    assert meta["basam_model"] == "mobile_sam" and '"bias": true' in meta["attention"]
    again = basam.load_model("mobile_sam", checkpoint=path, architecture=ARCH, attention="basam")
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n


def test_official_checkpoint_fills_slopes_from_beta(mobile_ckpt):
    model = basam.load_model("mobile_sam", checkpoint=mobile_ckpt[1], architecture=ARCH, attention="basam", beta=0.5)
    for n, p in model.named_parameters():
        if n.endswith("bam.slopes"):
            assert torch.allclose(p, basam.attention.alibi_slopes(p.numel(), 0.5))


def test_unknown_model_and_architecture_fields():
    with pytest.raises(basam.InputError, match="unknown model 'sam_vit_x'.*sam_vit_b"):
        basam.load_model("sam_vit_x", checkpoint="whatever.pth")
    with pytest.raises(basam.InputError, match="architecture field"):
        create_model("sam_vit_b", depht=3)
    with pytest.raises(basam.InputError, match="hq_fusion"):
        basam.load_model("sam_vit_b", checkpoint="x.pth", hq_fusion="add")


def test_download_used_when_no_checkpoint(tmp_path, monkeypatch, mobile_ckpt):
    """load_model(name) with no file goes through the verified download into $BASAM_HOME."""
    import basam.hub as hub

    calls = []

    def fake_download(name, progress=True):
        calls.append(name)
        return mobile_ckpt[1]

    monkeypatch.setattr(hub, "download_checkpoint", fake_download)
    model = basam.load_model("mobile_sam", architecture=ARCH)
    assert calls == ["mobile_sam"] and isinstance(model, basam.Sam)
    with pytest.raises(basam.CheckpointError, match="downloading is off"):
        basam.load_model("mobile_sam", architecture=ARCH, download=False)


def test_untrained_slopes_in_a_file_do_not_override_beta(tmp_path, mobile_ckpt):
    """A basam file saved with fixed (untrained) slopes: the beta asked for at load time rules."""
    model = basam.load_model("mobile_sam", checkpoint=mobile_ckpt[1], architecture=ARCH, attention="basam", beta=0.1)
    path = save_model(model, tmp_path / "fixed.safetensors")
    again = basam.load_model("mobile_sam", checkpoint=path, architecture=ARCH, attention="basam", beta=1.0)
    for n, p in again.named_parameters():
        if n.endswith("bam.slopes"):
            assert torch.allclose(p, basam.attention.alibi_slopes(p.numel(), 1.0))


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo this-must-never-run",))


def test_pickled_code_is_refused_without_suggesting_weights_only_false(tmp_path, capfd):
    path = tmp_path / "evil.pth"
    torch.save({"image_encoder.x": torch.zeros(1), "payload": _RunsCode()}, path)
    with pytest.raises(basam.CheckpointError) as e:
        read_state_dict(path)
    msg = str(e.value)
    assert "never unpickles code" in msg and "posix.system" in msg and "\n" not in msg
    assert "weights_only" not in msg
    assert "this-must-never-run" not in capfd.readouterr().out


def test_average_checkpoints_script_writes_the_mean_and_refuses_mismatched_files(tmp_path, mobile_ckpt):
    """scripts/average_checkpoints.py: a uniform soup of two basam_tiny saves is their element-wise
    mean, loads strictly, and records its sources; files of another model are refused, nothing written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "average_checkpoints.py"
    a = basam.load_model("basam_tiny")
    b = basam.load_model("basam_tiny")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    save_model(a, tmp_path / "a.safetensors", {"step": "10"})
    save_model(b, tmp_path / "b.safetensors", {"step": "20"})
    out = tmp_path / "soup" / "mean.safetensors"
    run = lambda *files: subprocess.run([sys.executable, str(script), *map(str, files), "--out", str(out)], capture_output=True, text=True)
    r = run(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert r.returncode == 0, r.stderr
    basam.load_model("basam_tiny", checkpoint=out)  # strict: every tensor, right shapes
    soup, sa, sb = read_state_dict(out), a.state_dict(), b.state_dict()
    for k in sa:
        assert torch.allclose(soup[k], (sa[k] + sb[k]) / 2, atol=1e-6), k
    assert [s["step"] for s in json.loads(read_metadata(out)["averaged_from"])] == ["10", "20"]

    out.unlink()
    save_model(basam.load_model("mobile_sam", checkpoint=mobile_ckpt[1], architecture=ARCH), tmp_path / "m.safetensors")
    for files, says in (((tmp_path / "a.safetensors",), "two or more"),
                        ((tmp_path / "a.safetensors", tmp_path / "m.safetensors"), "basam_model")):
        r = run(*files)
        assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists()
