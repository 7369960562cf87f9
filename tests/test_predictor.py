"""Predictor input checks (the numpy front door and the command line share them)."""

from __future__ import annotations

import numpy as np
import pytest

import basam
from basam.cli import main
from basam.errors import InputError
from basam.predictor import check_prompts


@pytest.fixture(scope="module")
def predictor():
    model = basam.load_model("basam_tiny", device="cpu")
    p = basam.Predictor(model)
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return p


@pytest.mark.parametrize("box", [[10, 10, 10, 40], [5, 20, 50, 20]])
def test_zero_area_box_is_refused(predictor, box):
    with pytest.raises(InputError, match="zero area"):
        predictor.predict(box=np.array(box, dtype=float))


def test_nan_mask_input_is_refused(predictor):
    _, _, low_res = predictor.predict(point_coords=[[40, 30]], point_labels=[1])
    bad = low_res[:1].copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        predictor.predict(mask_input=bad, point_coords=[[40, 30]], point_labels=[1])
    masks, scores, _ = predictor.predict(mask_input=low_res[:1], point_coords=[[40, 30]], point_labels=[1])
    assert np.isfinite(scores).all() and masks.shape[1:] == (60, 80)


def test_features_are_one_object(predictor):
    assert predictor.features is predictor._features.embeddings
    assert predictor.get_image_embedding() is predictor.features
    p = basam.Predictor(predictor.model)
    assert p.features is None and p.interm_features is None


def test_check_prompts_rules():
    check_prompts([[0, 0], [80, 60]], [1, 0], [0, 0, 80, 60], 80, 60)  # edges are inside
    with pytest.raises(InputError, match="outside"):
        check_prompts([[81, 0]], [1], None, 80, 60)
    with pytest.raises(InputError, match="x1 < x0"):
        check_prompts(None, None, [10, 0, 5, 5], 80, 60)


def test_cli_zero_area_box_one_line(tmp_path, capsys):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img)
    rc = main(["segment", str(img), "--model", "basam_tiny", "--box", "5,5,5,20", "--out", str(tmp_path / "m.png"), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "zero area" in err
    assert not (tmp_path / "m.png").exists()
