"""``basam bench``: parameters, speed and peak memory of the image encoder and the whole predictor.

One *case* is (implementation, model, part, resolution, dtype, attention preset, torch.compile).
``basam`` cases run basam's model; with ``--baseline official`` every case is also run on the official
implementation (``segment_anything``, ``mobile_sam`` or ``segment_anything_hq``) with the *same
weights* (the official model's random state dict is loaded into basam's), its absolute position
embedding resampled to the grid so that it runs at other resolutions at all, and the ratios
basam / official are printed. Results: a table on screen (the BA-SAM paper's Table 5 columns:
parameters, speed, memory), optionally JSON and a plot of time and memory against resolution.

Timing: ``warmup`` untimed calls (compilation and autotuning happen there), then ``iters`` timed
calls (CUDA events on the GPU, ``perf_counter`` on the CPU); the median is reported. Peak memory:
``torch.cuda.max_memory_allocated`` over one call (weights included) on the GPU; on the CPU the
process's peak resident set size (``VmHWM`` after resetting it), which includes the Python process.

Nothing here is a test: figures are measured each run and printed as they are.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .constants import BENCH_DTYPES, BENCH_PARTS
from .errors import InputError, one_line, out_of_memory_errors

__all__ = ["BenchCase", "BenchResult", "run_bench", "format_table", "plot_results", "write_json", "environment"]

DTYPES = dict(zip(BENCH_DTYPES, (torch.float32, torch.bfloat16, torch.float16)))
PARTS = BENCH_PARTS
IMPLS = ("basam", "official")

@dataclass(frozen=True)
class BenchCase:
    impl: str
    model: str
    part: str
    resolution: int
    dtype: str
    preset: str
    compile: bool
    batch: int = 1
    cuda_graph: bool = False


@dataclass
class BenchResult:
    case: BenchCase
    status: str = "ok"  # ok | oom | unsupported: ... | error: ...
    params_m: Optional[float] = None
    ms: Optional[float] = None  # median time per call (batch images)
    ms_spread: Optional[Tuple[float, float]] = None  # (min, max) of the timed calls
    first_call_s: Optional[float] = None  # the first call (compilation, autotuning) in seconds
    peak_gib: Optional[float] = None
    memory_kind: str = ""
    predict_ms: Optional[float] = None  # predictor: one prompt on an encoded image
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def images_per_s(self) -> Optional[float]:
        return None if self.ms is None else 1000.0 * self.case.batch / self.ms

    def to_json(self) -> dict:
        d = asdict(self.case)
        d.update({k: v for k, v in asdict(self).items() if k != "case"})
        d["images_per_s"] = self.images_per_s
        return d


# ----------------------------------------------------------------------------------------------
# Measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> Tuple[float, List[float]]:
    """Run ``fn`` ``warmup`` times (the first timed separately, in s), then ``iters`` timed times (ms)."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    _sync(device)
    times: List[float] = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - t))
    return first, times


def _reset_cpu_peak() -> bool:
    """Reset the process's peak RSS (Linux: writing 5 to clear_refs). Whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_gib() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[], object], device: torch.device) -> Tuple[Optional[float], str]:
    """Peak memory (GiB) over one call of ``fn`` and what it counts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**30, "cuda allocated (weights included)"
    if not _reset_cpu_peak():
        return None, "n/a"
    fn()
    return _cpu_peak_gib(), "process peak RSS"


# ----------------------------------------------------------------------------------------------
# Models


def _official_package(model: str):
    """The official package implementing ``model`` (its ModelSpec's oracle) and its registry key."""
    from .models.registry import MODEL_SPECS, get_spec

    oracle = get_spec(model).oracle
    if oracle is None:
        known = ", ".join(n for n, s in MODEL_SPECS.items() if s.oracle is not None)
        raise InputError(f"no official implementation is known for {model}; --baseline official takes {known}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pkg = __import__(oracle.package)
    except ImportError:
        raise InputError(f"--baseline official needs the {oracle.package} package for {model} "
                         f"(pip install {oracle.pip}, or pip install 'basam[bench]')") from None
    return pkg, oracle.key


def build_official(model: str) -> nn.Module:
    """The official model for ``model``, randomly initialised, in eval mode."""
    pkg, key = _official_package(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pkg.__name__ == "sam2":  # built from its hydra config, as sam2.build_sam does for a checkpoint
            from sam2.build_sam import build_sam2

            sam = build_sam2(key, None, device="cpu")
        else:
            sam = pkg.sam_model_registry[key](checkpoint=None)
    return sam.eval()


def official_api(sam: nn.Module) -> Tuple[type, type]:
    """(image predictor class, automatic mask generator class) of the official package ``sam`` was built from."""
    package = type(sam).__module__.split(".")[0]
    if package == "sam2":
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        return SAM2ImagePredictor, SAM2AutomaticMaskGenerator
    pkg = sys.modules[package]  # segment_anything, mobile_sam, segment_anything_hq
    return pkg.SamPredictor, pkg.SamAutomaticMaskGenerator


def official_img_size(sam: nn.Module) -> int:
    """The one input side the official model's predictor and generator run at (1024)."""
    size = getattr(sam.image_encoder, "img_size", None)
    return int(size if size is not None else sam.image_size)  # SAM 2 keeps it on the model


def build_basam(model: str, preset: str, state_dict: Optional[dict] = None, checkpoint: Optional[str] = None) -> nn.Module:
    """basam's model with the ``preset`` attention: from ``checkpoint``, the given official
    ``state_dict``, or randomly initialised."""
    from .load import load_model, load_weights_into
    from .models.registry import create_model

    if checkpoint is not None:
        return load_model(model, checkpoint=checkpoint, attention=preset, download=False)
    m = create_model(model, attention=preset)
    if state_dict is not None:
        load_weights_into(m, state_dict, model_name=model, label="official random weights")
    return m.eval()


def resample_official_pos_embed(encoder: nn.Module, grid: int) -> None:
    """Make the official ViT encoder run on a ``grid`` x ``grid`` token map: its absolute position
    embedding (1, 64, 64, C) is resampled bicubically (the relative-position tables the official code
    interpolates by itself)."""
    pos = getattr(encoder, "pos_embed", None)
    if pos is None or pos.shape[1] == grid:
        return
    with torch.no_grad():
        new = torch.nn.functional.interpolate(pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic",
                                              align_corners=False).permute(0, 2, 3, 1).to(pos.dtype)
    encoder.pos_embed = nn.Parameter(new, requires_grad=False)


def count_params(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


# ----------------------------------------------------------------------------------------------
# Cases


def _autocast(device: torch.device, dtype: torch.dtype, enabled: bool):
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _encoder_call(impl: str, sam: nn.Module, x: torch.Tensor, compiled: Optional[Callable]) -> Callable[[], object]:
    # basam: Sam.encode (the path the predictor takes, CUDA graphs included when on); official SAM 2:
    # forward_image (the trunk, the neck and the decoder's two projections, as basam's encode)
    official = getattr(sam, "forward_image", sam.image_encoder)
    enc = compiled if compiled is not None else (sam.encode if impl == "basam" else official)

    def call():
        with torch.inference_mode():
            return enc(x)

    return call


def _predictor_calls(impl: str, sam: nn.Module, image, resolution: int):
    """(set_image + one point prompt, the prompt alone) for basam's or the official predictor."""
    import numpy as np

    h, w = image.shape[:2]
    point = np.array([[w * 0.5, h * 0.5]])
    label = np.array([1])
    if impl == "basam":
        from .models.sam2 import Sam2

        if isinstance(sam, Sam2):  # the SAM2ImagePredictor interface and preprocessing: equal work
            from .sam2_predictor import Sam2Predictor as cls
        else:
            from .predictor import Predictor as cls
        pred = cls(sam, resolution=resolution)
    else:
        pred = official_api(sam)[0](sam)

    def full():
        with torch.inference_mode():
            pred.set_image(image)
            return pred.predict(point_coords=point, point_labels=label, multimask_output=True)

    def prompt_only():
        with torch.inference_mode():
            return pred.predict(point_coords=point, point_labels=label, multimask_output=True)

    return full, prompt_only


def run_case(case: BenchCase, sam: nn.Module, device: torch.device, warmup: int, iters: int, autocast: bool,
             amg_points_per_side: int = 32) -> BenchResult:
    """Measure one case on an already built model (moved to ``device`` and ``dtype`` here).

    ``amg_points_per_side``: the point grid of part ``amg`` (:mod:`basam.bench_amg`).
    """
    res = BenchResult(case)
    dtype = DTYPES[case.dtype]
    cast_weights = not autocast
    sam.to(device=device, dtype=dtype if cast_weights else torch.float32)
    res.params_m = count_params(sam.image_encoder if case.part == "encoder" else sam)
    stride = getattr(sam.image_encoder, "stride", 16)  # the official encoders: 16 px per token
    grid = math.ceil(case.resolution / stride)
    side = grid * stride
    if case.impl == "official":
        if case.part in ("predictor", "amg") and case.resolution != official_img_size(sam):
            what = "predictor" if case.part == "predictor" else "mask generator"
            res.status = f"unsupported: the official {what} runs at {official_img_size(sam)} px only"
            return res
        resample_official_pos_embed(sam.image_encoder, grid)
    if case.cuda_graph:
        if device.type != "cuda":
            res.status = "unsupported: CUDA graphs need a CUDA device"
            return res
        sam.cuda_graphs = True
    compiled = None
    if case.compile:
        compiled = torch.compile(sam.image_encoder)
        if case.part in ("predictor", "amg"):
            sam.image_encoder = compiled  # type: ignore[assignment]
    ctx = _autocast(device, dtype, autocast)
    try:
        with ctx:
            if case.part == "amg":
                from .bench_amg import time_amg

                times = time_amg(res, sam, device, warmup, iters, amg_points_per_side)
            elif case.part == "encoder":
                g = torch.Generator(device="cpu").manual_seed(0)
                x = torch.randn(case.batch, 3, side, side, generator=g).to(device=device, dtype=dtype if cast_weights else torch.float32)
                fn = _encoder_call(case.impl, sam, x, compiled)
                res.first_call_s, times = time_calls(fn, device, warmup, iters)
                res.peak_gib, res.memory_kind = peak_memory(fn, device)
            else:
                import numpy as np

                rng = np.random.default_rng(0)
                h = max(16, round(case.resolution * 2 / 3))
                image = rng.integers(0, 256, size=(h, case.resolution, 3), dtype=np.uint8)
                full, prompt_only = _predictor_calls(case.impl, sam, image, case.resolution)
                res.first_call_s, times = time_calls(full, device, warmup, iters)
                res.peak_gib, res.memory_kind = peak_memory(full, device)
                _, ptimes = time_calls(prompt_only, device, max(1, warmup), iters)
                res.predict_ms = statistics.median(ptimes)
        res.ms = statistics.median(times)
        res.ms_spread = (min(times), max(times))
    except Exception as exc:  # noqa: BLE001 - every failure is a reported result, not a crash
        if _is_oom(exc):
            res.status = "oom"
        elif case.impl == "official":
            res.status = "unsupported: " + _one_line(exc)
        else:
            raise
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, out_of_memory_errors()) or "out of memory" in str(exc).lower()


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)[:160]}"


def run_bench(
    models: Sequence[str],
    resolutions: Sequence[int],
    dtypes: Sequence[str] = ("fp32",),
    presets: Sequence[str] = ("vanilla", "basam"),
    parts: Sequence[str] = ("encoder",),
    compile_modes: Sequence[bool] = (False,),
    graph_modes: Sequence[bool] = (False,),
    baseline: Optional[str] = None,
    device: "str | torch.device" = "cpu",
    warmup: int = 2,
    iters: int = 5,
    batch: int = 1,
    autocast: bool = False,
    checkpoint: Optional[str] = None,
    progress: bool = True,
    on_result: Optional[Callable[[BenchResult], None]] = None,
    amg_points_per_side: int = 32,
) -> List[BenchResult]:
    """Run every case; models are built once per (impl, model, preset) and reused across sizes.

    ``amg_points_per_side``: the point grid of part ``amg`` (both generators).
    """
    from tqdm import tqdm

    device = torch.device(device)
    for d in dtypes:
        if d not in DTYPES:
            raise InputError(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    for p in parts:
        if p not in PARTS:
            raise InputError(f"unknown part {p!r}; choose from {', '.join(PARTS)}")
    if isinstance(amg_points_per_side, bool) or not isinstance(amg_points_per_side, int) or amg_points_per_side < 1:
        raise InputError(f"the amg point grid must be a positive integer per side, got {amg_points_per_side!r}")
    if baseline not in (None, "official"):
        raise InputError(f"unknown baseline {baseline!r}; the only baseline is 'official'")
    if baseline and checkpoint:
        raise InputError("--baseline official runs on shared random weights; leave out --checkpoint")
    if baseline:
        for m in models:
            _official_package(m)
    cases: List[BenchCase] = []
    for model in models:
        for part in parts:
            for dtype in dtypes:
                for comp in compile_modes:
                    for res in resolutions:
                        if baseline:
                            cases.append(BenchCase("official", model, part, res, dtype, "vanilla", comp, batch))
                        for graph in graph_modes:
                            for preset in presets:
                                cases.append(BenchCase("basam", model, part, res, dtype, preset, comp, batch, graph))
    results: List[BenchResult] = []
    bar = tqdm(cases, desc="bench", unit="case", disable=not progress, file=sys.stderr)
    for case in bar:
        bar.set_postfix_str(f"{case.impl} {case.model} {case.part} {case.resolution}px {case.dtype} {case.preset}"
                            + (" compiled" if case.compile else ""))
        sd = None
        if case.impl == "official":
            sam = build_official(case.model)
        else:
            if baseline:
                torch.manual_seed(0)
                sd = build_official(case.model).state_dict()
            sam = build_basam(case.model, case.preset, state_dict=sd, checkpoint=checkpoint)
        result = run_case(case, sam, device, warmup, iters, autocast, amg_points_per_side)
        del sam, sd
        gc.collect()
        results.append(result)
        if on_result is not None:
            on_result(result)
    bar.close()
    _add_ratios(results)
    return results


def _add_ratios(results: List[BenchResult]) -> None:
    """basam / official time and memory ratios, per matching (model, part, resolution, dtype, compile)."""
    official = {}
    for r in results:
        c = r.case
        if c.impl == "official" and r.status == "ok":
            official[(c.model, c.part, c.resolution, c.dtype, c.compile)] = r
    for r in results:
        c = r.case
        base = official.get((c.model, c.part, c.resolution, c.dtype, c.compile))
        if c.impl != "basam" or base is None or r.ms is None:
            continue
        r.extra["time_vs_official"] = r.ms / base.ms
        if r.peak_gib and base.peak_gib:
            r.extra["memory_vs_official"] = r.peak_gib / base.peak_gib
    vanilla = {}
    for r in results:
        c = r.case
        if c.impl == "basam" and c.preset == "vanilla" and r.ms is not None:
            vanilla[(c.model, c.part, c.resolution, c.dtype, c.compile, c.cuda_graph)] = r
    for r in results:
        c = r.case
        base = vanilla.get((c.model, c.part, c.resolution, c.dtype, c.compile, c.cuda_graph))
        if c.impl == "basam" and c.preset != "vanilla" and base is not None and r.ms is not None:
            r.extra["time_vs_vanilla"] = r.ms / base.ms


# ----------------------------------------------------------------------------------------------
# Output


def _fmt(v, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def format_table(results: Sequence[BenchResult]) -> str:
    """The paper's Table 5 layout: method, params, speed (ms, img/s), memory; plus the ratios."""
    head = ["impl", "model", "part", "px", "dtype", "attention", "compile/graph", "params (M)", "ms/call",
            "img/s", "peak GiB", "prompt ms", "x official (time)", "x official (mem)", "x vanilla", "status"]
    rows = []
    for r in results:
        c = r.case
        rows.append([
            c.impl, c.model, c.part, str(c.resolution), c.dtype, c.preset,
            ("compile" if c.compile else "-") + ("+graph" if c.cuda_graph else ""),
            _fmt(r.params_m, ".1f"), _fmt(r.ms, ".2f"), _fmt(r.images_per_s, ".2f"), _fmt(r.peak_gib, ".2f"),
            _fmt(r.predict_ms, ".2f"), _fmt(r.extra.get("time_vs_official"), ".3f"),
            _fmt(r.extra.get("memory_vs_official"), ".3f"), _fmt(r.extra.get("time_vs_vanilla"), ".3f"), r.status,
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i >= 7 and i < 15 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def environment() -> dict:
    """Where the figures were measured."""
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        pass
    try:
        import platform

        env["cpu"] = platform.processor() or platform.machine()
        env["cpu_count"] = os.cpu_count()
    except Exception:  # noqa: BLE001
        pass
    return env


def write_json(path: Path, results: Sequence[BenchResult], meta: dict) -> None:
    from .io import atomic_write

    payload = {"environment": environment(), "settings": meta, "results": [r.to_json() for r in results]}
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2, default=str).encode()))


def plot_results(results: Sequence[BenchResult], path: Path) -> None:
    """Time and peak memory against resolution, one line per (impl, model, part, dtype, preset, compile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_write

    series: Dict[str, List[BenchResult]] = {}
    for r in results:
        if r.ms is None:
            continue
        c = r.case
        label = (f"{c.impl} {c.model} {c.part} {c.dtype} {c.preset}" + (" compiled" if c.compile else "")
                 + (" cuda-graph" if c.cuda_graph else ""))
        series.setdefault(label, []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r.case.resolution)
        xs = [r.case.resolution for r in rs]
        style = "--" if rs[0].case.impl == "official" else "-"
        axes[0].plot(xs, [r.ms for r in rs], style, marker="o", label=label)
        mem = [(r.case.resolution, r.peak_gib) for r in rs if r.peak_gib is not None]
        if mem:
            axes[1].plot([m[0] for m in mem], [m[1] for m in mem], style, marker="o", label=label)
    for ax, title, unit in ((axes[0], "time per call", "ms"), (axes[1], "peak memory", "GiB")):
        ax.set_xlabel("input resolution (px)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    for r in results:  # cases that did not fit: marked where their line would have gone on
        if r.status == "oom":
            for ax in axes:
                ax.axvline(r.case.resolution, color="grey", ls=":", lw=1)
                ax.annotate(f"{r.case.impl} {r.case.model}: out of memory", (r.case.resolution, 0.5),
                            xycoords=("data", "axes fraction"), rotation=90, fontsize=7, ha="right", va="center")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * math.ceil(len(labels) / 2), 1, 1))

    def write(f):
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=120)

    atomic_write(path, write)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Command line
