"""``basam train`` settings: one table of options, read from YAML and from the command line.

Every option is a key of a YAML file (``--config FILE``, or ``--recipe NAME`` for a file shipped in
``basam/train/recipes/``) and a command-line flag (``batch_size`` <-> ``--batch-size``). Precedence,
lowest first: built-in defaults, ``--recipe``, ``--config``, flags. A repeatable flag (``--data``)
given on the command line replaces the YAML list; it does not extend it. A YAML key that is not an
option is an error (one line naming it), as is a value of the wrong type.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..attention_config import DISTANCES, PRESETS
from ..constants import HQ_FUSIONS
from ..errors import InputError

__all__ = [
    "TrainConfig",
    "OPTIONS",
    "POLICY_PARTS",
    "PROMPT_HELP",
    "RUN_DEFINING",
    "add_options",
    "load_yaml",
    "recipe_path",
    "list_recipes",
    "resolve_config",
    "parse_prompt",
]

ATTENTION_PRESETS = tuple(PRESETS)
ATTENTION_DISTANCES = DISTANCES
POLICY_PARTS = ("slopes", "decoder", "hq", "full")
PROMPT_HELP = ("point (one random foreground pixel, default), box, box+point, points:K (K random foreground pixels) or mixed "
               "(points with negatives, boxes, box+point and previous-mask refinement)")


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``basam train --help`` for each one's meaning)."""

    # model
    model: str = "mobile_sam"
    checkpoint: Optional[str] = None
    architecture: Optional[dict] = None
    attention: str = "basam"
    beta: float = 0.1
    dist: str = "manhattan"
    nsf_count: str = "row"
    decoder_nsf: bool = False
    hq_fusion: Optional[str] = None
    train: str = "slopes"
    # data
    data: List[str] = field(default_factory=list)
    val_data: List[str] = field(default_factory=list)
    resolution: int = 1024
    frame: str = "square"
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.0
    copy_paste: float = 0.0
    prompt: str = "point"
    box_noise: float = 0.1
    point_single_weight: float = 0.0
    point_interior: float = 0.0
    cache_dir: Optional[str] = None
    cache_side: int = 0
    num_workers: int = 2
    seed: int = 0
    # optimisation
    steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup: int = 100
    weight_decay: float = 0.01
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    precision: str = "auto"
    # validation, logging, checkpoints
    eval_every: int = 500
    val_max_images: Optional[int] = None
    val_seed: int = 0
    val_prompt: str = "point"
    val_single: bool = False
    log_every: int = 10
    save_every: int = 500
    keep: int = 3
    out: Optional[str] = None
    resume: bool = False
    stop_at: Optional[int] = None
    device: str = "auto"
    tensorboard: bool = True
    quiet: bool = False

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


#: Settings that define what a run computes: a ``--resume`` must not change them (the loss curve
#: would no longer be the one of an uninterrupted run). ``steps`` may change (a longer run), as
#: may everything about validation, logging, saving and the machine.
RUN_DEFINING = (
    "model", "checkpoint", "architecture", "attention", "beta", "dist", "nsf_count", "decoder_nsf", "hq_fusion", "train",
    "data", "resolution", "frame", "crop_scale", "crop_ratio", "hflip", "color_jitter", "copy_paste", "prompt", "box_noise", "point_single_weight", "point_interior", "cache_side", "seed", "batch_size", "grad_accum",
    "lr", "min_lr", "warmup", "weight_decay", "betas", "grad_clip", "bce_weight", "dice_weight", "iou_weight", "precision",
)


# ----------------------------------------------------------------------------------------------
# Value parsers: each takes a command-line string or a YAML value and returns the typed value or
# raises ValueError with a short reason.


def _int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError("expected an integer")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise ValueError("expected an integer")


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("expected a number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not math.isfinite(f):
        raise ValueError("expected a finite number")
    return f


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError("expected true or false")


def _str(v: Any) -> str:
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return str(v)
    raise ValueError("expected a string")


def _opt(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def p(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null")):
            return None
        return parse(v)

    return p


def _positive(parse: Callable[[Any], Any], minimum: float = 1, what: str = "positive") -> Callable[[Any], Any]:
    def p(v: Any) -> Any:
        x = parse(v)
        if x < minimum:
            raise ValueError(f"must be {what}, got {x}")
        return x

    return p


def _nonneg(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return _positive(parse, 0, ">= 0")


def _probability(v: Any) -> float:
    x = _float(v)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"must be a probability in [0, 1], got {x}")
    return x


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def p(v: Any) -> str:
        s = _str(v)
        if s not in choices:
            raise ValueError(f"choose one of {', '.join(choices)}, got {s!r}")
        return s

    return p


def _float_list(n: int) -> Callable[[Any], List[float]]:
    def p(v: Any) -> List[float]:
        items = v.split(",") if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or len(items) != n:
            raise ValueError(f"expected {n} comma-separated numbers")
        return [_float(x) for x in items]

    return p


def _str_list(v: Any) -> List[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, (list, tuple)):
        return [_str(x) for x in v]
    raise ValueError("expected a string or a list of strings")


def _architecture(v: Any) -> Optional[dict]:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg} at char {e.pos})") from None
    if not isinstance(v, dict):
        raise ValueError("expected a JSON object / mapping")
    return v


def parse_prompt(v: Any) -> str:
    """``point``, ``box``, ``box+point``, ``mixed`` or ``points:K`` with K >= 1."""
    s = _str(v).strip()
    if s in ("point", "box", "box+point", "mixed"):
        return s
    if s.startswith("points:"):
        try:
            k = int(s[len("points:"):])
        except ValueError:
            k = 0
        if k >= 1:
            return s
    raise ValueError(f"expected {PROMPT_HELP}, got {s!r}")


def parse_policy(v: Any) -> str:
    """One policy or several joined by ``+`` (``decoder+slopes``)."""
    s = _str(v).strip()
    parts = [p.strip() for p in s.split("+")]
    bad = [p for p in parts if p not in POLICY_PARTS]
    if bad or not parts:
        raise ValueError(f"expected one of {', '.join(POLICY_PARTS)} (or several joined by +), got {s!r}")
    return "+".join(dict.fromkeys(parts))


def _resolution(v: Any) -> int:
    r = _int(v)
    if r < 64:
        raise ValueError(f"must be at least 64 px, got {r}")
    return r


def _device(v: Any) -> str:
    s = _str(v).strip().lower()
    if s in ("auto", "cpu", "cuda") or (s.startswith("cuda:") and s[5:].isdigit()):
        return s
    raise ValueError(f"expected cpu, cuda, cuda:N or auto, got {s!r}")


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    help: str
    metavar: Optional[str] = None
    group: str = "model"
    kind: str = "value"  # value | bool | append


OPTIONS: Tuple[Option, ...] = (
    # model
    Option("model", _str, "registry name: sam_vit_b|l|h, mobile_sam, sam_hq_vit_b|l|h|tiny, ... (default: mobile_sam)", "NAME"),
    Option("checkpoint", _opt(_str), "initial weights (.pth/.pt/.safetensors); none = random initialisation (from scratch)", "PATH"),
    Option("architecture", _architecture, "override the architecture, e.g. '{\"embed_dim\": 64, \"depth\": 4, \"img_size\": 256}'", "JSON"),
    Option("attention", _choice(ATTENTION_PRESETS), "attention preset: vanilla, nsf or basam (default: basam)", "PRESET"),
    Option("beta", _nonneg(_float), "BA-SAM slope scale the slopes start from (default 0.1, the paper's fine-tuning start; "
           "slopes stored in a basam .safetensors --checkpoint win)", "B"),
    Option("dist", _choice(ATTENTION_DISTANCES), "BA-SAM token distance: manhattan (default), euclidean, flat", "DIST"),
    Option("nsf_count", _choice(("row", "image")), "how NSF counts N: row (default) or image", "HOW"),
    Option("decoder_nsf", _bool, "also apply NSF to the mask decoder's cross-attention", kind="bool"),
    Option("hq_fusion", _opt(_choice(HQ_FUSIONS)), "HQ-SAM models: independent, add (default) or product; saved with the weights", "MODE"),
    Option("train", parse_policy, "what is trained: slopes (the BA-SAM slopes only, default), decoder (mask_decoder.*), "
           "hq (HQ-SAM's own modules), full (everything), or a + of them (decoder+slopes)", "POLICY"),
    # data
    Option("data", _str_list, "training set PATH[:LAYOUT][:split=train][@WEIGHT]; repeatable; datasets are drawn with probability "
           "proportional to WEIGHT (default 1 each); :split=train is basam.data's fixed seeded 80 %% part (the test part is refused)",
           "PATH[:LAYOUT][@W]", "data", "append"),
    Option("val_data", _str_list, "validation set PATH[:LAYOUT][:split=test]; repeatable; metrics reported per dataset",
           "PATH[:LAYOUT]", "data", "append"),
    Option("resolution", _resolution, "training resolution R: the crop is resized to R x R (default 1024)", "R", "data"),
    Option("frame", _choice(("square", "longest")), "square: the crop is resized to R x R (default); longest: SAM's frame, "
           "the crop's longest side resized to R with its aspect kept and zero padding to R x R, as the predictor and "
           "basam evaluate feed the model", "FRAME", "data"),
    Option("crop_scale", _float_list(2), "crop area range, a fraction of the image (default 0.5,1.0; 1,1: the whole image)", "LO,HI", "data"),
    Option("crop_ratio", _float_list(2), "crop aspect range: w/h with --frame square, a factor on the image's own w/h with "
           "--frame longest (default 0.75,1.333)", "LO,HI", "data"),
    Option("hflip", _float, "probability of a horizontal flip (default 0.5)", "P", "data"),
    Option("color_jitter", _nonneg(_float), "photometric augmentation of the image (not the mask): brightness, contrast "
           "and saturation by up to this fraction, hue by a quarter of it (default 0: off)", "S", "data"),
    Option("copy_paste", _probability, "probability that a sample gets another sample's object pasted in (cut along its "
           "mask, scaled 0.4-1) and one of the two objects as its target (default 0: off)", "P", "data"),
    Option("prompt", parse_prompt, f"training prompts sampled from the augmented mask: {PROMPT_HELP}", "KIND", "data"),
    Option("box_noise", _nonneg(_float), "box prompts: std of the corner noise as a fraction of the box side (default 0.1)", "F", "data"),
    Option("point_single_weight", _nonneg(_float), "one-point prompts: weight of the single-mask output's loss beside the best "
           "multimask candidate's (default 0: SAM's rule, the single-mask token learns from boxes and several points only)", "W", "data"),
    Option("point_interior", _probability, "one-point prompts: probability that the point is drawn weighted by its squared "
           "distance from the mask boundary (well inside the object, where people click) instead of uniformly (default 0)", "P", "data"),
    Option("cache_dir", _opt(_str), "decode each image once into this folder (uint8 .npz, keyed by path, size and mtime) "
           "instead of decoding JPEGs every step", "DIR", "data"),
    Option("cache_side", _nonneg(_int), "shrink images to this longest side once, before augmentation (0: keep; default 0)", "PX", "data"),
    Option("num_workers", _nonneg(_int), "DataLoader worker processes per rank (default 2)", "N", "data"),
    Option("seed", _int, "seed of the initialisation, sampling and augmentation (default 0)", "N", "data"),
    # optimisation
    Option("steps", _positive(_int), "optimiser steps in total (default 1000)", "N", "optimisation"),
    Option("batch_size", _positive(_int), "samples per process per micro-batch (default 4)", "B", "optimisation"),
    Option("grad_accum", _positive(_int), "micro-batches accumulated per step (default 1)", "N", "optimisation"),
    Option("lr", _positive(_float, 0.0, "> 0"), "peak AdamW learning rate (default 1e-4)", "LR", "optimisation"),
    Option("min_lr", _nonneg(_float), "learning rate the cosine decays to (default 1e-6)", "LR", "optimisation"),
    Option("warmup", _nonneg(_int), "linear warm-up steps (default 100)", "N", "optimisation"),
    Option("weight_decay", _nonneg(_float), "AdamW weight decay on matrices (default 0.01; biases, norms, slopes: 0)", "WD", "optimisation"),
    Option("betas", _float_list(2), "AdamW betas (default 0.9,0.999)", "B1,B2", "optimisation"),
    Option("grad_clip", _nonneg(_float), "clip the gradient norm to this (0 = off; default 1.0)", "NORM", "optimisation"),
    Option("bce_weight", _nonneg(_float), "weight of the BCE mask loss (default 1)", "W", "optimisation"),
    Option("dice_weight", _nonneg(_float), "weight of the Dice mask loss (default 1)", "W", "optimisation"),
    Option("iou_weight", _nonneg(_float), "weight of the IoU-head MSE loss (default 1)", "W", "optimisation"),
    Option("precision", _choice(("auto", "fp32", "bf16")), "auto: bf16 autocast on CUDA, fp32 on CPU (default)", "P", "optimisation"),
    # run
    Option("eval_every", _nonneg(_int), "validate every N steps (0: only at the end; default 500)", "N", "run"),
    Option("val_max_images", _opt(_positive(_int)), "validate on at most N images per dataset", "N", "run"),
    Option("val_seed", _int, "seed of the validation point prompts (default 0)", "N", "run"),
    Option("val_prompt", _choice(("point", "center")), "validation prompt: point (a seeded random foreground pixel, default) "
           "or center (the pixel farthest from the boundary)", "KIND", "run"),
    Option("val_single", _bool, "also validate the single-mask output (logged as val_single)", kind="bool", group="run"),
    Option("log_every", _positive(_int), "log the training loss every N steps (default 10)", "N", "run"),
    Option("save_every", _nonneg(_int), "checkpoint every N steps (0: only at the end; default 500)", "N", "run"),
    Option("keep", _positive(_int), "keep the last N checkpoints (default 3)", "N", "run"),
    Option("out", _opt(_str), "output folder: log.jsonl, tensorboard/, checkpoints/ (required)", "DIR", "run"),
    Option("resume", _bool, "continue the run in --out from checkpoints/latest (data folders compared as resolved paths); "
                            "with no checkpoint there, say so once on stderr and start from step 0", kind="bool", group="run"),
    Option("stop_at", _opt(_positive(_int)), "stop (with a checkpoint) after this step; the schedule still spans --steps", "N", "run"),
    Option("device", _device, "cpu, cuda, cuda:N or auto (default)", "DEVICE", "run"),
    Option("tensorboard", _bool, "write TensorBoard events to OUT/tensorboard (default on)", kind="bool", group="run"),
    Option("quiet", _bool, "no progress bar", kind="bool", group="run"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
assert set(_BY_NAME) == {f.name for f in fields(TrainConfig)}, "OPTIONS and TrainConfig disagree"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_type(opt: Option) -> Callable[[str], Any]:
    def convert(value: str) -> Any:
        try:
            return opt.parse(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{_flag(opt.name)}: {e}") from None

    convert.__name__ = opt.name  # argparse names the type in some messages
    return convert


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--recipe`` and one flag per option (defaults suppressed, so that the
    namespace holds exactly the flags given)."""
    g = parser.add_argument_group("configuration")
    g.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS, help="YAML file of options (keys as below, _ or -)")
    g.add_argument("--recipe", metavar="NAME", default=argparse.SUPPRESS,
                   help=f"a shipped recipe (basam/train/recipes/NAME.yaml; have: {', '.join(list_recipes()) or 'none'})")
    groups: Dict[str, Any] = {}
    for opt in OPTIONS:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        grp = groups[opt.group]
        if opt.kind == "bool":
            short = ("-q",) if opt.name == "quiet" else ()
            grp.add_argument(_flag(opt.name), *short, dest=opt.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=opt.help)
        elif opt.kind == "append":
            grp.add_argument(_flag(opt.name), dest=opt.name, action="append", metavar=opt.metavar, default=argparse.SUPPRESS, help=opt.help)
        else:
            grp.add_argument(_flag(opt.name), dest=opt.name, type=_argparse_type(opt), metavar=opt.metavar, default=argparse.SUPPRESS,
                             help=opt.help)


# ----------------------------------------------------------------------------------------------
# YAML


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"


def list_recipes() -> List[str]:
    d = recipes_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def recipe_path(name: str) -> Path:
    p = recipes_dir() / f"{name}.yaml"
    if "/" in name or "\\" in name or not p.is_file():
        raise InputError(f"unknown recipe {name!r}; shipped recipes: {', '.join(list_recipes()) or 'none'}")
    return p


def load_yaml(path: "str | Path") -> Dict[str, Any]:
    """Read a YAML file of options; keys are checked and values typed."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"config file {p} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InputError(f"config file {p} must be a mapping of option: value, got {type(raw).__name__}")
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        opt = _BY_NAME.get(name)
        if opt is None:
            raise InputError(f"unknown key {key!r} in {p}; known keys: {', '.join(o.name for o in OPTIONS)}")
        out[name] = _typed(opt, value, f"key {key!r} in {p}")
    return out


def _typed(opt: Option, value: Any, where: str) -> Any:
    try:
        return opt.parse(value)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None


def resolve_config(explicit: Dict[str, Any], config: Optional[str] = None, recipe: Optional[str] = None) -> TrainConfig:
    """Defaults <- recipe <- config file <- ``explicit`` (the flags given), then checked."""
    values: Dict[str, Any] = {}
    if recipe is not None:
        values.update(load_yaml(recipe_path(recipe)))
    if config is not None:
        values.update(load_yaml(config))
    for name, value in explicit.items():
        opt = _BY_NAME.get(name)
        if opt is None:
            raise InputError(f"unknown option {name!r}")
        # Values from argparse are already typed, except the append lists (strings).
        values[name] = _typed(opt, value, _flag(name)) if opt.kind == "append" else value
    cfg = TrainConfig(**values)
    check_config(cfg)
    return cfg


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    explicit = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    return resolve_config(explicit, getattr(args, "config", None), getattr(args, "recipe", None))


def check_config(cfg: TrainConfig) -> None:
    """Cross-field checks that need no file and no model."""
    if not cfg.data:
        raise InputError("no training data: pass --data PATH[:LAYOUT][@WEIGHT] (or data: in the YAML)")
    if not cfg.out:
        raise InputError("no output folder: pass --out DIR (or out: in the YAML)")
    lo, hi = cfg.crop_scale
    if not (0 < lo <= hi <= 1):
        raise InputError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {lo},{hi}")
    lo, hi = cfg.crop_ratio
    if not (0 < lo <= hi):
        raise InputError(f"crop_ratio must satisfy 0 < lo <= hi, got {lo},{hi}")
    if not 0 <= cfg.hflip <= 1:
        raise InputError(f"hflip must be a probability in [0, 1], got {cfg.hflip}")
    if cfg.min_lr > cfg.lr:
        raise InputError(f"min_lr ({cfg.min_lr}) must not exceed lr ({cfg.lr})")
    b1, b2 = cfg.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise InputError(f"betas must be in [0, 1), got {b1},{b2}")
    if cfg.stop_at is not None and cfg.stop_at > cfg.steps:
        raise InputError(f"stop_at ({cfg.stop_at}) is past steps ({cfg.steps})")
