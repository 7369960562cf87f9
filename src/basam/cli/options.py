"""What every ``basam`` subcommand shares: the parser class, value parsers, option groups, errors.

Nothing here imports torch at import time: ``basam --help`` must stay fast. Preset and distance
names come from :mod:`basam.attention_config` (torch-free), the one place they are defined.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from typing import List, NoReturn, Optional, Tuple

from ..attention_config import DISTANCES, NSF_COUNTS, PRESETS
from ..constants import DEFAULT_MODEL, HQ_FUSIONS, MIN_RESOLUTION
from ..errors import BasamError, InputError, one_line, out_of_memory_errors

__all__ = [
    "PROG", "EXIT_OK", "EXIT_RESOURCE", "EXIT_USAGE", "EXIT_INTERRUPTED", "UsageError", "Parser",
    "one_line", "parse_point", "parse_box", "parse_resolution", "parse_beta", "parse_device",
    "parse_architecture", "parse_max_memory", "add_model_options", "add_attention_options", "add_device_options",
    "resolve_device", "check_architecture", "out_of_memory_errors", "out_of_memory_message", "require_extra",
    "MissingExtraError",
]

PROG = "basam"
EXIT_OK = 0
EXIT_RESOURCE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(BasamError):
    """A command line argparse rejected (bad option, missing argument, unparsable value)."""


class MissingExtraError(BasamError):
    """A subcommand needs an optional dependency group (``pip install 'basam[eval]'``)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of printing usage and calling ``sys.exit(2)``.

    Subparsers made by ``add_subparsers`` inherit this class, so every level behaves the same.
    ``--help`` still prints and exits 0 through :meth:`exit` (SystemExit, caught in ``main``).
    """

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(message)


# ----------------------------------------------------------------------------------------------
# Value parsers (argparse ``type=``): each raises ArgumentTypeError naming the bad value


def _numbers(value: str, what: str, form: str, counts: Tuple[int, ...]) -> List[float]:
    """Comma-separated finite numbers, as many as one of ``counts``; else a message naming ``value``."""
    parts = [p.strip() for p in value.split(",")]
    bad = f"invalid {what} {value!r}: expected {form}"
    if len(parts) not in counts or any(p == "" for p in parts):
        raise argparse.ArgumentTypeError(bad)
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(bad + " with numbers") from None
    if not all(math.isfinite(n) for n in nums):
        raise argparse.ArgumentTypeError(f"invalid {what} {value!r}: coordinates must be finite numbers")
    return nums


def parse_point(value: str) -> Tuple[float, float, int]:
    """``X,Y`` or ``X,Y,LABEL`` (LABEL 1 = foreground, the default; 0 = background)."""
    nums = _numbers(value, "point", "X,Y or X,Y,LABEL", (2, 3))
    label = 1
    if len(nums) == 3:
        if nums[2] not in (0.0, 1.0):
            raise argparse.ArgumentTypeError(
                f"invalid point {value!r}: LABEL must be 1 (foreground) or 0 (background)"
            )
        label = int(nums[2])
    return nums[0], nums[1], label


def parse_box(value: str) -> Tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` with ``X1 >= X0`` and ``Y1 >= Y0``."""
    x0, y0, x1, y1 = _numbers(value, "box", "X0,Y0,X1,Y1", (4,))
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"invalid box {value!r}: needs X1 >= X0 and Y1 >= Y0 (corners are top-left, bottom-right)"
        )
    return x0, y0, x1, y1


def parse_resolution(value: str) -> int:
    """A positive integer of at least :data:`~basam.constants.MIN_RESOLUTION` px."""
    try:
        r = int(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be a positive integer, got {value!r}") from None
    if r <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be a positive integer, got {value!r}")
    if r < MIN_RESOLUTION:
        raise argparse.ArgumentTypeError(f"resolution must be at least {MIN_RESOLUTION} px, got {r}")
    return r


def parse_beta(value: str) -> float:
    try:
        b = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be a number >= 0, got {value!r}") from None
    if not math.isfinite(b) or b < 0:
        raise argparse.ArgumentTypeError(f"beta must be a finite number >= 0, got {value!r}")
    return b


def parse_device(value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise argparse.ArgumentTypeError(f"device must be cpu, cuda, cuda:N or auto, got {value!r}")


def parse_architecture(value: str) -> dict:
    try:
        arch = json.loads(value)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--architecture is not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(arch, dict):
        raise argparse.ArgumentTypeError(f"--architecture must be a JSON object, got {value!r}")
    return arch


# ----------------------------------------------------------------------------------------------
# Option groups shared by the subcommands


#: the registry's names, written out without importing it (``basam --help`` stays torch-free);
#: tests/test_sam2.py checks that it names every registered model
MODEL_NAMES_HELP = ("registry name: sam_vit_b|l|h, mobile_sam, sam_hq_vit_b|l|h|tiny, basam_tiny, "
                    "sam2.1_hiera_tiny|small|base_plus|large, sam2_hiera_tiny|small|base_plus|large")


def add_model_options(parser, *, checkpoint_help: str = "weights file (.pth/.pt/.safetensors); default: download the official one once",
                      architecture: bool = True, hq_token_only: bool = True, hq_fusion: bool = False,
                      model_default: Optional[str] = DEFAULT_MODEL, model_help: Optional[str] = None):
    """``--model``, ``--checkpoint`` (and ``--architecture``, ``--hq-token-only``, ``--hq-fusion``)."""
    parser.add_argument("--model", default=model_default, metavar="NAME",
                        help=model_help or MODEL_NAMES_HELP + " (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="PATH", help=checkpoint_help)
    if hq_token_only:
        parser.add_argument("--hq-token-only", action="store_true", default=None,
                            help="HQ-SAM models: the mask from the HQ token alone")
    if hq_fusion:
        parser.add_argument("--hq-fusion", choices=HQ_FUSIONS, default=None,
                            help="HQ-SAM: how the HQ token's mask is used (default: what the checkpoint records, else add)")
    if architecture:
        parser.add_argument("--architecture", metavar="JSON", type=parse_architecture, default=None,
                            help="(testing) override the architecture, e.g. '{\"embed_dim\": 64, \"depth\": 4}'")
    return parser


def add_attention_options(parser, *, attention: bool = True, attention_default: Optional[str] = None,
                          attention_help: Optional[str] = None, nsf_options: bool = False):
    """``--attention PRESET``, ``--beta``, ``--dist`` (and ``--nsf-count``, ``--decoder-nsf``)."""
    if attention:
        parser.add_argument("--attention", choices=tuple(PRESETS), default=attention_default,
                            help=attention_help or "attention preset: vanilla (SAM), nsf (new scaling factor), "
                                                   "basam (NSF + bias-mode mask); default: %(default)s")
    parser.add_argument("--beta", metavar="B", type=parse_beta, default=None,
                        help="BA-SAM slope scale (default 1.0; only used with --attention basam)")
    parser.add_argument("--dist", choices=DISTANCES, default=None,
                        help="BA-SAM token distance (default manhattan; only used with --attention basam)")
    if nsf_options:
        parser.add_argument("--nsf-count", choices=NSF_COUNTS, default=None, help="how NSF counts N (default row)")
        parser.add_argument("--decoder-nsf", action="store_true", help="also apply NSF to the decoder's cross-attention")
    return parser


def parse_max_memory(value: str) -> Optional[int]:
    """``8G``, ``512M``, ``1.5GiB``, bytes, or ``auto`` (None: what the device has free)."""
    from ..memory import parse_memory  # torch-free

    try:
        return parse_memory(value)
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_device_options(parser, *, max_memory: bool = False):
    """``--device`` (cpu, cuda, cuda:N, auto) and, with ``max_memory``, ``--max-memory``."""
    parser.add_argument("--device", metavar="DEVICE", type=parse_device, default="auto",
                        help="cpu, cuda, cuda:N or auto (cuda if available; default)")
    if max_memory:
        parser.add_argument("--max-memory", metavar="SIZE", type=parse_max_memory, default=None,
                            help="refuse, before loading the model, an encoding estimated to need more memory than this "
                                 "(8G, 512M, ...; default auto: what the device has free)")
    return parser


# ----------------------------------------------------------------------------------------------
# Checks that need the library (imported lazily)


def resolve_device(name: str) -> str:
    """``auto`` -> cuda if available, else cpu; a CUDA device that is not there is an InputError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if ":" in name and int(name.split(":")[1]) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    return name


def check_architecture(name: str, arch: Optional[dict]) -> Optional[dict]:
    """Validate ``--architecture`` keys against the model's spec; JSON lists become tuples."""
    if not arch:
        return None
    from ..models.registry import DecoderConfig, get_spec

    spec = get_spec(name)
    encoder_fields = {f.name for f in dataclasses.fields(spec.encoder)}
    allowed = encoder_fields | {"img_size", "decoder", "hq"}
    bad = sorted(set(arch) - allowed)
    if bad:
        raise InputError(
            f"--architecture: unknown field(s) {', '.join(bad)} for {name}; allowed: {', '.join(sorted(allowed))}"
        )
    out: dict = {}
    for key, val in arch.items():
        if key == "decoder":
            if not isinstance(val, dict):
                raise InputError("--architecture: 'decoder' must be a JSON object")
            dec_fields = {f.name for f in dataclasses.fields(DecoderConfig)}
            bad = sorted(set(val) - dec_fields)
            if bad:
                raise InputError(f"--architecture: unknown decoder field(s) {', '.join(bad)}")
            val = DecoderConfig(**val)
        elif isinstance(val, list):
            val = tuple(val)
        out[key] = val
    return out


def out_of_memory_message(exc: BaseException, device: Optional[str] = None) -> str:
    """One line of advice that fits the case: on the CPU, never "try --device cpu"."""
    on_gpu = type(exc).__name__ == "OutOfMemoryError" or (device or "").startswith("cuda")
    hint = "try a lower --resolution or --device cpu" if on_gpu else "try a lower --resolution (or a machine with more memory)"
    return f"out of memory ({type(exc).__name__}); {hint}"


#: extra -> the modules it installs (import names) and what needs them
EXTRAS = {
    "eval": ("py_sod_metrics", "pycocotools", "scipy", "matplotlib"),
    "train": ("yaml", "tensorboard", "py_sod_metrics", "scipy"),
    "amg": ("pycocotools", "scipy"),  # RLE, small-region removal
    "onnx": ("onnx", "onnxruntime"),
    "app": ("starlette", "uvicorn", "multipart", "pycocotools"),  # + [amg] for "segment everything"
}


#: import name -> the name pip installs it by, where they differ
DISTRIBUTIONS = {"py_sod_metrics": "pysodmetrics", "yaml": "pyyaml", "multipart": "python-multipart"}


def require_extra(extra: str, command: str) -> None:
    """Raise a one-line :class:`MissingExtraError` if a module of ``extra`` cannot be imported."""
    missing = []
    for module in EXTRAS[extra]:
        if module in sys.modules:
            if sys.modules[module] is None:  # blocked (tests) or failed before
                missing.append(module)
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    if missing:
        names = ", ".join(DISTRIBUTIONS.get(m, m) for m in missing)
        raise MissingExtraError(
            f"basam {command} needs the [{extra}] extra ({names} not installed): pip install 'basam[{extra}]'"
        )
