"""Paired bootstrap intervals for per-image differences between two settings of the study.

Two settings (say ``basam`` and ``vanilla`` at 2x the training grid) scored on the same images with
the same prompts give paired values ``a[i]``, ``b[i]``. The quantity reported is the mean
difference ``mean(a - b)``; its interval comes from resampling *images* with replacement (the
pairs stay together, so what the images share cancels), ``n`` times, and taking the percentile
interval of the resampled means. numpy only, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .errors import InputError

__all__ = ["BootstrapResult", "paired_bootstrap"]

ArrayLike = Union[Sequence[float], np.ndarray]

#: Resamples drawn per block: bounds the (block, n_images) index matrix's memory.
_BLOCK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """``mean`` = mean(a - b) over the images; ``low``/``high`` = the percentile interval at
    level ``ci`` of the mean over ``n`` paired resamples; ``n_images`` pairs were used."""

    mean: float
    low: float
    high: float
    ci: float
    n: int
    n_images: int

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0 (a difference the data support)."""
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "ci": self.ci, "n": self.n, "n_images": self.n_images}


def _vector(x: ArrayLike, what: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a sequence of numbers") from None
    if v.ndim != 1:
        raise InputError(f"{what} must be one-dimensional (one value per image), got shape {v.shape}")
    return v


def paired_bootstrap(a: ArrayLike, b: ArrayLike, n: int = 10000, seed: int = 0, ci: float = 0.95) -> BootstrapResult:
    """Mean of ``a - b`` over images and its paired percentile-bootstrap interval.

    Args:
        a, b: (N,) per-image values of two settings on the same N images (same order).
        n: bootstrap resamples (each draws N image indices with replacement).
        seed: seed of numpy's PCG64 generator: the same inputs and seed give the same interval.
        ci: interval level in (0, 1).

    Raises:
        InputError: shapes that differ, fewer than 2 images, NaN/inf values, n < 1, ci outside (0, 1).
    """
    av, bv = _vector(a, "a"), _vector(b, "b")
    if av.shape != bv.shape:
        raise InputError(f"paired values need the same images: a has {av.size}, b has {bv.size}")
    if av.size < 2:
        raise InputError(f"a bootstrap needs at least 2 images, got {av.size}")
    if not (np.isfinite(av).all() and np.isfinite(bv).all()):
        raise InputError("paired values must be finite (drop the skipped images first)")
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if not 0.0 < float(ci) < 1.0:
        raise InputError(f"ci must be in (0, 1), got {ci!r}")
    n = int(n)
    d = av - bv
    m = d.size
    rng = np.random.default_rng(seed)
    means = np.empty(n, dtype=np.float64)
    block = max(1, _BLOCK_ELEMENTS // m)
    for start in range(0, n, block):
        k = min(block, n - start)
        means[start:start + k] = d[rng.integers(0, m, size=(k, m))].mean(axis=1)
    alpha = (1.0 - float(ci)) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapResult(float(d.mean()), float(low), float(high), float(ci), n, int(m))
