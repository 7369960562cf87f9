"""The official implementations as test oracles: built with random weights, saved as the official
files are saved (``torch.save(model.state_dict(), path)``), and loaded into basam."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import nn

# Reduced architectures, one per registry name: same classes, smaller depth/width.
# Keys are basam shrink() overrides; the official builders below read the same numbers.
REDUCED: Dict[str, dict] = {
    "sam_vit_b": dict(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3)),
    "sam_vit_l": dict(embed_dim=64, depth=6, num_heads=4, global_attn_indexes=(2, 5)),
    "sam_vit_h": dict(embed_dim=80, depth=4, num_heads=4, global_attn_indexes=(1, 3)),
    "sam_hq_vit_b": dict(embed_dim=64, depth=4, num_heads=4, global_attn_indexes=(1, 3)),
    "sam_hq_vit_l": dict(embed_dim=64, depth=6, num_heads=4, global_attn_indexes=(2, 5)),
    "sam_hq_vit_h": dict(embed_dim=80, depth=4, num_heads=4, global_attn_indexes=(1, 3)),
    # The last width must stay 320: the official PatchMerging keys its stride on it.
    "mobile_sam": dict(embed_dims=(16, 32, 48, 320), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 10)),
    "sam_hq_vit_tiny": dict(embed_dims=(16, 32, 48, 320), depths=(1, 1, 2, 1), num_heads=(1, 2, 3, 10)),
}

FULL: Dict[str, dict] = {
    "sam_vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "sam_vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "sam_vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "mobile_sam": dict(embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), num_heads=(2, 4, 5, 10)),
}
for _n in ("b", "l", "h"):
    FULL[f"sam_hq_vit_{_n}"] = FULL[f"sam_vit_{_n}"]
FULL["sam_hq_vit_tiny"] = FULL["mobile_sam"]


def _package(name: str):
    """The official package that implements ``name`` (the oracle its ModelSpec names)."""
    from basam.models.registry import get_spec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return __import__(get_spec(name).oracle.package)


def build_official(name: str, arch: dict) -> nn.Module:
    """The official model for ``name`` with architecture ``arch``, in eval mode."""
    pkg = _package(name)
    m = pkg.modeling
    if "embed_dim" in arch:
        encoder = m.ImageEncoderViT(
            depth=arch["depth"], embed_dim=arch["embed_dim"], img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch["num_heads"], patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(arch["global_attn_indexes"]), window_size=14, out_chans=256,
        )
        vit_dim = arch["embed_dim"]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = m.TinyViT(
                img_size=1024, in_chans=3, num_classes=1000, embed_dims=list(arch["embed_dims"]), depths=list(arch["depths"]),
                num_heads=list(arch["num_heads"]), window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
            )
        vit_dim = arch["embed_dims"][2]
    prompt = m.PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16)
    transformer = m.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    common = dict(num_multimask_outputs=3, transformer=transformer, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    decoder = m.MaskDecoderHQ(vit_dim=vit_dim, **common) if name.startswith("sam_hq") else m.MaskDecoder(**common)
    sam = m.Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
                pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    return sam.eval()


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every weight a random, non-trivial value (official inits leave many at 0 or 1, which
    would hide errors in relative positions, biases and norms)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.state_dict().items()):
        if not t.is_floating_point():
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif name.endswith("running_mean"):
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        elif name.endswith("positional_encoding_gaussian_matrix"):
            t.copy_(torch.randn(t.shape, generator=g))
        elif t.ndim == 1 and ("norm" in name or ".bn." in name or name.endswith(("neck.1.weight", "neck.3.weight"))) and name.endswith("weight"):
            t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=g))
        elif "rel_pos" in name or "attention_biases" in name or "pos_embed" in name:
            t.copy_(torch.randn(t.shape, generator=g) * 0.5)
        else:
            fan_in = t[0].numel() if t.ndim > 1 else max(1, t.numel())
            t.copy_(torch.randn(t.shape, generator=g) / max(1.0, fan_in) ** 0.5)
    return model


def official_checkpoint(name: str, arch: dict, tmp_dir: Path, seed: int = 0) -> Tuple[nn.Module, Path]:
    """Build, randomise and save the official model; returns it and the checkpoint path."""
    torch.manual_seed(seed)
    model = randomize(build_official(name, arch), seed)
    # The official TinyViT caches its attention biases when eval() is called (as users do after
    # loading weights, per the MobileSAM README): call it again after changing the weights.
    model.eval()
    suffix = ".pt" if name == "mobile_sam" else ".pth"
    path = Path(tmp_dir) / f"{name}_random{suffix}"
    torch.save(model.state_dict(), path)
    return model, path


def official_predictor(name: str, model: nn.Module):
    return _package(name).SamPredictor(model)


def prompt_kinds(h: float, w: float) -> dict:
    """One prompt of each kind for an h x w image (predictor keyword arguments): a point, a
    positive and a negative point, a box, a box with a point. The export parity tests use them."""
    import numpy as np

    return {
        "point": dict(point_coords=np.array([[w * 0.4, h * 0.55]]), point_labels=np.array([1])),
        "points": dict(point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.7, h * 0.6]]), point_labels=np.array([1, 0])),
        "box": dict(box=np.array([w * 0.2, h * 0.25, w * 0.75, h * 0.8])),
        "box+point": dict(box=np.array([w * 0.1, h * 0.1, w * 0.6, h * 0.9]), point_coords=np.array([[w * 0.3, h * 0.5]]),
                          point_labels=np.array([1])),
    }
