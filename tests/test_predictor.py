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


# --- the single-mask default of a model whose single-mask token is untrained (#15) -----------------

def _shapes_image():
    from pathlib import Path

    from basam.io import read_image

    return read_image(Path(__file__).resolve().parents[1] / "examples" / "shapes.png")


def test_basam_tiny_single_mask_output_is_trained():
    """basam_tiny (v3) was trained with mixed prompts, so every output token is trained: its file
    says so, and multimask_output=False gives the single-mask token's own mask with no note."""
    import warnings

    from basam.errors import BasamNote

    model = basam.load_model("basam_tiny")
    assert model.trained_outputs == "all"
    pred = basam.Predictor(model)
    pred.set_image(_shapes_image())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        single, s_score, _ = pred.predict(box=np.array([100, 100, 500, 400]), multimask_output=False)
    assert not [w for w in caught if issubclass(w.category, BasamNote)]
    assert single.shape[0] == 1 and s_score.shape == (1,)
    assert 0.001 < single.mean() < 0.9  # not the near-full-image mask of an untrained token


def test_untrained_single_mask_token_gives_the_best_trained_candidate():
    """A model whose file says only its multimask outputs are trained (basam_tiny v1, or any model
    trained with one-point prompts only): multimask_output=False (and every box prompt) gives the
    best-scoring multimask candidate, with one note, instead of the untrained single-mask token's."""
    import warnings

    from basam.errors import BasamNote

    model = basam.load_model("basam_tiny")
    model.trained_outputs = "multimask"
    pred = basam.Predictor(model)
    pred.set_image(_shapes_image())
    box = np.array([100, 100, 500, 400])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        single, s_score, s_low = pred.predict(box=box, multimask_output=False)
        pred.predict(point_coords=np.array([[300, 250]]), point_labels=np.array([1]), multimask_output=False)
    notes = [w for w in caught if issubclass(w.category, BasamNote)]
    assert len(notes) == 1 and "multimask outputs only" in str(notes[0].message)
    multi, m_scores, m_low = pred.predict(box=box, multimask_output=True)
    best = int(np.argmax(m_scores))
    assert single.shape == (1,) + single.shape[1:] and s_score.shape == (1,)
    assert np.array_equal(single[0], multi[best]) and np.isclose(s_score[0], m_scores[best])
    assert np.allclose(s_low[0], m_low[best])
    model.trained_outputs = "all"  # the model's own single-mask output is another mask
    raw, _, raw_low = pred.predict(box=box, multimask_output=False)
    assert not np.allclose(raw_low[0], s_low[0])


def test_trained_outputs_round_trip_through_save_model(tmp_path):
    from basam.checkpoint import read_metadata, save_model

    model = basam.load_model("basam_tiny")
    model.trained_outputs = "multimask"
    path = save_model(model, tmp_path / "t.safetensors")
    assert read_metadata(path)["trained_outputs"] == "multimask"
    assert basam.load_model("basam_tiny", checkpoint=path).trained_outputs == "multimask"
    model.trained_outputs = "all"
    path = save_model(model, tmp_path / "u.safetensors")
    assert "trained_outputs" not in read_metadata(path)
    assert basam.load_model("basam_tiny", checkpoint=path).trained_outputs == "all"


def test_cli_segment_box_with_basam_tiny_gives_a_trained_mask(tmp_path, capsys):
    from pathlib import Path

    from PIL import Image

    from basam.cli import main

    image = Path(__file__).resolve().parents[1] / "examples" / "shapes.png"
    out = tmp_path / "m.png"
    assert main(["segment", str(image), "--model", "basam_tiny", "--box", "100,100,500,400", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "basam: note:" not in err  # v3's single-mask output is trained: no substitution, no note
    mask = np.asarray(Image.open(out)) > 0
    assert 0.001 < mask.mean() < 0.9
