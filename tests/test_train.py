"""basam train: freeze policies, HQ fusion, data stream, DDP = one process, exact resume, SIGKILL
recovery, config precedence, validation/TensorBoard logging, and loading the result for inference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from basam.attention import AttentionConfig, alibi_slopes
from basam.checkpoint import read_metadata, read_state_dict, save_model
from basam.errors import CheckpointError, InputError
from basam.cli import COMMANDS, main
from basam.models.registry import create_model
from basam.train import config as tc
from basam.train import load_trained, run
from basam.train.checkpointing import latest_checkpoint, load_state
from basam.train.data import MixturePlan, TrainSet, open_weighted, rank_positions
from basam.train.freeze import HQ_MODULES, trainable_parameter_names

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

DEC = dict(transformer_dim=32, depth=1, num_heads=2, mlp_dim=64, iou_head_hidden_dim=32)
VIT = dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1], img_size=128, decoder=DEC)
# TinyViT (MobileSAM's encoder, with BatchNorm), reduced further than the oracles' (no official model to match here).
TINY = dict(embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4], img_size=128, decoder=DEC)


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers


def _synthetic(root: Path, n: int, seed: int) -> Path:
    """images/ + masks/ PNGs: noisy backgrounds with one bright disc or rectangle (the mask)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        h, w = int(rng.integers(90, 170)), int(rng.integers(90, 170))
        img = rng.integers(0, 70, (h, w, 3)).astype(np.uint8)
        yy, xx = np.mgrid[:h, :w]
        if i % 2:
            cy, cx, r = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3), rng.integers(min(h, w) // 6, min(h, w) // 3)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            y0, x0 = rng.integers(5, h // 2), rng.integers(5, w // 2)
            m = (yy >= y0) & (yy < y0 + h // 3) & (xx >= x0) & (xx < x0 + w // 3)
        img[m] += np.array([160, 110, 60], np.uint8)
        Image.fromarray(img).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"s{i:02d}.png")
    return root


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is as fast, much faster on a busy machine, and makes CPU kernels
    bitwise deterministic run to run (several threads are not, in some backward kernels)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_data")
    return _synthetic(base / "alpha", 8, 0), _synthetic(base / "beta", 4, 1)


def _cfg(out: Path, data_args, **kw) -> tc.TrainConfig:
    base = dict(model="sam_vit_b", architecture=VIT, data=[str(d) for d in data_args], out=str(out), resolution=128, steps=3,
                batch_size=2, num_workers=0, log_every=1, eval_every=0, save_every=0, warmup=1, lr=1e-3, quiet=True,
                tensorboard=False, train="full")
    base.update(kw)
    explicit = {k: v for k, v in base.items()}
    return tc.resolve_config(explicit)


def _log(out: Path):
    return [json.loads(line) for line in (Path(out) / "log.jsonl").read_text().splitlines()]


def _initial_checkpoint(tmp: Path, name: str, arch: dict, **kw) -> Path:
    torch.manual_seed(123)
    model = create_model(name, attention=AttentionConfig.from_preset("basam", beta=0.1), **arch, **kw)
    return save_model(model, tmp / "init.safetensors")


def _changed(a: dict, b: dict) -> set:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _flags(cfg: tc.TrainConfig) -> list:
    """The command line for ``cfg``'s run-defining settings (for subprocess runs)."""
    args = ["--model", cfg.model, "--architecture", json.dumps(cfg.architecture), "--resolution", str(cfg.resolution),
            "--steps", str(cfg.steps), "--batch-size", str(cfg.batch_size), "--num-workers", "0", "--log-every", "1",
            "--warmup", str(cfg.warmup), "--lr", str(cfg.lr), "--train", cfg.train, "--out", cfg.out, "-q", "--no-tensorboard",
            "--eval-every", "0", "--save-every", str(cfg.save_every), "--prompt", cfg.prompt]
    for d in cfg.data:
        args += ["--data", d]
    return args


# ----------------------------------------------------------------------------------------------
# Freeze policies


@pytest.mark.parametrize("policy,name,arch", [
    ("slopes", "mobile_sam", TINY),     # TinyViT has BatchNorm: its running statistics must not move
    ("decoder", "sam_vit_b", VIT),
    ("full", "sam_vit_b", VIT),
])
def test_freeze_policy_changes_exactly_the_intended_parameters(tmp_path, data, policy, name, arch):
    init = _initial_checkpoint(tmp_path, name, arch)
    lr = 1e-2 if policy == "slopes" else 1e-3
    summary = run(_cfg(tmp_path / "out", data, model=name, architecture=arch, checkpoint=str(init), train=policy, lr=lr))
    before = read_state_dict(init)
    after = read_state_dict(Path(summary["checkpoint"]) / "model.safetensors")
    changed = _changed(before, after)
    slopes = {k for k in before if k.endswith(".bam.slopes")}
    if policy == "slopes":
        assert slopes and changed == slopes  # every slope moved, nothing else: weights, BN stats, counters
        assert any(k.endswith("running_mean") for k in before) and any(k.endswith("num_batches_tracked") for k in before)
    elif policy == "decoder":
        assert changed and all(k.startswith("mask_decoder.") for k in changed)
        for part in ("transformer.", "iou_prediction_head.", "output_upscaling.", "mask_tokens."):
            assert any(k.startswith("mask_decoder." + part) for k in changed), part
    else:
        for part in ("image_encoder.patch_embed.", "image_encoder.blocks.0.", "image_encoder.neck.", "prompt_encoder.", "mask_decoder."):
            assert any(k.startswith(part) for k in changed), part
        assert slopes <= changed  # slopes train with the rest under "full"
    losses = [r["loss"] for r in _log(tmp_path / "out") if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("fusion", ["independent", "add", "product"])
def test_hq_policy_and_fusion_modes(tmp_path, data, fusion):
    init = _initial_checkpoint(tmp_path, "sam_hq_vit_b", VIT)
    summary = run(_cfg(tmp_path / "out", data, model="sam_hq_vit_b", checkpoint=str(init), train="hq", hq_fusion=fusion, steps=2))
    ckpt = Path(summary["checkpoint"]) / "model.safetensors"
    changed = _changed(read_state_dict(init), read_state_dict(ckpt))
    assert changed and all(k.split(".")[1] in HQ_MODULES and k.startswith("mask_decoder.") for k in changed)
    assert {k.split(".")[1] for k in changed} == set(HQ_MODULES)  # all five HQ modules learn in every mode
    assert read_metadata(ckpt)["hq_fusion"] == fusion
    assert all(np.isfinite(r["loss"]) for r in _log(tmp_path / "out") if "loss" in r)
    model = load_trained(ckpt)  # fusion, attention and architecture from the metadata
    assert model.mask_decoder.hq_fusion == fusion


def test_hq_model_starts_from_a_plain_sam_file(tmp_path, data, capsys):
    """HQ-SAM is trained on top of SAM: an HQ model fed a file without HQ modules keeps every SAM
    weight of the file, starts its HQ modules from their initialisation and trains only them."""
    plain = _initial_checkpoint(tmp_path, "sam_vit_b", VIT)
    summary = run(_cfg(tmp_path / "out", data, model="sam_hq_vit_b", checkpoint=str(plain), train="hq", hq_fusion="product", steps=2))
    assert "has no HQ-SAM modules" in capsys.readouterr().err
    before, after = read_state_dict(plain), read_state_dict(Path(summary["checkpoint"]) / "model.safetensors")
    hq_keys = {k for k in after if k.split(".")[1] in HQ_MODULES}
    assert hq_keys and not hq_keys & before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith(".bam.slopes"))
    assert all(torch.isfinite(after[k]).all() for k in hq_keys)
    # without the HQ modules in its policy the run would keep them untrained: strict loading refuses
    with pytest.raises(CheckpointError, match="25 missing .mask_decoder.compress_vit_feat"):
        run(_cfg(tmp_path / "out2", data, model="sam_hq_vit_b", checkpoint=str(plain), train="slopes", attention="basam", steps=1))


def test_policy_names_and_invalid_combinations(tmp_path, data, capsys):
    vit = create_model("sam_vit_b", attention="basam", **VIT)
    names = trainable_parameter_names(vit, "slopes")
    assert names and all(n.endswith(".bam.slopes") for n in names)
    assert set(trainable_parameter_names(vit, "decoder+slopes")) == set(names) | {n for n, _ in vit.named_parameters() if n.startswith("mask_decoder.")}
    hq = create_model("sam_hq_vit_b", **VIT)
    assert {n.split(".")[1] for n in trainable_parameter_names(hq, "hq")} == set(HQ_MODULES)

    base = ["train", "--model", "sam_vit_b", "--architecture", json.dumps(VIT), "--data", str(data[0]), "--resolution", "128",
            "--steps", "1", "--num-workers", "0", "-q", "--no-tensorboard"]
    cases = [
        (["--train", "hq", "--out", str(tmp_path / "o1")], "no HQ decoder"),
        (["--train", "slopes", "--attention", "vanilla", "--out", str(tmp_path / "o2")], "bias-mode mask"),
        (["--train", "decoder", "--hq-fusion", "add", "--out", str(tmp_path / "o3")], "--hq-fusion applies"),
        (["--train", "everything", "--out", str(tmp_path / "o4")], "--train"),
    ]
    for extra, expected in cases:
        capsys.readouterr()
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("basam: error:") and expected in err, err
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))  # nothing written on a refused run


# ----------------------------------------------------------------------------------------------
# Data stream


def test_sampler_weights_determinism_and_rank_sharding():
    plan = MixturePlan([10, 30], [3.0, 1.0], seed=7)
    ds = np.concatenate([plan.epoch_plan(e)[0] for e in range(50)])
    assert abs((ds == 0).mean() - 0.75) < 0.02  # drawn by weight, not by size
    again = MixturePlan([10, 30], [3.0, 1.0], seed=7)
    assert all(plan.locate(p) == again.locate(p) for p in range(0, 200, 7))
    other = MixturePlan([10, 30], [3.0, 1.0], seed=8)
    assert any(plan.locate(p) != other.locate(p) for p in range(40))
    # within an epoch the small dataset is visited as permutations: every sample before any repeats
    d0 = plan.epoch_plan(0)
    first = d0[1][d0[0] == 0][:10]
    assert sorted(first.tolist()) == list(range(10))
    # K ranks with batch b see exactly what one process with batch K*b sees
    for step in range(3):
        for micro in range(2):
            single = rank_positions(step, micro, world=1, rank=0, batch=4, accum=2)
            ranks = sum((rank_positions(step, micro, world=2, rank=r, batch=2, accum=2) for r in range(2)), [])
            assert single == ranks


def test_augmentation_is_joint_deterministic_and_never_empty(tmp_path):
    # The mask is exactly "red channel > 128", so any drift between image and mask shows.
    root = tmp_path / "aligned"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        h, w = 150 + 20 * i, 200
        img = np.zeros((h, w, 3), np.uint8)
        m = np.zeros((h, w), bool)
        m[30:100, 40 + 10 * i:150] = True
        img[..., 0] = np.where(m, 255, 0)
        img[..., 1] = rng.integers(0, 255, (h, w))
        Image.fromarray(img).save(root / "images" / f"a{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"a{i}.png")
    # A tiny object in a corner: most crops lose it, and the sample must be redrawn, not empty.
    tiny = tmp_path / "tiny"
    (tiny / "images").mkdir(parents=True)
    (tiny / "masks").mkdir()
    m = np.zeros((200, 200), bool)
    m[2:5, 2:5] = True
    Image.fromarray(np.where(m[..., None], 255, 0).repeat(3, 2).astype(np.uint8)).save(tiny / "images" / "t.png")
    Image.fromarray(m.astype(np.uint8) * 255).save(tiny / "masks" / "t.png")

    sets, weights = open_weighted([str(root), f"{tiny}@0.5"])
    assert weights == [1.0, 0.5]
    ts = TrainSet(sets, weights, resolution=64, seed=3, prompt="point")
    agree = []
    for p in range(30):
        s = ts[p]
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.uint8 and s["mask"].shape == (64, 64)
        assert s["mask"].any()
        x, y = s["prompt"]["coords"][0]
        assert s["mask"][int(y), int(x)]  # the point is on the (augmented) object
        if s["dataset"] == 0:
            # bilinear (image) and nearest (mask) resampling may differ on the edge; nowhere else
            m = s["mask"].numpy()
            edge = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_erosion(m, iterations=2)
            agree.append(float(((s["image"][0].numpy() > 128) == m)[~edge].mean()))
        t = ts[p]
        assert torch.equal(s["image"], t["image"]) and torch.equal(s["mask"], t["mask"])  # a function of (seed, position)
    assert agree and min(agree) == 1.0
    assert any(ts[p]["dataset"] == 1 for p in range(30))
    box = TrainSet(sets, weights, resolution=64, seed=3, prompt="box", box_noise=0.0)[0]
    ys, xs = np.nonzero(box["mask"].numpy())
    assert box["prompt"]["box"].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
    k = TrainSet(sets, weights, resolution=64, seed=3, prompt="points:3")[1]["prompt"]
    assert k["coords"].shape == (3, 2) and k["labels"].tolist() == [1, 1, 1]
    # colour jitter: same crop and mask as without it, another image, still a function of the position
    plain = TrainSet(sets, weights, resolution=64, seed=3, prompt="point")
    jit = TrainSet(sets, weights, resolution=64, seed=3, prompt="point", color_jitter=0.4)
    changed = 0
    for p in range(10):
        a, b = plain[p], jit[p]
        assert torch.equal(a["mask"], b["mask"]) and a["prompt"]["coords"].tolist() == b["prompt"]["coords"].tolist()
        assert torch.equal(b["image"], jit[p]["image"])
        changed += not torch.equal(a["image"], b["image"])
    assert changed >= 8


# ----------------------------------------------------------------------------------------------
# Many processes, resume, kill


def _torchrun(args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "basam.train", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("policy", ["full", "slopes"])
def test_ddp_two_processes_equal_one_process_with_twice_the_batch(tmp_path, data, policy):
    init = _initial_checkpoint(tmp_path, "sam_vit_b", VIT)
    one = _cfg(tmp_path / "one", data, checkpoint=str(init), batch_size=2, train=policy, steps=3, lr=1e-2 if policy == "slopes" else 1e-3)
    run(one)
    two = _cfg(tmp_path / "two", data, checkpoint=str(init), batch_size=1, train=policy, steps=3, lr=one.lr)
    _torchrun(_flags(two) + ["--checkpoint", str(init)])
    a = read_state_dict(tmp_path / "one" / "checkpoints" / "step_3" / "model.safetensors")
    b = read_state_dict(tmp_path / "two" / "checkpoints" / "step_3" / "model.safetensors")
    start = read_state_dict(init)
    moved = {k for k in a if a[k].is_floating_point() and (a[k] - start[k]).abs().max() > 0.1 * one.lr}
    assert moved  # the runs trained
    for k in a:
        if k in moved:
            rel = ((a[k] - b[k]).norm() / a[k].norm()).item()
            assert rel < 1e-5, (k, rel)
        elif k.endswith("k_proj.bias"):
            # The decoder's key biases have an exactly zero gradient (softmax ignores a per-query
            # constant): their "gradient" is rounding noise, which Adam normalises to steps of up to
            # lr, so one process and two differ by noise whose size depends on the CPU's summation
            # order. Nothing to compare but noise; both runs must still keep them finite.
            assert torch.isfinite(a[k]).all() and torch.isfinite(b[k]).all(), k
        else:
            # Other unmoved directions stay put in both runs.
            assert (a[k].float() - b[k].float()).abs().max() <= 0.1 * one.lr, k
    la = [r["loss"] for r in _log(tmp_path / "one")]
    lb = [r["loss"] for r in _log(tmp_path / "two")]
    assert np.allclose(la, lb, rtol=1e-5)  # the logged loss is the global batch's on both


def test_resume_continues_the_loss_curve_exactly(tmp_path, data):
    common = dict(steps=6, prompt="mixed", grad_accum=2, batch_size=2, warmup=2, save_every=0)
    full = _cfg(tmp_path / "full", data, **common)
    run(full)
    part = _cfg(tmp_path / "part", data, stop_at=3, **common)
    assert run(part)["step"] == 3
    assert [r["step"] for r in _log(tmp_path / "part")] == [1, 2, 3]
    resumed = _cfg(tmp_path / "part", data, resume=True, **common)
    assert run(resumed)["step"] == 6
    a, b = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for k in ("loss", "bce", "dice", "iou_mse", "lr"):
            assert abs(ra[k] - rb[k]) <= 1e-6 * max(1.0, abs(ra[k])), (ra["step"], k, ra[k], rb[k])
    wa = read_state_dict(tmp_path / "full" / "checkpoints" / "step_6" / "model.safetensors")
    wb = read_state_dict(tmp_path / "part" / "checkpoints" / "step_6" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # bitwise (one thread: deterministic kernels)
    # resuming is explicit, and refuses other settings
    with pytest.raises(Exception, match="--resume"):
        run(_cfg(tmp_path / "part", data, **common))
    with pytest.raises(Exception, match="lr"):
        run(_cfg(tmp_path / "part", data, resume=True, **{**common, "steps": 8}, lr=5e-4))


def test_sigkill_loses_at_most_one_interval_and_resumes(tmp_path, data):
    cfg = _cfg(tmp_path / "out", data, steps=60, save_every=2, batch_size=1, keep=2)
    proc = subprocess.Popen([sys.executable, "-m", "basam.train", *_flags(cfg), "--keep", "2"], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "out" / "checkpoints" / "latest"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if latest.exists() and int(latest.read_text().strip().split("_")[1]) >= 4:
                break
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    step_dir = latest_checkpoint(tmp_path / "out" / "checkpoints")
    assert step_dir is not None and step_dir.name == latest.read_text().strip()
    state = load_state(step_dir)  # weights_only=True
    saved = state["step"]
    assert 4 <= saved < 60 and saved % 2 == 0
    assert state["sampler"]["position"] == saved * 1 and state["rng"]["torch"].dtype == torch.uint8
    model = load_trained(step_dir)
    assert model.attention_config.bias and not model.training
    steps_on_disk = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "out" / "checkpoints").glob("step_*"))
    assert len(steps_on_disk) <= 3 and saved in steps_on_disk  # keep=2 (+ at most one written when killed)
    logged = [r["step"] for r in _log(tmp_path / "out")]
    assert max(logged) - saved <= 2  # at most one save interval lost
    summary = run(_cfg(tmp_path / "out", data, steps=60, save_every=2, batch_size=1, keep=2, resume=True))
    assert summary["step"] == 60
    assert [r["step"] for r in _log(tmp_path / "out")] == list(range(1, 61))
    assert not list((tmp_path / "out" / "checkpoints").glob(".tmp*"))
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").glob("step_*")) == ["step_58", "step_60"]


# ----------------------------------------------------------------------------------------------
# Configuration


def test_yaml_flags_precedence_unknown_keys_and_recipes(tmp_path, capsys, monkeypatch):
    y = tmp_path / "run.yaml"
    y.write_text("lr: 0.5\nbatch-size: 3\ndata: [a, b]\nout: o\nprompt: points:4\nbetas: [0.8, 0.9]\n")
    cfg = tc.resolve_config({"lr": 0.25}, config=str(y))
    assert (cfg.lr, cfg.batch_size, cfg.data, cfg.prompt, cfg.betas) == (0.25, 3, ["a", "b"], "points:4", [0.8, 0.9])
    assert cfg.steps == tc.TrainConfig().steps  # untouched keys keep their defaults

    # through the command line: the flag wins, a repeated flag replaces the YAML list
    seen = {}
    import basam.train as bt

    monkeypatch.setattr(bt, "run", lambda c: seen.setdefault("cfg", c) and {})
    assert main(["train", "--config", str(y), "--lr", "0.125", "--data", "c", "--data", "d@2", "--no-tensorboard"]) == 0
    c = seen["cfg"]
    assert (c.lr, c.batch_size, c.data, c.tensorboard) == (0.125, 3, ["c", "d@2"], False)

    recipe = tc.resolve_config({"data": ["x"], "out": "o", "steps": 7}, recipe="example")
    assert (recipe.model, recipe.lr, recipe.train, recipe.steps) == ("sam_vit_b", 1e-3, "slopes", 7)
    # every shipped recipe is a valid config (a key renamed or mistyped in one fails here, not in a 2 h run)
    shipped = tc.list_recipes()
    assert {"example", "basam_tiny_v6"} <= set(shipped)
    for name in shipped:
        own = tc.load_yaml(tc.recipe_path(name))
        cfg = tc.resolve_config({"out": "o", **({} if "data" in own else {"data": ["x"]})}, recipe=name)
        assert cfg.steps == own.get("steps", cfg.steps) and cfg.data, name

    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nlearning_rate: 0.2\n")
    for argv, expected in [
        (["train", "--config", str(bad)], "unknown key 'learning_rate'"),
        (["train", "--recipe", "nope", "--data", "x", "--out", "o"], "unknown recipe 'nope'"),
        (["train", "--data", "x", "--out", "o", "--prompt", "points:0"], "--prompt"),
        (["train", "--data", "x", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["train", "--data", "x", "--out", "o", "--copy-paste", "1.5"], "--copy-paste"),
        (["train", "--data", "x", "--out", "o", "--point-interior", "2"], "--point-interior"),
    ]:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expected in err, err
    typed = tmp_path / "typed.yaml"
    typed.write_text("steps: many\n")
    with pytest.raises(Exception, match="steps"):
        tc.load_yaml(typed)
    assert "train" in COMMANDS and main(["train", "--help"]) == 0


# ----------------------------------------------------------------------------------------------
# Validation, logging, inference


def test_validation_tensorboard_and_loading_for_inference(tmp_path, data, capsys):
    out = tmp_path / "out"
    cfg = _cfg(out, data[:1], val_data=[str(d) for d in data], eval_every=2, steps=4, val_max_images=2, tensorboard=True,
               train="decoder+slopes", lr=1e-2)
    summary = run(cfg)
    vals = [r for r in _log(out) if "val" in r]
    assert [r["step"] for r in vals] == [2, 4]
    for r in vals:
        assert set(r["val"]) == {"alpha", "beta"}
        for s in r["val"].values():
            assert s["n"] == 2 and all(np.isfinite(s[k]) for k in ("iou", "mae", "s_measure", "boundary_iou"))
    train_lines = [r for r in _log(out) if "loss" in r]
    assert len(train_lines) == 4 and set(train_lines[-1]["slopes"]) == {"blocks.0.attn", "blocks.1.attn"}

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"slopes/blocks.0.attn/head0", "slopes/blocks.1.attn/head1", "train/loss", "train/lr", "val/alpha/iou", "val/beta/mae"} <= tags
    s = acc.Scalars("slopes/blocks.1.attn/head1")
    assert [e.step for e in s] == [1, 2, 3, 4] and s[-1].value == pytest.approx(train_lines[-1]["slopes"]["blocks.1.attn"][1])

    # The checkpoint loads for inference with basam.load_model, slopes and attention kept.
    ckpt = Path(summary["checkpoint"]) / "model.safetensors"
    meta = read_metadata(ckpt)
    attn = AttentionConfig(**json.loads(meta["attention"]))
    assert attn.bias and attn.beta == 0.1 and json.loads(meta["architecture"]) == json.loads(json.dumps(VIT))
    assert meta["step"] == "4" and meta["basam_model"] == "sam_vit_b"
    import basam

    model = basam.load_model("sam_vit_b", checkpoint=ckpt, attention=attn, architecture=json.loads(meta["architecture"]))
    learned = model.image_encoder.blocks[1].attn.bam.slopes.detach()
    assert not torch.allclose(learned, create_model("sam_vit_b", attention=attn, **VIT).image_encoder.blocks[1].attn.bam.slopes)
    assert learned.tolist() == pytest.approx(train_lines[-1]["slopes"]["blocks.1.attn"])
    capsys.readouterr()
    rc = main(["evaluate", "--data", str(data[1]), "--model", "sam_vit_b", "--checkpoint", str(ckpt), "--architecture", meta["architecture"],
               "--resolutions", "128", "--attention", "basam", "--max-images", "2", "--out", str(tmp_path / "ev"), "-q"])
    assert rc == 0, capsys.readouterr().err
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())["datasets"]["beta"]["rows"][0]
    assert ev["n"] == 2 and np.isfinite(ev["iou"])


# ----------------------------------------------------------------------------------------------
# Real data


def test_real_duts_training_with_workers(tmp_path, data):
    duts = SHARED / "duts-tr"
    if not (duts / "images").is_dir():
        pytest.skip(f"real data not found at {duts} (../shared/data is absent)")
    cfg = _cfg(tmp_path / "out", [f"{duts}@1", f"{data[0]}@1"], steps=2, batch_size=2, num_workers=2, model="mobile_sam",
               architecture=TINY, train="decoder", prompt="box")
    summary = run(cfg)
    assert summary["step"] == 2
    assert all(np.isfinite(r["loss"]) for r in _log(tmp_path / "out"))
    sets, weights = open_weighted(cfg.data)
    assert [d.name for d in sets] == ["duts-tr", "alpha"] and len(sets[0]) >= 2000
    plan = MixturePlan([len(d) for d in sets], weights, seed=0)
    share = np.mean([plan.locate(p)[0] == 1 for p in range(4000)])
    assert 0.45 < share < 0.55  # equal weights: the 8-image set is drawn as often as the 2500-image one


def test_initial_checkpoint_with_untrained_slopes_starts_from_beta(tmp_path, data):
    """Fine-tuning from a file whose slopes were never trained starts the slopes at --beta."""
    torch.manual_seed(0)
    model = create_model("sam_vit_b", attention=AttentionConfig.from_preset("basam", beta=1.0), **VIT)
    init = save_model(model, tmp_path / "fixed.safetensors")
    cfg = _cfg(tmp_path / "run", data, checkpoint=str(init), attention="basam", beta=0.1, train="slopes", lr=1e-12, min_lr=0.0, steps=1,
               save_every=1)
    from basam.train import run

    run(cfg)
    final = read_state_dict(tmp_path / "run" / "checkpoints" / "step_1" / "model.safetensors")
    slopes = {k: v for k, v in final.items() if k.endswith("bam.slopes")}
    assert slopes
    for v in slopes.values():
        assert torch.allclose(v, alibi_slopes(v.numel(), 0.1), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Output errors, resume spellings, resume from nothing, the loop's parts


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("basam: error:") and "Traceback" not in err[0], err
    return err[0]


def _full_disk_for(monkeypatch, match: str):
    """os.fsync fails with ENOSPC for files whose path contains ``match`` (a full disk)."""
    import errno

    real = os.fsync

    def fsync(fd):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = ""
        if match in where:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_out_errors_are_one_line_and_leave_no_half_checkpoint(tmp_path, data, capsys, monkeypatch):
    def argv(out):
        return ["train", *_flags(_cfg(out, data[:1], steps=1, batch_size=1))]

    (tmp_path / "taken").write_text("keep me")
    assert main(argv(tmp_path / "taken")) == 2
    assert "is a file, not a folder" in _one_error(capsys) and (tmp_path / "taken").read_text() == "keep me"
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == ro else real_access(p, mode, **k))
    assert main(argv(ro / "out")) == 2  # (root passes os.access everywhere: simulated)
    assert "is not writable" in _one_error(capsys) and list(ro.iterdir()) == []
    monkeypatch.undo()
    _full_disk_for(monkeypatch, "/checkpoints/")  # the disk fills up while the checkpoint is written
    assert main(argv(tmp_path / "full")) == 2
    assert "No space left on device" in _one_error(capsys)
    ckpts = tmp_path / "full" / "checkpoints"
    assert list(ckpts.iterdir()) == []  # no step folder, no temp folder, no `latest`
    assert all(line.endswith("}") for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines())


def test_log_jsonl_keeps_only_whole_lines_on_a_full_disk(tmp_path):
    import errno

    from basam.train.trainer import RunLog

    log = RunLog(tmp_path, True, False, 0)
    log.write({"step": 1, "loss": 0.5})

    class FullDisk:
        """Writes half the line to the real file, then the disk is full."""

        def __init__(self, f):
            self.f = f

        def fileno(self):
            return self.f.fileno()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self.f.close()

    log.f = FullDisk(log.f)
    with pytest.raises(Exception) as ei:
        log.write({"step": 2, "loss": 0.25})
    assert type(ei.value).__name__ == "InputError" and "No space left on device" in str(ei.value)
    assert _log(tmp_path) == [{"step": 1, "loss": 0.5}]
    log.close()


def test_resume_accepts_the_data_folder_given_relatively(tmp_path, data, monkeypatch):
    common = dict(steps=2, batch_size=1, save_every=1)
    assert run(_cfg(tmp_path / "out", data[:1], stop_at=1, **common))["step"] == 1
    monkeypatch.chdir(data[0].parent)
    relative = _cfg(tmp_path / "out", [Path(".") / data[0].name], resume=True, **common)
    assert relative.data == [str(Path(".") / data[0].name)]
    assert run(relative)["step"] == 2  # the same folder: resumed, not refused
    with pytest.raises(Exception, match=r"other settings \(data\)"):
        run(_cfg(tmp_path / "out", [Path(".") / data[0].name, data[1]], resume=True, **{**common, "steps": 3}))


def test_resume_with_nothing_to_resume_says_so_once(tmp_path, data, capsys):
    assert run(_cfg(tmp_path / "new", data[:1], steps=1, batch_size=1, resume=True))["step"] == 1
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "--resume" in ln]
    assert len(notes) == 1 and "starting from step 0" in notes[0] and str(tmp_path / "new") in notes[0]
    main(["train", "--help"])
    assert "say so once on stderr and start from step 0" in " ".join(capsys.readouterr().out.split())


def test_the_loop_is_in_parts_and_dead_code_is_gone():
    import inspect

    from basam.train import data as train_data
    from basam.train import trainer

    assert not hasattr(train_data, "prompt_signature")  # unused duplicate of trainer._signature
    parts = trainer._Training
    for name in ("save", "validation", "step", "log_step", "train"):
        assert callable(getattr(parts, name)), name
    assert len(inspect.getsource(trainer._run).splitlines()) <= 3
    assert max(len(inspect.getsource(getattr(parts, n)).splitlines()) for n in ("step", "log_step", "train", "save")) < 60


def test_trained_outputs_record_follows_the_prompts():
    """The saved model says which decoder outputs its training reached (the predictor's single-mask rule)."""
    from basam.train.trainer import _trained_outputs

    assert _trained_outputs("none", "point", True) == "multimask"  # from scratch, one point: basam_tiny's case
    assert _trained_outputs("none", "box", True) == "single"
    assert _trained_outputs("none", "mixed", True) == "all"
    assert _trained_outputs("all", "point", True) == "all"  # fine-tuning an official model
    assert _trained_outputs("multimask", "box", True) == "all"  # both now trained
    assert _trained_outputs("multimask", "point", True) == "multimask"
    assert _trained_outputs("multimask", "box", False) == "multimask"  # decoder frozen: unchanged


# ----------------------------------------------------------------------------------------------
# Mixed prompts, the refinement pass, the decode cache


def _blob_mask(R: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:R, :R]
    return ((yy - 30) ** 2 + (xx - 26) ** 2 < 14**2) | ((yy >= 40) & (yy < 56) & (xx >= 36) & (xx < 58))


def test_mixed_prompts_have_their_seeded_frequencies():
    from basam.train.data import MIXED_KINDS, sample_prompt

    mask = _blob_mask()
    n = 3000
    kinds = [sample_prompt(mask, "mixed", np.random.default_rng([7, i]), 0.1)["kind"] for i in range(n)]
    groups = ["points" if k.startswith("points:") else k for k in kinds]
    for kind, p in MIXED_KINDS.items():
        freq = groups.count(kind) / n
        assert abs(freq - p) < 4 * (p * (1 - p) / n) ** 0.5, (kind, freq, p)
    assert {int(k.split(":")[1]) for k in kinds if k.startswith("points:")} == {2, 3, 4, 5}
    again = [sample_prompt(mask, "mixed", np.random.default_rng([7, i]), 0.1)["kind"] for i in range(200)]
    assert again == kinds[:200]


def test_interior_points_avoid_the_rim_and_thin_parts():
    """--point-interior: one-point prompts drawn by squared distance from the boundary land well
    inside the object (never on a one-pixel line the uniform draw often hits); 0 changes nothing."""
    from basam.train.data import sample_prompt

    mask = np.zeros((64, 64), bool)
    mask[8:40, 8:40] = True  # a 32 px square ...
    mask[50, 0:64] = True  # ... and a 64 px one-pixel line: 6 % of the object's pixels
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]

    def draws(kind, interior, n=400):
        out, on_line = [], 0
        for i in range(n):
            p = sample_prompt(mask, kind, np.random.default_rng([11, i]), 0.0, point_interior=interior)
            x, y = p["coords"][0].astype(int)
            assert mask[y, x] and p["labels"][0] == 1
            out.append(depth[y, x])
            on_line += int(y == 50)
        return np.array(out), on_line

    (uniform, line_u), (interior, line_i) = draws("point", 0.0), draws("point", 1.0)
    assert line_u > 10 and line_i <= 2  # weight 1 of ~50,000 each: the line is (almost) never clicked
    assert (interior <= 2).mean() < 0.25 * (uniform <= 2).mean()  # nor the rim
    assert interior.mean() > 1.4 * uniform.mean()
    assert draws("box+point", 1.0, 100)[0].mean() > 1.4 * uniform.mean()  # box + point's point too
    half = draws("point", 0.5)[0]
    assert uniform.mean() < half.mean() < interior.mean()
    # 0 (the default) draws exactly what a run without the option drew: one uniform pixel, nothing more
    from basam.train.data import _pixels

    for i in range(50):
        p = sample_prompt(mask, "point", np.random.default_rng([5, i]), 0.0, point_interior=0.0)
        assert np.array_equal(p["coords"], _pixels(np.flatnonzero(mask), 1, np.random.default_rng([5, i]), 64))
    for i in range(50):
        a = sample_prompt(mask, "mixed", np.random.default_rng([5, i]), 0.1)
        b = sample_prompt(mask, "mixed", np.random.default_rng([5, i]), 0.1, point_interior=0.0)
        assert a["kind"] == b["kind"] and all(np.array_equal(a[k], b[k]) for k in ("coords", "labels", "box"))


def test_prompt_points_lie_inside_or_outside_as_labelled():
    from basam.train.data import sample_prompt

    mask = _blob_mask()
    n_neg = 0
    for i in range(600):
        p = sample_prompt(mask, "mixed", np.random.default_rng([3, i]), 0.1)
        if p["coords"] is not None:
            x, y = p["coords"][:, 0].astype(int), p["coords"][:, 1].astype(int)
            assert np.array_equal(mask[y, x], p["labels"] == 1), p
            assert p["labels"][0] == 1  # the first click is always on the object
            n_neg += int((p["labels"] == 0).sum())
        if p["kind"] in ("box", "box+point"):
            assert p["box"] is not None and p["box"][0] <= p["box"][2] and p["box"][1] <= p["box"][3]
        if p["kind"] == "box+point":
            assert len(p["coords"]) == 1
        assert p["refine"] == (p["kind"] == "refine")
    assert n_neg > 20  # the several-points prompts carry negatives
    bp = sample_prompt(mask, "box+point", np.random.default_rng(0), 0.0)
    ys, xs = np.nonzero(mask)
    assert np.array_equal(bp["box"], np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32))  # no noise: the tight box
    x, y = bp["coords"][0].astype(int)
    assert mask[y, x]


def test_corrective_point_comes_from_the_error_region():
    from basam.train.data import corrective_point

    gt = torch.zeros(32, 32, dtype=torch.bool)
    gt[8:24, 8:24] = True
    missed = gt.clone()
    missed[8:24, 16:24] = False  # false negatives only: a positive click there
    for s in range(20):
        (x, y), label = corrective_point(missed, gt, s)
        assert label == 1 and gt[int(y), int(x)] and not missed[int(y), int(x)]
    spilled = gt.clone()
    spilled[0:4, :] = True  # false positives only: a negative click there
    (x, y), label = corrective_point(spilled, gt, 1)
    assert label == 0 and spilled[int(y), int(x)] and not gt[int(y), int(x)]
    (x, y), label = corrective_point(gt, gt, 2)  # no error: a foreground click
    assert label == 1 and gt[int(y), int(x)]


def _module(point_single_weight: float = 0.0):
    from basam.train.losses import LossWeights
    from basam.train.trainer import TrainModule

    torch.manual_seed(0)
    sam = create_model("sam_vit_b", attention=AttentionConfig.from_preset("vanilla"), **VIT)
    sam.eval()
    return TrainModule(sam, 128, LossWeights(), None, point_single_weight)


def _token_grads(module) -> list:
    mlps = module.sam.mask_decoder.output_hypernetworks_mlps
    return [sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None) for m in mlps]


def test_refinement_pass_runs_and_trains_the_single_mask_token():
    from basam.train.data import sample_prompt

    mask = torch.from_numpy(np.pad(_blob_mask(), ((32, 32), (32, 32))))
    image = (mask[None].repeat(3, 1, 1).to(torch.uint8) * 180 + 30)[None]
    point = sample_prompt(mask.numpy(), "point", np.random.default_rng(0))
    refine = dict(point, refine=True, refine_seed=5, kind="refine")

    module = _module()
    module(image, mask[None], [point])["loss"].backward()
    plain = _token_grads(module)
    assert plain[0] == 0 and sum(g > 0 for g in plain[1:]) == 1  # one point alone: the min-loss multimask token only

    module = _module()
    calls = []
    orig = module.sam.decode
    module.sam.decode = lambda *a, **k: calls.append((a[4] is not None, k["multimask_output"])) or orig(*a, **k)
    sums = module(image, mask[None], [refine])
    sums["loss"].backward()
    assert calls == [(False, True), (True, False)]  # pass 1 multimask; pass 2 single-mask with the mask input
    grads = _token_grads(module)
    assert grads[0] > 0 and sum(g > 0 for g in grads[1:]) == 1
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.sam.prompt_encoder.mask_downscaling.parameters())
    assert float(sums["loss"].detach()) > float(_module()(image, mask[None], [point])["loss"].detach())  # two passes' losses


def test_point_single_weight_trains_every_token_in_one_pass():
    from basam.train.data import sample_prompt
    from basam.train.trainer import _trained_outputs

    mask = torch.from_numpy(np.pad(_blob_mask(), ((32, 32), (32, 32))))
    image = (mask[None].repeat(3, 1, 1).to(torch.uint8) * 180 + 30)[None]
    point = sample_prompt(mask.numpy(), "point", np.random.default_rng(0))
    module = _module(point_single_weight=1.0)
    module(image, mask[None], [point])["loss"].backward()
    grads = _token_grads(module)
    assert grads[0] > 0 and sum(g > 0 for g in grads[1:]) == 1
    assert _trained_outputs("none", "point", True, point_single_weight=1.0) == "all"


def test_decode_cache_hit_equals_a_fresh_decode_and_a_bad_file_is_rebuilt(tmp_path, data):
    from basam.data import open_datasets
    from basam.train.cache import DecodeCache, prepare

    ds = open_datasets(data[0])[0]
    cache = DecodeCache(tmp_path / "cache", side=100)
    fresh = prepare(ds, 1, 100)
    assert max(fresh[0].shape[:2]) == 100 and fresh[1].dtype == bool
    first = cache.load(ds, 1)
    second = cache.load(ds, 1)
    assert (cache.misses, cache.hits) == (1, 1)
    for got in (first, second):
        assert np.array_equal(got[0], fresh[0]) and np.array_equal(got[1], fresh[1]) and got[1].dtype == bool
    path = cache.path_for(cache.key(ds, 1))
    good = path.read_bytes()
    for bad in (good[: len(good) // 2], b"not a zip file", b""):  # partial, corrupt, empty
        path.write_bytes(bad)
        got = cache.load(ds, 1)
        assert np.array_equal(got[0], fresh[0]) and np.array_equal(got[1], fresh[1])
        assert path.read_bytes() == good  # rewritten whole
    # Another file's entry under this name (a wrong key) is not trusted either.
    other = cache.path_for(cache.key(ds, 2))
    cache.load(ds, 2)
    path.write_bytes(other.read_bytes())
    assert np.array_equal(cache.load(ds, 1)[0], fresh[0])
    # An edited source is a new key.
    key = cache.key(ds, 1)
    os.utime(ds[1].image_path, ns=(1, 1))
    assert cache.key(ds, 1) != key
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_mixed_training_with_the_cache_runs_and_records_all_outputs(tmp_path, data):
    out = tmp_path / "run"
    cfg = _cfg(out, data, prompt="mixed", batch_size=4, steps=2, cache_dir=str(tmp_path / "cache"), cache_side=120,
               point_single_weight=0.5)
    res = run(cfg)
    assert res["step"] == 2
    assert len(list((tmp_path / "cache").glob("*.npz"))) >= 1
    # "all" is the default, written as no key; a point-only run would write "multimask"
    assert read_metadata(Path(res["checkpoint"]) / "model.safetensors").get("trained_outputs", "all") == "all"
    assert all(np.isfinite(r["loss"]) for r in _log(out) if "loss" in r)


def test_resume_of_a_run_from_before_the_new_settings(tmp_path, data):
    """A checkpoint whose config lacks point_single_weight/cache_side/copy_paste (older runs) had their defaults."""
    from basam.train.trainer import _check_resume

    cfg = _cfg(tmp_path / "run", data)
    old = cfg.to_dict()
    for k in ("point_single_weight", "cache_side", "cache_dir", "val_prompt", "val_single", "copy_paste", "point_interior"):
        old.pop(k)
    state = {"config": old, "sampler": {"global_batch": cfg.batch_size * cfg.grad_accum}}
    _check_resume(cfg, state, 1)  # accepted
    with pytest.raises(InputError, match="point_single_weight"):
        _check_resume(_cfg(tmp_path / "run", data, point_single_weight=1.0), state, 1)


# ----------------------------------------------------------------------------------------------
# SAM's frame (--frame longest): what the predictor and basam evaluate feed the model


def _aligned_set(tmp_path, sizes=((150, 200), (210, 120))):
    """Images whose mask is exactly "red channel > 128", of the given (h, w) sizes."""
    root = tmp_path / "frame"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(sizes):
        m = np.zeros((h, w), bool)
        m[h // 5: h // 2, w // 4: 3 * w // 4] = True
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = np.where(m, 255, 0)
        img[..., 1] = rng.integers(1, 255, (h, w))
        img[..., 2] = 200
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"f{i}.png")
    return root


def test_longest_frame_keeps_the_aspect_pads_and_records_the_valid_size(tmp_path):
    root = _aligned_set(tmp_path)
    sets, weights = open_weighted([str(root)])
    ts = TrainSet(sets, weights, resolution=64, seed=2, prompt="mixed", crop_scale=(1.0, 1.0), frame="longest")
    seen = set()
    for p in range(12):
        s = ts[p]
        h, w = s["valid"]
        j = s["index"]
        H, W = (150, 200) if j == 0 else (210, 120)
        assert max(h, w) == 64 and abs(h / w - H / W) < 0.05, (h, w)  # whole image, longest side R, aspect kept
        img, m = s["image"].numpy(), s["mask"].numpy()
        assert (img[:, h:, :] == 0).all() and (img[:, :, w:] == 0).all()  # padding bottom/right, zeros
        assert (img[2, :h, :w] > 150).all()  # the image fills the valid part
        assert not m[h:, :].any() and not m[:, w:].any()
        edge = ndimage.binary_dilation(m, iterations=2) & ~ndimage.binary_erosion(m, iterations=2)
        inside = np.zeros_like(m)
        inside[:h, :w] = True
        assert ((img[0] > 128) == m)[inside & ~edge].all()  # image and mask still aligned
        pr = s["prompt"]
        if pr["coords"] is not None:
            assert (pr["coords"][:, 0] < w).all() and (pr["coords"][:, 1] < h).all()  # clicks on the image, never the padding
        seen.add(j)
        assert torch.equal(ts[p]["image"], s["image"])  # a function of (seed, position)
    assert seen == {0, 1}
    batch = __import__("basam.train.data", fromlist=["collate"]).collate([ts[0], ts[1]])
    assert batch["valid"].shape == (2, 2) and batch["valid"].max() == 64
    # a crop: smaller area, still longest side R, aspect near the image's (crop_ratio bounds it)
    crop = TrainSet(sets, weights, resolution=64, seed=2, prompt="point", crop_scale=(0.3, 0.6), frame="longest")
    for p in range(8):
        top, left, ch, cw = crop.crop_box(150, 200, p, 0)
        assert 0.2 <= ch * cw / (150 * 200) <= 0.7 and 0 <= top <= 150 - ch and 0 <= left <= 200 - cw
        assert 0.7 <= (cw / ch) / (200 / 150) <= 1.45
        assert max(crop[p]["valid"]) == 64
    with pytest.raises(Exception, match="frame"):
        TrainSet(sets, weights, resolution=64, seed=2, frame="letterbox")


def test_copy_paste_pastes_an_object_inside_the_image_and_targets_one_of_the_two(tmp_path):
    root = _aligned_set(tmp_path)
    sets, weights = open_weighted([str(root)])
    kw = dict(resolution=64, seed=2, prompt="point", crop_scale=(1.0, 1.0), frame="longest")
    plain = TrainSet(sets, weights, **kw)
    assert all(torch.equal(plain[p]["image"], TrainSet(sets, weights, copy_paste=0.0, **kw)[p]["image"]) for p in range(4))
    cp = TrainSet(sets, weights, copy_paste=1.0, **kw)
    kinds = set()
    for p in range(16):
        a, b = plain[p], cp[p]
        h, w = b["valid"]
        img, m, own = b["image"].numpy(), b["mask"].numpy(), a["mask"].numpy()
        assert m.any() and not m[h:, :].any() and not m[:, w:].any()
        assert (img[:, h:, :] == 0).all() and (img[:, :, w:] == 0).all()  # nothing pasted onto the padding
        # every object pixel is red (the source objects are red): the target is red away from its edge
        core = ndimage.binary_erosion(m, iterations=2)
        assert (img[0][core] > 128).all()
        x, y = b["prompt"]["coords"][0]
        assert m[int(y), int(x)]  # the click lies on the target
        assert not torch.equal(a["image"], b["image"])  # something was pasted
        kinds.add("own" if (m <= own).all() else "pasted")
        assert torch.equal(cp[p]["image"], b["image"]) and torch.equal(cp[p]["mask"], b["mask"])  # a function of (seed, position)
    assert kinds == {"own", "pasted"}
    half = TrainSet(sets, weights, copy_paste=0.5, **kw)
    same = sum(torch.equal(plain[p]["image"], half[p]["image"]) for p in range(24))
    assert 4 <= same <= 20  # about half the samples untouched
    with pytest.raises(InputError, match="copy_paste"):
        TrainSet(sets, weights, copy_paste=1.5, **kw)
    with pytest.raises(InputError, match="point_interior"):
        TrainSet(sets, weights, point_interior=-0.1, **kw)


def test_negative_clicks_stay_on_the_image_not_the_padding():
    from basam.train.data import sample_prompt

    mask = np.zeros((64, 64), bool)
    mask[30:40, 2:40] = True  # the object touches the valid part's bottom edge (valid h = 40)
    for i in range(200):
        p = sample_prompt(mask, "points:5", np.random.default_rng([9, i]), 0.1, valid=(40, 48))
        neg = p["coords"][p["labels"] == 0]
        assert (neg[:, 1] < 40).all() and (neg[:, 0] < 48).all()


def test_trainer_zeroes_the_padding_as_preprocess_pads():
    from basam.train.trainer import TrainModule, padding_keep
    from basam.train.losses import LossWeights

    keep = padding_keep(torch.tensor([[3, 5], [6, 2]]), (6, 6))
    assert keep.shape == (2, 1, 6, 6) and keep[0, 0, :3, :5].all() and keep[0].sum() == 15 and keep[1].sum() == 12

    torch.manual_seed(0)
    sam = create_model("basam_tiny", attention="vanilla", depth=2, embed_dim=32, num_heads=2, global_attn_indexes=[1],
                       stem=[8, 8, 16, 16]).eval()
    seen = []
    orig = sam.encode
    sam.encode = lambda x: seen.append(x.detach().clone()) or orig(x)
    module = TrainModule(sam, 64, LossWeights(), None)
    image = torch.full((1, 3, 64, 64), 77, dtype=torch.uint8)
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 10:20, 10:20] = True
    prompt = {"coords": np.array([[15.0, 15.0]], np.float32), "labels": np.ones(1, np.int64), "box": None}
    module(image, mask, [prompt], torch.tensor([[40, 64]]))
    x = seen[-1][0]
    assert (x[:, 40:, :] == 0).all() and (x[:, :40, :] != 0).all()
    # the same as the predictor's own preprocessing of the 40 x 64 image
    assert torch.allclose(x, sam.preprocess(image[..., :40, :].float(), 64)[0])
