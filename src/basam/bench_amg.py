"""``basam bench --part amg``: the automatic mask generator, basam's against the official one.

One case times whole ``generate(image)`` calls on a synthetic scene (flat background, coloured
discs, the longest side = the case's resolution, 3:2). basam's case runs
:class:`basam.AutomaticMaskGenerator` at the case's resolution and attention preset; the official
case runs the official package's ``SamAutomaticMaskGenerator`` (``segment_anything``,
``mobile_sam`` or ``segment_anything_hq``, the one the model was built from; ``sam2``'s
``SAM2AutomaticMaskGenerator`` for SAM 2), which can only run at its model's ``img_size``. Both use the official defaults (thresholds 0.88 / 0.95, 64 points per
batch, no crops) and the same ``points_per_side``; with ``--baseline official`` both hold the same
weights, so they produce the same records (``tests/test_amg.py``) and the ratio compares equal
work. The number of masks each produced is kept in ``extra["masks"]``.

Timing and peak memory as for the other parts (:mod:`basam.bench`): warm-up calls, the median of
the timed calls, and the peak over one more call.
"""

from __future__ import annotations

import statistics
import warnings
from functools import partial
from typing import Callable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = ["scene", "generator_call", "time_amg", "official_twin"]


def scene(h: int, w: int, seed: int = 0, n_discs: int = 12) -> np.ndarray:
    """(h, w, 3) uint8: a flat background with ``n_discs`` coloured discs and mild noise."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 40.0, dtype=np.float32)
    yy, xx = np.ogrid[0:h, 0:w]
    short = min(h, w)
    for _ in range(n_discs):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        r = rng.uniform(0.04, 0.15) * short
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(100, 255, 3)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def generator_call(impl: str, sam: nn.Module, image: np.ndarray, resolution: int, points_per_side: int) -> Tuple[Callable[[], List[dict]], Callable[[], int]]:
    """(one ``generate(image)`` call, how many masks the last call returned) for ``impl``."""
    if impl == "basam":
        from .amg import AutomaticMaskGenerator

        gen = AutomaticMaskGenerator(sam, resolution=resolution, points_per_side=points_per_side)
    else:
        # the official package the model's classes come from (segment_anything, mobile_sam, ..., sam2)
        from .bench import official_api

        # SAM 2's generator defaults pred_iou_thresh to 0.8; the SAM value (basam's default) keeps the work equal
        gen = official_api(sam)[1](sam, points_per_side=points_per_side, pred_iou_thresh=0.88)
    last: List[int] = [0]

    def call() -> List[dict]:
        with torch.inference_mode():
            records = gen.generate(image)
        last[0] = len(records)
        return records

    return call, lambda: last[0]


def time_amg(res, sam: nn.Module, device: torch.device, warmup: int, iters: int, points_per_side: int) -> List[float]:
    """Fill ``res`` (a :class:`basam.bench.BenchResult` of part ``amg``) and return the timed calls (ms).

    The official case must already have been checked to run at ``sam``'s own size.
    """
    from .bench import peak_memory, time_calls

    case = res.case
    h = max(16, round(case.resolution * 2 / 3))
    image = scene(h, case.resolution)
    call, masks = generator_call(case.impl, sam, image, case.resolution, points_per_side)
    res.first_call_s, times = time_calls(call, device, warmup, iters)
    res.peak_gib, res.memory_kind = peak_memory(call, device)
    res.extra["masks"] = masks()
    res.extra["points_per_side"] = points_per_side
    res.extra["image"] = f"{h}x{case.resolution}"
    res.extra["s_per_image"] = statistics.median(times) / 1000.0
    return times


def official_twin(spec, state_dict: Mapping[str, torch.Tensor], run_size: Optional[int] = None) -> nn.Module:
    """The official ``segment_anything`` Sam built with the architecture of a basam ViT ``spec``.

    For models with no official counterpart (``basam_tiny``, reduced test models), so that the
    official code can run on the same weights: the official classes with ``spec``'s sizes, holding
    ``state_dict`` (basam's keys, which are the official ones plus the BA-SAM slopes; the slopes
    are dropped, so the twin computes basam's ``vanilla`` attention).

    Args:
        spec: a :class:`basam.models.registry.ModelSpec` with a ViT encoder and SAM's decoder.
        state_dict: the weights (e.g. ``basam_model.state_dict()``).
        run_size: the ``img_size`` the official code runs at (default ``spec.img_size``): the
            absolute position embedding (1, g, g, C) is resampled bicubically to ``run_size / 16``
            tokens a side (as basam resamples it), the prompt encoder's sizes follow, and the
            official attention interpolates its relative-position tables itself.
    Returns:
        the official ``Sam`` in eval mode.
    """
    from .bench import resample_official_pos_embed
    from .errors import InputError
    from .models.registry import ViTConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from segment_anything import modeling as m
    enc = spec.encoder
    if not isinstance(enc, ViTConfig) or spec.hq:
        raise InputError(f"official_twin needs a ViT model with SAM's decoder, not {spec.name}")
    d = spec.decoder
    img = spec.img_size
    encoder = m.ImageEncoderViT(
        img_size=img, patch_size=enc.patch_size, embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
        mlp_ratio=enc.mlp_ratio, out_chans=d.transformer_dim, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True, window_size=enc.window_size, global_attn_indexes=tuple(enc.global_attn_indexes),
    )
    grid = img // enc.patch_size
    prompt = m.PromptEncoder(embed_dim=d.transformer_dim, image_embedding_size=(grid, grid), input_image_size=(img, img),
                             mask_in_chans=d.mask_in_chans)
    decoder = m.MaskDecoder(
        transformer_dim=d.transformer_dim, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=d.iou_head_hidden_dim,
        transformer=m.TwoWayTransformer(depth=d.depth, embedding_dim=d.transformer_dim, num_heads=d.num_heads, mlp_dim=d.mlp_dim),
    )
    sam = m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
                pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    wanted = sam.state_dict()
    extra = [k for k in state_dict if k not in wanted]
    if any(not k.endswith("bam.slopes") for k in extra):
        raise InputError(f"weights do not fit the official {spec.name} twin: unexpected {', '.join(sorted(extra)[:3])}")
    sam.load_state_dict({k: v for k, v in state_dict.items() if k in wanted}, strict=True)
    if run_size is not None and run_size != img:
        g = run_size // enc.patch_size
        if g * enc.patch_size != run_size:
            raise InputError(f"run_size must be a multiple of {enc.patch_size}, got {run_size}")
        encoder.img_size = run_size
        resample_official_pos_embed(encoder, g)
        prompt.image_embedding_size = (g, g)
        prompt.input_image_size = (run_size, run_size)
    return sam.eval()
