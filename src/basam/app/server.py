"""The ASGI application behind ``basam app``: :func:`create_app`.

Endpoints (JSON in and out; every refusal is ``{"error": "<one line>"}`` with a 4xx status, and an
unexpected failure is ``{"error": ...}`` with 500 and no traceback; the traceback goes to the log):

=======  =====================  ==================================================================
GET      ``/``                  the page (``static/index.html``); ``/static/*`` its script and style
GET      ``/api/config``        offered models, presets, defaults, the memory limit
POST     ``/api/images``        multipart field ``file`` (an upload) or JSON ``{"path": ...}`` (a file
                                on this machine) -> ``{id, name, width, height}``
GET      ``/api/images/{id}``   the decoded image as PNG (what the model sees: RGB, EXIF-rotated)
POST     ``/api/encode``        ``{image, model, resolution, preset}`` -> ``{state: "ready"}`` or
                                ``{state: "queued"|"loading"|"encoding", job}``
GET      ``/api/jobs/{id}``     ``{state, elapsed_s, error?, result?}`` (poll while a job runs)
POST     ``/api/predict``       ``{image, model, resolution, preset, points: [[x, y, label], ...],
                                box: [x0, y0, x1, y1] | null}`` -> ``{masks: [PNG base64] x 3,
                                scores, areas, best, width, height, decode_ms}``
POST     ``/api/everything``    ``{image, model, resolution, preset, points_per_side?,
                                pred_iou_thresh?, stability_score_thresh?}`` -> ``{job}``; the job's
                                ``result``: ``{overlay: PNG base64, count, masks: [...]}``
=======  =====================  ==================================================================

Coordinates are in the original image's pixels; masks come back at the image's own size as 8-bit
PNGs (0 = background, 255 = mask), the same bytes ``basam segment`` would write.

How work is scheduled: every model call (loading, encoding, decoding, segment-everything) runs on
one worker thread, in request order. That single worker is the lock around the model: torch on the
CPU already uses every core for one call, so running two at once would only make both slower and
double the memory, and a model whose attention preset is switched per request must not be switched
under a running call. The event loop never blocks on it, so the page, uploads and job polling stay
responsive while the encoder runs. Encodings are cached, keyed by (image id, model, resolution,
preset), in a bounded LRU; an image id is the hash of its decoded pixels, so opening the same
image twice reuses its encodings. Concurrent requests for an encoding that is still running wait on
the same job instead of starting another.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..attention_config import PRESETS
from ..constants import MIN_RESOLUTION
from ..errors import BasamError, CheckpointError, InputError, one_line, out_of_memory_errors

__all__ = ["create_app", "estimate_memory", "AppState"]

log = logging.getLogger("basam.app")

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: uploads above this many bytes are refused before they are decoded
MAX_UPLOAD_BYTES = 256 * 2**20
#: a JSON request body is a few numbers; anything much larger is a mistake or an attack
MAX_JSON_BYTES = 1 * 2**20
MAX_POINTS = 64
MAX_RESOLUTION = 32768
#: host names the page may be reached under (a DNS-rebinding page on another name is refused)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: segment-everything thresholds per model where the official ones do not suit it: basam_tiny's
#: IoU head is not calibrated like SAM's (docs/results/amg.md), so at 0.88/0.95 it finds nothing
AMG_DEFAULTS: Dict[str, Dict[str, float]] = {
    "basam_tiny": {"points_per_side": 16, "pred_iou_thresh": 0.3, "stability_score_thresh": 0.5},
}
OFFICIAL_AMG = {"points_per_side": 32, "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95}
#: the page scores segment-everything candidates at the decoder's resolution and upsamples only the
#: survivors: 5x faster on the CPU (basam_tiny, 16 points a side: 2 s instead of 11), records equal
#: to the official order's up to small differences (docs/results/amg.md)
AMG_SCORING = "lowres"


# ----------------------------------------------------------------------------------------------
# Memory estimate


def estimate_memory(model, resolution: int, image_hw: Tuple[int, int], device: str = "cpu",
                    backend: str = "auto") -> Dict[str, int]:
    """Estimated peak bytes to encode one image and answer one prompt (inference, no gradients).

    * encoder: :func:`basam.memory.estimate_encode_bytes` (weights counted unless ``model`` is a
      built, already loaded model).
    * decoder: the three candidate masks upsampled to the padded square and then to the image
      (float32), and the boolean masks (3 x (S^2 + H x W) x 4 + 3 x H x W).
    * image: the decoded (H, W, 3) array, its resized copy and its PNG (9 x H x W).

    Args:
        model: a registry name, a :class:`~basam.models.registry.ModelSpec` or a built model.
        resolution: the working resolution (longest side, px).
        image_hw: the original image's (H, W).
    Returns:
        ``{"encoder", "decoder", "image", "total"}``, each in bytes.
    """
    from ..memory import estimate_encode_bytes

    H, W = int(image_hw[0]), int(image_hw[1])
    side = -(-int(resolution) // 16) * 16
    encoder = estimate_encode_bytes(model, resolution, backend=backend, device=device)
    decoder = 3 * (side * side + H * W) * 4 + 3 * H * W
    image = 9 * H * W
    return {"encoder": int(encoder), "decoder": int(decoder), "image": int(image),
            "total": int(encoder + decoder + image)}


def _memory_limit(value: "int | str | None") -> Optional[int]:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        if value is not None and value <= 0:
            raise InputError(f"max_memory must be positive, got {value}")
        return value
    from ..memory import parse_memory

    return parse_memory(value)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# State


class HttpError(Exception):
    """A refusal with its HTTP status; becomes ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = one_line(message)


@dataclass
class _Image:
    id: str
    name: str
    array: np.ndarray  # (H, W, 3) uint8 RGB
    png: Optional[bytes] = None

    @property
    def hw(self) -> Tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])


@dataclass
class _Job:
    id: str
    kind: str  # "encode" | "everything"
    state: str = "queued"  # queued -> loading -> encoding/running -> ready | error
    started: float = field(default_factory=time.monotonic)
    finished: Optional[float] = None
    error: Optional[str] = None
    status: int = 200
    result: Optional[dict] = None
    future: Optional[concurrent.futures.Future] = None

    def describe(self) -> dict:
        end = self.finished if self.finished is not None else time.monotonic()
        out: Dict[str, Any] = {"id": self.id, "kind": self.kind, "state": self.state,
                               "elapsed_s": round(end - self.started, 3)}
        if self.error is not None:
            out["error"], out["status"] = self.error, self.status
        if self.result is not None:
            out["result"] = self.result
        return out


@dataclass(frozen=True)
class _Target:
    """What an encoding is for: an image at a resolution through one model with one preset."""

    image: _Image
    model: str
    resolution: int
    preset: str

    @property
    def key(self) -> Tuple[str, str, int, str]:
        return (self.image.id, self.model, self.resolution, self.preset)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: masks and images are sent once and seldom large; speed matters more
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _oom_message(exc: BaseException) -> str:
    return (f"out of memory while running the model ({type(exc).__name__}); choose a lower resolution "
            "or lower basam app --max-memory so that such requests are refused up front")


class AppState:
    """Images, loaded models, cached encodings and jobs of one running app (``app.state.basam``).

    Args: see :func:`create_app`.
    """

    def __init__(self, model: str, checkpoint: Optional[str], device: str, attention: Optional[str],
                 attention_overrides: dict, models: Optional[Sequence[str]], checkpoints: Optional[dict],
                 resolution: Optional[int], max_memory: Optional[int], allow_paths: bool, download: bool,
                 cache_size: int, max_images: int, max_models: int) -> None:
        from ..models.registry import get_spec

        self.default_model = model
        get_spec(model)  # an unknown name -> InputError listing the valid ones
        self.device = device
        self.attention = attention
        self.attention_overrides = {k: v for k, v in attention_overrides.items() if v is not None}
        self.max_memory = None if max_memory is None else int(max_memory)  # None: what the device has free
        self.allow_paths = allow_paths
        self.download = download
        self.cache_size = max(1, int(cache_size))
        self.max_images = max(1, int(max_images))
        self.max_models = max(1, int(max_models))
        self.checkpoints: Dict[str, Optional[str]] = dict(checkpoints or {})
        if checkpoint is not None:
            self.checkpoints[model] = str(checkpoint)
        self.models: List[str] = list(models) if models is not None else self._offered(model)
        if model not in self.models:
            self.models.insert(0, model)
        self.specs = {name: self._spec(name) for name in self.models}
        self.default_resolution = int(resolution) if resolution is not None else int(self.specs[model].img_size)

        self._lock = threading.Lock()  # guards the dicts below (event loop thread + worker thread)
        self._images: "OrderedDict[str, _Image]" = OrderedDict()
        self._encoded: "OrderedDict[tuple, Any]" = OrderedDict()  # key -> Predictor with the image set
        self._pending: Dict[tuple, _Job] = {}
        self._jobs: "OrderedDict[str, _Job]" = OrderedDict()
        self._loaded: "OrderedDict[str, Any]" = OrderedDict()  # name -> Sam (worker thread only)
        self._base_config: Dict[str, Any] = {}
        self._job_counter = 0
        # The one worker that runs every model call (see the module docstring).
        self.worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="basam-model")
        self.stats = {"encodes": 0, "decodes": 0, "everything": 0, "model_loads": 0}

    # --- models -------------------------------------------------------------------------------

    def _offered(self, model: str) -> List[str]:
        """Models that work offline: ``model``, basam_tiny, and official files already cached."""
        from ..hub import OFFICIAL_CHECKPOINTS, checkpoints_dir
        from ..models.registry import list_models

        names = [model] + (["basam_tiny"] if model != "basam_tiny" else [])
        for name in list_models():
            info = OFFICIAL_CHECKPOINTS.get(name)
            cached = info is not None and (checkpoints_dir() / info.filename).is_file()
            if cached:  # load it from there: no network, even for a hash check
                self.checkpoints.setdefault(name, str(checkpoints_dir() / info.filename))
            if (cached or self.download) and name not in names:
                names.append(name)
        return names

    def _spec(self, name: str):
        """The registry spec, with the architecture a basam checkpoint records (for the estimate)."""
        import json

        from ..checkpoint import read_metadata
        from ..models.registry import get_spec, shrink

        spec = get_spec(name)
        path = self.checkpoints.get(name)
        if path is not None and Path(path).is_file():
            try:
                arch = json.loads(read_metadata(Path(path)).get("architecture") or "{}")
            except (BasamError, ValueError, OSError):
                arch = {}  # load_model will report an unreadable file properly
            if arch:
                spec = shrink(spec, **arch)
        return spec

    def load(self, name: str):
        """The loaded model ``name`` (worker thread only); loads it, evicting the least recent."""
        from ..load import load_model
        from ..models.registry import get_spec

        model = self._loaded.get(name)
        if model is not None:
            self._loaded.move_to_end(name)
            return model
        first = name == self.default_model
        if self.checkpoints.get(name) is None and not self.download and get_spec(name).bundled is None:
            raise CheckpointError(f"no weights for {name} on this machine: pass --checkpoint PATH, or --download "
                                  "to fetch the official file once")
        model = load_model(
            name, checkpoint=self.checkpoints.get(name), attention=self.attention if first else None,
            device=self.device, download=self.download or name == "basam_tiny", progress=False,
            **(self.attention_overrides if first else {}),
        )
        self.stats["model_loads"] += 1
        self._base_config[name] = model.attention_config
        self._loaded[name] = model
        while len(self._loaded) > self.max_models:
            old, _ = self._loaded.popitem(last=False)
            with self._lock:  # its encodings hold the model alive: drop them with it
                for key in [k for k in self._encoded if k[1] == old]:
                    del self._encoded[key]
        return model

    def default_preset(self) -> str:
        cfg = self._base_config.get(self.default_model)
        return (cfg.preset_name if cfg is not None else None) or self.attention or "vanilla"

    def configure(self, name: str, model, preset: str) -> None:
        """Switch ``model`` to ``preset`` (worker thread only): NSF and BM-AM on or off, every other
        knob (beta, distance, trained slopes) as the model was loaded."""
        base = self._base_config[name]
        config = dataclasses.replace(base, **PRESETS[preset])
        if model.attention_config != config:
            model.set_attention(config, reset_slopes=False)  # keep trained slopes

    # --- images -------------------------------------------------------------------------------

    def add_image(self, name: str, array: np.ndarray) -> _Image:
        digest = hashlib.sha256(array.tobytes())
        digest.update(repr(array.shape).encode())
        image_id = digest.hexdigest()[:20]
        with self._lock:
            existing = self._images.get(image_id)
            if existing is not None:
                self._images.move_to_end(image_id)
                return existing
            image = _Image(image_id, name, array)
            self._images[image_id] = image
            while len(self._images) > self.max_images:
                old, _ = self._images.popitem(last=False)
                for key in [k for k in self._encoded if k[0] == old]:
                    del self._encoded[key]
        return image

    def get_image(self, image_id: Any) -> _Image:
        if not isinstance(image_id, str) or not image_id:
            raise HttpError(400, "'image' must be the id /api/images returned")
        with self._lock:
            image = self._images.get(image_id)
            if image is not None:
                self._images.move_to_end(image_id)
        if image is None:
            raise HttpError(404, f"unknown image {image_id!r} (the server forgot it or restarted): open the image again")
        return image

    def check_memory(self, need: int, what: str) -> None:
        """Refuse (413) work whose estimate exceeds ``max_memory`` (None: what the device has free)."""
        from ..memory import check_memory

        try:
            check_memory(need, self.max_memory, self.device, what=what)
        except InputError as e:
            raise HttpError(413, f"{e}: choose a lower resolution or a smaller image") from None

    def check_image_memory(self, hw: Tuple[int, int]) -> None:
        """Refuse an image that cannot even be held and masked within the memory limit."""
        est = estimate_memory(self.specs[self.default_model], MIN_RESOLUTION, hw, self.device)
        self.check_memory(est["decoder"] + est["image"], f"holding and masking this {hw[1]}x{hw[0]} image")

    def estimate(self, target: "_Target") -> Dict[str, int]:
        """:func:`estimate_memory` for ``target``: with the built model where it is loaded (its
        weights are then in memory already), else from its spec."""
        model = self._loaded.get(target.model) or self.specs[target.model]
        return estimate_memory(model, target.resolution, target.image.hw, self.device)

    # --- requests -----------------------------------------------------------------------------

    def target(self, body: dict) -> _Target:
        image = self.get_image(body.get("image"))
        model = body.get("model", self.default_model)
        if not isinstance(model, str) or model not in self.models:
            raise HttpError(400, f"model {model!r} is not offered here; choose one of {', '.join(self.models)}")
        resolution = body.get("resolution", self.default_resolution)
        if isinstance(resolution, str) and resolution.strip().isdigit():
            resolution = int(resolution.strip())
        if isinstance(resolution, float) and resolution.is_integer():
            resolution = int(resolution)
        if isinstance(resolution, bool) or not isinstance(resolution, int):
            raise HttpError(400, f"resolution must be a positive integer, got {resolution!r}")
        if resolution < MIN_RESOLUTION:
            raise HttpError(400, f"resolution must be at least {MIN_RESOLUTION} px, got {resolution}")
        if resolution > MAX_RESOLUTION:
            raise HttpError(400, f"resolution must be at most {MAX_RESOLUTION} px, got {resolution}")
        preset = body.get("preset", self.default_preset())
        if preset not in PRESETS:
            raise HttpError(400, f"unknown attention preset {preset!r}; choose one of {', '.join(PRESETS)}")
        target = _Target(image, model, resolution, preset)
        h, w = image.hw
        self.check_memory(self.estimate(target)["total"], f"{model} at {resolution} px on this {w}x{h} image")
        return target

    def _new_job(self, kind: str) -> _Job:
        with self._lock:
            self._job_counter += 1
            job = _Job(f"{kind[0]}{self._job_counter}", kind)
            self._jobs[job.id] = job
            # keep the last 64 finished jobs for polling (running ones are never dropped), and the
            # results (an overlay PNG each) of the last 4 only
            finished = [j for j in self._jobs.values() if j.finished is not None]
            for old in finished[: max(0, len(finished) - 64)]:
                self._jobs.pop(old.id, None)
            for old in [j for j in finished if j.result is not None][:-4]:
                old.result = None
        return job

    def get_job(self, job_id: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise HttpError(404, f"unknown job {job_id!r}")
        return job

    def cached(self, target: _Target):
        with self._lock:
            pred = self._encoded.get(target.key)
            if pred is not None:
                self._encoded.move_to_end(target.key)
            return pred

    def ensure_encoded(self, target: _Target) -> Optional[_Job]:
        """None if ``target`` is encoded; else the job encoding it (started here if none runs)."""
        with self._lock:
            if target.key in self._encoded:
                self._encoded.move_to_end(target.key)
                return None
            job = self._pending.get(target.key)
            if job is not None:
                return job
        job = self._new_job("encode")
        with self._lock:
            self._pending[target.key] = job
        job.future = self.worker.submit(self._run_job, job, self._encode, target)
        return job

    async def predictor(self, target: _Target):
        """The Predictor holding ``target``'s encoding, waiting for (or starting) its encode job."""
        while True:
            predictor = self.cached(target)
            if predictor is not None:
                return predictor
            job = self.ensure_encoded(target)
            if job is not None:
                # shield: a client that goes away must not cancel a job other requests wait on
                return await asyncio.shield(asyncio.wrap_future(job.future))

    def start_everything(self, target: _Target, params: dict) -> _Job:
        job = self._new_job("everything")
        job.future = self.worker.submit(self._run_job, job, self._everything, target, params)
        return job

    # --- worker-thread work ---------------------------------------------------------------------

    def _run_job(self, job: _Job, fn, *args):
        """Run ``fn(job, *args)`` on the worker; record the outcome in ``job`` and re-raise failures
        as :class:`HttpError` so that every request awaiting the job answers with the same message."""
        try:
            result = fn(job, *args)
        except HttpError as e:
            job.error, job.status = e.message, e.status
            raise
        except BasamError as e:
            job.error, job.status = one_line(e), 400
            raise HttpError(400, str(e)) from None
        except out_of_memory_errors() as e:
            job.error, job.status = _oom_message(e), 507
            raise HttpError(507, job.error) from None
        except Exception as e:
            log.exception("basam app: %s job failed", job.kind)
            job.error, job.status = f"internal error ({type(e).__name__}): {one_line(e)}", 500
            raise HttpError(500, job.error) from None
        else:
            job.state = "ready"
            return result
        finally:
            if job.error is not None:
                job.state = "error"
            job.finished = time.monotonic()
            with self._lock:
                for key in [k for k, j in self._pending.items() if j is job]:
                    del self._pending[key]

    def _model_for(self, job: _Job, target: _Target):
        if target.model not in self._loaded:
            job.state = "loading"
        model = self.load(target.model)
        self.configure(target.model, model, target.preset)
        return model

    def _encode(self, job: _Job, target: _Target):
        import torch

        from ..predictor import Predictor

        model = self._model_for(job, target)
        job.state = "encoding"
        predictor = Predictor(model, resolution=target.resolution)
        with warnings.catch_warnings():
            # the resized image can be a read-only view; torch copies it to the device anyway
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            predictor.set_image(target.image.array)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize(predictor.device)
        self.stats["encodes"] += 1
        with self._lock:
            self._encoded[target.key] = predictor
            while len(self._encoded) > self.cache_size:
                self._encoded.popitem(last=False)
        return predictor

    def decode(self, predictor, target: _Target, coords, labels, box) -> Tuple[np.ndarray, np.ndarray, float]:
        """(3, H, W) bool masks, (3,) scores and the decoder time in ms (worker thread)."""
        self.configure(target.model, predictor.model, target.preset)
        start = time.perf_counter()
        masks, scores, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=True)
        self.stats["decodes"] += 1
        return masks, scores, (time.perf_counter() - start) * 1000

    def _everything(self, job: _Job, target: _Target, params: dict) -> dict:
        from ..amg import AutomaticMaskGenerator, render_amg_overlay

        model = self._model_for(job, target)
        job.state = "running"
        gen = AutomaticMaskGenerator(model, resolution=target.resolution, mask_scoring=AMG_SCORING, **params)
        records = gen.generate(target.image.array)
        self.stats["everything"] += 1
        overlay = render_amg_overlay(target.image.array, [r["segmentation"] for r in records])
        job.result = {
            "overlay": _b64(_png(overlay)),
            "count": len(records),
            "masks": [{"area": int(r["area"]), "bbox": [int(v) for v in r["bbox"]],
                       "predicted_iou": round(float(r["predicted_iou"]), 4),
                       "stability_score": round(float(r["stability_score"]), 4)} for r in records],
        }
        return job.result

    async def run_on_worker(self, fn, *args):
        """Run ``fn(*args)`` on the model worker and await it, errors mapped as in :meth:`_run_job`."""

        def guarded():
            try:
                return fn(*args)
            except HttpError:
                raise
            except BasamError as e:
                raise HttpError(400, str(e)) from None
            except out_of_memory_errors() as e:
                raise HttpError(507, _oom_message(e)) from None

        return await asyncio.shield(asyncio.wrap_future(self.worker.submit(guarded)))

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# Request helpers


async def _json_body(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise HttpError(413, f"request body too large ({int(length)} bytes; at most {MAX_JSON_BYTES})")
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        raise HttpError(415, "send a JSON body (Content-Type: application/json)")
    raw = await request.body()
    if len(raw) > MAX_JSON_BYTES:
        raise HttpError(413, f"request body too large ({len(raw)} bytes; at most {MAX_JSON_BYTES})")
    try:
        import json

        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HttpError(400, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "request body must be a JSON object")
    return body


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise HttpError(400, f"{what} must be a finite number, got {value!r}")
    return float(value)


def _prompts(body: dict) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """(points (N, 2), labels (N,), box (4,)) from ``points: [[x, y, label?], ...]`` and ``box``."""
    points = body.get("points") or []
    if not isinstance(points, list):
        raise HttpError(400, "'points' must be a list of [x, y, label]")
    if len(points) > MAX_POINTS:
        raise HttpError(400, f"at most {MAX_POINTS} points, got {len(points)}")
    coords, labels = [], []
    for p in points:
        if not isinstance(p, list) or len(p) not in (2, 3):
            raise HttpError(400, f"each point must be [x, y] or [x, y, label], got {p!r}")
        x, y = _number(p[0], "point x"), _number(p[1], "point y")
        label = p[2] if len(p) == 3 else 1
        if isinstance(label, bool) or label not in (0, 1):
            raise HttpError(400, f"point label must be 1 (foreground) or 0 (background), got {label!r}")
        coords.append([x, y])
        labels.append(int(label))
    box = body.get("box")
    if box is not None:
        if not isinstance(box, list) or len(box) != 4:
            raise HttpError(400, f"'box' must be [x0, y0, x1, y1], got {box!r}")
        box = np.array([_number(v, "box coordinate") for v in box], dtype=float)
    if not coords and box is None:
        raise HttpError(400, "no prompt given: click a point or draw a box")
    if not coords:
        return None, None, box
    return np.array(coords, dtype=float), np.array(labels, dtype=np.int64), box


def _decode_upload(state: AppState, data: bytes, name: str) -> np.ndarray:
    """Decode uploaded bytes with :func:`basam.io.read_image` (every format and quirk it handles),
    naming the upload, not the temp file, in messages."""
    from .. import io as bio

    tmpdir = tempfile.mkdtemp(prefix="basam-app-")
    try:
        path = Path(tmpdir) / "upload"
        path.write_bytes(data)
        _check_header_size(state, path)
        try:
            return bio.read_image(path)
        except InputError as e:
            raise InputError(str(e).replace(str(path), name)) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _check_header_size(state: AppState, path: Path) -> None:
    """Refuse an image too large for the memory limit from its header, before decoding it."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception:
        return  # not an image (or a broken one): read_image says so properly
    state.check_image_memory((h, w))


def _read_path(state: AppState, raw: Any) -> Tuple[str, np.ndarray]:
    from .. import io as bio

    if not isinstance(raw, str) or not raw.strip():
        raise HttpError(400, "'path' must be a file path on the server")
    path = Path(os.path.expanduser(raw.strip()))
    if path.is_file():
        _check_header_size(state, path)
    return path.name, bio.read_image(path)


# ----------------------------------------------------------------------------------------------
# The application


class _HostCheck:
    """Refuse requests whose Host header is not one the server is meant to be reached under.

    A page on another site can make the browser send requests to 127.0.0.1 under its own name
    (DNS rebinding) and then read the answers; checking the name closes that door, so the
    local-files feature (open a path) is not readable by other sites.
    """

    def __init__(self, app, allowed: Optional[Sequence[str]]) -> None:
        self.app = app
        self.allowed = None if allowed is None else {h.lower() for h in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.allowed is not None:
            host = ""
            for k, v in scope.get("headers", ()):
                if k == b"host":
                    host = v.decode("latin-1").strip().lower()
                    break
            name = host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
            if name not in self.allowed:
                response = JSONResponse({"error": f"host {host!r} is not served here; open http://127.0.0.1:<port>/"},
                                        status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    model: str = "basam_tiny",
    checkpoint: Optional[str] = None,
    device: str = "cpu",
    attention: Optional[str] = None,
    beta: Optional[float] = None,
    dist: Optional[str] = None,
    resolution: Optional[int] = None,
    max_memory: "int | str | None" = None,
    models: Optional[Sequence[str]] = None,
    checkpoints: Optional[dict] = None,
    allow_paths: bool = True,
    download: bool = False,
    allowed_hosts: Optional[Sequence[str]] = LOOPBACK_HOSTS,
    cache_size: int = 8,
    max_images: int = 8,
    max_models: int = 2,
    everything: Optional[dict] = None,
    preload: bool = True,
) -> Starlette:
    """Build the ``basam app`` ASGI application.

    Args:
        model: the default model (registry name); offline by default with ``basam_tiny``.
        checkpoint: its weights file (default: bundled, or the cached official file).
        device: ``cpu``, ``cuda``, ``cuda:N``.
        attention, beta, dist: the default model's attention (None: what its checkpoint records);
            the page's preset switch turns NSF and BM-AM on and off and keeps the rest.
        resolution: the page's initial resolution (default: the model's own).
        max_memory: refuse requests whose :func:`estimate_memory` exceeds this (bytes, or ``"8G"``);
            None or ``"auto"``: what the device has free at the time of the request.
        models: the names the page offers (default: ``model``, basam_tiny and every official model
            whose file is already in the cache; with ``download`` every registered model).
        checkpoints: name -> weights file, for the offered models.
        allow_paths: let the page open files on this machine by path.
        download: allow downloading official checkpoints when the page asks for a model.
        allowed_hosts: Host header names accepted (None: any; for a server on 0.0.0.0).
        cache_size: encodings kept (LRU); max_images: decoded images kept; max_models: models kept
            loaded.
        everything: segment-everything defaults for every model (``points_per_side``,
            ``pred_iou_thresh``, ``stability_score_thresh``), over :data:`AMG_DEFAULTS`.
        preload: load the default model now (its checkpoint errors surface here, not on first click).
    Returns:
        a Starlette app; its :class:`AppState` is ``app.state.basam``.
    """
    state = AppState(model, checkpoint, device, attention, {"beta": beta, "dist": dist}, models, checkpoints,
                     resolution, _memory_limit(max_memory), allow_paths, download, cache_size, max_images, max_models)
    if preload:
        state.worker.submit(state.load, model).result()
    unknown = sorted(set(everything or {}) - set(OFFICIAL_AMG))
    if unknown:
        raise InputError(f"unknown segment-everything option(s): {', '.join(unknown)}")

    def amg_defaults(name: str) -> dict:
        return {**OFFICIAL_AMG, **AMG_DEFAULTS.get(name, {}), **(everything or {})}

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> Response:
        entries = []
        for name in state.models:
            spec = state.specs[name]
            entries.append({"name": name, "description": spec.description, "resolution": int(spec.img_size),
                            "everything": amg_defaults(name)})
        return JSONResponse({
            "models": entries, "default_model": state.default_model, "presets": list(PRESETS),
            "default_preset": state.default_preset(), "default_resolution": state.default_resolution,
            "min_resolution": MIN_RESOLUTION, "max_resolution": MAX_RESOLUTION,
            "max_memory": state.max_memory, "allow_paths": state.allow_paths, "max_upload": MAX_UPLOAD_BYTES,
        })

    async def images(request: Request) -> Response:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES:
                raise HttpError(413, f"upload too large ({_gib(int(length))}; at most {_gib(MAX_UPLOAD_BYTES)})")
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    raise HttpError(400, "no file in the upload (send it as the multipart field 'file')")
                data = await upload.read()
                name = os.path.basename(upload.filename or "") or "upload"
            if len(data) > MAX_UPLOAD_BYTES:
                raise HttpError(413, f"upload too large ({_gib(len(data))}; at most {_gib(MAX_UPLOAD_BYTES)})")
            if not data:
                raise HttpError(400, f"cannot read image {name!r}: file is empty")
            array = await run_in_threadpool(_decode_upload, state, data, name)
        elif ctype.startswith("application/json"):
            body = await _json_body(request)
            if not state.allow_paths:
                raise HttpError(403, "opening files by path is off on this server (upload the image instead)")
            name, array = await run_in_threadpool(_read_path, state, body.get("path"))
        else:
            raise HttpError(415, "send the image as multipart/form-data (field 'file') or JSON {\"path\": ...}")
        image = state.add_image(name, array)
        h, w = image.hw
        return JSONResponse({"id": image.id, "name": image.name, "width": w, "height": h,
                             "url": f"/api/images/{image.id}"})

    async def image_png(request: Request) -> Response:
        image = state.get_image(request.path_params["image_id"])
        if image.png is None:
            image.png = await run_in_threadpool(_png, image.array)
        return Response(image.png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def encode(request: Request) -> Response:
        target = state.target(await _json_body(request))
        job = state.ensure_encoded(target)
        if job is None:
            return JSONResponse({"state": "ready"})
        return JSONResponse({"state": job.state, "job": job.id})

    async def job_status(request: Request) -> Response:
        return JSONResponse(state.get_job(request.path_params["job_id"]).describe())

    async def predict(request: Request) -> Response:
        body = await _json_body(request)
        target = state.target(body)
        coords, labels, box = _prompts(body)
        h, w = target.image.hw
        from ..predictor import check_prompts

        check_prompts(coords, labels, box, w, h)  # before waiting on an encoding
        predictor = await state.predictor(target)
        masks, scores, ms = await state.run_on_worker(state.decode, predictor, target, coords, labels, box)
        pngs = await run_in_threadpool(lambda: [_b64(_png(np.where(m, np.uint8(255), np.uint8(0)))) for m in masks])
        return JSONResponse({
            "masks": pngs, "scores": [round(float(s), 4) for s in scores],
            "areas": [int(m.sum()) for m in masks], "best": int(np.argmax(scores)),
            "width": w, "height": h, "decode_ms": round(ms, 2),
        })

    async def segment_everything(request: Request) -> Response:
        body = await _json_body(request)
        target = state.target(body)
        params = amg_defaults(target.model)
        for key in ("pred_iou_thresh", "stability_score_thresh"):
            if body.get(key) is not None:
                v = _number(body[key], key)
                if not 0 <= v <= 1:
                    raise HttpError(400, f"{key} must be in [0, 1], got {v:g}")
                params[key] = v
        if body.get("points_per_side") is not None:
            n = body["points_per_side"]
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 64:
                raise HttpError(400, f"points_per_side must be an integer in 1..64, got {n!r}")
            params["points_per_side"] = n
        h, w = target.image.hw
        # + the masks it keeps (bool) and a chunk of full-size logits
        state.check_memory(state.estimate(target)["total"] + 80 * h * w,
                           f"segment everything with {target.model} at {target.resolution} px on this {w}x{h} image")
        try:
            import pycocotools  # noqa: F401  (the generator stores masks as COCO RLE)
        except ImportError:
            raise HttpError(501, "segment everything needs the [amg] extra: pip install 'basam[amg]'") from None
        job = state.start_everything(target, params)
        return JSONResponse({"state": job.state, "job": job.id})

    async def on_http_error(request: Request, exc: HttpError) -> Response:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def on_basam_error(request: Request, exc: BasamError) -> Response:
        return JSONResponse({"error": one_line(exc)}, status_code=400)

    async def on_starlette_error(request: Request, exc: HTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail else "request refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such page or endpoint: {request.url.path}"
        return JSONResponse({"error": one_line(detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # ServerErrorMiddleware logs the traceback; the client gets one line and no traceback
        if isinstance(exc, out_of_memory_errors()):
            return JSONResponse({"error": _oom_message(exc)}, status_code=507)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}): {one_line(exc)}"}, status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    routes = [
        Route("/", index),
        Route("/api/config", config),
        Route("/api/images", images, methods=["POST"]),
        Route("/api/images/{image_id}", image_png),
        Route("/api/encode", encode, methods=["POST"]),
        Route("/api/jobs/{job_id}", job_status),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/everything", segment_everything, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_HostCheck, allowed=allowed_hosts)],
        exception_handlers={HttpError: on_http_error, BasamError: on_basam_error,
                            HTTPException: on_starlette_error, Exception: on_unexpected},
        lifespan=lifespan,
    )
    app.state.basam = state
    return app
