"""basam == the official implementations, with the same (random) weights, at 1024 px, vanilla.

Every registry name is checked on a reduced architecture (same classes, smaller depth/width);
one full-size model per family (SAM ViT-B, MobileSAM, HQ-SAM tiny) on top. Tolerance: max abs
difference of logits <= 1e-4 x their scale (fp32, CPU).
"""

import numpy as np
import pytest
import torch

import basam
import oracles

REL_TOL = 1e-4


def close(ours, theirs, what):
    ours = torch.as_tensor(np.asarray(ours, dtype=np.float32))
    theirs = torch.as_tensor(np.asarray(theirs, dtype=np.float32))
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs official {tuple(theirs.shape)}"
    scale = max(theirs.abs().max().item(), 1e-6)
    err = (ours - theirs).abs().max().item()
    assert err <= REL_TOL * scale, f"{what}: max abs diff {err:.3g} > {REL_TOL} x scale {scale:.3g}"
    return err / scale


def same_masks(ours_bool, ours_logits, theirs_bool, what):
    """Binary masks agree everywhere except where the logit is within rounding of the threshold."""
    differ = np.asarray(ours_bool) != np.asarray(theirs_bool)
    if differ.any():
        near = np.abs(np.asarray(ours_logits))[differ]
        assert near.max() < 1e-3, f"{what}: {differ.sum()} mask pixels differ away from the threshold"


def _image(seed, h=480, w=640):
    rng = np.random.default_rng(seed)
    # Smooth structure plus noise, so masks are not all-or-nothing.
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 37.0) + np.cos(yy / 23.0)) * 60 + 128
    img = base[..., None] + rng.normal(0, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _check_predictors(name, official, ours_model, image, hq):
    off = oracles.official_predictor(name, official)
    ours = basam.Predictor(ours_model)
    with torch.no_grad():
        off.set_image(image)
    ours.set_image(image)
    close(ours.get_image_embedding(), off.get_image_embedding(), "image embedding")
    H, W = image.shape[:2]
    prompts = {
        "point": dict(point_coords=np.array([[W * 0.4, H * 0.55]]), point_labels=np.array([1])),
        "points": dict(point_coords=np.array([[W * 0.3, H * 0.3], [W * 0.7, H * 0.6]]), point_labels=np.array([1, 0])),
        "box": dict(box=np.array([W * 0.2, H * 0.25, W * 0.75, H * 0.8])),
        "box+point": dict(box=np.array([W * 0.1, H * 0.1, W * 0.6, H * 0.9]), point_coords=np.array([[W * 0.3, H * 0.5]]), point_labels=np.array([1])),
    }
    hq_modes = [False, True] if hq else [None]
    checked = 0
    for pname, kw in prompts.items():
        for multimask in (True, False):
            for hq_only in hq_modes:
                extra = {} if hq_only is None else {"hq_token_only": hq_only}
                what = f"{name} {pname} multimask={multimask} {extra}"
                with torch.no_grad():
                    lg_off, s_off, l_off = off.predict(multimask_output=multimask, return_logits=True, **kw, **extra)
                lg_ours, s_ours, l_ours = ours.predict(multimask_output=multimask, return_logits=True, **kw, **extra)
                close(l_ours, l_off, what + " low-res logits")
                close(s_ours, s_off, what + " IoU predictions")
                close(lg_ours, lg_off, what + " full-size logits")
                checked += 1
    # Binary masks (the default output) for one prompt.
    kw = prompts["box+point"]
    with torch.no_grad():
        m_off, _, _ = off.predict(multimask_output=True, **kw)
    m_ours, _, _ = ours.predict(multimask_output=True, **kw)
    lg_ours, _, _ = ours.predict(multimask_output=True, return_logits=True, **kw)
    assert m_ours.dtype == np.bool_ and m_ours.shape == (m_off.shape[0], H, W)
    same_masks(m_ours, lg_ours, m_off, f"{name} binary masks")
    # Mask prompt: feed back the low-res logits of a single-mask call.
    kw = prompts["point"]
    with torch.no_grad():
        _, _, l_prev = off.predict(multimask_output=False, **kw)
        _, s_off, l_off = off.predict(mask_input=l_prev, multimask_output=False, **kw)
    _, s_ours, l_ours = ours.predict(mask_input=l_prev, multimask_output=False, **kw)
    close(l_ours, l_off, f"{name} point+mask low-res logits")
    close(s_ours, s_off, f"{name} point+mask IoU")
    # Batched boxes through the torch back door.
    boxes = torch.tensor([[W * 0.1, H * 0.1, W * 0.5, H * 0.5], [W * 0.4, H * 0.3, W * 0.9, H * 0.95]])
    with torch.no_grad():
        tb = off.transform.apply_boxes_torch(boxes, (H, W))
        mo, so, lo = off.predict_torch(None, None, boxes=tb, multimask_output=True)
    mb, sb, lb = ours.predict_torch(None, None, boxes=ours.transform.apply_boxes_torch(boxes, (H, W)), multimask_output=True)
    close(lb, lo, f"{name} batched boxes low-res logits")
    close(sb, so, f"{name} batched boxes IoU")
    assert checked == len(prompts) * 2 * len(hq_modes)


@pytest.mark.parametrize("name", list(oracles.REDUCED))
def test_reduced_parity(name, tmp_path):
    arch = oracles.REDUCED[name]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=1)
    model = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    _check_predictors(name, official, model, _image(1, 480, 640), hq=name.startswith("sam_hq"))


@pytest.mark.parametrize("name", ["mobile_sam", "sam_hq_vit_tiny", "sam_vit_b"])
def test_full_size_parity(name, tmp_path):
    arch = oracles.FULL[name]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=2)
    model = basam.load_model(name, checkpoint=ckpt)  # the registry's own full architecture
    image = _image(2, 600, 400)  # portrait: padding on the right
    if name == "sam_vit_b":
        # ViT-B costs ~15 s per encoder pass on 2 CPU cores: check the embedding and one prompt.
        off = oracles.official_predictor(name, official)
        ours = basam.Predictor(model)
        with torch.no_grad():
            off.set_image(image)
            m_off, s_off, l_off = off.predict(point_coords=np.array([[150, 300]]), point_labels=np.array([1]))
        ours.set_image(image)
        close(ours.get_image_embedding(), off.get_image_embedding(), "ViT-B embedding")
        m, s, l = ours.predict(point_coords=np.array([[150, 300]]), point_labels=np.array([1]))
        close(l, l_off, "ViT-B low-res logits")
        close(s, s_off, "ViT-B IoU")
    else:
        _check_predictors(name, official, model, image, hq=name.startswith("sam_hq"))


def test_model_forward_matches_official_batched(tmp_path):
    """``Sam.forward`` (the batched-records interface) on two images of different shapes."""
    name, arch = "sam_hq_vit_b", oracles.REDUCED["sam_hq_vit_b"]
    official, ckpt = oracles.official_checkpoint(name, arch, tmp_path, seed=3)
    model = basam.load_model(name, checkpoint=ckpt, architecture=arch)
    records = []
    for h, w in ((1024, 768), (683, 1024)):
        img = torch.as_tensor(_image(h + w, h, w)).permute(2, 0, 1).float()
        records.append({"image": img, "original_size": (h // 2, w // 2), "boxes": torch.tensor([[100.0, 120.0, 600.0, 650.0]])})
    with torch.no_grad():
        theirs = official(records, multimask_output=False, hq_token_only=False)
        ours = model(records, multimask_output=False, hq_token_only=False)
    for a, b in zip(ours, theirs):
        close(a["low_res_logits"], b["low_res_logits"], "forward low-res logits")
        close(a["iou_predictions"], b["iou_predictions"], "forward IoU")
        assert a["masks"].shape == b["masks"].shape
