"""Training data: several datasets mixed by weight, joint augmentation, prompts from the mask.

The sample stream
-----------------
All training datasets together form one infinite stream of *positions* p = 0, 1, 2, ...
Position p lies in virtual epoch ``e = p // E`` (``E`` = the total number of training samples)
at offset ``p % E``. Each epoch's plan is drawn from ``(seed, e)`` alone: for every offset a
dataset, with probability proportional to its weight, and within each dataset the samples in a
fresh random permutation (cycled when a small dataset is drawn more often than it has samples).

Optimiser step s consumes the global positions ``[s*G, (s+1)*G)``, ``G = world * batch * accum``;
micro-batch m of rank r takes ``b`` consecutive positions at ``s*G + m*world*b + r*b``. So K
ranks with batch b see exactly the samples one process with batch K*b sees, a resumed run
continues at position ``step*G``, and nothing depends on worker or rank state.

Each sample's randomness (crop, flip, prompt, box noise) is seeded from ``(seed, p)``, and p
determines the epoch: the same position gives the same sample on any rank, in any worker, in
any run.

Augmentation
------------
Two framings (``--frame``), each applied in one call to the image (``tv_tensors.Image``,
bilinear, antialiased) and the mask (``tv_tensors.Mask``, nearest), so the two never drift:

* ``square``: ``RandomResizedCrop(R, scale, ratio)`` straight to R x R (the aspect ratio changes;
  nothing is padded) and ``RandomHorizontalFlip``.
* ``longest``: SAM's own frame, the one :class:`basam.Predictor` and ``basam evaluate`` feed the
  model: a crop of relative area in ``scale`` (aspect: the image's, times a factor in ``ratio``;
  ``scale`` 1,1 is the whole image), resized so that its longest side is R with its aspect kept,
  flipped, then padded at the bottom and right to R x R. The sample records its valid size
  (h, w), and the trainer zeroes the normalised pixels outside it, exactly as
  :meth:`basam.Sam.preprocess` pads. A model trained ``square`` never sees that padding or the
  true aspect ratio, and loses about 0.07 IoU when evaluated in SAM's frame (measured on
  basam_tiny v2, 150 DUTS-TE images).
 If the crop leaves the mask empty, the crop is redrawn (attempt k is seeded
from ``(seed, p, k)``); after 10 empty attempts the whole image is used; an image whose own
mask is empty (or that cannot be read) is replaced by the next sample of its dataset. All of
this is deterministic.

Copy-paste (``--copy-paste P``): with probability P a sample gets the object of another sample
(position drawn from ``(seed, p)``) cut along its mask, scaled by 0.4-1 (to fit), and pasted at a
random place inside the image part of the frame, as Ghiasi et al.'s copy-paste does for instance
segmentation: new object/background pairs from the same few thousand images. The target is then,
equally likely, the pasted object or what stays visible of the sample's own object (the pasted
one when less than a quarter of it remains). More compositions, same labels; nothing else changes.

Prompts (``--prompt``), from the augmented mask, in pixels of the R x R input:
``point`` one random foreground pixel (the paper's); ``points:K`` K random foreground pixels;
``box`` the tight box with Gaussian corner noise of std ``box_noise`` x the box side (SAM's);
``box+point`` a noisy box and one foreground pixel; ``mixed`` per sample one of
:data:`MIXED_KINDS`: one point (30 %), 2-5 points with negatives (20 %), a box (15 %), box + point
(15 %), or a refinement sample (20 %: a point or a box whose first prediction the trainer feeds
back as the mask input with a corrective point drawn from its error region, as SAM's
interactive training does; see :func:`corrective_point`). ``--point-interior P``: the one-point
prompts' pixel is, with probability P, drawn weighted by its squared distance from the boundary
(well inside the object, where people click) instead of uniformly.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..data.prompts import boundary_distance, tight_box
from ..errors import InputError

__all__ = [
    "DataArg",
    "parse_weighted_data_arg",
    "open_weighted",
    "MixturePlan",
    "rank_positions",
    "BatchPositions",
    "TrainSet",
    "collate",
    "sample_prompt",
    "corrective_point",
    "MIXED_KINDS",
    "FRAMES",
]

MAX_CROP_ATTEMPTS = 10
MIXED_MAX_POINTS = 5
#: ``--frame`` choices (see the module doc)
FRAMES = ("square", "longest")


@dataclass(frozen=True)
class DataArg:
    path: Path
    layout: Optional[str]
    weight: float
    text: str
    split: Optional[str] = None


def parse_weighted_data_arg(arg: str) -> DataArg:
    """``PATH[:LAYOUT][:split=train|test][@WEIGHT]``: the weight is what follows the last ``@``
    when it is a number; the split is :func:`basam.data.parse_data_spec`'s."""
    from ..data.datasets import parse_data_spec

    head, sep, tail = arg.rpartition("@")
    weight = 1.0
    spec = arg
    if sep and head:
        try:
            w = float(tail)
        except ValueError:
            w = None
        if w is not None:
            if not math.isfinite(w) or w <= 0:
                raise InputError(f"data weight must be a positive number, got {tail!r} in {arg!r}")
            weight, spec = w, head
    ds = parse_data_spec(spec)
    return DataArg(ds.path, ds.layout, weight, arg, ds.split)


def open_weighted(args: Sequence[str]) -> Tuple[list, List[float]]:
    """Open every ``--data`` argument; returns the datasets and each one's sampling weight.

    One argument can hold several datasets (a dis5k root holds its subsets): its weight is split
    among them in proportion to their sizes. Datasets with no samples are left out (with a
    warning); none left at all is an error. A ``:split=test`` part is refused: it is held out
    for evaluation, and training on it would void the evaluation.
    """
    from ..data.datasets import apply_split, open_datasets

    datasets, weights = [], []
    seen = set()
    for text in args:
        a = parse_weighted_data_arg(text)
        if a.split == "test":
            raise InputError(f"--data {text}: the test part of a split is held out for evaluation; train on :split=train")
        found = [d for d in (apply_split(x, a.split) for x in open_datasets(a.path, a.layout)) if len(d) > 0]
        if not found:
            raise InputError(f"--data {text}: no usable image/mask pairs")
        total = sum(len(d) for d in found)
        for d in found:
            key = (str(d.root), d.name)
            if key in seen:
                raise InputError(f"dataset {d.name} ({d.root}) is given twice")
            seen.add(key)
            datasets.append(d)
            weights.append(a.weight * len(d) / total)
    return datasets, weights


# ----------------------------------------------------------------------------------------------
# The sample stream


class MixturePlan:
    """Maps a global stream position to ``(dataset index, sample index)`` (see the module doc)."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per dataset is needed")
        if any(s <= 0 for s in sizes):
            raise ValueError("every dataset needs at least one sample")
        self.sizes = [int(s) for s in sizes]
        w = np.asarray(weights, dtype=np.float64)
        self.probs = w / w.sum()
        self.seed = int(seed)
        self.epoch_size = int(sum(self.sizes))
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def epoch_plan(self, epoch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(dataset index, sample index) for every offset of ``epoch``; cached (two epochs)."""
        plan = self._cache.get(epoch)
        if plan is not None:
            return plan
        E = self.epoch_size
        rng = np.random.default_rng(_entropy(self.seed, epoch, 0x5A3B1E))
        ds = rng.choice(len(self.sizes), size=E, p=self.probs) if len(self.sizes) > 1 else np.zeros(E, dtype=np.int64)
        idx = np.empty(E, dtype=np.int64)
        for d, n in enumerate(self.sizes):
            where = np.flatnonzero(ds == d)
            if where.size == 0:
                continue
            reps = -(-where.size // n)
            perm = np.concatenate([rng.permutation(n) for _ in range(reps)])[: where.size]
            idx[where] = perm
        plan = (ds.astype(np.int64), idx)
        if len(self._cache) >= 2:
            self._cache.pop(min(self._cache))
        self._cache[epoch] = plan
        return plan

    def locate(self, position: int) -> Tuple[int, int]:
        epoch, offset = divmod(int(position), self.epoch_size)
        ds, idx = self.epoch_plan(epoch)
        return int(ds[offset]), int(idx[offset])


def rank_positions(step: int, micro: int, *, world: int, rank: int, batch: int, accum: int) -> List[int]:
    """The stream positions of micro-batch ``micro`` of optimiser step ``step`` (0-based) on ``rank``."""
    global_batch = world * batch * accum
    start = step * global_batch + micro * world * batch + rank * batch
    return list(range(start, start + batch))


class BatchPositions(torch.utils.data.Sampler):
    """A batch sampler over stream positions: micro-batches of steps ``[start_step, end_step)``."""

    def __init__(self, start_step: int, end_step: int, *, world: int, rank: int, batch: int, accum: int) -> None:
        self.start_step, self.end_step = int(start_step), int(end_step)
        self.kw = dict(world=world, rank=rank, batch=batch, accum=accum)
        self.accum = accum

    def __iter__(self) -> Iterator[List[int]]:
        for s in range(self.start_step, self.end_step):
            for m in range(self.accum):
                yield rank_positions(s, m, **self.kw)

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step) * self.accum


# ----------------------------------------------------------------------------------------------
# Prompts


def _foreground(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


def _noisy_box(mask: np.ndarray, rng: np.random.Generator, box_noise: float) -> np.ndarray:
    """The tight box with Gaussian corner noise (std ``box_noise`` x the box side), clipped, (4,) float32."""
    h, w = mask.shape
    box = tight_box(mask)
    if box_noise > 0:
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float64)
        box = box + rng.normal(0.0, 1.0, 4) * box_noise * np.maximum(side, 1.0)
        box = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
    return box.astype(np.float32)


def _interior_pixel(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One foreground pixel drawn with probability proportional to its squared distance from the
    mask boundary (the image edge counts as boundary, as for the evaluation's ``center`` point):
    where people click, well inside the object rather than on its rim. (1, 2) float32 x, y."""
    flat = np.flatnonzero(mask)
    weight = boundary_distance(mask).ravel()[flat] ** 2
    pick = int(rng.choice(flat.size, p=weight / weight.sum()))
    row, col = divmod(int(flat[pick]), mask.shape[1])
    return np.array([[col, row]], dtype=np.float32)


def _pixels(flat: np.ndarray, k: int, rng: np.random.Generator, w: int) -> np.ndarray:
    """``k`` of the row-major pixel indices ``flat`` (without replacement where there are enough) as (k, 2) x, y."""
    pick = rng.choice(flat.size, size=k, replace=flat.size < k)
    rows, cols = np.divmod(flat[pick], w)
    return np.stack([cols, rows], axis=1).astype(np.float32)


def _negative_pool(mask: np.ndarray, valid: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Background pixels near the object (its tight box grown by a quarter of its side each way),
    where a user's negative click lands; all background if none lie there. Only pixels of the
    image itself: the top-left ``valid`` (h, w) part when the rest is padding."""
    h, w = mask.shape
    vh, vw = valid if valid is not None else (h, w)
    x0, y0, x1, y1 = tight_box(mask)
    gx, gy = 0.25 * (x1 - x0 + 1), 0.25 * (y1 - y0 + 1)
    near = np.zeros_like(mask)
    near[max(0, int(y0 - gy)): min(vh, int(y1 + gy) + 1), max(0, int(x0 - gx)): min(vw, int(x1 + gx) + 1)] = True
    pool = np.flatnonzero(near & ~mask)
    if pool.size:
        return pool
    inside = np.zeros_like(mask)
    inside[:vh, :vw] = True
    return np.flatnonzero(inside & ~mask)


def _points_prompt(mask: np.ndarray, k: int, rng: np.random.Generator, neg_prob: float,
                   valid: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``k`` points: the first positive, each further one negative with probability ``neg_prob``
    (a background pixel near the object) else positive; labels follow where each point lies."""
    w = mask.shape[1]
    fg = _foreground(mask)
    negative = rng.random(k) < neg_prob
    negative[0] = False
    bg = _negative_pool(mask, valid) if negative.any() else np.empty(0, dtype=np.int64)
    if bg.size == 0:
        negative[:] = False
    coords = np.empty((k, 2), dtype=np.float32)
    n_neg = int(negative.sum())
    coords[~negative] = _pixels(fg, k - n_neg, rng, w)
    if n_neg:
        coords[negative] = _pixels(bg, n_neg, rng, w)
    return coords, (~negative).astype(np.int64)


#: ``mixed``: each sample's kind, with these probabilities (seeded per sample). ``points`` are
#: 2-5 points, negatives among them; ``refine`` is a one-point or box prompt whose prediction is
#: fed back as the mask input with a corrective point (the trainer's second decoder pass).
MIXED_KINDS: Dict[str, float] = {"point": 0.3, "points": 0.2, "box": 0.15, "box+point": 0.15, "refine": 0.2}
#: ``mixed`` multi-point prompts: probability that a point after the first is a negative one.
MIXED_NEG_PROB = 0.3


def sample_prompt(mask: np.ndarray, kind: str, rng: np.random.Generator, box_noise: float = 0.0,
                  valid: Optional[Tuple[int, int]] = None, point_interior: float = 0.0) -> dict:
    """A training prompt from a non-empty (R, R) bool mask, in its pixel frame. ``valid``: the
    (h, w) top-left part that is image (the rest padding; negative clicks stay inside it).

    Kinds: ``point`` (one foreground pixel), ``points:K`` (K foreground pixels), ``box`` (the
    tight box with corner noise), ``box+point`` (a noisy box and one foreground pixel),
    ``refine`` (a ``point`` or ``box`` prompt, equally likely, marked for the refinement pass),
    ``mixed`` (one of :data:`MIXED_KINDS` with its probability). ``point_interior``: probability
    that the foreground pixel of a one-point prompt (``point``, ``box+point``, a point ``refine``)
    is drawn by :func:`_interior_pixel` instead of uniformly (0, the default, draws nothing extra
    from ``rng``: the prompts of a run without it are unchanged).

    Returns ``{"coords": (K, 2) float32 x, y or None, "labels": (K,) int64 (1 foreground, 0
    background) or None, "box": (4,) float32 x0, y0, x1, y1 or None, "kind": the kind drawn,
    "refine": bool, "refine_seed": int (seeds the corrective point)}``.
    """
    neg_prob = 0.0  # negatives only among mixed's multi-point prompts
    if kind == "mixed":
        names = list(MIXED_KINDS)
        kind = names[int(rng.choice(len(names), p=np.array([MIXED_KINDS[n] for n in names])))]
        if kind == "points":
            kind = f"points:{int(rng.integers(2, MIXED_MAX_POINTS + 1))}"
            neg_prob = MIXED_NEG_PROB
    out = {"coords": None, "labels": None, "box": None, "kind": kind, "refine": False, "refine_seed": 0}
    base = kind
    if kind == "refine":
        base = "point" if rng.random() < 0.5 else "box"
        out["refine"] = True
        out["refine_seed"] = int(rng.integers(0, 2**62))
    w = mask.shape[1]
    if base in ("box", "box+point"):
        out["box"] = _noisy_box(mask, rng, box_noise)
    if base in ("point", "box+point"):
        if point_interior > 0 and rng.random() < point_interior:
            out["coords"] = _interior_pixel(mask, rng)
        else:
            out["coords"] = _pixels(_foreground(mask), 1, rng, w)
        out["labels"] = np.ones(1, dtype=np.int64)
    elif base.startswith("points:"):
        out["coords"], out["labels"] = _points_prompt(mask, int(base.split(":")[1]), rng, neg_prob, valid)
    elif base != "box":
        raise ValueError(f"unknown prompt kind {kind!r}")
    return out


def corrective_point(pred: Tensor, gt: Tensor, seed: int) -> Tuple[Tensor, int]:
    """SAM's corrective click: a pixel drawn uniformly (seeded) from the error region of ``pred``
    (both (R, R) bool): label 1 where the prediction missed foreground, 0 where it spilled onto
    background. No error: a foreground pixel, label 1. Returns ((2,) float32 x, y, label)."""
    err = (pred != gt).flatten()
    where = torch.nonzero(err if bool(err.any()) else gt.flatten()).flatten().cpu()
    g = torch.Generator().manual_seed(int(seed))
    flat = int(where[int(torch.randint(where.numel(), (1,), generator=g))])
    row, col = divmod(flat, gt.shape[1])
    label = int(bool(gt[row, col]))
    return torch.tensor([col, row], dtype=torch.float32), label


# ----------------------------------------------------------------------------------------------
# The dataset of stream positions


def _entropy(*key: int) -> List[int]:
    """Integers (any sign) as non-negative entropy words for numpy's SeedSequence."""
    return [int(k) % 2**64 for k in key]


def _torch_seed(*key: int) -> int:
    return int(np.random.SeedSequence(_entropy(*key)).generate_state(1, np.uint64)[0]) & (2**63 - 1)


class TrainSet(torch.utils.data.Dataset):
    """``ts[p]`` is the augmented sample at stream position ``p`` (see the module doc)."""

    def __init__(self, datasets: Sequence, weights: Sequence[float], *, resolution: int, seed: int, prompt: str = "point",
                 crop_scale: Sequence[float] = (0.5, 1.0), crop_ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                 box_noise: float = 0.1, cache_dir: Optional[str] = None, cache_side: int = 0, color_jitter: float = 0.0,
                 frame: str = "square", copy_paste: float = 0.0, point_interior: float = 0.0) -> None:
        if frame not in FRAMES:
            raise InputError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        self.frame = frame
        self.datasets = list(datasets)
        self.cache_dir = cache_dir
        self.cache_side = int(cache_side)
        self._cache = None  # a DecodeCache, made lazily (in each DataLoader worker)
        self.plan = MixturePlan([len(d) for d in self.datasets], weights, seed)
        self.resolution = int(resolution)
        self.seed = int(seed)
        self.prompt = prompt
        self.crop_scale = tuple(float(x) for x in crop_scale)
        self.crop_ratio = tuple(float(x) for x in crop_ratio)
        self.hflip = float(hflip)
        self.color_jitter = float(color_jitter)
        if not 0.0 <= float(copy_paste) <= 1.0:
            raise InputError(f"copy_paste must be a probability in [0, 1], got {copy_paste}")
        self.copy_paste = float(copy_paste)
        self.box_noise = float(box_noise)
        if not 0.0 <= float(point_interior) <= 1.0:
            raise InputError(f"point_interior must be a probability in [0, 1], got {point_interior}")
        self.point_interior = float(point_interior)
        self._transforms = None

    def __len__(self) -> int:  # one epoch; positions beyond are valid too (the stream is infinite)
        return self.plan.epoch_size

    def _build_transforms(self):
        from torchvision.transforms import v2

        R = self.resolution
        # photometric jitter touches the image only (v2 passes Mask tensors through colour transforms)
        s = self.color_jitter
        jitter = [v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=min(0.5, s / 4))] if s > 0 else []
        crop = v2.Compose([v2.RandomResizedCrop((R, R), scale=self.crop_scale, ratio=self.crop_ratio, antialias=True),
                           v2.RandomHorizontalFlip(self.hflip), *jitter])
        whole = v2.Compose([v2.Resize((R, R), antialias=True), v2.RandomHorizontalFlip(self.hflip), *jitter])
        return crop, whole

    def augment(self, image: np.ndarray, mask: np.ndarray, position: int, attempt: int) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """One joint augmentation of (H, W, 3) uint8 + (H, W) bool -> (3, R, R) uint8 + (R, R) bool
        + the valid (h, w) top-left part (R, R unless ``frame`` is ``longest``; the rest is zeros).

        Seeded from ``(seed, position, attempt)``; attempt ``MAX_CROP_ATTEMPTS`` is the whole image.
        """
        from torchvision import tv_tensors

        if self._transforms is None:
            self._transforms = self._build_transforms()
        crop, whole = self._transforms
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)).to(torch.uint8)[None])
        R = self.resolution
        valid = (R, R)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_torch_seed(self.seed, position, attempt))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if self.frame == "longest":
                    img, msk, valid = self._letterbox(img, msk, position, attempt)
                else:
                    img, msk = (crop if attempt < MAX_CROP_ATTEMPTS else whole)(img, msk)
        return img.as_subclass(torch.Tensor).contiguous(), msk.as_subclass(torch.Tensor)[0].bool().contiguous(), valid

    def crop_box(self, h: int, w: int, position: int, attempt: int) -> Tuple[int, int, int, int]:
        """``longest`` frame: the (top, left, height, width) crop of an h x w image for ``position``.

        Relative area uniform in ``crop_scale``, aspect the image's times a log-uniform factor in
        ``crop_ratio``; ``crop_scale`` 1,1 (or attempt ``MAX_CROP_ATTEMPTS``) is the whole image.
        """
        lo, hi = self.crop_scale
        if attempt >= MAX_CROP_ATTEMPTS or lo >= 1.0:
            return 0, 0, h, w
        rng = np.random.default_rng(_entropy(self.seed, position, attempt, 0xC0B))
        area = rng.uniform(lo, hi)
        r_lo, r_hi = self.crop_ratio
        factor = math.exp(rng.uniform(math.log(r_lo), math.log(r_hi)))
        ch = int(round(h * math.sqrt(area / factor)))
        cw = int(round(w * math.sqrt(area * factor)))
        ch, cw = min(max(ch, 1), h), min(max(cw, 1), w)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        return top, left, ch, cw

    def _letterbox(self, img, msk, position: int, attempt: int):
        """``longest`` frame (see the module doc): crop, resize to longest side R, flip, jitter, pad."""
        from torchvision.transforms.v2 import functional as TF

        R = self.resolution
        h, w = img.shape[-2:]
        top, left, ch, cw = self.crop_box(h, w, position, attempt)
        s = R / max(ch, cw)
        nh, nw = max(1, min(R, int(ch * s + 0.5))), max(1, min(R, int(cw * s + 0.5)))
        img = TF.resized_crop(img, top, left, ch, cw, [nh, nw], antialias=True)
        msk = TF.resized_crop(msk, top, left, ch, cw, [nh, nw])
        if torch.rand(()) < self.hflip:
            img, msk = TF.horizontal_flip(img), TF.horizontal_flip(msk)
        if self.color_jitter > 0:
            from torchvision.transforms import v2

            j = self.color_jitter
            img = v2.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4))(img)
        img = TF.pad(img, [0, 0, R - nw, R - nh], fill=0)
        msk = TF.pad(msk, [0, 0, R - nw, R - nh], fill=0)
        return img, msk, (nh, nw)

    def load(self, d: int, j: int) -> Tuple[np.ndarray, np.ndarray]:
        """Sample ``j`` of dataset ``d``: (H, W, 3) uint8 + (H, W) bool, decoded and shrunk to
        ``cache_side`` (:func:`basam.train.cache.prepare`), through the decode cache when there is one."""
        from .cache import DecodeCache, prepare

        if self.cache_dir is None:
            return prepare(self.datasets[d], j, self.cache_side)
        if self._cache is None:
            self._cache = DecodeCache(self.cache_dir, self.cache_side)
        return self._cache.load(self.datasets[d], j)

    def _augmented(self, position: int) -> Tuple[Tensor, Tensor, Tuple[int, int], int, int]:
        """Position ``position``'s augmented (3, R, R) uint8 image, non-empty (R, R) bool mask,
        valid (h, w), dataset and sample index (before any copy-paste and prompt)."""
        d, i = self.plan.locate(position)
        ds = self.datasets[d]
        n = len(ds)
        for shift in range(n):
            j = (i + shift) % n
            try:
                image, mask = self.load(d, j)
            except InputError as e:
                warnings.warn(f"skipping {ds.name}/{ds[j].name}: {e}")
                continue
            if not mask.any():
                continue
            for attempt in range(MAX_CROP_ATTEMPTS + 1):
                img, msk, valid = self.augment(image, mask, position, attempt)
                if bool(msk.any()):
                    return img, msk, valid, d, j
        raise InputError(f"dataset {ds.name} has no sample with a non-empty mask")

    def paste(self, img: Tensor, msk: Tensor, valid: Tuple[int, int], position: int) -> Tuple[Tensor, Tensor]:
        """Copy-paste (see the module doc): (3, R, R) uint8 + (R, R) bool -> the composite image and
        its target mask (the pasted object, or the sample's own object where still visible)."""
        from torchvision.transforms.v2 import functional as TF

        rng = np.random.default_rng(_entropy(self.seed, position, 0xC09A57E))
        src_img, src_msk, _, _, _ = self._augmented(int(rng.integers(0, 2**62)))
        x0, y0, x1, y1 = (int(v) for v in tight_box(src_msk.numpy()))
        x1, y1 = x1 + 1, y1 + 1  # inclusive -> exclusive
        vh, vw = valid
        bh, bw = y1 - y0, x1 - x0
        scale = rng.uniform(0.4, 1.0) * min(1.0, vh / bh, vw / bw)
        nh, nw = max(1, min(vh, int(round(bh * scale)))), max(1, min(vw, int(round(bw * scale))))
        obj = TF.resize(src_img[:, y0:y1, x0:x1], [nh, nw], antialias=True)
        alpha = TF.resize(src_msk[None, y0:y1, x0:x1].to(torch.uint8), [nh, nw],
                          interpolation=TF.InterpolationMode.NEAREST)[0].bool()
        if not bool(alpha.any()):
            return img, msk
        top, left = int(rng.integers(0, vh - nh + 1)), int(rng.integers(0, vw - nw + 1))
        pasted = torch.zeros_like(msk)
        pasted[top:top + nh, left:left + nw] = alpha
        out = img.clone()
        out[:, pasted] = obj[:, alpha]
        own = msk & ~pasted
        if rng.random() < 0.5 and int(own.sum()) >= 0.25 * int(msk.sum()):
            return out, own
        return out, pasted

    def __getitem__(self, position: int) -> dict:
        img, msk, valid, d, j = self._augmented(position)
        if self.copy_paste > 0 and np.random.default_rng(_entropy(self.seed, position, 0xC09A)).random() < self.copy_paste:
            img, msk = self.paste(img, msk, valid, position)
        rng = np.random.default_rng(_entropy(self.seed, position, 0x9A0E7))
        prompt = sample_prompt(msk.numpy(), self.prompt, rng, self.box_noise, valid, self.point_interior)
        return {"image": img, "mask": msk, "prompt": prompt, "dataset": d, "index": j, "position": int(position),
                "valid": valid}


def collate(samples: List[dict]) -> dict:
    """Stack images (B, 3, R, R) uint8, masks (B, R, R) bool and valid sizes (B, 2) int64 (h, w:
    the top-left part that is image, the rest padding); prompts stay a list."""
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "mask": torch.stack([s["mask"] for s in samples]),
        "valid": torch.tensor([list(s.get("valid", s["mask"].shape)) for s in samples], dtype=torch.int64),
        "prompts": [s["prompt"] for s in samples],
        "dataset": torch.tensor([s["dataset"] for s in samples]),
        "index": torch.tensor([s["index"] for s in samples]),
        "position": torch.tensor([s["position"] for s in samples]),
    }
