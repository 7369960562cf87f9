"""The resolution study: evaluate a model across resolutions and attention presets.

``basam evaluate --data PATH[:LAYOUT] ... --resolutions 1024 1536 2048 --attention vanilla nsf basam``
reproduces the paper's Tables 1 and 4: each image is encoded once per (resolution, preset), the
predicted mask is scored with the standard metrics, and the summary shows how much each preset
degrades away from the first resolution (Δdiff).

Output folder (``--out``)::

    config.json            the run's settings (a rerun with other settings is refused)
    records.rank<R>.jsonl  one line per (dataset, image, resolution, preset), appended as computed
    per_image.csv          every record, sorted
    summary.md/.csv/.json  per dataset: metric per (preset, resolution) and Δdiff vs the first
    plot_<dataset>.png     each metric against resolution, one line per preset

Resuming: rerun with the same ``--out``; finished records are kept (a line cut short by a kill is
dropped) and only the rest is computed, so the result is identical to an uninterrupted run. The
settings are compared with data folders and the checkpoint as resolved paths, so ``DUTS-TE/`` and
``/data/DUTS-TE`` are the same run.

Skipped pairs (an image without its mask or the reverse, a mask of another size, a file that
cannot be read) are never dropped silently: each one is listed with its reason, and counted, in
``summary.md`` (which the command prints), ``summary.json`` and ``per_image.csv``.

Output errors (``--out`` a file, a folder that cannot be written, a full disk) are one-line
:class:`~basam.errors.InputError`\ s; records are appended whole lines or not at all, and the
reports are replaced all together or not at all.
More than one process: ``torchrun --nproc_per_node K -m basam.evaluate ...`` shards the images
(image i goes to rank i mod K) and rank 0 writes the summary from every rank's records.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .distributed import Dist, init_distributed
from .errors import BasamError, CheckpointError, InputError
from .metrics import evaluate_image

METRIC_COLUMNS = ("mae", "s_measure", "e_measure_mean", "e_measure_max", "weighted_f", "f_measure_mean", "f_measure_max",
                  "iou", "dice", "boundary_iou")
SUMMARY_FORMATS = {"mae": "{:.4f}"}


@dataclass
class EvalSettings:
    """What defines a run; stored in ``config.json`` and compared on resume."""

    data: List[str]
    model: str
    checkpoint: Optional[str]
    resolutions: List[int]
    attention: List[str]
    prompt: str
    beta: Optional[float] = None
    dist: Optional[str] = None
    nsf_count: Optional[str] = None
    decoder_nsf: bool = False
    multimask: str = "auto"
    hq_token_only: Optional[bool] = None
    hq_fusion: Optional[str] = None
    seed: int = 0
    max_images: Optional[int] = None
    architecture: Optional[dict] = None

    def key(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def attention_variant(spec: str, base=None):
    """``PRESET[:OPTION]...`` -> an AttentionConfig; see :func:`parse_variant` for the options."""
    return parse_variant(spec, base)[0]


def parse_variant(spec: str, base=None):
    """``PRESET[:OPTION]...`` -> (AttentionConfig, whether it sets beta).

    The preset (``vanilla``, ``nsf``, ``basam``) switches NSF and BM-AM on ``base`` (the loaded
    model's config, so a fine-tuned model's beta, distance and NSF reading carry over). Each option
    changes one knob: a distance (``manhattan``, ``euclidean``, ``flat``), ``beta=B`` (the slopes
    become ``B * 2**(-8h/H)``, replacing loaded ones), ``count=row|image`` (how NSF counts N) or
    ``decoder`` (NSF on the mask decoder's cross-attention too). E.g. ``basam:euclidean:beta=0.3``.
    """
    from dataclasses import replace

    from .attention import DISTANCES, PRESETS, AttentionConfig
    from .attention_config import NSF_COUNTS

    preset, *options = spec.split(":")
    if preset not in PRESETS:
        raise InputError(f"unknown attention preset {preset!r} in {spec!r}; choose one of {', '.join(PRESETS)}")
    changes: dict = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        knob = {"beta": "beta", "count": "nsf_count", "decoder": "decoder_nsf"}.get(key, "dist")
        if knob in changes:
            raise InputError(f"attention variant {spec!r} sets {knob} twice")
        if not eq and key in DISTANCES:
            changes["dist"] = key
        elif not eq and key == "decoder":
            changes["decoder_nsf"] = True
        elif eq and key == "beta":
            try:
                beta = float(value)
            except ValueError:
                beta = float("nan")
            if not (beta >= 0 and beta != float("inf")):
                raise InputError(f"beta must be a number >= 0 in attention variant {spec!r}, got {value!r}")
            changes["beta"] = beta
        elif eq and key == "count" and value in NSF_COUNTS:
            changes["nsf_count"] = value
        else:
            raise InputError(f"unknown option {opt!r} in attention variant {spec!r}; options: a distance "
                             f"({', '.join(DISTANCES)}), beta=B, count={'|'.join(NSF_COUNTS)}, decoder")
    config = replace(base or AttentionConfig(), **PRESETS[preset])
    return replace(config, **changes), "beta" in changes


# ----------------------------------------------------------------------------------------------
# Records


def record_key(rec: dict) -> Tuple[str, str, int, str]:
    return rec["dataset"], rec["image"], int(rec["resolution"]), rec["attention"]


def read_records(out: Path) -> Dict[tuple, dict]:
    """All finished records of every rank in ``out``; a last line cut short by a kill is dropped."""
    records: Dict[tuple, dict] = {}
    for path in sorted(out.glob("records.rank*.jsonl")):
        with open(path, "r", encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # interrupted mid-write
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                records[record_key(rec)] = rec
    return records


class RecordWriter:
    """Appends records to this rank's JSONL, one flushed + fsynced line each.

    A write the file system refuses (disk full, read-only) is cut back to the previous line end
    and raised as a one-line :class:`InputError`: the file never holds half a record.
    """

    def __init__(self, out: Path, rank: int) -> None:
        self.path = out / f"records.rank{rank}.jsonl"
        try:
            self._repair()
            self.f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise InputError(f"cannot write {self.path}: {_os_text(e)}") from None

    def _repair(self) -> None:
        # A kill mid-write leaves a partial last line: cut it so the next append starts clean.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data[: data.rfind(b"\n") + 1]
            with open(self.path, "wb") as f:
                f.write(keep)

    def write(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=True) + "\n"
        start = os.fstat(self.f.fileno()).st_size  # every earlier line is flushed
        try:
            self.f.write(line)
            self.f.flush()
            os.fsync(self.f.fileno())
        except OSError as e:
            self._cut(start)
            raise InputError(f"cannot write {self.path}: {_os_text(e)}") from None

    def _cut(self, size: int) -> None:
        """Drop what a failed write left after ``size`` bytes (and the text layer's buffer)."""
        try:
            self.f.close()
        except OSError:
            pass  # the buffer's flush fails again; the file is cut below either way
        try:
            os.truncate(self.path, size)
        except OSError:
            pass
        self.f = open(os.devnull, "w", encoding="utf-8")  # close() still works

    def close(self) -> None:
        self.f.close()


def _os_text(e: OSError) -> str:
    return e.strerror or " ".join(str(e).split()) or type(e).__name__


def _canonical_data(spec: str) -> str:
    """``PATH[:LAYOUT][:split=S]`` with PATH resolved (:func:`basam.io.canonical_path`): the same
    folder given relatively or absolutely is the same run."""
    from .data.datasets import parse_data_spec
    from .io import canonical_path

    try:
        ds = parse_data_spec(spec)
    except InputError:
        return spec
    path = str(canonical_path(ds.path))
    path = f"{path}:{ds.layout}" if ds.layout else path
    return f"{path}:split={ds.split}" if ds.split else path


def _canonical_checkpoint(path: Optional[str]) -> Optional[str]:
    from .io import canonical_path

    return None if path is None else str(canonical_path(path))


def canonical_key(key: dict) -> dict:
    """A settings key (``EvalSettings.key()`` or a ``config.json``) with paths resolved."""
    out = dict(key)
    if isinstance(out.get("data"), list):
        out["data"] = [_canonical_data(d) if isinstance(d, str) else d for d in out["data"]]
    if isinstance(out.get("checkpoint"), str):
        out["checkpoint"] = _canonical_checkpoint(out["checkpoint"])
    return out


# ----------------------------------------------------------------------------------------------
# The evaluation loop


def _pick_multimask(setting: str, prompt_kind: str) -> "bool | str":
    if setting == "oracle":
        return "oracle"
    if setting == "on":
        return True
    if setting == "off":
        return False
    # auto: SAM's convention: several candidates only for an ambiguous single point.
    return prompt_kind in ("point", "center")


def _jsonable(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, list):
            v = [round(float(x), 8) for x in v]
        elif isinstance(v, float):
            v = float(v)
        out[k] = v
    return out


def run(settings: EvalSettings, out: Path, device: str = "cpu", progress: bool = True, dist: Optional[Dist] = None) -> Optional[dict]:
    """Run (or resume) the study; returns the summary on rank 0 (None on other ranks)."""
    from dataclasses import replace

    import torch
    from tqdm import tqdm

    from .attention import AttentionConfig
    from .data.datasets import open_data_spec
    from .data.prompts import make_prompt
    from .load import load_model
    from .predictor import Predictor

    dist = dist or Dist()
    # Validate everything before any work: data, model, checkpoint, output folder.
    datasets = []
    for spec in settings.data:
        datasets.extend(open_data_spec(spec))
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise InputError(f"two datasets share a name ({', '.join(names)}); give them distinct folders")
    from .io import check_writable_dir

    check_writable_dir(out, "--out")  # a file, or a folder that cannot be written: before the model loads
    overrides = {k: getattr(settings, k) for k in ("beta", "dist", "nsf_count") if getattr(settings, k) is not None}
    if settings.decoder_nsf:
        overrides["decoder_nsf"] = True
    # Loaded once: a basam checkpoint brings its attention config (and trained slopes) and HQ
    # fusion; the variants below switch NSF / BM-AM on and off without resetting the slopes.
    model = load_model(settings.model, checkpoint=settings.checkpoint, attention=None, device=device, hq_fusion=settings.hq_fusion,
                       architecture=settings.architecture, progress=dist.main and progress, **overrides)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create --out {out}: {_os_text(e)}") from None
    _check_config(out, settings, dist)
    if settings.hq_token_only and not model.is_hq:
        raise InputError(f"--hq-token-only applies to HQ-SAM models (sam_hq_*), not {settings.model}")
    variants = {p: parse_variant(p, model.attention_config) for p in settings.attention}
    loaded_slopes = _slopes_snapshot(model)  # a variant without beta= runs with these (fine-tuned or from --beta)

    done = read_records(out)
    todo = []  # (dataset, index) for this rank
    for ds in datasets:
        n = len(ds) if settings.max_images is None else min(len(ds), settings.max_images)
        for i in range(n):
            if i % dist.world != dist.rank:
                continue
            keys = [(ds.name, ds[i].name, r, p) for r in settings.resolutions for p in settings.attention]
            if not all(k in done for k in keys):
                todo.append((ds, i))
    per_image = len(settings.resolutions) * len(settings.attention)
    writer = RecordWriter(out, dist.rank)
    multimask = _pick_multimask(settings.multimask, settings.prompt)
    bar = tqdm(total=len(todo) * per_image, desc=f"evaluate[{dist.rank}]" if dist.world > 1 else "evaluate", unit="pred",
               disable=not progress or not dist.main, dynamic_ncols=True)
    try:
        for ds, i in todo:
            sample = ds[i]
            base = {"dataset": ds.name, "image": sample.name, "prompt": settings.prompt}
            try:
                image, gt = ds.load(i)
                prompt = make_prompt(gt, settings.prompt, seed=settings.seed, key=f"{ds.name}/{sample.name}")
            except InputError as e:
                for r in settings.resolutions:
                    for p in settings.attention:
                        writer.write({**base, "resolution": r, "attention": p, "skipped": str(e)})
                bar.update(per_image)
                continue
            for r in settings.resolutions:
                predictor = Predictor(model, resolution=r)
                encoded = None  # the encoder setting the predictor's embedding was made with
                for p in settings.attention:
                    if (ds.name, sample.name, r, p) in done:
                        bar.update(1)
                        continue
                    config, sets_beta = variants[p]
                    if not sets_beta:
                        _restore_slopes(model, loaded_slopes)
                    model.set_attention(config, reset_slopes=sets_beta)
                    # Variants that differ only in the decoder (``:decoder``) share one encoding:
                    # the encoder is most of the cost, and its output does not depend on them.
                    encoder_setting = (replace(config, decoder_nsf=False), sets_beta)
                    encode = encoder_setting != encoded
                    t0 = time.perf_counter()
                    metrics, iou_pred = evaluate_image(predictor, image, gt, prompt, multimask, settings.hq_token_only,
                                                       encode=encode)
                    encoded = encoder_setting
                    # ``encoded`` 0: this row reused the previous row's encoding, its seconds are the decoder's
                    writer.write({**base, "resolution": r, "attention": p, "iou_pred": round(iou_pred, 8),
                                  "seconds": round(time.perf_counter() - t0, 4), "encoded": int(encode), **_jsonable(metrics)})
                    bar.update(1)
    finally:
        bar.close()
        writer.close()
    dist.barrier()
    if not dist.main:
        return None
    return write_reports(out, settings, datasets)


def _slopes_snapshot(model) -> Dict[str, "object"]:
    """Copies of every BM-AM slope tensor, by module name."""
    from .attention import BiasModeMask

    return {n: m.slopes.detach().clone() for n, m in model.named_modules() if isinstance(m, BiasModeMask)}


def _restore_slopes(model, snapshot: Dict[str, "object"]) -> None:
    import torch

    from .attention import BiasModeMask

    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, BiasModeMask) and n in snapshot:
                m.slopes.copy_(snapshot[n])


def _check_config(out: Path, settings: EvalSettings, dist: Dist) -> None:
    """Refuse to mix runs: ``out`` must be new or hold a run with the same settings."""
    path = out / "config.json"
    existed = path.exists()
    dist.barrier()  # every rank has looked before rank 0 may write
    if existed:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{path} is not valid JSON; remove it or choose another --out") from None
        except OSError as e:
            raise InputError(f"cannot read {path}: {_os_text(e)}") from None
        old = canonical_key(old) if isinstance(old, dict) else {}
        new = canonical_key(settings.key())
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise InputError(f"{out} holds a run with other settings ({', '.join(diff)}); choose another --out")
    elif dist.main:
        from .io import atomic_write

        key = canonical_key(settings.key())
        atomic_write(path, lambda f: f.write(json.dumps(key, indent=2, sort_keys=True).encode()))
    dist.barrier()


# ----------------------------------------------------------------------------------------------
# Reports


def summarize_records(records: Iterable[dict], settings: EvalSettings, dataset_names: Sequence[str],
                      scanned_skips: Optional[Dict[str, Sequence[Tuple[str, str]]]] = None) -> dict:
    """{dataset: {"rows": [{attention, resolution, n, metric...}], "delta": [...], "skipped": n,
    "skipped_pairs": [[file, reason], ...]}}.

    ``skipped_pairs`` lists every pair left out: those the dataset scan left out
    (``scanned_skips``: an image without a mask, a mask without an image, sizes that differ in the
    headers, ...) and those that failed to load (a corrupt file), once each, sorted; ``skipped`` is
    their count.
    """
    from .metrics import summarize

    groups: Dict[tuple, list] = {}
    skipped: Dict[str, Dict[str, str]] = {}
    for name, pairs in (scanned_skips or {}).items():
        for file, reason in pairs:
            skipped.setdefault(name, {})[file] = reason
    for rec in records:
        if "skipped" in rec:
            skipped.setdefault(rec["dataset"], {}).setdefault(rec["image"], rec["skipped"])
            continue
        groups.setdefault((rec["dataset"], rec["attention"], int(rec["resolution"])), []).append(rec)
    result = {}
    r0 = settings.resolutions[0]
    for name in dataset_names:
        rows = []
        for p in settings.attention:
            for r in settings.resolutions:
                recs = sorted(groups.get((name, p, r), []), key=lambda x: x["image"])
                s = summarize(recs)
                rows.append({"attention": p, "resolution": r, "n": int(s["n"]), **{m: float(s[m]) for m in METRIC_COLUMNS}})
        delta = []
        for p in settings.attention:
            base = next(x for x in rows if x["attention"] == p and x["resolution"] == r0)
            for r in settings.resolutions[1:]:
                row = next(x for x in rows if x["attention"] == p and x["resolution"] == r)
                delta.append({"attention": p, "resolution": r, "vs": r0, **{m: row[m] - base[m] for m in METRIC_COLUMNS}})
        pairs = sorted(skipped.get(name, {}).items())
        result[name] = {"rows": rows, "delta": delta, "paired": paired_differences(groups, name, settings),
                        "skipped": len(pairs), "skipped_pairs": [list(x) for x in pairs]}
    return result


#: per-image metrics whose dataset value is the mean over images, so that a paired bootstrap over
#: images gives the interval of the difference of the reported values
PAIRED_METRICS = ("iou", "mae", "s_measure", "boundary_iou")
#: resamples per interval (fixed seed 0: the same records always give the same intervals)
BOOTSTRAP_RESAMPLES = 2000


def paired_differences(groups: Dict[tuple, list], name: str, settings: EvalSettings) -> List[dict]:
    """Paired differences with 95 % bootstrap intervals over the images both settings scored.

    Two kinds: ``preset`` (each attention preset minus the first one, at the same resolution) and
    ``resolution`` (each resolution minus the first, for the same preset). Per metric of
    :data:`PAIRED_METRICS`: ``{mean, low, high, ci, n, n_images}`` of :func:`basam.stats.paired_bootstrap`
    (images where either value is not finite are left out of that metric).
    """
    from .stats import paired_bootstrap

    def by_image(p: str, r: int) -> Dict[str, dict]:
        return {rec["image"]: rec for rec in groups.get((name, p, r), [])}

    def compare(a: Dict[str, dict], b: Dict[str, dict], **what) -> Optional[dict]:
        common = sorted(set(a) & set(b))
        entry = {**what, "n_images": len(common)}
        for m in PAIRED_METRICS:
            va = np.array([float(a[i][m]) for i in common], dtype=np.float64)
            vb = np.array([float(b[i][m]) for i in common], dtype=np.float64)
            ok = np.isfinite(va) & np.isfinite(vb)
            if ok.sum() < 2:
                return None
            entry[m] = paired_bootstrap(va[ok], vb[ok], n=BOOTSTRAP_RESAMPLES, seed=0).as_dict()
        return entry

    out: List[dict] = []
    ref, r0 = settings.attention[0], settings.resolutions[0]
    for r in settings.resolutions:
        for p in settings.attention[1:]:
            e = compare(by_image(p, r), by_image(ref, r), kind="preset", attention=p, vs_attention=ref, resolution=r, vs_resolution=r)
            if e is not None:
                out.append(e)
    for p in settings.attention:
        for r in settings.resolutions[1:]:
            e = compare(by_image(p, r), by_image(p, r0), kind="resolution", attention=p, vs_attention=p, resolution=r, vs_resolution=r0)
            if e is not None:
                out.append(e)
    return out


def paired_between_runs(run: Path, reference: Path, reference_attention: Optional[str] = None) -> List[dict]:
    """Paired differences between two ``basam evaluate`` folders (two models, e.g. HQ fusion modes
    or a fine-tuned model against its start) on the images both scored with the same dataset,
    preset and resolution: ``run`` minus ``reference``, per metric of :data:`PAIRED_METRICS`, with
    the 95 % bootstrap interval of :func:`basam.stats.paired_bootstrap`. The prompts must be the
    same: folders whose prompt rule, seed or multimask setting differ raise :class:`InputError`.
    ``reference_attention``: compare every preset of ``run`` with this one preset of the
    reference (a fine-tuned model's ``basam`` against the untuned model's ``vanilla``).

    Returns one entry per (dataset, attention, resolution): ``{dataset, attention, resolution,
    vs_attention, n_images, <metric>: {mean, low, high, ci, n}}``.
    """
    from .stats import paired_bootstrap

    def grouped(folder: Path) -> Dict[tuple, Dict[str, dict]]:
        recs = read_records(Path(folder))
        if not recs:
            raise InputError(f"{folder} holds no evaluate records (records.rank*.jsonl)")
        out: Dict[tuple, Dict[str, dict]] = {}
        for rec in recs.values():
            if rec.get("skipped"):
                continue
            out.setdefault((rec["dataset"], rec["attention"], int(rec["resolution"])), {})[rec["image"]] = rec
        return out

    def prompting(folder: Path) -> dict:
        try:
            settings = json.loads((Path(folder) / "summary.json").read_text())["settings"]
        except (OSError, ValueError, KeyError):
            raise InputError(f"{folder} has no readable summary.json (run basam evaluate there to finish it)") from None
        return {k: settings.get(k) for k in ("prompt", "seed", "multimask")}

    a, b = grouped(run), grouped(reference)
    pa, pb = prompting(run), prompting(reference)
    if pa != pb:
        bad = ", ".join(f"{k} {pa[k]!r} vs {pb[k]!r}" for k in pa if pa[k] != pb[k])
        raise InputError(f"{run} and {reference} were prompted differently ({bad}); pairs need the same prompts")
    result: List[dict] = []
    for key in sorted(a):
        ref_key = key if reference_attention is None else (key[0], reference_attention, key[2])
        if ref_key not in b:
            continue
        common = sorted(set(a[key]) & set(b[ref_key]))
        entry = {"dataset": key[0], "attention": key[1], "resolution": key[2], "vs_attention": ref_key[1],
                 "n_images": len(common)}
        for m in PAIRED_METRICS:
            va = np.array([float(a[key][i][m]) for i in common], dtype=np.float64)
            vb = np.array([float(b[ref_key][i][m]) for i in common], dtype=np.float64)
            ok = np.isfinite(va) & np.isfinite(vb)
            if ok.sum() >= 2:
                entry[m] = paired_bootstrap(va[ok], vb[ok], n=BOOTSTRAP_RESAMPLES, seed=0).as_dict()
        result.append(entry)
    return result


def _one_line_text(text: str) -> str:
    return " ".join(str(text).split())


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.4f}"


def _markdown(summary: dict, settings: EvalSettings) -> str:
    lines = [f"# basam evaluate: {settings.model}", "",
             f"prompt `{settings.prompt}`, resolutions {settings.resolutions}, attention {settings.attention}, "
             f"checkpoint `{settings.checkpoint or 'default (bundled, else the official download)'}`", ""]
    head = "| attention | resolution | n | " + " | ".join(METRIC_COLUMNS) + " |"
    sep = "|---|---|---|" + "---|" * len(METRIC_COLUMNS)
    for name, s in summary.items():
        lines += [f"## {name}", "", head, sep]
        for row in s["rows"]:
            lines.append(f"| {row['attention']} | {row['resolution']} | {row['n']} | " + " | ".join(_fmt(row[m]) for m in METRIC_COLUMNS) + " |")
        if s["delta"]:
            lines += ["", f"Δdiff (value at the resolution minus value at {settings.resolutions[0]}; for MAE smaller is better, "
                          "for the others larger is better):", "",
                      "| attention | resolution | " + " | ".join(METRIC_COLUMNS) + " |", "|---|---|" + "---|" * len(METRIC_COLUMNS)]
            for d in s["delta"]:
                lines.append(f"| {d['attention']} | {d['resolution']} vs {d['vs']} | " + " | ".join(f"{d[m]:+.4f}" for m in METRIC_COLUMNS) + " |")
        if s.get("paired"):
            lines += ["", "Paired differences over the same images and prompts: mean [95 % bootstrap interval] "
                          f"({BOOTSTRAP_RESAMPLES} resamples of the images); ** marks an interval that excludes 0:", "",
                      "| difference | images | " + " | ".join(PAIRED_METRICS) + " |", "|---|---|" + "---|" * len(PAIRED_METRICS)]
            for d in s["paired"]:
                what = (f"{d['attention']} − {d['vs_attention']} at {d['resolution']}" if d["kind"] == "preset"
                        else f"{d['attention']}: {d['resolution']} − {d['vs_resolution']}")
                cells = []
                for m in PAIRED_METRICS:
                    b = d[m]
                    star = "**" if b["low"] > 0 or b["high"] < 0 else ""
                    cells.append(f"{star}{b['mean']:+.4f} [{b['low']:+.4f}, {b['high']:+.4f}]{star}")
                lines.append(f"| {what} | {d['n_images']} | " + " | ".join(cells) + " |")
        if s.get("skipped_pairs"):
            lines += ["", f"{s['skipped']} pair(s) skipped:", ""]
            lines += [f"- `{file}`: {_one_line_text(reason)}" for file, reason in s["skipped_pairs"]]
        lines.append("")
    return "\n".join(lines)


def _csv_text(rows: List[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _png_bytes(fig, title: str) -> bytes:
    """Title the report figure ``fig`` (x axis: resolution), render it as PNG and close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.supxlabel("resolution (longest side, px)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _plot(summary_ds: dict, settings: EvalSettings, title: str) -> bytes:
    """The PNG of each metric against resolution, one line per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 5
    rows_n = math.ceil(len(METRIC_COLUMNS) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.8 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, METRIC_COLUMNS):
        for p in settings.attention:
            pts = [(r["resolution"], r[metric]) for r in summary_ds["rows"] if r["attention"] == p]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        ax.set_title(metric + (" (lower better)" if metric == "mae" else ""), fontsize=9)
        ax.set_xticks(settings.resolutions)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(METRIC_COLUMNS):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    return _png_bytes(fig, title)


def _plot_paired(summary_ds: dict, settings: EvalSettings, title: str) -> Optional[bytes]:
    """The PNG of each preset's difference from the first preset against resolution, with its 95 %
    paired bootstrap interval as error bars (None when there is a single preset)."""
    entries = [d for d in summary_ds.get("paired", []) if d["kind"] == "preset"]
    if not entries:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PAIRED_METRICS), figsize=(3.6 * len(PAIRED_METRICS), 3.0), squeeze=False)
    presets = [p for p in settings.attention[1:] if any(d["attention"] == p for d in entries)]
    width = 0.6 / max(1, len(presets))
    for ax, metric in zip(axes[0], PAIRED_METRICS):
        for k, p in enumerate(presets):
            es = [d for d in entries if d["attention"] == p]
            x = np.array([settings.resolutions.index(d["resolution"]) for d in es], dtype=float) + (k - (len(presets) - 1) / 2) * width
            mean = np.array([d[metric]["mean"] for d in es])
            err = np.array([[d[metric]["mean"] - d[metric]["low"] for d in es], [d[metric]["high"] - d[metric]["mean"] for d in es]])
            ax.errorbar(x, mean, yerr=err, fmt="o", capsize=3, label=p, markersize=4)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(settings.resolutions)))
        ax.set_xticklabels([str(r) for r in settings.resolutions], fontsize=7)
        ax.set_title(f"{metric} − {settings.attention[0]}" + (" (lower better)" if metric == "mae" else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    return _png_bytes(fig, title + ": paired differences, 95 % bootstrap intervals over images")


def write_reports(out: Path, settings: EvalSettings, datasets) -> dict:
    """Regenerate per_image.csv, summary.{md,csv,json} and the plots from every record in ``out``.

    Every file is rendered first, then all are written together (:func:`basam.io.atomic_write_all`):
    a failure (a full disk) leaves the previous reports as they were.
    """
    from .io import atomic_write_all

    records = sorted(read_records(out).values(), key=lambda r: (r["dataset"], r["image"], int(r["resolution"]), r["attention"]))
    scanned = {d.name: [tuple(x) for x in d.skipped] for d in datasets}
    summary = summarize_records(records, settings, [d.name for d in datasets], scanned)
    cols = ["dataset", "image", "resolution", "attention", "prompt", "iou_pred", *METRIC_COLUMNS, "seconds", "encoded", "skipped"]
    # Pairs the scan left out have no record (nothing was computed): one row each, with the reason.
    scan_rows = [{"dataset": name, "image": file, "skipped": reason} for name, pairs in scanned.items() for file, reason in pairs]
    per_image = sorted(records + scan_rows, key=lambda r: (r["dataset"], r["image"], int(r.get("resolution") or 0), r.get("attention") or ""))
    files = {"per_image.csv": _csv_text(per_image, cols).encode()}
    flat = [{"dataset": n, **row} for n, s in summary.items() for row in s["rows"]]
    flat += [{"dataset": n, "delta_vs": d["vs"], **{k: v for k, v in d.items() if k != "vs"}} for n, s in summary.items() for d in s["delta"]]
    files["summary.csv"] = _csv_text(flat, ["dataset", "attention", "resolution", "delta_vs", "n", *METRIC_COLUMNS]).encode()
    payload = {"settings": settings.key(), "datasets": summary,
               "scanned_skips": {name: [list(x) for x in pairs] for name, pairs in scanned.items()}}
    files["summary.json"] = json.dumps(payload, indent=2, sort_keys=True).encode()
    files["summary.md"] = _markdown(summary, settings).encode()
    for name, s in summary.items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        files[f"plot_{safe}.png"] = _plot(s, settings, f"{settings.model} on {name} ({settings.prompt} prompt)")
        paired_png = _plot_paired(s, settings, f"{settings.model} on {name}")
        if paired_png is not None:
            files[f"plot_{safe}_paired.png"] = paired_png
    atomic_write_all([(out / name, (lambda data: lambda f: f.write(data))(data)) for name, data in files.items()])
    return summary


if __name__ == "__main__":  # python -m basam.evaluate / torchrun -m basam.evaluate
    from .cli import main as _cli_main

    sys.exit(_cli_main(["evaluate", *sys.argv[1:]]))
