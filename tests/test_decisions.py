"""Calibrated decisions in the model: OK/NG labels, masks and normalised scores, carried by the checkpoint."""

import textwrap

import pytest
import torch
from run_helpers import run_without_project
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from modeling_clipada import CLIPADAConfigError, CLIPADAForAnomalySegmentation
from modeling_clipada.decisions import apply_thresholds, normalize_scores

THRESHOLDS = {"image_threshold": 0.45, "pixel_threshold": 0.4}


def _model(**config) -> CLIPADAForAnomalySegmentation:
    clip, tokenizer = make_tiny_clip()
    return CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2, **config).eval()


def _pixels(batch_size: int = 3) -> torch.Tensor:
    return torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))


def test_without_thresholds_no_decision_is_returned():
    with torch.no_grad():
        outputs = _model()(_pixels())
    assert outputs.pred_label is None and outputs.pred_mask is None and outputs.pred_score_normalized is None


def test_with_thresholds_labels_masks_and_normalised_scores_follow_them():
    model = _model(**THRESHOLDS)
    with torch.no_grad():
        outputs = model(_pixels())
    assert outputs.pred_label.dtype == torch.bool and outputs.pred_label.shape == (3,)
    assert outputs.pred_mask.shape == outputs.anomaly_map.shape and outputs.pred_mask.dtype == torch.bool
    assert torch.equal(outputs.pred_label, outputs.pred_score >= 0.45)
    assert torch.equal(outputs.pred_mask, outputs.anomaly_map >= 0.4)
    assert torch.equal(outputs.pred_score_normalized >= 0.5, outputs.pred_label)


def test_a_named_category_uses_its_own_thresholds():
    per_category = {"disc": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
    model = _model(**THRESHOLDS, category_thresholds=per_category)
    with torch.no_grad():
        outputs = model(_pixels(), categories=["disc", None, "unknown"])
        plain = model(_pixels())
    assert outputs.pred_label[0] and not outputs.pred_mask[0].any()
    assert torch.equal(outputs.pred_label[1:], plain.pred_label[1:])
    assert torch.equal(outputs.pred_mask[1:], plain.pred_mask[1:])
    with pytest.raises(ValueError, match="one entry per image"):
        model(_pixels(), categories=["disc"])


def test_normalised_scores_put_the_threshold_at_one_half_and_keep_the_order():
    scores = torch.linspace(0, 1, 101)
    normalized = normalize_scores(scores, 0.3)
    assert normalized[30] == pytest.approx(0.5) and normalized[0] == 0 and normalized[-1] == 1
    assert torch.all(normalized[1:] > normalized[:-1])
    label, mask = apply_thresholds(torch.tensor([[[0.2, 0.5]]]), torch.tensor([0.3]), 0.3, torch.tensor([0.5]))
    assert label.tolist() == [True] and mask.tolist() == [[[False, True]]]


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_threshold", float("nan")),
        ("pixel_threshold", 1.5),
        ("target_image_fpr", 0.0),
        ("target_pixel_fpr", 1.0),
        ("calibration_size", 0),
        ("category_thresholds", {"disc": {"image_threshold": 0.5}}),
    ],
)
def test_bad_threshold_fields_are_errors_naming_them(field, value):
    with pytest.raises(CLIPADAConfigError, match=field):
        _model(**{field: value})


def test_thresholds_survive_save_load_and_remote_code(tmp_path):
    model = _model(**THRESHOLDS, category_thresholds={"disc": {"image_threshold": 0.5, "pixel_threshold": 0.6}})
    model.config.target_image_fpr, model.config.calibration_size = 0.01, 20
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path / "ckpt")
    for name in ("image_threshold", "pixel_threshold", "category_thresholds", "target_image_fpr", "calibration_size"):
        assert getattr(reloaded.config, name) == getattr(model.config, name), name
    pixels = _pixels()
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model(pixels, categories=["disc", None, None]).pred_label.tolist()
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            outputs = model(torch.load({str(tmp_path / "pixels.pt")!r}), categories=["disc", None, None])
        print(outputs.pred_label.tolist(), model.config.category_thresholds["disc"]["pixel_threshold"])
        """
    )
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{expected} 0.6"


def test_the_numpy_and_torch_forms_decide_alike():
    """The one comparison and the normalisation give the same answers for numpy (predict, the app, the runners) and
    torch (the models, the pipeline), thresholds shared or per image, including scores exactly at a threshold."""
    import numpy as np

    from modeling_clipada.decisions import reaches

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 8, 8, generator=generator)
    scores = torch.tensor([0.2, 0.45, 0.9])
    maps[1, 0, 0] = 0.4  # exactly at the pixel threshold
    for image_threshold, pixel_threshold in ((0.45, 0.4), ([0.1, 0.45, 0.95], [0.3, 0.4, 0.99])):
        label_t, mask_t = apply_thresholds(maps, scores, image_threshold, pixel_threshold)
        label_n, mask_n = apply_thresholds(maps.numpy(), scores.numpy(), image_threshold, pixel_threshold)
        assert isinstance(label_n, np.ndarray) and isinstance(mask_n, np.ndarray)
        np.testing.assert_array_equal(label_t.numpy(), label_n)
        np.testing.assert_array_equal(mask_t.numpy(), mask_n)
        normalized_t = normalize_scores(scores, torch.tensor(image_threshold))
        np.testing.assert_allclose(normalized_t.numpy(), normalize_scores(scores.numpy(), image_threshold), atol=1e-7)
    assert bool(mask_n[1, 0, 0]) and bool(reaches(np.float32(0.45), 0.45)) and not reaches(0.44999, 0.45)


def test_one_resolver_for_configs_runners_and_the_export_json():
    from types import SimpleNamespace

    from modeling_clipada.decisions import per_image_thresholds, resolve_thresholds

    fields = {
        "image_threshold": 0.6,
        "pixel_threshold": 0.5,
        "category_thresholds": {"screw": {"image_threshold": 0.7}},
    }
    for config in (fields, SimpleNamespace(**fields)):
        assert resolve_thresholds(config, "screw") == (0.7, 0.5, "category", "global")
        assert resolve_thresholds(config, "bottle") == (0.6, 0.5, "global", "global")
        assert per_image_thresholds(config, ["screw", None], 2) == ([0.7, 0.6], [0.5, 0.5])
    assert resolve_thresholds({}, "screw") == (None, None, "none", "none")
    with pytest.raises(ValueError, match="one entry per image"):
        per_image_thresholds(fields, ["screw"], 2)
