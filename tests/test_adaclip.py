"""Tests of AdaCLIPConfig and AdaCLIPForAnomalySegmentation: parity with the official code, and the model."""

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

from modeling_clipada import AdaCLIPConfig, AdaCLIPConfigError, AdaCLIPForAnomalySegmentation
from modeling_clipada.adaclip_fusion import (
    farthest_point_centres,
    hybrid_semantic_fusion,
    kmeans_labels,
    kmeans_plus_plus_centres,
)
from modeling_clipada.adaclip_prompts import hybrid_prompts

FIXTURE = Path(__file__).parent / "fixtures" / "adaclip_reference.safetensors"
GRID = IMAGE_SIZE // PATCH_SIZE
TINY_HEAD = {"prompt_length": 2, "prompt_depth": 2, "hsf_num_clusters": 4, "hsf_num_patches": 20}


def our_intermediates(model: AdaCLIPForAnomalySegmentation, pixel_values: torch.Tensor, class_names: list[str]):
    """Text embeddings `(B, 2, C)`, normalised patch embeddings and patch logits `(B, N, 2)` of every layer."""
    dynamic_text, dynamic_visual = model.generate_dynamic_prompts(pixel_values)
    visual_prompts = hybrid_prompts(model.static_visual_prompts, dynamic_visual, model.config.prompt_depth)
    _, patch_tokens = model.image_features(pixel_values, visual_prompts)
    patches = [F.normalize(projection(t), dim=-1) for projection, t in zip(model.patch_projections, patch_tokens)]
    text = model.text_embeddings(class_names, dynamic_text)
    logits = [model.config.similarity_scale * p @ text.transpose(1, 2) for p in patches]
    return text, patches, logits


def compare_with_reference(
    model: AdaCLIPForAnomalySegmentation, tensors: dict, class_names: list[str]
) -> dict[str, float]:
    """Max abs differences between our model and the official outputs stored in the fixture (gradients: relative to
    the official tensor's largest value).

    Maps and scores come from one batch of all images (the official code ran them one by one); the loss of each
    image from a batch of one, the batch loss from all images at once (it must be their mean); the gradients from
    the batch (times its size: the official ones are the sum of its single-image passes).
    """
    config = model.config
    pixel_values, masks = tensors["inputs.pixel_values"].float(), tensors["inputs.masks"].float()
    model.eval()
    with torch.no_grad():
        outputs = model(pixel_values, labels=masks, categories=class_names)
        sigma, config.smoothing_sigma = config.smoothing_sigma, 0.0
        unsmoothed = model(pixel_values, categories=class_names).anomaly_map
        config.smoothing_sigma = sigma
        text, patches, logits = our_intermediates(model, pixel_values, class_names)
        scores = torch.stack(logits).mean(dim=0).softmax(dim=-1)[..., 1]
        top = scores.topk(config.hsf_num_patches, dim=1).indices[..., None].expand(-1, -1, patches[0].shape[-1])
        points = torch.cat([p.gather(1, top) for p in patches], dim=-1)
        labels = kmeans_labels(points, config.hsf_num_clusters, config.hsf_max_iterations, config.hsf_tolerance)
        fused = hybrid_semantic_fusion(
            patches, logits, config.hsf_num_clusters, config.hsf_num_patches, config.hsf_max_iterations,
            config.hsf_tolerance,
        )  # fmt: skip
        single_losses = torch.stack(
            [
                model(pixel_values[i : i + 1], labels=masks[i : i + 1], categories=class_names[i : i + 1]).loss
                for i in range(len(pixel_values))
            ]
        )
    ours = {
        "text_embeddings": text,
        "layer_probabilities": torch.stack(logits).softmax(dim=-1),
        "hsf_features": fused,
        "kmeans_labels": labels.to(torch.uint8),
        "anomaly_map_unsmoothed": unsmoothed,
        "anomaly_map": outputs.anomaly_map,
        "pred_score": outputs.pred_score,
        "loss_per_image": single_losses,
    }
    differences = {}
    for name, value in ours.items():
        expected = tensors[f"expected.{name}"]
        assert value.shape == expected.shape, (name, value.shape, expected.shape)
        differences[name] = (value.float() - expected.float()).abs().max().item()
    differences["loss (batch = mean of images)"] = (
        (outputs.loss - tensors["expected.loss_per_image"].mean()).abs().item()
    )
    model.zero_grad()
    model.train()
    with torch.enable_grad():
        (model(pixel_values, labels=masks, categories=class_names).loss * len(pixel_values)).backward()
    parameters = dict(model.named_parameters())
    for key in sorted(key for key in tensors if key.startswith("expected.gradients.")):
        name, expected = key.removeprefix("expected.gradients."), tensors[key]
        relative = (parameters[name].grad - expected).abs() / expected.abs().max()
        differences[f"gradient {name} (relative to its max)"] = relative.max().item()
        differences[f"share of gradient {name} beyond 1e-4"] = (relative > 1e-4).float().mean().item()
    model.zero_grad()
    model.eval()
    return differences


class AdaCLIPModelTester:
    """Builds tiny models and inputs (transformers' ModelTester pattern)."""

    batch_size = 3
    categories = ["disc", None, "disc"]

    def __init__(self):
        self.clip, self.tokenizer = make_tiny_clip()

    def model(self, **overrides) -> AdaCLIPForAnomalySegmentation:
        torch.manual_seed(1)
        head = {**TINY_HEAD, **overrides}
        return AdaCLIPForAnomalySegmentation.from_clip(self.clip, self.tokenizer, class_names=["disc"], **head)

    def inputs(self, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pixel_values = torch.randn(self.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        labels = torch.zeros(self.batch_size, IMAGE_SIZE, IMAGE_SIZE)
        labels[1, 4:12, 8:20] = 1
        labels[2, 20:30, 2:9] = 1
        return pixel_values, labels


@pytest.fixture(scope="module")
def tester() -> AdaCLIPModelTester:
    return AdaCLIPModelTester()


def _tiny_config_fields() -> dict:
    config = tiny_clip_config().to_dict()
    return {key: config[key] for key in ("text_config", "vision_config", "projection_dim")}


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


# ---------------------------------------------------------------------- parity with the official code


@pytest.fixture(scope="module")
def reference() -> tuple[AdaCLIPForAnomalySegmentation, dict, dict]:
    with safe_open(FIXTURE, "pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    model = AdaCLIPForAnomalySegmentation(AdaCLIPConfig(**json.loads(metadata["config"]))).eval()
    weights = {name.removeprefix("weights."): value.float() for name, value in tensors.items() if "weights." in name}
    model.load_state_dict(weights)
    return model, tensors, metadata


def test_the_fixture_names_the_official_commit_and_stays_small(reference):
    _, _, metadata = reference
    assert metadata["official_repository"] == "https://github.com/caoyunkang/AdaCLIP"
    assert len(metadata["official_commit"]) == 40
    assert FIXTURE.stat().st_size < 700_000


def parity_limit(name: str) -> float:
    """The bound of one `compare_with_reference` entry: outputs 1e-5; gradients 1e-4 relative to the largest official
    value, except that a gradient passing through the official float16 rounding of the prompt copies (prompts and
    their generators) may miss it on at most 2% of its elements, by at most one float16 step (2**-11: a copy's
    gradient lying within float32 noise of a rounding boundary rounds to the neighbour)."""
    if name.startswith("share of gradient"):
        return 0.02
    if name.startswith("gradient"):
        return 2**-11 if "prompt" in name else 1e-4
    return 1e-5


def test_maps_scores_hsf_loss_and_gradients_equal_the_official_code(reference):
    model, tensors, metadata = reference
    assert model.config.official_fp16_prompts  # the default
    class_names = json.loads(metadata["class_names"])
    differences = compare_with_reference(model, tensors, class_names)
    for name, difference in differences.items():
        assert difference <= parity_limit(name), (name, difference)
    assert tensors["expected.pred_score"].std() > 0.01  # the images are told apart: the comparison can fail


def test_the_fixture_has_prompts_float16_changes_a_batch_two_class_names_and_resized_positions(reference):
    _, tensors, metadata = reference
    for name in ("static_text_prompts", "static_visual_prompts", "dynamic_text_prompt_generator.weight"):
        weights = tensors[f"weights.{name}"]
        assert weights.dtype == torch.float32 and (weights.half().float() != weights).float().mean() > 0.99, name
    assert tensors["inputs.pixel_values"].shape[0] == 4 and len(set(json.loads(metadata["class_names"]))) == 2
    config = json.loads(metadata["config"])
    assert tensors["inputs.pixel_values"].shape[-1] != config["vision_config"]["image_size"]


def test_without_the_official_float16_rounding_the_comparison_fails(reference):
    model, tensors, metadata = reference
    model.config.official_fp16_prompts = False
    try:
        differences = compare_with_reference(model, tensors, json.loads(metadata["class_names"]))
    finally:
        model.config.official_fp16_prompts = True
    assert differences["text_embeddings"] > 1e-5 and differences["pred_score"] > 1e-5


def test_kmeans_plus_plus_start_is_seeded_and_its_scores_spread_as_the_official_ones(reference):
    """The official random start (`hsf_init="k-means++"`): a seed repeats its draw; over 20 seeds the mean score of
    every image lies within the official scores' range over 20 random starts (the fixture's
    `official_random_start_scores`), and the draws differ."""
    model, tensors, metadata = reference
    class_names = json.loads(metadata["class_names"])
    pixel_values = tensors["inputs.pixel_values"].float()
    official = tensors["expected.official_random_start_scores"]
    model.config.hsf_init = "k-means++"
    try:
        with torch.no_grad():
            scores = []
            for seed in range(official.shape[0]):
                model.config.hsf_seed = seed
                scores.append(model(pixel_values, categories=class_names).pred_score)
            repeated = model(pixel_values, categories=class_names).pred_score
    finally:
        model.config.hsf_init, model.config.hsf_seed = "farthest_point", None
    scores = torch.stack(scores)
    assert torch.equal(repeated, scores[-1])
    assert (scores.max(0).values - scores.min(0).values > 1e-4).all()  # the draws differ
    mean = scores.mean(dim=0)
    assert ((official.min(0).values <= mean) & (mean <= official.max(0).values)).all(), (mean, official)


def test_kmeans_equals_scikit_learn_from_the_same_start():
    cluster = pytest.importorskip("sklearn.cluster")
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 6, 8, generator=generator) * 2
    points = centres.repeat_interleave(7, dim=1) + torch.randn(3, 42, 8, generator=generator)
    labels = kmeans_labels(points, num_clusters=6, max_iterations=300, tolerance=1e-4)
    start = farthest_point_centres(points - points.mean(dim=1, keepdim=True), 6) + points.mean(dim=1, keepdim=True)
    for image in range(3):
        expected = cluster.KMeans(n_clusters=6, init=start[image].numpy(), n_init=1).fit_predict(points[image].numpy())
        assert labels[image].tolist() == expected.tolist()


def test_kmeans_plus_plus_start_picks_one_point_of_every_separated_cluster():
    generator = torch.Generator().manual_seed(4)
    centres = torch.randn(2, 5, 3, generator=generator) * 100
    points = centres.repeat_interleave(6, dim=1) + torch.randn(2, 30, 3, generator=generator)
    start = kmeans_plus_plus_centres(points, 5, torch.Generator().manual_seed(0))
    chosen = (start[:, :, None] == points[:, None]).all(-1).float().argmax(-1)  # (B, K) index of each start point
    assert (chosen // 6).sort(dim=1).values.tolist() == [[0, 1, 2, 3, 4]] * 2  # one per cluster (D^2 draws)
    again = kmeans_plus_plus_centres(points, 5, torch.Generator().manual_seed(0))
    assert torch.equal(start, again)
    labels = kmeans_labels(points, 5, 300, 1e-4, init="k-means++", generator=torch.Generator().manual_seed(1))
    assert (labels.view(2, 5, 6) == labels.view(2, 5, 6)[..., :1]).all()  # the clusters found


def test_hsf_is_the_mean_of_the_cluster_centres_of_the_top_patches():
    # two layers, four patches; the two most abnormal (0 and 2) form one cluster each
    first = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]]]), dim=-1)
    second = F.normalize(torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.6, 0.8]]]), dim=-1)
    logits = torch.tensor([[[0.0, 3.0], [0.0, -1.0], [0.0, 2.0], [0.0, -2.0]]])
    fused = hybrid_semantic_fusion([first, second], [logits, logits], 2, 2, 300, 1e-4)
    centres = torch.stack([(first[0, 0] + second[0, 0]) / 2, (first[0, 2] + second[0, 2]) / 2])
    torch.testing.assert_close(fused[0], F.normalize(centres.mean(dim=0), dim=0))


# ---------------------------------------------------------------------- the model


def test_output_keys_and_shapes(tester):
    model = tester.model().eval()
    pixel_values, labels = tester.inputs()
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels[:, None], categories=tester.categories)  # (B, 1, H, W) too
        assert model(pixel_values).loss is None
    assert list(outputs.keys()) == ["loss", "logits", "layer_logits", "anomaly_map", "pred_score"]
    assert outputs.loss.shape == () and outputs.logits.shape == (3, 2)
    assert len(outputs.layer_logits) == 4 and all(layer.shape == (3, 2, GRID, GRID) for layer in outputs.layer_logits)
    assert model.config.feature_layers == [1, 2, 3, 4]
    assert outputs.anomaly_map.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert 0 <= outputs.anomaly_map.min() and outputs.anomaly_map.max() <= 1
    torch.testing.assert_close(outputs.pred_score, outputs.logits.softmax(-1)[:, 1])


def test_backward_reaches_only_the_head(tester):
    model = tester.model().train()
    pixel_values, labels = tester.inputs()
    model(pixel_values, labels=labels, categories=tester.categories).loss.backward()
    trainable = _trainable(model)
    assert {name.split(".")[0] for name in trainable} == {
        "static_text_prompts",
        "static_visual_prompts",
        "dynamic_text_prompt_generator",
        "dynamic_visual_prompt_generator",
        "patch_projections",
        "class_projection",
    }
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert not model.clip.training


def test_a_batch_gives_each_image_its_own_dynamic_prompts_and_its_single_image_outputs(tester):
    model = tester.model().eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        batch = model(pixel_values, categories=tester.categories)
        for index in range(3):
            single = model(pixel_values[index : index + 1], categories=tester.categories[index : index + 1])
            torch.testing.assert_close(batch.anomaly_map[index], single.anomaly_map[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch.pred_score[index], single.pred_score[0], atol=1e-5, rtol=0)
        text, visual = model.generate_dynamic_prompts(pixel_values)
    assert text.shape == (3, 2, 32) and visual.shape == (3, 2, 32)
    assert (text[0] - text[1]).abs().max() > 1e-3  # per image, not shared


def test_batch_gradients_equal_the_sum_of_single_image_gradients(tester):
    """Batch size 3 (what the official training refuses): the batch loss is the mean of the images' losses. Without
    the float16 rounding of the prompt copies, whose gradients round differently once divided by 3."""
    model = tester.model(official_fp16_prompts=False).train()
    pixel_values, labels = tester.inputs()
    model(pixel_values, labels=labels, categories=tester.categories).loss.backward()
    batch = {name: parameter.grad.clone() * 3 for name, parameter in _trainable(model).items()}
    model.zero_grad()
    for index in range(3):
        window = slice(index, index + 1)
        model(pixel_values[window], labels=labels[window], categories=tester.categories[window]).loss.backward()
    for name, parameter in _trainable(model).items():
        scale = parameter.grad.abs().max()
        assert (batch[name] - parameter.grad).abs().max() <= 1e-5 * scale, name


def test_static_only_ablation_has_no_prompt_generators(tester):
    model = tester.model(dynamic_prompts=False).eval()
    assert model.dynamic_text_prompt_generator is None and model.dynamic_visual_prompt_generator is None
    assert model.generate_dynamic_prompts(tester.inputs()[0]) == (None, None)
    with torch.no_grad():
        assert model(tester.inputs()[0]).anomaly_map.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_without_prompts_the_features_are_clips_own(tester):
    templates = {"normal_states": ["{}"], "abnormal_states": ["broken {}"], "prompt_templates": ["a {}"]}
    model = tester.model(text_prompts=False, visual_prompts=False, **templates).eval()
    pixel_values = tester.inputs()[0]
    vision = model.clip.vision_model
    with torch.no_grad():
        class_embedding, patch_tokens = model.image_features(pixel_values, None)
        hidden_states = vision(pixel_values, output_hidden_states=True).hidden_states
        for layer, tokens in zip(model.config.feature_layers, patch_tokens):
            torch.testing.assert_close(tokens, hidden_states[layer][:, 1:])
        torch.testing.assert_close(class_embedding, model.clip.get_image_features(pixel_values).pooler_output)
        text = model.text_embeddings(["disc"], None)[0]
        for row, token_ids in enumerate(model.config.prompt_token_ids["disc"]):
            expected = model.clip.get_text_features(input_ids=torch.tensor([token_ids])).pooler_output[0]
            torch.testing.assert_close(text[row], F.normalize(expected, dim=-1))


def test_visual_prompts_follow_the_patch_tokens_and_are_replaced_up_to_the_depth(tester):
    model = tester.model(text_prompts=False, dynamic_prompts=False).eval()
    pixel_values = tester.inputs()[0][:1]
    vision = model.clip.vision_model
    with torch.no_grad():
        prompts = model.static_visual_prompts
        hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
        tokens = hidden.shape[1]
        for index, layer in enumerate(vision.encoder.layers):
            if index < 2:  # prompt_depth: appended before layer 1, replaced before layer 2, then carried
                hidden = torch.cat([hidden[:, :tokens], prompts[index][None]], dim=1)
            hidden = layer(hidden, None)
        _, patch_tokens = model.image_features(pixel_values, prompts)
        torch.testing.assert_close(patch_tokens[-1], hidden[:, 1:tokens])


def test_decisions_with_thresholds(tester):
    model = tester.model(image_threshold=0.5, pixel_threshold=0.6).eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        outputs = model(pixel_values)
        assert tester.model()(pixel_values).pred_label is None
        model.config.category_thresholds = {"disc": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
        per_category = model(pixel_values, categories=tester.categories)
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
    with pytest.raises(ValueError, match="`categories` must hold one entry per image"):
        model(pixel_values, categories=["disc"])
    with pytest.raises(ValueError, match="No prompt token ids for the class names \\['ring'\\].*add_class_names"):
        model(pixel_values, categories=["ring", None, "disc"])
    model.add_class_names(["ring"], tester.tokenizer)
    with torch.no_grad():
        assert model(pixel_values, categories=["ring", None, "disc"]).pred_score.shape == (3,)


def test_a_backend_without_a_tokenizer_refuses_a_new_category_and_leaves_the_config_alone(tester):
    """Evaluation and calibration wrap the model at hand; a category it never saw is an error naming it, never
    prompts of made-up token ids."""
    from inference.loading import ModelLoadError
    from inference.torch_backend import TorchBackend

    model = tester.model().eval()
    pixel_values, _ = tester.inputs()
    known = dict(model.config.prompt_token_ids)
    with pytest.raises(ModelLoadError, match=r"has not seen \['ring'\]"):
        TorchBackend(model, "cpu")(pixel_values, ["ring", None, "disc"])
    assert model.config.prompt_token_ids == known


# ---------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"prompt_depth": 3}, "prompt_depth"),  # the tiny text tower has 2 layers
        ({"prompt_depth": 0}, "prompt_depth"),
        ({"prompt_length": 0}, "prompt_length"),
        ({"static_prompts": False, "dynamic_prompts": False}, "static_prompts"),
        ({"feature_layers": [4, 2]}, "feature_layers"),
        ({"feature_layers": [5]}, "feature_layers"),
        ({"normal_states": ["flawless"]}, "normal_states"),
        ({"prompt_token_ids": {"disc": [[57, 58]]}}, "prompt_token_ids\\['disc'\\]"),
        ({"hsf_weight": 1.5}, "hsf_weight"),
        ({"hsf_num_clusters": 0}, "hsf_num_clusters"),
        ({"similarity_scale": 0.0}, "similarity_scale"),
        ({"dice_unit": "pixel"}, "dice_unit"),
        ({"smoothing_sigma": float("nan")}, "smoothing_sigma"),
        ({"prompt_length": "5"}, "prompt_length"),
        ({"hsf_init": "random"}, "hsf_init"),
        ({"hsf_seed": -1}, "hsf_seed"),
        ({"official_fp16_prompts": "yes"}, "official_fp16_prompts"),
    ],
)
def test_invalid_config_values_name_the_field(overrides, field):
    with pytest.raises(AdaCLIPConfigError, match=f"`{field}`"):
        AdaCLIPConfig(**_tiny_config_fields(), **{**TINY_HEAD, **overrides})


def test_head_field_names_are_the_fields_added_to_clip_config():
    names = AdaCLIPConfig.head_field_names()
    assert names[:2] == ("prompt_length", "prompt_depth") and "image_threshold" not in names
    assert not set(names) & set(CLIPConfig().to_dict())


def test_published_setting_defaults_and_trainable_parameters():
    """ViT-L/14@336: the official 10,665,472 less its text layer-1 static prompt, which it never uses (5 x 768)."""
    config = AdaCLIPConfig(
        text_config={"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
        vision_config={
            **{"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24},
            **{"image_size": 336, "patch_size": 14},
        },
        projection_dim=768,
    )
    assert (config.prompt_length, config.prompt_depth, config.feature_layers) == (5, 4, [6, 12, 18, 24])
    assert (config.num_sentences, config.hsf_num_clusters, config.hsf_num_patches) == (48, 20, 100)
    with torch.device("meta"):
        model = AdaCLIPForAnomalySegmentation(config)
    trainable = sum(p.numel() for p in _trainable(model).values())
    assert trainable == 10_665_472 - 5 * 768 == 10_661_632


# ---------------------------------------------------------------------- saving and the Hub path


def test_save_and_from_pretrained_round_trip_and_auto_classes(tester, tmp_path):
    model = tester.model().eval()
    pixel_values = tester.inputs()[0]
    with torch.no_grad():
        expected = model(pixel_values, categories=tester.categories)
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "adaclip"
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, AdaCLIPForAnomalySegmentation)
    assert reloaded.config.text_config.hidden_act == "gelu"  # the official towers' activation, kept
    with torch.no_grad():
        outputs = reloaded(pixel_values, categories=tester.categories)
    assert (outputs.anomaly_map - expected.anomaly_map).abs().max() <= 1e-5
    assert (outputs.pred_score - expected.pred_score).abs().max() <= 1e-5
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k != "static_text_prompts"}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks.*static_text_prompts"):
        AdaCLIPForAnomalySegmentation.from_pretrained(tmp_path)


@pytest.mark.slow
def test_saved_checkpoint_loads_with_trust_remote_code_where_the_project_is_not_importable(tester, tmp_path):
    model = tester.model().eval()
    model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_adaclip.AdaCLIPConfig",
        "AutoModel": "modeling_adaclip.AdaCLIPForAnomalySegmentation",
    }
    pixel_values = tester.inputs()[0]
    torch.save(pixel_values, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        torch.save(model(pixel_values, categories=tester.categories).anomaly_map, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            pixel_values = torch.load({str(tmp_path / "pixel_values.pt")!r})
            anomaly_map = model(pixel_values, categories={tester.categories!r}).anomaly_map
        difference = (anomaly_map - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        print(type(model).__name__, difference)
        assert difference <= 1e-5, difference
        """
    )
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AdaCLIPForAnomalySegmentation" in result.stdout
