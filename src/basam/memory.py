"""How much memory encoding one image takes, and the check that refuses what would not fit.

``basam segment --resolution 99999`` (mobile_sam) would otherwise allocate until the machine swaps or the
process is killed; :func:`check_memory` refuses it first, in one line::

    encoding at 99999 px needs about 2,338 GiB; the limit is 12.3 GiB (free on cpu; --max-memory sets it)

The estimate (:func:`estimate_encode_bytes`) is a formula in the encoder's sizes, not a
measurement, so it costs nothing and runs before the model is built:

    weights + input + activations + attention

* **weights**: parameters x 4 bytes (x 2 in bf16) (counted from the architecture; within a few % of the real count).
* **input**: the resized image and the normalised, padded ``(1, 3, S, S)`` fp32 tensor(s).
* **activations** per token x tokens: ViT ``16 x C`` values per token of the ``S/16`` grid (window
  padding included); TinyViT ``14 x C0`` values per token of its stride-4 stage. A block holds its
  input, the LayerNorm output, ``qkv`` (3C), the attention output, the MLP hidden layer and its
  GELU (2 x 4C) and the residual sum at once.
* **attention**: the materialised logit bias (fp32) and the attention weights of one attention
  call, for the layer where they are largest: ``min(2 x B x H x Nq x Nk x 4, chunk_bytes)`` with
  ``sdpa`` (the bias is built per chunk of queries, see :mod:`basam.attention_backends`),
  ``4 x B x H x N x N x 4`` with ``reference``, nothing with the fused Triton kernel.
* on CUDA, 256 MiB for the allocator's rounding and library workspaces.

Calibration (CPU, fp32, ``torch.no_grad``, ``basam`` preset, ``sdpa`` backend, 2 threads; peak RSS
of one ``Sam.encode`` above the RSS just before it, read with ``resource.getrusage(...).ru_maxrss``
in a fresh process after a 64 px warm-up; weights excluded, as they were loaded already)::

    model        R      measured   estimated (activations + attention + input)
    basam_tiny   512     50 MiB      67 MiB   (1.33x)
    basam_tiny  1024    211 MiB     331 MiB   (1.57x)
    basam_tiny  2048    349 MiB     556 MiB   (1.59x)
    sam_vit_b    512    146 MiB     185 MiB   (1.27x)
    sam_vit_b   1024    448 MiB     513 MiB   (1.14x)
    sam_vit_b   2048    927 MiB    1283 MiB   (1.38x)
    mobile_sam  1024    224 MiB     288 MiB   (1.28x)
    mobile_sam  2048    896 MiB    1151 MiB   (1.28x)

so the estimate is 1.1-1.6x the measurement, never below it (``tests/test_memory.py`` repeats the
basam_tiny 512 px measurement). On CUDA (H100, bf16, Triton kernel, figures of
``docs/performance.md``, weights included) ViT-B measured 0.37 / 0.62 / 1.44 GiB at 1024 / 2048 /
4096 px; the estimate (``dtype_bytes=2, backend="triton"``) is 0.56 / 0.98 / 2.47 GiB. Not measured
here on a GPU.

The limit (:func:`check_memory`) is ``--max-memory`` or, by default, what the device has free:
on the CPU ``MemAvailable`` of ``/proc/meminfo`` (and the cgroup's ``memory.max`` minus
``memory.current`` when a container sets one), on CUDA ``torch.cuda.mem_get_info``. Where neither
can be read (another OS) and no ``--max-memory`` is given, nothing is refused.

Nothing here imports torch at import time (:mod:`basam.io` uses :func:`cpu_available_bytes`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

from .errors import InputError

__all__ = [
    "GiB",
    "cpu_available_bytes",
    "device_free_bytes",
    "parse_memory",
    "estimate_encode_bytes",
    "check_memory",
    "check_encode",
]

GiB = 2**30

#: values held per token at a block's peak (see the module doc), per model family
VIT_VALUES_PER_TOKEN_AND_CHANNEL = 16
TINYVIT_VALUES_PER_TOKEN_AND_CHANNEL = 14
#: CUDA: caching-allocator rounding, cuBLAS / Triton workspaces
CUDA_OVERHEAD = 256 * 2**20
#: the default chunk budget of the sdpa backend (AttentionConfig.chunk_bytes)
DEFAULT_CHUNK_BYTES = 256 * 2**20


# ----------------------------------------------------------------------------------------------
# What the device has


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> Optional[int]:
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """cgroup v2 ``memory.max - memory.current`` (a container's limit), None when unlimited/absent."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if not limit.isdigit():  # "max": no limit
        return None
    return max(0, int(limit) - current)


def cpu_available_bytes() -> Optional[int]:
    """Memory a new allocation can get without swapping, in bytes; None where it cannot be read.

    ``MemAvailable`` (Linux), lowered to the cgroup's remaining allowance inside a container.
    """
    values = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(values) if values else None


def device_free_bytes(device: Any) -> Optional[int]:
    """Free memory on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device), in bytes."""
    name = str(device)
    if name.startswith("cuda"):
        import torch

        dev = torch.device(name)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if name == "cpu":
        return cpu_available_bytes()
    return None


_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> Optional[int]:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"2048MB"``, ``"1073741824"`` (bytes) -> bytes; ``"auto"`` -> None.

    Units are binary (``G`` = 2**30 bytes) whether written ``G``, ``GB`` or ``GiB``.
    """
    value = str(text).strip()
    if value.lower() == "auto":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?", value, re.IGNORECASE)
    if not m or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise InputError(f"memory must be a size like 8G, 512M or auto, got {text!r}")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(n) or n < 1:
        raise InputError(f"memory must be a positive size like 8G, 512M or auto, got {text!r}")
    return int(n)


# ----------------------------------------------------------------------------------------------
# The encoder's sizes


@dataclass(frozen=True)
class _Encoder:
    """What the estimate needs of an encoder: family, widths, heads, windows, and the parameters."""

    family: str  # "vit" | "tinyvit" | "generic" (a plug-in family: see _generic)
    widths: Tuple[int, ...]  # ViT: (C,); TinyViT: embed_dims
    depths: Tuple[int, ...]
    heads: Tuple[int, ...]
    windows: Tuple[int, ...]  # ViT: (window,); TinyViT: per stage
    n_global: int  # ViT: global-attention blocks
    patch: int  # ViT patch size (the stride of its grid); TinyViT: 16
    params: int


def _vit_params(C: int, depth: int, heads: int, window: int, n_global: int, patch: int, mlp: float, img: int, out: int) -> int:
    grid = img // patch
    hd = C // heads
    block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (2 * int(mlp * C) * C + int(mlp * C) + C) + heads
    rel = (depth - n_global) * 2 * (2 * window - 1) * hd + n_global * 2 * (2 * grid - 1) * hd
    return 3 * patch * patch * C + C + grid * grid * C + depth * block + rel + C * out + 9 * out * out + 4 * out


def _tinyvit_params(dims, depths, heads, windows, mlp: float, out: int) -> int:
    n = 3 * 9 * dims[0] // 2 + 9 * dims[0] * dims[0] // 2  # patch embed: two 3x3 convs
    n += depths[0] * (8 * dims[0] * dims[0] + 36 * dims[0])  # MBConv blocks (expand 4)
    for i in range(1, len(dims)):
        C = dims[i]
        n += depths[i] * (4 * C * C + 2 * int(mlp * C) * C + 9 * C + heads[i] * windows[i] ** 2 + 8 * C)
    for i in range(len(dims) - 1):  # patch merging between stages
        n += dims[i] * dims[i + 1] + 10 * dims[i + 1] + dims[i + 1] ** 2
    return n + dims[-1] * out + 9 * out * out + 4 * out


def _decoder_params(D: int, depth: int, mlp: int, iou_hidden: int, hq: bool, vit_dim: int) -> int:
    n = depth * (8 * D * D + 2 * D * mlp) + 2 * D * D  # two-way transformer + final attention
    n += 4 * (2 * D * D + D * D // 8) + D * D // 4 * 4 + D // 4 * D // 8 * 4  # hypernetworks, upscaling
    n += D * iou_hidden + iou_hidden * iou_hidden + 4 * iou_hidden
    if hq:  # HQ-SAM: compression of the early feature, embedding encoder, HQ MLP
        n += vit_dim * D * 4 + D * D // 8 * 8 + 2 * D * D + D * D // 8 * 9
    return n


#: width assumed for an encoder family this module does not know (a plug-in, basam.models.family):
#: ViT-L's, so that the estimate stays on the safe side for anything up to it
GENERIC_WIDTH = 1024


def _generic(cfg: Any, params: int, stride: int = 16) -> _Encoder:
    """A plug-in family: a ViT-like estimate from its widest ``embed_dim(s)`` field, else
    :data:`GENERIC_WIDTH`, with one global attention layer."""
    widths = [getattr(cfg, "embed_dim", None)] + list(getattr(cfg, "embed_dims", None) or [])
    widths = [int(w) for w in widths if isinstance(w, int) and w > 0]
    heads = getattr(cfg, "num_heads", 16)
    heads = max(heads) if isinstance(heads, (tuple, list)) and heads else heads if isinstance(heads, int) else 16
    return _Encoder("vit", (max(widths) if widths else GENERIC_WIDTH,), (1,), (int(heads),), (0,), 1, int(stride), params)


def _from_spec(spec) -> _Encoder:
    from .models.registry import TinyViTConfig, ViTConfig

    e, d = spec.encoder, spec.decoder
    if not isinstance(e, (ViTConfig, TinyViTConfig)):
        return _generic(e, 0)
    if isinstance(e, ViTConfig):
        n_global = len(e.global_attn_indexes)
        params = _vit_params(e.embed_dim, e.depth, e.num_heads, e.window_size, n_global, e.patch_size, e.mlp_ratio,
                             spec.img_size, d.transformer_dim)
        enc = _Encoder("vit", (e.embed_dim,), (e.depth,), (e.num_heads,), (e.window_size,), n_global, e.patch_size, params)
        vit_dim = e.embed_dim
    else:
        params = _tinyvit_params(e.embed_dims, e.depths, e.num_heads, e.window_sizes, e.mlp_ratio, d.transformer_dim)
        enc = _Encoder("tinyvit", tuple(e.embed_dims), tuple(e.depths), tuple(e.num_heads), tuple(e.window_sizes), 0, 16, params)
        vit_dim = e.embed_dims[2]
    dec = _decoder_params(d.transformer_dim, d.depth, d.mlp_dim, d.iou_head_hidden_dim, spec.hq, vit_dim)
    return _Encoder(enc.family, enc.widths, enc.depths, enc.heads, enc.windows, enc.n_global, enc.patch, enc.params + dec)


def _from_module(model) -> _Encoder:
    enc = model.image_encoder
    params = sum(p.numel() for p in model.parameters())
    if hasattr(enc, "blocks"):  # ImageEncoderViT
        C = int(enc.embed_dim)
        windows = [int(b.window_size) for b in enc.blocks if b.window_size > 0] or [0]
        heads = int(enc.blocks[0].attn.num_heads)
        return _Encoder("vit", (C,), (len(enc.blocks),), (heads,), (max(windows),), len(enc.global_attn_indexes),
                        int(enc.patch_size), params)
    if not (hasattr(enc, "embed_dims") and hasattr(enc, "layers")):  # a plug-in family
        return _generic(enc, params, getattr(enc, "stride", 16))
    dims = tuple(int(x) for x in enc.embed_dims)
    heads, windows, depths = [1], [1], []
    for i, layer in enumerate(enc.layers):
        depths.append(len(layer.blocks))
        if i > 0:
            heads.append(int(layer.blocks[0].attn.num_heads))
            windows.append(int(layer.blocks[0].window_size))
    return _Encoder("tinyvit", dims, tuple(depths), tuple(heads), tuple(windows), 0, 16, params)


def _encoder_of(model: Any, architecture: Optional[dict]) -> Tuple[_Encoder, bool]:
    """(sizes, whether ``model`` is a built module whose weights are already in memory)."""
    if hasattr(model, "image_encoder"):
        return _from_module(model), True
    from .models.registry import ModelSpec, get_spec, shrink

    spec = model if isinstance(model, ModelSpec) else get_spec(str(model))
    if architecture:
        spec = shrink(spec, **dict(architecture))
    return _from_spec(spec), False


# ----------------------------------------------------------------------------------------------
# The estimate


def _attention_bytes(batch: int, heads: int, tokens: int, backend: str, chunk_bytes: int) -> int:
    """Peak bytes of one self-attention call over ``batch`` groups of ``tokens`` tokens."""
    full = batch * heads * tokens * tokens * 4  # one fp32 (B, H, N, N) tensor
    if backend == "reference":
        return 4 * full  # logits, bias, their sum, softmax
    if backend == "fused":
        return 0  # the Triton kernel computes the bias in registers: no N x N tensor at all
    return min(2 * full, chunk_bytes)  # bias chunk + attention weights, bounded by the chunking


def _effective_backend(backend: str, device: Any) -> str:
    """``reference``, ``fused`` (a Triton kernel) or ``sdpa``: what ``backend`` runs as on ``device``."""
    if backend == "reference":
        return "reference"
    if backend == "sdpa" or not str(device).startswith("cuda"):
        return "sdpa"
    if backend == "auto":
        import importlib.util

        # auto on CUDA picks the fused kernel where Triton is installed (see basam.attention)
        return "fused" if importlib.util.find_spec("triton") is not None else "sdpa"
    return "fused"  # a named fused kernel (triton)


def _windowed(grid: int, window: int) -> Tuple[int, int]:
    """(number of windows, padded token count) of a ``grid`` x ``grid`` map in ``window`` windows."""
    if window <= 0:
        return 1, grid * grid
    n = -(-grid // window)
    return n * n, (n * window) ** 2


def estimate_encode_bytes(
    model: Any,
    resolution: int,
    *,
    architecture: Optional[dict] = None,
    backend: str = "auto",
    device: Any = "cpu",
    dtype_bytes: int = 4,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    include_weights: Optional[bool] = None,
) -> int:
    """A conservative estimate of the peak memory, in bytes, to encode one image (batch 1).

    Args:
        model: a registry name (``"sam_vit_b"``), a :class:`~basam.models.registry.ModelSpec`, or
            a built :class:`~basam.models.sam.Sam` (its weights then count as already loaded).
        resolution: longest side R in px; the encoder runs on the square ``S = ceil(R / 16) * 16``.
        architecture: overrides of the spec (as ``--architecture``), for a name or a spec.
        backend: the attention backend: ``auto`` (on CUDA the fused Triton kernel where Triton is
            installed, else ``sdpa``), ``sdpa`` (bias built per chunk of queries), ``triton``
            (fused: no N x N tensor), ``reference`` (the full N x N logits).
        device: ``cpu`` or ``cuda[:N]`` (CUDA adds :data:`CUDA_OVERHEAD`).
        dtype_bytes: bytes per weight and activation value (4 for fp32, 2 for a model cast to
            bf16/fp16); the input and the sdpa bias stay fp32.
        chunk_bytes: the sdpa backend's chunk budget (``AttentionConfig.chunk_bytes``).
        include_weights: count the weights; default True for a name or spec (the check runs
            before the model is loaded), False for a built model.

    Returns:
        Bytes, an integer. See the module docstring for the formula and its calibration.
    """
    R = int(resolution)
    if R <= 0:
        raise InputError(f"resolution must be a positive integer, got {resolution!r}")
    enc, loaded = _encoder_of(model, architecture)
    backend = _effective_backend(backend, device)
    if include_weights is None:
        include_weights = not loaded
    S = -(-R // 16) * 16
    total = 3 * S * S * (4 * 2 + 1)  # uint8 resized image, fp32 input and its normalised, padded copy
    if include_weights:
        total += enc.params * dtype_bytes
    if enc.family == "vit":
        C, H, w = enc.widths[0], enc.heads[0], enc.windows[0]
        g = -(-S // enc.patch)
        n_win, padded = _windowed(g, w)
        total += VIT_VALUES_PER_TOKEN_AND_CHANNEL * max(padded, g * g) * C * dtype_bytes
        attn = _attention_bytes(n_win, H, w * w, backend, chunk_bytes) if w > 0 and enc.depths[0] > enc.n_global else 0
        if enc.n_global:
            attn = max(attn, _attention_bytes(1, H, g * g, backend, chunk_bytes))
        total += attn
    else:
        g4 = S // 4
        total += TINYVIT_VALUES_PER_TOKEN_AND_CHANNEL * g4 * g4 * enc.widths[0] * dtype_bytes
        attn, stride = 0, 4
        for i in range(1, len(enc.widths)):
            # stage i runs at stride 8 (i = 1) or 16 (the merge into the last stage keeps the grid)
            stride = min(stride * 2, 16)
            n_win, _ = _windowed(-(-S // stride), enc.windows[i])
            attn = max(attn, _attention_bytes(n_win, enc.heads[i], enc.windows[i] ** 2, backend, chunk_bytes))
        total += attn
    if str(device).startswith("cuda"):
        total += CUDA_OVERHEAD
    return int(total)


def _gib(n: float) -> str:
    g = n / GiB
    return f"{g:.1f}" if g < 1000 else f"{g:,.0f}"


def check_memory(needed_bytes: int, max_memory: Optional[int], device: Any, *, resolution: Optional[int] = None,
                 what: Optional[str] = None) -> None:
    """Refuse, with one line, work that needs more memory than the limit.

    Args:
        needed_bytes: e.g. :func:`estimate_encode_bytes`.
        max_memory: the limit in bytes (``--max-memory``), or None for what ``device`` has free
            (:func:`device_free_bytes`); if that cannot be read, nothing is refused.
        device: where the work runs (``cpu``, ``cuda[:N]``).
        resolution: named in the message (``encoding at R px ...``).
        what: the work named in the message instead of ``encoding at R px``.

    Raises:
        InputError: ``"encoding at R px needs about X GiB; the limit is Y GiB (--max-memory)"``.
    """
    if max_memory is not None:
        limit, source = int(max_memory), "--max-memory"
    else:
        limit = device_free_bytes(device)
        if limit is None:
            return
        source = f"free on {device}; --max-memory sets it"
    if needed_bytes <= limit:
        return
    label = what or (f"encoding at {int(resolution)} px" if resolution is not None else "this")
    raise InputError(f"{label} needs about {_gib(needed_bytes)} GiB; the limit is {_gib(limit)} GiB ({source})")


def check_encode(model: Any, resolution: int, device: Any, max_memory: Optional[int] = None, *,
                 architecture: Optional[dict] = None, backend: str = "auto") -> int:
    """:func:`estimate_encode_bytes` then :func:`check_memory`: refuse, before the model is even
    loaded, an encoding at ``resolution`` that would not fit. Returns the estimate (bytes)."""
    need = estimate_encode_bytes(model, resolution, architecture=architecture, backend=backend, device=device)
    check_memory(need, max_memory, device, resolution=resolution)
    return need
