"""Tests of CLIPADAConfig and CLIPADAForAnomalySegmentation on tiny random CLIPs."""

import dataclasses
from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from reference_ops import gaussian_blur
from tiny_clip import IMAGE_SIZE, PATCH_SIZE, make_tiny_clip, tiny_clip_config, write_real_clip_tokenizer
from transformers import CLIPConfig, CLIPModel

from modeling_clipada import CLIPADAConfig, CLIPADAForAnomalySegmentation
from modeling_clipada.clip_parts import upsample_and_smooth_matrices

GRID = IMAGE_SIZE // PATCH_SIZE
FLOAT_HEAD_FIELDS = (
    "refinement_loss_weight",
    "smoothing_sigma",
    "similarity_logit_scale_init",
    "similarity_logit_bias_init",
)


class CLIPADAModelTester:
    """Builds tiny models and inputs (transformers' ModelTester pattern)."""

    batch_size = 2

    def __init__(self, **config_overrides):
        self.clip, self.tokenizer = make_tiny_clip()
        self.config_overrides = config_overrides

    def model(self, **overrides) -> CLIPADAForAnomalySegmentation:
        torch.manual_seed(1)
        return CLIPADAForAnomalySegmentation.from_clip(
            self.clip, self.tokenizer, **{**self.config_overrides, **overrides}
        )

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.zeros(self.batch_size, IMAGE_SIZE, IMAGE_SIZE)
        labels[0, 4:12, 8:20] = 1
        return pixel_values, labels


@pytest.fixture(scope="module")
def tester() -> CLIPADAModelTester:
    return CLIPADAModelTester()


@pytest.mark.parametrize("num_refinements", [0, 1, 2])
def test_output_shapes_for_every_number_of_refinements(tester, num_refinements):
    model = tester.model(num_refinements=num_refinements).eval()
    pixel_values, labels = tester.inputs()
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels)
    assert list(outputs.keys()) == ["loss", "logits", "stage_logits", "anomaly_map", "pred_score"]
    assert outputs.loss.shape == ()
    assert outputs.logits.shape == (2, GRID, GRID)
    assert len(outputs.stage_logits) == num_refinements + 1
    assert all(stage.shape == (2, GRID, GRID) for stage in outputs.stage_logits)
    assert torch.equal(outputs.stage_logits[-1], outputs.logits)
    assert outputs.anomaly_map.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert outputs.pred_score.shape == (2,)
    assert 0 <= outputs.anomaly_map.min() and outputs.anomaly_map.max() <= 1
    assert model(pixel_values).loss is None


def test_loss_is_coarse_plus_weighted_refinement_bce(tester):
    model = tester.model(num_refinements=2, refinement_loss_weight=0.5).eval()
    pixel_values, labels = tester.inputs()
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels[:, None])  # (B, 1, H, W) is accepted too
    targets = F.avg_pool2d(labels[:, None], PATCH_SIZE)[:, 0]
    bce = [F.binary_cross_entropy_with_logits(stage, targets) for stage in outputs.stage_logits]
    torch.testing.assert_close(outputs.loss, bce[0] + 0.5 * (bce[1] + bce[2]))
    torch.testing.assert_close(model.compute_loss(outputs.stage_logits, labels), outputs.loss)


@pytest.mark.parametrize(
    "bad_labels",
    [
        pytest.param(lambda labels: labels * 255, id="0-255 masks"),
        pytest.param(lambda labels: labels - 1, id="negative"),
        pytest.param(lambda labels: labels.masked_fill(labels == 1, float("nan")), id="NaN"),
    ],
)
def test_labels_outside_zero_one_or_nan_are_errors_naming_labels(tester, bad_labels):
    model = tester.model().eval()
    pixel_values, labels = tester.inputs()
    with pytest.raises(ValueError, match="`labels`"), torch.no_grad():
        model(pixel_values, labels=bad_labels(labels))


def test_backward_reaches_only_the_trainable_head(tester):
    model = tester.model(num_refinements=1).train()
    pixel_values, labels = tester.inputs()
    model(pixel_values, labels=labels).loss.backward()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {
        "prompt_vectors",
        "similarity_logit_scale",
        "similarity_logit_bias",
        "patch_projections.0.weight",
        "patch_projections.0.bias",
        "patch_projections.1.weight",
        "patch_projections.1.bias",
    }
    assert all(not parameter.requires_grad for parameter in model.clip.parameters())
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


@pytest.mark.parametrize("detach", [False, True])
def test_refined_stage_trains_the_coarse_projection_end_to_end_unless_detached(tester, detach):
    model = tester.model(num_refinements=1, detach_refinement_input=detach).train()
    pixel_values, _ = tester.inputs()
    model(pixel_values).stage_logits[1].sum().backward()
    coarse_grad = model.patch_projections[0].weight.grad
    if detach:
        assert coarse_grad is None
    else:
        assert coarse_grad is not None and coarse_grad.abs().sum() > 0


def test_vision_encoder_runs_only_up_to_the_feature_layer_once_per_stage(tester):
    model = tester.model(num_refinements=2, feature_layer=2).eval()
    calls = [0] * len(model.clip.vision_model.encoder.layers)
    for index, layer in enumerate(model.clip.vision_model.encoder.layers):
        layer.register_forward_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    with torch.no_grad():
        model(tester.inputs()[0])
    assert calls == [3, 3, 0, 0]


def test_feature_layer_selects_that_layers_patch_tokens(tester):
    model = tester.model(feature_layer=3, use_feature_layernorm=False).eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        hidden_states = model.clip.vision_model(pixel_values, output_hidden_states=True).hidden_states
        torch.testing.assert_close(model.patch_features(pixel_values), hidden_states[3][:, 1:])


def test_text_embedding_with_no_prompt_vectors_equals_clip_text_features(tester):
    model = tester.model(num_prompt_vectors=0).eval()
    input_ids = torch.tensor([model.config.prompt_token_ids])
    with torch.no_grad():
        expected = tester.clip.get_text_features(input_ids=input_ids).pooler_output[0]
        torch.testing.assert_close(model.text_embedding(), F.normalize(expected, dim=-1))


def test_prompt_vectors_are_inserted_at_the_marker(tester):
    model = tester.model(num_prompt_vectors=2).eval()
    config = model.config
    token_embedding = model.clip.text_model.embeddings.token_embedding
    with torch.no_grad():
        model.prompt_vectors.copy_(token_embedding.weight[[5, 6]])
        ids = config.prompt_token_ids
        input_ids = torch.tensor([ids[: config.prompt_insert_position] + [5, 6] + ids[config.prompt_insert_position :]])
        expected = F.normalize(tester.clip.get_text_features(input_ids=input_ids).pooler_output[0], dim=-1)
        torch.testing.assert_close(model.text_embedding(), expected)


def test_text_embedding_is_computed_once_in_eval_and_refreshed_after_an_update(tester, monkeypatch):
    model = tester.model().eval()
    calls = []
    original = model._compute_text_embedding
    monkeypatch.setattr(model, "_compute_text_embedding", lambda: calls.append(1) or original())
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        first = model(pixel_values).anomaly_map
        model(pixel_values)
        model(pixel_values)
    assert len(calls) == 1
    optimizer = torch.optim.SGD([model.prompt_vectors], lr=10.0)
    model.train()
    model(pixel_values).logits.sum().backward()
    optimizer.step()
    assert len(calls) == 2  # the training forward computes it with grad
    model.eval()
    with torch.no_grad():
        second = model(pixel_values).anomaly_map
        model(pixel_values)
    assert len(calls) == 3
    assert not torch.equal(first, second)


def test_pred_score_is_mean_of_top_k_pixels(tester):
    model = tester.model(image_score_top_k=7).eval()
    with torch.no_grad():
        outputs = model(tester.inputs()[0])
    expected = outputs.anomaly_map.flatten(1).sort(dim=1, descending=True).values[:, :7].mean(dim=1)
    torch.testing.assert_close(outputs.pred_score, expected)


def test_anomaly_map_is_upsampled_then_smoothed_final_stage(tester):
    model = tester.model(smoothing_sigma=0).eval()
    with torch.no_grad():
        outputs = model(tester.inputs()[0])
    upsampled = F.interpolate(torch.sigmoid(outputs.logits)[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    torch.testing.assert_close(outputs.anomaly_map, upsampled[:, 0])
    smooth = tester.model(smoothing_sigma=4.0).eval()
    with torch.no_grad():
        smoothed = smooth(tester.inputs()[0]).anomaly_map
    assert smoothed.std() < outputs.anomaly_map.std()


def test_bfloat16_forward_matches_float32(tester):
    model = tester.model(num_refinements=1).eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        reference = model(pixel_values).anomaly_map
        model = model.to(torch.bfloat16)
        outputs = model(pixel_values)
    assert model.clip.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert outputs.anomaly_map.dtype == torch.float32 and torch.isfinite(outputs.anomaly_map).all()
    assert (outputs.anomaly_map - reference).abs().max() < 0.05


def test_attention_is_sdpa_by_default(tester):
    assert tester.model().config._attn_implementation == "sdpa"


def test_eager_and_sdpa_attention_give_the_same_text_embedding_and_outputs(tester):
    model = tester.model(num_refinements=1).eval()
    pixel_values, labels = tester.inputs()
    results = {}
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert model.clip.text_model.config._attn_implementation == implementation
        with torch.no_grad():
            results[implementation] = (model._compute_text_embedding(), model(pixel_values, labels=labels))
    (eager_text, eager), (sdpa_text, sdpa) = results["eager"], results["sdpa"]
    torch.testing.assert_close(sdpa_text, eager_text, rtol=0, atol=1e-5)
    for name in ("loss", "logits", "anomaly_map", "pred_score"):
        torch.testing.assert_close(sdpa[name], eager[name], rtol=0, atol=1e-5, msg=name)


def test_forward_rejects_unknown_keyword_arguments(tester):
    model = tester.model().eval()
    with pytest.raises(TypeError, match="output_attentions"):
        model(tester.inputs()[0], output_attentions=True)


def test_from_clip_loads_a_checkpoint_folder_with_its_tokenizer(tiny_clip_dir):
    model = CLIPADAForAnomalySegmentation.from_clip(str(tiny_clip_dir), num_refinements=2, feature_layer=3)
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    for name, value in clip.state_dict().items():
        assert torch.equal(model.clip.state_dict()[name], value), name
    assert model.config.num_refinements == 2 and model.config.feature_layer == 3
    assert model.config.prompt_token_ids[0] == 57 and model.config.prompt_token_ids[-1] == 58
    assert len(model.patch_projections) == 3


def test_from_clip_with_an_instance_needs_a_tokenizer():
    clip, _ = make_tiny_clip()
    with pytest.raises(ValueError, match="tokenizer"):
        CLIPADAForAnomalySegmentation.from_clip(clip)


def test_real_clip_tokenizer_gives_the_templates_real_ids(tmp_path):
    tokenizer = write_real_clip_tokenizer(tmp_path)
    if tokenizer is None:
        pytest.skip("../shared/clip-bpe is absent")
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    config = tiny_clip_config().to_dict()
    config["text_config"].update(vocab_size=49408, bos_token_id=49406, eos_token_id=49407)
    clip = CLIPModel(
        type(tiny_clip_config())(**{k: config[k] for k in ("text_config", "vision_config", "projection_dim")})
    )
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer)
    # "a photo of a" | prompt vectors | "with defects for anomaly detection"
    assert model.config.prompt_token_ids == [49406, 320, 1125, 539, 320, 593, 37485, 556, 46811, 16220, 49407]
    assert model.config.prompt_insert_position == 5


def test_missing_prompt_token_ids_is_a_clear_error():
    model = CLIPADAForAnomalySegmentation(CLIPADAConfig(**_tiny_config_fields()))
    with pytest.raises(ValueError, match="prompt_token_ids"):
        model(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"feature_layer": 0}, "feature_layer"),
        ({"feature_layer": 5}, "feature_layer"),
        ({"num_refinements": -1}, "num_refinements"),
        ({"image_score_top_k": 0}, "image_score_top_k"),
        ({"prompt_template": "a photo of a thing"}, "prompt_template"),
        ({"prompt_template": "[CLS] and [CLS]"}, "prompt_template"),
        ({"smoothing_sigma": -1.0}, "smoothing_sigma"),
        ({"prompt_token_ids": [57, 1, 58]}, "prompt_insert_position"),
    ],
)
def test_invalid_config_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAConfig(**_tiny_config_fields(), **overrides)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("field", FLOAT_HEAD_FIELDS)
def test_non_finite_float_fields_are_errors_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAConfig(**_tiny_config_fields(), **{field: value})


def test_float_head_fields_are_all_tested_for_finiteness():
    fields = {field.name: field.type for field in dataclasses.fields(CLIPADAConfig)}
    assert {name for name in CLIPADAConfig.head_field_names() if float in get_args(fields[name])} == set(
        FLOAT_HEAD_FIELDS
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("feature_layer", "3"),
        ("feature_layer", 2.0),
        ("num_refinements", 1.0),
        ("num_refinements", True),
        ("num_prompt_vectors", "4"),
        ("image_score_top_k", False),
        ("prompt_template", 3),
        ("prompt_token_ids", [57, 1.5, 58]),
        ("detach_refinement_input", 1),
        ("use_feature_layernorm", "yes"),
        ("smoothing_sigma", "4"),
        ("smoothing_sigma", True),
        ("refinement_loss_weight", None),
    ],
)
def test_wrong_types_of_head_fields_are_value_errors_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        CLIPADAConfig(**_tiny_config_fields(), **{field: value})
    config = CLIPADAConfig(**_tiny_config_fields())
    with pytest.raises(ValueError, match=f"`{field}`"):
        setattr(config, field, value)


def test_head_field_names_are_the_fields_added_to_clip_config():
    names = CLIPADAConfig.head_field_names()
    assert {
        "feature_layer",
        "num_prompt_vectors",
        "prompt_template",
        "num_refinements",
        "refinement_loss_weight",
        "detach_refinement_input",
        "image_score_top_k",
        "smoothing_sigma",
        "use_feature_layernorm",
    } <= set(names)
    assert not set(names) & set(CLIPConfig().to_dict()) and not set(names) & set(dir(CLIPConfig))
    config = CLIPADAConfig()
    assert len(set(names)) == len(names) and all(hasattr(config, name) for name in names)


def test_a_field_edited_after_construction_is_caught_by_the_model():
    config = CLIPADAConfig(**_tiny_config_fields())
    config.num_refinements = -2
    with pytest.raises(ValueError, match="`num_refinements`"):
        CLIPADAForAnomalySegmentation(config)


@pytest.mark.parametrize(
    "pixel_values",
    [
        pytest.param(torch.zeros(0, 3, IMAGE_SIZE, IMAGE_SIZE), id="empty batch"),
        pytest.param(torch.zeros(1, 3, 0, 0), id="0x0 images"),
        pytest.param(torch.zeros(1, 4, IMAGE_SIZE, IMAGE_SIZE), id="4 channels"),
        pytest.param(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8), id="uint8"),
        pytest.param(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool), id="bool"),
    ],
)
def test_empty_wrong_channel_or_non_float_pixel_values_are_errors_naming_them_and_the_shape(tester, pixel_values):
    model = tester.model().eval()
    shape = str(tuple(pixel_values.shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"`pixel_values`.*{shape}"), torch.no_grad():
        model(pixel_values)


def test_bad_pixel_values_and_labels_are_clear_errors(tester):
    model = tester.model().eval()
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.zeros(1, 3, IMAGE_SIZE + 1, IMAGE_SIZE))
    with pytest.raises(ValueError, match="labels"):
        model(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE), labels=torch.zeros(IMAGE_SIZE, IMAGE_SIZE))


def test_default_feature_layer_is_the_middle_layer():
    assert CLIPADAConfig().feature_layer == 6
    assert CLIPADAConfig(**_tiny_config_fields()).feature_layer == 2


@pytest.mark.parametrize("num_refinements, expected", [(0, 395_778), (1, 789_506), (2, 1_183_234)])
def test_trainable_parameters_of_a_vit_b16_shaped_model_match_the_paper(num_refinements, expected):
    config = CLIPADAConfig(num_refinements=num_refinements)  # ViT-B/16 widths: 768 -> 512, text 512
    with torch.device("meta"):
        model = CLIPADAForAnomalySegmentation(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # (R + 1) * (768 * 512 + 512) projections + 4 * 512 prompt vectors + scale and bias: 0.40M / 0.79M / 1.18M
    assert trainable == expected == (num_refinements + 1) * 393_728 + 4 * 512 + 2


@pytest.mark.parametrize(
    "grid, size, sigma",
    [
        ((14, 14), (224, 224), 4.0),
        ((21, 21), (336, 336), 4.0),
        ((8, 10), (32, 40), 1.0),
        ((3, 5), (6, 10), 4.0),
        ((8, 8), (32, 32), 0.0),
    ],
)
def test_fast_upsample_and_smooth_equals_interpolate_then_gaussian_blur(grid, size, sigma):
    """The model's matrix form of post-processing (a speed-up) gives the map of the two reference operators."""
    probabilities = torch.rand(3, *grid, generator=torch.Generator().manual_seed(0))
    reference = gaussian_blur(F.interpolate(probabilities[:, None], size=size, mode="bilinear"), sigma)[:, 0]
    rows, columns = upsample_and_smooth_matrices(grid, size, sigma, probabilities.device, probabilities.dtype)
    torch.testing.assert_close(rows @ probabilities @ columns.T, reference, rtol=0, atol=1e-6)


def _tiny_config_fields() -> dict:
    config = tiny_clip_config().to_dict()
    return {key: config[key] for key in ("text_config", "vision_config", "projection_dim")}


def test_scoring_between_training_steps_leaves_the_model_and_its_caches_trainable():
    """Evaluation and calibration score a model that trains on afterwards (training.finish, a --eval run): what the
    backend caches (text embedding, upsampling matrices of a new input size) must enter autograd later."""
    from inference.torch_backend import TorchBackend

    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, num_refinements=1)
    size = PATCH_SIZE * 7  # an input size no other test uses, so its matrices are made inside the backend call
    pixel_values = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    TorchBackend(model, "cpu")(pixel_values)
    model.train()
    loss = model(pixel_values, labels=torch.zeros(2, size, size)).loss
    loss.backward()
    assert model.prompt_vectors.grad is not None and torch.isfinite(model.prompt_vectors.grad).all()
