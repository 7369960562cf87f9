"""The bundled demonstration model loads offline and segments."""

import numpy as np
import pytest

import basam
from basam.cli import main
from basam.load import bundled_weights


def test_bundled_weights_load_offline(monkeypatch):
    import basam.hub as hub

    def no_network(*a, **k):
        raise AssertionError("basam_tiny must not download anything")

    monkeypatch.setattr(hub, "download_checkpoint", no_network)
    path = bundled_weights("basam_tiny")
    assert path.stat().st_size <= 25 * 2**20
    model = basam.load_model("basam_tiny")
    assert model.img_size == 256 and not model.training
    assert model.attention_config.preset_name == "vanilla"


@pytest.mark.parametrize("resolution,attention", [(256, "vanilla"), (1024, "basam")])
def test_basam_tiny_segments_a_centred_object(resolution, attention):
    """A bright disc on a dark background: the trained model must find most of it from a click."""
    model = basam.load_model("basam_tiny", attention=attention)
    h, w = 300, 400
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - 150) ** 2 + (xx - 200) ** 2 < 80**2
    rng = np.random.default_rng(0)
    image = np.where(disc[..., None], [230, 60, 40], [30, 40, 60]).astype(np.float64) + rng.normal(0, 8, (h, w, 3))
    pred = basam.Predictor(model, resolution=resolution)
    pred.set_image(np.clip(image, 0, 255).astype(np.uint8))
    masks, scores, _ = pred.predict(point_coords=np.array([[200, 150]]), point_labels=np.array([1]))
    best = masks[int(np.argmax(scores))]
    assert best.shape == (h, w)
    iou = (best & disc).sum() / (best | disc).sum()
    assert iou > 0.5, f"IoU {iou:.3f} with the disc at {resolution} px"


def test_segment_command_with_basam_tiny(tmp_path, capsys):
    from PIL import Image

    img = np.full((120, 160, 3), 40, np.uint8)
    img[30:90, 50:110] = (220, 200, 40)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["segment", str(tmp_path / "x.png"), "--point", "80,60", "--model", "basam_tiny", "--resolution", "512",
                 "--attention", "basam", "--out", str(tmp_path / "m.png"), "--overlay", str(tmp_path / "o.png"), "-q"]) == 0
    assert Image.open(tmp_path / "m.png").size == (160, 120)
    assert "predicted IoU" in capsys.readouterr().out
