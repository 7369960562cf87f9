"""The training loop of ``basam train``: model + freeze policy, data stream, AdamW + warm-up/cosine,
DDP, validation, TensorBoard/JSONL logging and trustworthy checkpoints (see ``basam/train/__init__``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..errors import BasamError, InputError
from ..distributed import Dist, init_distributed
from .config import RUN_DEFINING, TrainConfig
from .losses import LossWeights, sample_losses, upsample_logits

__all__ = ["TrainModule", "lr_factor", "run", "slopes_by_layer", "validate"]


def _resolve_device(name: str, dist: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if dist.world > 1:
            name = f"cuda:{dist.local_rank}"
        dev = torch.device(name)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# The model wrapper DDP sees


def _signature(prompt: dict) -> Tuple[int, bool]:
    """Prompts with the same signature (number of points, box or not) share one decoder call."""
    n = 0 if prompt["coords"] is None else int(len(prompt["coords"]))
    return n, prompt["box"] is not None


class TrainModule(nn.Module):
    """Encodes a batch once and decodes each group of same-shaped prompts; returns loss sums.

    One-point prompts use SAM's multimask output (min-loss candidate back-propagated, see
    :mod:`basam.train.losses`), plus the single-mask output's loss times ``point_single_weight``
    when that is > 0 (all four tokens from one decoder pass); several points or a box use the
    single-mask output. HQ-SAM's decoder always returns one mask (its ``hq_fusion`` decides which).

    Refinement (prompts with ``refine`` set, from ``--prompt mixed``): after the first pass, the
    chosen candidate's low-res logits (B, 1, 4h, 4w), detached as SAM's iterative training does,
    go back in as the mask input with the first prompt plus one corrective point from the error
    region (:func:`basam.train.data.corrective_point`), and the single-mask output of that second
    pass adds its loss. Loss sums are over samples and passes.
    """

    def __init__(self, sam: nn.Module, resolution: int, weights: LossWeights, autocast_dtype: Optional[torch.dtype],
                 point_single_weight: float = 0.0) -> None:
        super().__init__()
        self.sam = sam
        self.resolution = int(resolution)
        self.weights = weights
        self.autocast_dtype = autocast_dtype
        self.point_single_weight = float(point_single_weight)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def _all_tokens(self) -> bool:
        """Whether one pass can give all four outputs (SAM's own decoder; HQ returns one mask)."""
        return self.point_single_weight > 0 and not self.sam.is_hq

    def _add(self, sums: Dict[str, Tensor], parts: Dict[str, Tensor]) -> None:
        for k in sums:
            sums[k] = sums[k] + parts[k].sum()

    def forward(self, images: Tensor, masks: Tensor, prompts: Sequence[dict], valid: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``images`` (B, 3, R, R) uint8-valued, ``masks`` (B, R, R) bool, one prompt dict per
        sample, ``valid`` (B, 2) the (h, w) of each image's top-left part that is image (the rest
        is padding, zeroed after normalisation as :meth:`basam.Sam.preprocess` pads); None: all."""
        from .data import corrective_point

        sam = self.sam
        device = images.device
        R = self.resolution
        S = sam.padded_size(R)
        x = sam.preprocess(images.float(), R)
        if valid is not None:
            x = x * padding_keep(valid.to(device), x.shape[-2:])
        encoder_frozen = not any(p.requires_grad for p in sam.image_encoder.parameters())
        with self._autocast(device), (torch.no_grad() if encoder_frozen else contextlib.nullcontext()):
            feats = sam.encode(x)
        groups: Dict[Tuple[int, bool], List[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(_signature(p), []).append(i)
        sums = {k: torch.zeros((), device=device) for k in ("loss", "bce", "dice", "iou_mse")}
        second: List[dict] = []  # refinement samples' second-pass inputs
        for (n_points, has_box), idx in groups.items():
            it = torch.tensor(idx, device=device)
            f = feats.index_select(it)  # every level (embeddings, HQ's interm, multi-scale maps)
            coords, labels, boxes = _stack_prompts(prompts, idx, n_points, has_box, device)
            gt = masks.index_select(0, it)
            multimask = n_points == 1 and not has_box
            all_tokens = multimask and self._all_tokens()
            with self._autocast(device):
                if all_tokens:
                    # (B, 4, 4h, 4w) logits and (B, 4) IoU of every token, single-mask first
                    low_res, iou_pred = sam.decode_all_tokens(f, coords, labels, boxes, None)
                else:
                    low_res, iou_pred = sam.decode(f, coords, labels, boxes, None, multimask_output=multimask)
            logits = upsample_logits(low_res, S, R)
            if all_tokens:
                parts = sample_losses(logits[:, 1:], iou_pred[:, 1:], gt, self.weights)
                single = sample_losses(logits[:, :1], iou_pred[:, :1], gt, self.weights)
                w = self.point_single_weight
                for k in ("loss", "bce", "dice", "iou_mse"):
                    parts[k] = parts[k] + w * single[k]
                chosen = parts["chosen"] + 1
            else:
                parts = sample_losses(logits, iou_pred, gt, self.weights)
                chosen = parts["chosen"]
            self._add(sums, parts)
            for j, i in enumerate(idx):
                if not prompts[i].get("refine"):
                    continue
                c = int(chosen[j])
                point, label = corrective_point(logits[j, c].detach() > 0, gt[j], int(prompts[i].get("refine_seed", 0)))
                second.append({"i": i, "mask_input": low_res[j, c:c + 1].detach().float(), "point": point, "label": label,
                               "coords": None if coords is None else coords[j], "labels": None if labels is None else labels[j],
                               "box": None if boxes is None else boxes[j]})
        if second:
            self._add(sums, self._refine(feats, masks, second, S, R))
        return sums

    def _refine(self, feats, masks: Tensor, items: List[dict], S: int, R: int) -> Dict[str, Tensor]:
        """The second (refinement) pass over ``items``; per-sample losses concatenated."""
        device = masks.device
        groups: Dict[Tuple[int, bool], List[dict]] = {}
        for item in items:
            n = 1 + (0 if item["coords"] is None else int(item["coords"].shape[0]))
            groups.setdefault((n, item["box"] is not None), []).append(item)
        out: Dict[str, List[Tensor]] = {k: [] for k in ("loss", "bce", "dice", "iou_mse")}
        for (_, has_box), group in groups.items():
            it = torch.tensor([g["i"] for g in group], device=device)
            f = feats.index_select(it)
            coords = torch.stack([g["point"].to(device)[None] if g["coords"] is None else torch.cat([g["coords"], g["point"].to(device)[None]])
                                  for g in group])
            labels = torch.stack([torch.tensor([g["label"]], device=device) if g["labels"] is None
                                  else torch.cat([g["labels"], torch.tensor([g["label"]], device=device, dtype=g["labels"].dtype)])
                                  for g in group])
            boxes = torch.stack([g["box"] for g in group]) if has_box else None
            mask_inputs = torch.stack([g["mask_input"] for g in group])  # (B, 1, 4h, 4w)
            with self._autocast(device):
                low_res, iou_pred = self.sam.decode(f, coords, labels, boxes, mask_inputs, multimask_output=False)
            parts = sample_losses(upsample_logits(low_res, S, R), iou_pred, masks.index_select(0, it), self.weights)
            for k in out:
                out[k].append(parts[k])
        return {k: torch.cat(v) for k, v in out.items()}


def padding_keep(valid: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, 1, H, W) float: 1 inside each sample's valid (h, w) top-left part, 0 in the padding."""
    rows = torch.arange(size[0], device=valid.device)[None, :, None] < valid[:, 0, None, None]
    cols = torch.arange(size[1], device=valid.device)[None, None, :] < valid[:, 1, None, None]
    return (rows & cols)[:, None].float()


def _stack_prompts(prompts: Sequence[dict], idx: List[int], n_points: int, has_box: bool, device: torch.device):
    """(B, K, 2) float32 coords, (B, K) labels, (B, 4) boxes of the prompts ``idx`` (None where absent)."""
    coords = labels = boxes = None
    if n_points:
        coords = torch.stack([torch.as_tensor(prompts[i]["coords"]) for i in idx]).to(device=device, dtype=torch.float32)
        labels = torch.stack([torch.as_tensor(prompts[i]["labels"]) for i in idx]).to(device=device)
    if has_box:
        boxes = torch.stack([torch.as_tensor(prompts[i]["box"]) for i in idx]).to(device=device, dtype=torch.float32)
    return coords, labels, boxes


# ----------------------------------------------------------------------------------------------
# Schedule, optimiser


def lr_factor(i: int, *, steps: int, warmup: int, lr: float, min_lr: float) -> float:
    """Multiplier of the peak lr at 0-based step ``i``: linear warm-up, then cosine to ``min_lr``."""
    warmup = min(warmup, steps)
    if warmup > 0 and i < warmup:
        return (i + 1) / warmup
    progress = min(1.0, (i - warmup) / max(1, steps - warmup))
    ratio = min_lr / lr
    return ratio + (1.0 - ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on matrices and kernels only (not on biases, norms, slopes, 1-D tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


# ----------------------------------------------------------------------------------------------
# Logging


def slopes_by_layer(sam: nn.Module) -> Dict[str, List[float]]:
    """The BA-SAM head slopes of every encoder attention layer: ``{layer: [slope per head]}``."""
    from ..attention import BiasModeMask

    out = {}
    for name, m in sam.named_modules():
        if isinstance(m, BiasModeMask):
            layer = name[: -len(".bam")] if name.endswith(".bam") else name
            if layer.startswith("image_encoder."):
                layer = layer[len("image_encoder."):]
            out[layer] = [float(x) for x in m.slopes.detach().float().cpu().tolist()]
    return out


class RunLog:
    """``log.jsonl`` (one JSON object per line) and TensorBoard scalars, written by rank 0 only.

    A write the file system refuses (disk full, read-only) is a one-line :class:`InputError`, and
    ``log.jsonl`` is cut back to its last whole line first.
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, start_step: int) -> None:
        self.enabled = enabled
        self.path = out / "log.jsonl"
        self.f = None
        self.tb = None
        if not enabled:
            return
        self._truncate(start_step)
        try:
            self.f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {_os_text(e)}") from None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                warnings.warn("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")
            else:
                try:
                    self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1 if start_step > 0 else None)
                except OSError as e:
                    raise InputError(f"cannot write {out / 'tensorboard'}: {_os_text(e)}") from None

    def _truncate(self, start_step: int) -> None:
        """Keep only lines of steps <= ``start_step`` (a resumed run re-does what came after)."""
        if not self.path.exists():
            return
        keep = []
        with open(self.path, "r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(rec.get("step", 0)) <= start_step:
                    keep.append(line)
        from ..io import atomic_write

        atomic_write(self.path, lambda f: f.write("".join(keep).encode()))

    def write(self, record: dict) -> None:
        if self.f is None:
            return
        line = json.dumps(record, sort_keys=True) + "\n"
        start = os.fstat(self.f.fileno()).st_size  # every earlier line is flushed
        try:
            self.f.write(line)
            self.f.flush()
        except OSError as e:
            # No half line: drop the text layer's buffer (its flush fails again) and cut the file.
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
            try:
                os.truncate(self.path, start)
            except OSError:
                pass
            raise InputError(f"cannot write {self.path}: {_os_text(e)}") from None

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def flush(self) -> None:
        if self.tb is not None:
            try:
                self.tb.flush()
            except OSError as e:
                raise InputError(f"cannot write {self.path.parent / 'tensorboard'}: {_os_text(e)}") from None

    def close(self) -> None:
        try:
            if self.f is not None:
                self.f.close()
            if self.tb is not None:
                self.tb.close()
        except OSError as e:
            raise InputError(f"cannot write to {self.path.parent}: {_os_text(e)}") from None


# ----------------------------------------------------------------------------------------------
# Validation


VAL_REPORT = ("iou", "mae", "s_measure", "boundary_iou")


@torch.no_grad()
def validate(sam: nn.Module, val_sets: Sequence, *, resolution: int, seed: int, max_images: Optional[int], dist: Dist,
             prompt: str = "point", multimask: bool = True) -> Dict[str, dict]:
    """One-point validation (basam.data.prompts' ``prompt``: the seeded ``point`` or the ``center``
    pixel; multimask picked by predicted IoU, or the single-mask output with ``multimask`` False),
    images sharded over ranks; returns ``{dataset: summarize(...)}`` on every rank."""
    from ..data.prompts import make_prompt
    from ..metrics import evaluate_image
    from ..metrics import summarize
    from ..predictor import Predictor

    was_training = sam.training
    modes = {m: m.training for m in sam.modules()}
    sam.eval()
    predictor = Predictor(sam, resolution=resolution)
    result = {}
    try:
        for ds in val_sets:
            n = len(ds) if max_images is None else min(len(ds), max_images)
            records, skipped = [], 0
            for i in range(dist.rank, n, dist.world):
                try:
                    image, gt = ds.load(i)
                    p = make_prompt(gt, prompt, seed=seed, key=f"{ds.name}/{ds[i].name}")
                except InputError:
                    skipped += 1
                    continue
                metrics, _ = evaluate_image(predictor, image, gt, p, multimask, None)
                records.append(metrics)
            gathered = dist.gather((records, skipped))
            all_records = [r for recs, _ in gathered for r in recs]
            summary = summarize(all_records)
            summary["skipped"] = sum(s for _, s in gathered)
            result[ds.name] = summary
    finally:
        predictor.reset_image()
        for m, mode in modes.items():
            m.training = mode
        sam.training = was_training
    return result


# ----------------------------------------------------------------------------------------------
# The run


def _open_val_sets(specs: Sequence[str]) -> list:
    from ..data.datasets import open_data_spec

    out, names = [], set()
    for text in specs:
        for d in open_data_spec(text):
            if len(d) == 0:
                continue
            name, k = d.name, 2
            while name in names:
                name, k = f"{d.name}-{k}", k + 1
            d.name = name
            names.add(name)
            out.append(d)
    return out


def _build_model(cfg: TrainConfig):
    from ..attention import AttentionConfig
    from ..models.registry import build_sam, get_spec, shrink
    from .freeze import policy_parts

    spec = get_spec(cfg.model)
    if cfg.architecture:
        spec = shrink(spec, **dict(cfg.architecture))
    trains_slopes = bool(policy_parts(cfg.train) & {"slopes", "full"})
    # Slopes only learn while BM-AM is on; a file must not claim trained slopes otherwise.
    trains_slopes = trains_slopes and AttentionConfig.from_preset(cfg.attention).bias
    attention = AttentionConfig.from_preset(cfg.attention, beta=cfg.beta, dist=cfg.dist, nsf_count=cfg.nsf_count,
                                            decoder_nsf=cfg.decoder_nsf, trainable_slopes=trains_slopes)
    if cfg.hq_fusion is not None and not spec.hq:
        raise InputError(f"--hq-fusion applies to HQ-SAM models (sam_hq_*), not {cfg.model}")
    return build_sam(spec, attention, hq_fusion=cfg.hq_fusion or "add")


def _load_initial(model, path, cfg: TrainConfig, main: bool = True) -> None:
    """Load ``--checkpoint`` into the freshly built model. An HQ model whose HQ modules this run
    trains may start from a plain SAM file (as HQ-SAM itself is trained): when the file has none of
    HQ-SAM's own modules they keep their initialisation; every other key must match strictly."""
    from ..checkpoint import read_metadata, read_state_dict
    from ..load import load_weights_into
    from .freeze import HQ_MODULES, policy_parts

    fresh: Tuple[str, ...] = ()
    if getattr(model, "is_hq", False) and policy_parts(cfg.train) & {"hq", "decoder", "full"}:
        sd = read_state_dict(path)
        prefixes = tuple(f"mask_decoder.{m}." for m in HQ_MODULES)
        if not any(k.startswith(prefixes) for k in sd):
            fresh = prefixes
            if main:
                print(f"note: {path} has no HQ-SAM modules ({', '.join(HQ_MODULES)}); they start from their "
                      "initialisation and are trained", file=sys.stderr)
        load_weights_into(model, sd, model_name=cfg.model, meta=read_metadata(path), label=f"checkpoint {path}", fresh=fresh)
        return
    load_weights_into(model, path, model_name=cfg.model)


def _probe_unused(module: TrainModule, device: torch.device, prompt_kind: str, trainable: List[nn.Parameter]) -> bool:
    """Whether some trainable parameter gets no gradient for some prompt kind (DDP then needs
    ``find_unused_parameters``). One batch of one synthetic image per kind, in eval mode (no
    BatchNorm statistics move); gradients are cleared afterwards."""
    import numpy as np

    from .data import sample_prompt
    from .freeze import set_train_mode

    kinds = ["point", "box", "points:2", "box+point", "refine"] if prompt_kind == "mixed" else [prompt_kind]
    R = module.resolution
    mask = torch.zeros(R, R, dtype=torch.bool)
    mask[R // 4: 3 * R // 4, R // 4: 3 * R // 4] = True
    image = (mask[None].repeat(3, 1, 1).to(torch.uint8) * 200 + 20)
    unused = False
    module.sam.eval()
    try:
        for kind in kinds:
            prompt = sample_prompt(mask.numpy(), kind, np.random.default_rng(0), 0.0)
            out = module(image[None].to(device), mask[None].to(device), [prompt])
            out["loss"].backward()
            unused = unused or any(p.grad is None for p in trainable)
            for p in trainable:
                p.grad = None
    finally:
        set_train_mode(module.sam)
    return unused


def run(cfg: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) as ``cfg`` says. Returns a summary on rank 0 (``{}`` on other ranks)."""
    dist = init_distributed("cuda" if cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
    try:
        return _run(cfg, dist)
    finally:
        dist.close()


def _canonical_data(spec: str) -> str:
    """``PATH[:LAYOUT][@WEIGHT]`` with PATH resolved (:func:`basam.io.canonical_path`), so that the
    same folder given relatively or absolutely is the same run."""
    from ..io import canonical_path
    from .data import parse_weighted_data_arg

    try:
        a = parse_weighted_data_arg(spec)
    except InputError:
        return spec
    return f"{canonical_path(a.path)}:{a.layout or ''}:{a.split or ''}@{a.weight:g}"


def _same_setting(key: str, old: Any, new: Any) -> bool:
    if key == "data" and isinstance(old, list) and isinstance(new, list):
        return [_canonical_data(str(x)) for x in old] == [_canonical_data(str(x)) for x in new]
    return old == new


def _check_resume(cfg: TrainConfig, state: dict, world: int) -> None:
    old = state.get("config") or {}
    new = cfg.to_dict()
    defaults = TrainConfig().to_dict()  # a key a run from before it existed lacks had its default
    diff = [k for k in RUN_DEFINING
            if k not in ("batch_size", "grad_accum", "checkpoint") and not _same_setting(k, old.get(k, defaults.get(k)), new.get(k))]
    if diff:
        raise InputError(f"--resume: the run in {cfg.out} was started with other settings ({', '.join(diff)}); "
                         "resume with the same ones or choose another --out")
    old_g = int(state["sampler"]["global_batch"])
    new_g = world * cfg.batch_size * cfg.grad_accum
    if old_g != new_g:
        raise InputError(f"--resume: global batch (processes x batch size x grad accum) was {old_g}, now {new_g}")


def _os_text(e: OSError) -> str:
    return e.strerror or " ".join(str(e).split()) or type(e).__name__


def _starting_outputs(resumed: bool, latest, initial: bool, model) -> str:
    """Which decoder outputs were trained before this run: the resumed checkpoint's record, the
    initial weights' (``load_weights_into`` read it), or none (random init)."""
    if resumed:
        from ..checkpoint import read_metadata

        return read_metadata(latest / "model.safetensors").get("trained_outputs", "all")
    return model.trained_outputs if initial else "none"


def _trained_outputs(starting: str, prompt: str, decoder_trained: bool, point_single_weight: float = 0.0) -> str:
    """What the saved model records as ``trained_outputs`` (read by the predictor's single-mask rule).

    One-point prompts train only the three multimask tokens (the min-loss candidate gets the
    gradient); boxes and several points train only the single-mask token; ``mixed`` trains both,
    as do one-point prompts with ``point_single_weight`` > 0.
    """
    if not decoder_trained or starting == "all":
        return starting if starting != "none" else "all"
    now = {"point": "multimask", "points:1": "multimask", "mixed": "all"}.get(prompt, "single")
    if now == "multimask" and point_single_weight > 0:
        now = "all"
    return now if starting in ("none", now) else "all"


class _Training:
    """One run of :func:`run`, in parts: :meth:`__init__` sets up (resume state, data, model,
    optimiser, DDP, output folder, logs, loader), :meth:`step` is one optimiser step,
    :meth:`log_step` / :meth:`validation` / :meth:`save` log, validate and checkpoint, and
    :meth:`train` runs the loop. The order of every random draw is that of an uninterrupted run."""

    def __init__(self, cfg: TrainConfig, dist: Dist) -> None:
        from ..io import atomic_write, check_writable_dir
        from ..load import resolve_checkpoint
        from . import checkpointing as ck
        from .data import BatchPositions, TrainSet, collate, open_weighted
        from .freeze import apply_policy, set_train_mode

        self.cfg, self.dist, self.ck = cfg, dist, ck
        self.t_start = time.time()
        self.device = device = _resolve_device(cfg.device, dist)
        self.out = out = Path(cfg.out)
        self.ckpt_dir = ckpt_dir = out / "checkpoints"
        # A file, or a folder that cannot be written: refused before the data and the model load.
        check_writable_dir(out, "--out")

        # 1. What is there to resume?
        latest = ck.latest_checkpoint(ckpt_dir)
        if latest is not None and not cfg.resume:
            raise InputError(f"{out} already holds a run (checkpoints/{latest.name}); pass --resume to continue it or choose another --out")
        state = None
        if cfg.resume and latest is not None:
            state = ck.load_state(latest)
            _check_resume(cfg, state, dist.world)
        elif cfg.resume and dist.main:
            print(f"note: --resume: no checkpoint in {ckpt_dir}, nothing to resume; starting from step 0",
                  file=sys.stderr, flush=True)
        self.state = state
        self.start_step = int(state["step"]) if state is not None else 0

        # 2. Data (checked before any file is written).
        datasets, weights = open_weighted(cfg.data)
        self.val_sets = _open_val_sets(cfg.val_data)
        self.trainset = TrainSet(datasets, weights, resolution=cfg.resolution, seed=cfg.seed, prompt=cfg.prompt,
                                 crop_scale=cfg.crop_scale, crop_ratio=cfg.crop_ratio, hflip=cfg.hflip, color_jitter=cfg.color_jitter,
                                 copy_paste=cfg.copy_paste, point_interior=cfg.point_interior, box_noise=cfg.box_noise, cache_dir=cfg.cache_dir, cache_side=cfg.cache_side, frame=cfg.frame)

        # 3. Model: random init (seeded), initial weights, or the checkpoint resumed.
        torch.manual_seed(cfg.seed)
        self.model = model = _build_model(cfg)
        if state is not None:
            # the run's own checkpoint: every weight, slopes included, exactly as saved
            from ..checkpoint import load_weights, read_state_dict

            load_weights(model, read_state_dict(latest / "model.safetensors"), source=f"checkpoint {latest}", model_name=cfg.model)
        elif cfg.checkpoint is not None:
            # initial weights: the one loading rule (untrained slopes start from --beta)
            _load_initial(model, resolve_checkpoint(cfg.model, cfg.checkpoint), cfg, main=dist.main)
        self.trainable_names = apply_policy(model, cfg.train)
        model.trained_outputs = _trained_outputs(
            _starting_outputs(state is not None, latest, cfg.checkpoint is not None, model), cfg.prompt,
            decoder_trained=any(n.startswith("mask_decoder.") for n in self.trainable_names),
            point_single_weight=cfg.point_single_weight)
        model.to(device)
        set_train_mode(model)
        self.set_train_mode = set_train_mode
        named = dict(model.named_parameters())
        self.trainable = [named[n] for n in self.trainable_names]

        precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        module = TrainModule(model, cfg.resolution, LossWeights(cfg.bce_weight, cfg.dice_weight, cfg.iou_weight),
                             torch.bfloat16 if precision == "bf16" else None, cfg.point_single_weight)
        self.opt = opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
        self.sched = sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: lr_factor(i, steps=cfg.steps, warmup=cfg.warmup, lr=cfg.lr, min_lr=cfg.min_lr))
        if state is not None:
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            ck.set_rng_state(state["rng"])

        self.ddp = module
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            find_unused = _probe_unused(module, device, cfg.prompt, self.trainable)
            self.ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=find_unused)

        # 4. Output folder, logs.
        if dist.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"cannot create --out {out}: {_os_text(e)}") from None
            ck.clean_stale(ckpt_dir)
            import yaml

            atomic_write(out / "config.yaml", lambda f: f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode()))
        dist.barrier()
        self.log = RunLog(out, dist.main, cfg.tensorboard, self.start_step)

        self.end_step = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)
        self.G = dist.world * cfg.batch_size * cfg.grad_accum
        self.loader = torch.utils.data.DataLoader(
            self.trainset, batch_sampler=BatchPositions(self.start_step, self.end_step, world=dist.world, rank=dist.rank,
                                                        batch=cfg.batch_size, accum=cfg.grad_accum),
            num_workers=cfg.num_workers, collate_fn=collate, pin_memory=device.type == "cuda")

    # --- checkpoints and validation -----------------------------------------------------------

    def save(self, step: int) -> Path:
        """Checkpoint ``step`` (rank 0 writes; every rank waits)."""
        cfg, dist, ck = self.cfg, self.dist, self.ck
        path = None
        if dist.main:
            meta = ck.model_metadata(self.model, architecture=cfg.architecture, step=step, policy=cfg.train, resolution=cfg.resolution)
            st = {
                "format": ck.STATE_FORMAT,
                "step": step,
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "rng": ck.rng_state(),
                "sampler": {"position": step * self.G, "epoch": (step * self.G) // self.trainset.plan.epoch_size,
                            "epoch_size": self.trainset.plan.epoch_size, "global_batch": self.G},
                "config": cfg.to_dict(),
                "world_size": dist.world,
                "trainable": list(self.trainable_names),
            }
            path = ck.save_checkpoint(self.ckpt_dir, step, self.model, meta, st, cfg.keep)
        dist.barrier()
        return path if path is not None else self.ckpt_dir / ck.step_dir_name(step)

    def validation(self, step: int) -> Optional[dict]:
        """Validate at ``step`` and log it; None without validation data."""
        cfg = self.cfg
        if not self.val_sets:
            return None
        record: Dict[str, Any] = {"step": step}
        scal = {}
        for key, multimask in (("val", True), ("val_single", False)) if cfg.val_single else (("val", True),):
            res = validate(self.model, self.val_sets, resolution=cfg.resolution, seed=cfg.val_seed, max_images=cfg.val_max_images,
                           dist=self.dist, prompt=cfg.val_prompt, multimask=multimask)
            self.set_train_mode(self.model)
            record[key] = {name: {k: (float(v) if isinstance(v, float) else v) for k, v in s.items()} for name, s in res.items()}
            for name, s in record[key].items():
                for k in ("iou", "mae", "s_measure", "boundary_iou", "dice", "e_measure_mean", "weighted_f", "f_measure_max"):
                    if k in s:
                        scal[f"{key}/{name}/{k}"] = s[k]
        clean = record["val"]
        self.log.write(record)
        self.log.scalars(step, scal)
        self.log.flush()
        return clean

    # --- one step and its log line ------------------------------------------------------------

    def step(self, it) -> Tuple[List[float], Tensor, float]:
        """One optimiser step over ``grad_accum`` micro-batches from ``it``.

        Returns the loss, bce, dice, iou_mse sums and the sample count, summed over ranks; the
        gradient norm before clipping; the learning rate the step used.
        """
        cfg, dist, ddp = self.cfg, self.dist, self.ddp
        self.opt.zero_grad(set_to_none=True)
        local = {"loss": 0.0, "bce": 0.0, "dice": 0.0, "iou_mse": 0.0, "n": 0.0}
        for m in range(cfg.grad_accum):
            batch = next(it)
            sync = contextlib.nullcontext() if (dist.world == 1 or m == cfg.grad_accum - 1) else ddp.no_sync()
            with sync:
                sums = ddp(batch["image"].to(self.device, non_blocking=True), batch["mask"].to(self.device, non_blocking=True),
                           batch["prompts"], batch["valid"].to(self.device, non_blocking=True))
                (sums["loss"] / (cfg.batch_size * cfg.grad_accum)).backward()
            for k in ("loss", "bce", "dice", "iou_mse"):
                local[k] += float(sums[k].detach())
            local["n"] += len(batch["prompts"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        lr_now = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        totals = dist.all_sum([local["loss"], local["bce"], local["dice"], local["iou_mse"], local["n"]], self.device)
        return totals, grad_norm, lr_now

    def log_step(self, step: int, acc: dict, grad_norm: Tensor, lr_now: float, t_log: float, bar) -> None:
        """The training log line of ``step``: the means over the steps since the last one."""
        n = max(acc["n"], 1.0)
        G = self.G
        rec = {"step": step, "loss": acc["loss"] / n, "bce": acc["bce"] / n, "dice": acc["dice"] / n,
               "iou_mse": acc["iou_mse"] / n, "lr": lr_now, "grad_norm": float(grad_norm),
               "samples": step * G, "epoch": (step * G) / self.trainset.plan.epoch_size,
               "samples_per_s": acc["n"] / max(time.time() - t_log, 1e-9), "time": round(time.time() - self.t_start, 3)}
        slopes = slopes_by_layer(self.model) if self.model.attention_config.bias else {}
        if slopes:
            rec["slopes"] = slopes
        self.log.write(rec)
        scal = {f"train/{k}": rec[k] for k in ("loss", "bce", "dice", "iou_mse", "lr", "grad_norm")}
        for layer, values in slopes.items():
            for h, v in enumerate(values):
                scal[f"slopes/{layer}/head{h}"] = v
        self.log.scalars(step, scal)
        bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr_now:.2e}")

    # --- the loop -----------------------------------------------------------------------------

    def train(self) -> Dict[str, Any]:
        from tqdm import tqdm

        cfg, dist = self.cfg, self.dist
        start_step, end_step = self.start_step, self.end_step
        bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=cfg.quiet or not dist.main)
        step = start_step
        acc = _zero_acc()
        t_log = time.time()
        last_val = None
        last_saved = start_step if self.state is not None else None
        it = iter(self.loader)
        try:
            while step < end_step:
                totals, grad_norm, lr_now = self.step(it)
                step += 1
                for k, v in zip(("loss", "bce", "dice", "iou_mse", "n"), totals):
                    acc[k] += v
                acc["steps"] += 1
                if not math.isfinite(totals[0]):
                    raise BasamError(f"the training loss is not finite at step {step} ({totals[0]}); lower --lr or check the data")
                bar.update(1)
                if step % cfg.log_every == 0 or step == end_step:
                    self.log_step(step, acc, grad_norm, lr_now, t_log, bar)
                    acc = _zero_acc()
                    t_log = time.time()
                if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.steps:
                    last_val = self.validation(step)
                if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == end_step:
                    self.save(step)
                    last_saved = step
        finally:
            bar.close()
        if step == cfg.steps and step > start_step and self.val_sets:
            last_val = self.validation(step)
        if last_saved != step and step > 0:
            self.save(step)
        self.log.close()
        dist.barrier()
        if not dist.main:
            return {}
        return {"step": step, "out": str(self.out), "checkpoint": str(self.ckpt_dir / self.ck.step_dir_name(step)), "val": last_val,
                "seconds": time.time() - self.t_start, "trainable": len(self.trainable_names),
                "trainable_params": int(sum(p.numel() for p in self.trainable))}


def _zero_acc() -> Dict[str, float]:
    return {"loss": 0.0, "bce": 0.0, "dice": 0.0, "iou_mse": 0.0, "n": 0.0, "steps": 0}


def _run(cfg: TrainConfig, dist: Dist) -> Dict[str, Any]:
    return _Training(cfg, dist).train()
