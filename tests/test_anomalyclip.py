"""Tests of AnomalyCLIPConfig and AnomalyCLIPForAnomalySegmentation: parity with the official code, and the model."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from run_helpers import run_without_project
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_clip import IMAGE_SIZE, PATCH_SIZE, make_tiny_clip, tiny_clip_config
from transformers import AutoConfig, AutoModel, CLIPConfig

from modeling_clipada import AnomalyCLIPConfig, AnomalyCLIPConfigError, AnomalyCLIPForAnomalySegmentation
from modeling_clipada.modeling_anomalyclip import value_value_attention

FIXTURE = Path(__file__).parent / "fixtures" / "anomalyclip_reference.safetensors"
GRID = IMAGE_SIZE // PATCH_SIZE
TINY_HEAD = {
    "num_prompt_vectors": 4,
    "deep_prompt_length": 2,
    "deep_prompt_depth": 2,
    "dpam_start_layer": 2,
    "feature_layers": [2, 4],
}


class AnomalyCLIPModelTester:
    """Builds tiny models and inputs (transformers' ModelTester pattern)."""

    batch_size = 2

    def __init__(self):
        self.clip, self.tokenizer = make_tiny_clip()

    def model(self, **overrides) -> AnomalyCLIPForAnomalySegmentation:
        torch.manual_seed(1)
        return AnomalyCLIPForAnomalySegmentation.from_clip(self.clip, self.tokenizer, **{**TINY_HEAD, **overrides})

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.zeros(self.batch_size, IMAGE_SIZE, IMAGE_SIZE)
        labels[1, 4:12, 8:20] = 1
        return pixel_values, labels


@pytest.fixture(scope="module")
def tester() -> AnomalyCLIPModelTester:
    return AnomalyCLIPModelTester()


def _tiny_config_fields() -> dict:
    config = tiny_clip_config().to_dict()
    return {key: config[key] for key in ("text_config", "vision_config", "projection_dim")}


# ---------------------------------------------------------------------- parity with the official code


@pytest.fixture(scope="module")
def reference() -> tuple[AnomalyCLIPForAnomalySegmentation, dict, dict]:
    with safe_open(FIXTURE, "pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    model = AnomalyCLIPForAnomalySegmentation(AnomalyCLIPConfig(**json.loads(metadata["config"]))).eval()
    weights = {name.removeprefix("weights."): value.float() for name, value in tensors.items() if "weights." in name}
    model.load_state_dict(weights)
    return model, tensors, metadata


def compare_with_reference(model: AnomalyCLIPForAnomalySegmentation, tensors: dict) -> dict[str, float]:
    """Max abs differences between our model and the official outputs stored in the fixture (gradients: relative to
    the official tensor's largest value).

    Maps and scores come from one batch of all images (the official `test.py` ran them one by one); the loss and the
    gradients from the same batch (the official `train.py`'s computation on it).
    """
    config = model.config
    pixel_values, masks = tensors["inputs.pixel_values"].float(), tensors["inputs.masks"].float()
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values, labels=masks)
        sigma, config.smoothing_sigma = config.smoothing_sigma, 0.0
        unsmoothed = model(pixel_values).anomaly_map
        config.smoothing_sigma = sigma
        text = model.text_embeddings()
    layers = torch.stack([logits.softmax(dim=1).flatten(2).transpose(1, 2) for logits in outputs.layer_logits])
    num_layers = len(config.feature_layers)  # the official map sums the layers, ours is their mean
    ours = {
        "text_embeddings": text,
        "layer_probabilities": layers,
        "anomaly_map_unsmoothed": unsmoothed * num_layers,
        "anomaly_map": outputs.anomaly_map * num_layers,
        "pred_score": outputs.pred_score,
        "image_logits": outputs.logits,
        "loss": outputs.loss,
    }
    differences = {}
    for name, value in ours.items():
        expected = tensors[f"expected.{name}"]
        assert value.shape == expected.shape, (name, value.shape, expected.shape)
        differences[name] = (value - expected).abs().max().item()
    model.zero_grad()
    model.train()
    with torch.enable_grad():
        model(pixel_values, labels=masks).loss.backward()
    parameters = dict(model.named_parameters())
    for key in sorted(key for key in tensors if key.startswith("expected.gradients.")):
        name, expected = key.removeprefix("expected.gradients."), tensors[key]
        relative = (parameters[name].grad - expected).abs() / expected.abs().max()
        differences[f"gradient {name} (relative to its max)"] = relative.max().item()
        differences[f"share of gradient {name} beyond 1e-4"] = (relative > 1e-4).float().mean().item()
    model.zero_grad()
    model.eval()
    return differences


def parity_limit(name: str) -> float:
    """The bound of one `compare_with_reference` entry: outputs 1e-5; gradients 1e-4 relative to the largest official
    value, except that the deep tokens' gradient, which passes through the official float16 rounding of each copy,
    may miss it on at most 2% of its elements, by at most one float16 step (2**-11: a copy's gradient lying within
    float32 noise of a rounding boundary rounds to the neighbour)."""
    if name.startswith("share of gradient"):
        return 0.02
    if name.startswith("gradient"):
        return 2**-11 if "deep_prompts" in name else 1e-4
    return 1e-5


def test_the_fixture_names_the_official_commit_and_stays_small(reference):
    _, tensors, metadata = reference
    assert metadata["official_repository"] == "https://github.com/zqhang/AnomalyCLIP"
    assert len(metadata["official_commit"]) == 40
    assert FIXTURE.stat().st_size < 600_000
    # what the comparison must be able to see: prompts that float16 changes, a batch, resized positions
    deep = tensors["weights.deep_prompts"]
    assert deep.dtype == torch.float32 and (deep.half().float() != deep).float().mean() > 0.99
    assert tensors["inputs.pixel_values"].shape[0] == 4
    config = json.loads(metadata["config"])
    assert tensors["inputs.pixel_values"].shape[-1] != config["vision_config"]["image_size"]


def test_outputs_and_gradients_equal_the_official_code(reference):
    model, tensors, _ = reference
    assert model.config.official_fp16_prompts  # the default
    for name, difference in compare_with_reference(model, tensors).items():
        assert difference <= parity_limit(name), (name, difference)


def test_without_the_official_float16_rounding_the_comparison_fails(reference):
    """The fixture's prompts are not float16-exact, so the comparison above can fail: without the rounding it does."""
    model, tensors, _ = reference
    model.config.official_fp16_prompts = False
    try:
        differences = compare_with_reference(model, tensors)
    finally:
        model.config.official_fp16_prompts = True
    assert differences["text_embeddings"] > 1e-5 and differences["image_logits"] > 1e-5


# ---------------------------------------------------------------------- the model


def test_output_keys_and_shapes(tester):
    model = tester.model().eval()
    pixel_values, labels = tester.inputs()
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels[:, None])  # (B, 1, H, W) is accepted too
        assert model(pixel_values).loss is None
    assert list(outputs.keys()) == ["loss", "logits", "layer_logits", "anomaly_map", "pred_score"]
    assert outputs.loss.shape == () and outputs.logits.shape == (2, 2)
    assert len(outputs.layer_logits) == 2 and all(layer.shape == (2, 2, GRID, GRID) for layer in outputs.layer_logits)
    assert outputs.anomaly_map.shape == (2, IMAGE_SIZE, IMAGE_SIZE)
    assert 0 <= outputs.anomaly_map.min() and outputs.anomaly_map.max() <= 1  # the mean of two feature layers
    torch.testing.assert_close(outputs.pred_score, outputs.logits.softmax(-1)[:, 1])


def test_backward_reaches_only_the_prompts(tester):
    model = tester.model().train()
    pixel_values, labels = tester.inputs()
    model(pixel_values, labels=labels).loss.backward()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"normal_prompt_vectors", "abnormal_prompt_vectors", "deep_prompts"}
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert not model.clip.training


def test_value_value_attention_is_per_head_softmax_of_values(tester):
    layer = tester.clip.vision_model.encoder.layers[0]
    hidden_states = torch.randn(2, 5, 32)
    attention = layer.self_attn
    with torch.no_grad():
        values = attention.v_proj(layer.layer_norm1(hidden_states)).view(2, 5, 4, 8).transpose(1, 2)
        weights = (values @ values.transpose(-1, -2) * 8**-0.5).softmax(-1)
        expected = attention.out_proj((weights @ values).transpose(1, 2).reshape(2, 5, 32))
        torch.testing.assert_close(value_value_attention(layer, hidden_states), expected)


def test_without_dpam_the_features_are_clips_own(tester):
    model = tester.model(dpam_start_layer=5, feature_layers=[3]).eval()
    pixel_values = tester.inputs()[0]
    vision = model.clip.vision_model
    with torch.no_grad():
        global_embedding, (patches,) = model.image_features(pixel_values)
        hidden_states = vision(pixel_values, output_hidden_states=True).hidden_states
        torch.testing.assert_close(
            patches, model.clip.visual_projection(vision.post_layernorm(hidden_states[3][:, 1:]))
        )
        # the class token is projected without post_layernorm, as the official code does
        torch.testing.assert_close(global_embedding, model.clip.visual_projection(hidden_states[4][:, 0]))


def test_dpam_path_sums_value_value_attention_of_the_original_path(tester):
    model = tester.model(dpam_start_layer=3, feature_layers=[4]).eval()
    pixel_values = tester.inputs()[0]
    vision = model.clip.vision_model
    with torch.no_grad():
        hidden_states = vision(pixel_values, output_hidden_states=True).hidden_states
        layers = vision.encoder.layers
        dpam = hidden_states[2] + value_value_attention(layers[2], hidden_states[2])
        dpam = dpam + value_value_attention(layers[3], hidden_states[3])
        _, (patches,) = model.image_features(pixel_values)
        torch.testing.assert_close(patches, model.clip.visual_projection(vision.post_layernorm(dpam[:, 1:])))


def test_positions_are_resized_bilinearly_for_other_sizes(tester):
    model = tester.model().eval()
    embeddings = model.clip.vision_model.embeddings
    with torch.no_grad():
        native = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
        torch.testing.assert_close(model._embed_patches(native), embeddings(native))
        larger = torch.randn(1, 3, IMAGE_SIZE + 2 * PATCH_SIZE, IMAGE_SIZE + 2 * PATCH_SIZE)
        grid = embeddings.position_embedding.weight[1:].reshape(1, GRID, GRID, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(GRID + 2, GRID + 2), mode="bilinear").flatten(2).transpose(1, 2)
        without_positions = embeddings(larger, interpolate_pos_encoding=True) - embeddings.interpolate_pos_encoding(
            embeddings(larger, interpolate_pos_encoding=True), *larger.shape[-2:]
        )
        expected = without_positions[:, 1:] + resized
        torch.testing.assert_close(model._embed_patches(larger)[:, 1:], expected)


def test_text_without_learnable_tokens_equals_clip_text_features(tester):
    # without "." the character tokenizer has no unknown token, which CLIP would pool as its end token
    prompts = {"normal_prompt": "object", "abnormal_prompt": "damaged object"}
    model = tester.model(num_prompt_vectors=0, deep_prompt_length=0, deep_prompt_depth=1, **prompts).eval()
    with torch.no_grad():
        for row, token_ids in enumerate((model.config.normal_prompt_token_ids, model.config.abnormal_prompt_token_ids)):
            expected = tester.clip.get_text_features(input_ids=torch.tensor([token_ids])).pooler_output[0]
            torch.testing.assert_close(model.text_embeddings()[row], F.normalize(expected, dim=-1))


def test_deep_prompts_replace_the_first_prompt_positions_from_the_second_text_layer(tester):
    model = tester.model().eval()
    text_model = model.clip.text_model
    with torch.no_grad():
        model.deep_prompts.normal_()
        token_ids = torch.tensor(model.config.normal_prompt_token_ids)
        embeds = text_model.embeddings.token_embedding(token_ids)
        inputs = torch.cat([embeds[:1], model.normal_prompt_vectors, embeds[1:]])[None]
        hidden_states = text_model.embeddings(inputs_embeds=inputs)
        mask = torch.full((inputs.shape[1],) * 2, float("-inf")).triu(1)[None, None]
        first, second = text_model.encoder.layers
        hidden_states = first(hidden_states, mask)
        # positions 1..deep_prompt_length, before text layer 2, rounded to float16 as the official code does
        hidden_states[0, 1:3] = model.deep_prompts[0].half().float()
        hidden_states = text_model.final_layer_norm(second(hidden_states, mask))
        expected = F.normalize(model.clip.text_projection(hidden_states[0, -1]), dim=-1)
        torch.testing.assert_close(model.text_embeddings()[0], expected)


def test_decisions_with_thresholds(tester):
    model = tester.model(image_threshold=0.5, pixel_threshold=0.6).eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        outputs = model(pixel_values)
        assert tester.model()(pixel_values).pred_label is None
        model.config.category_thresholds = {"disc": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
        per_category = model(pixel_values, categories=["disc", None])
    assert torch.equal(outputs.pred_label, outputs.pred_score >= 0.5)
    assert torch.equal(outputs.pred_mask, outputs.anomaly_map >= 0.6)
    assert torch.equal(outputs.pred_score_normalized >= 0.5, outputs.pred_label)
    assert per_category.pred_label[0] and not per_category.pred_mask[0].any()
    with pytest.raises(ValueError, match="`pixel_threshold` must be a score in \\[0, 1\\]"):
        tester.model(image_threshold=0.5, pixel_threshold=1.5)


def test_bad_inputs_are_errors_naming_them(tester):
    model = tester.model().eval()
    pixel_values, labels = tester.inputs()
    with pytest.raises(ValueError, match="`pixel_values`"):
        model(torch.zeros(1, 4, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.zeros(1, 3, IMAGE_SIZE + 1, IMAGE_SIZE))
    with pytest.raises(ValueError, match="`labels`.*255"):
        model(pixel_values, labels=labels * 255)
    with pytest.raises(ValueError, match="`labels`"):
        model(pixel_values, labels=labels[0])
    with pytest.raises(ValueError, match="normal_prompt_token_ids"):
        AnomalyCLIPForAnomalySegmentation(AnomalyCLIPConfig(**_tiny_config_fields(), **TINY_HEAD))(pixel_values)


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"deep_prompt_depth": 3}, "deep_prompt_depth"),  # the tiny text tower has 2 layers
        ({"deep_prompt_depth": 0}, "deep_prompt_depth"),
        ({"deep_prompt_length": 5}, "deep_prompt_length"),
        ({"dpam_start_layer": 0}, "dpam_start_layer"),
        ({"dpam_start_layer": 6}, "dpam_start_layer"),
        ({"feature_layers": []}, "feature_layers"),
        ({"feature_layers": [4, 2]}, "feature_layers"),
        ({"feature_layers": [5]}, "feature_layers"),
        ({"similarity_temperature": 0.0}, "similarity_temperature"),
        ({"pixel_loss_weight": -1.0}, "pixel_loss_weight"),
        ({"smoothing_sigma": float("nan")}, "smoothing_sigma"),
        ({"normal_prompt_token_ids": [57, 58]}, "normal_prompt_token_ids"),
        ({"num_prompt_vectors": "4"}, "num_prompt_vectors"),
        ({"feature_layers": [2.0]}, "feature_layers"),
        ({"official_fp16_prompts": 1}, "official_fp16_prompts"),
    ],
)
def test_invalid_config_values_name_the_field(overrides, field):
    with pytest.raises(AnomalyCLIPConfigError, match=f"`{field}`"):
        AnomalyCLIPConfig(**_tiny_config_fields(), **{**TINY_HEAD, **overrides})


def test_head_field_names_are_the_fields_added_to_clip_config():
    names = AnomalyCLIPConfig.head_field_names()
    assert names[:2] == ("num_prompt_vectors", "normal_prompt") and "image_threshold" not in names
    assert not set(names) & set(CLIPConfig().to_dict())


def test_published_setting_defaults_and_trainable_parameters():
    """ViT-L/14@336 shapes: 2 x 12 x 768 prompt vectors + 8 x 4 x 768 deep tokens (see docs/anomalyclip.md)."""
    config = AnomalyCLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
        vision_config={
            **{"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24},
            **{"image_size": 336, "patch_size": 14},
        },
        projection_dim=768,
    )
    assert (config.dpam_start_layer, config.feature_layers, config.deep_prompt_depth) == (6, [24], 9)
    with torch.device("meta"):
        model = AnomalyCLIPForAnomalySegmentation(config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 12 * 768 + 8 * 4 * 768 == 43_008


# ---------------------------------------------------------------------- saving and the Hub path


def test_save_and_from_pretrained_round_trip_and_auto_classes(tester, tmp_path):
    model = tester.model().eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "anomalyclip"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, AnomalyCLIPForAnomalySegmentation)
    with torch.no_grad():
        outputs = reloaded(pixel_values)
    assert (outputs.anomaly_map - expected.anomaly_map).abs().max() <= 1e-5
    assert (outputs.pred_score - expected.pred_score).abs().max() <= 1e-5
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "deep_prompts"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks.*deep_prompts"):
        AnomalyCLIPForAnomalySegmentation.from_pretrained(tmp_path)


@pytest.mark.slow
def test_saved_checkpoint_loads_with_trust_remote_code_where_the_project_is_not_importable(tester, tmp_path):
    model = tester.model().eval()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_anomalyclip.AnomalyCLIPConfig",
        "AutoModel": "modeling_anomalyclip.AnomalyCLIPForAnomalySegmentation",
    }
    pixel_values = tester.inputs()[0]
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        torch.save(model(pixel_values).anomaly_map, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            anomaly_map = model(torch.load({str(tmp_path / "pixel_values.pt")!r})).anomaly_map
        difference = (anomaly_map - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        print(type(model).__name__, difference)
        assert difference <= 1e-5, difference
        """
    )
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AnomalyCLIPForAnomalySegmentation" in result.stdout
