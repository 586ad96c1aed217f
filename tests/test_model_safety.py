"""Damaged checkpoints, hostile config values, non-finite scores and mistyped model paths (issue 19, items 6, 13, 17
and 21): each is one clear error naming the tensor, field, flag or folder, never a traceback or a silent OK."""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tiny_clip import IMAGE_SIZE, PATCH_SIZE, make_tiny_clip, tiny_clip_config

from inference import loading, predict
from inference.command_line import threads_argument
from inference.devices import available_cores, configure_threads
from inference.loading import ModelLoadError, check_model_location, load_clipada_model, load_processor
from inference.modes import load_processors
from inference.scoring import ScoredImages
from inference.torch_backend import TorchBackend
from modeling_clipada import (
    AdaCLIPConfig,
    AdaCLIPForAnomalySegmentation,
    AnomalyCLIPConfig,
    AnomalyCLIPForAnomalySegmentation,
    CLIPADAConfig,
    CLIPADAForAnomalySegmentation,
)
from modeling_clipada.decisions import NonFiniteScoreError, apply_thresholds, normalize_scores, reaches
from processing import CLIPADAImageProcessor

TINY_HEADS = {
    CLIPADAForAnomalySegmentation: {"feature_layer": 3, "image_score_top_k": 16, "smoothing_sigma": 1.0},
    AnomalyCLIPForAnomalySegmentation: {
        "num_prompt_vectors": 4,
        "deep_prompt_length": 2,
        "deep_prompt_depth": 2,
        "dpam_start_layer": 2,
        "feature_layers": [2, 4],
    },
    AdaCLIPForAnomalySegmentation: {
        "prompt_length": 2,
        "prompt_depth": 2,
        "hsf_num_clusters": 4,
        "hsf_num_patches": 20,
        "class_names": ["disc"],
    },
}
NAN = float("nan")


def _checkpoint(folder: Path, model_class=CLIPADAForAnomalySegmentation, **config) -> Path:
    """A tiny calibrated checkpoint of `model_class` with its processor and tokenizer."""
    clip, tokenizer = make_tiny_clip()
    model = model_class.from_clip(clip, tokenizer, **TINY_HEADS[model_class])
    with torch.no_grad():  # a head away from its initial values, as training would leave it
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    for name, value in {"image_threshold": 0.5, "pixel_threshold": 0.5, **config}.items():
        setattr(model.config, name, value)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A calibrated CLIP-ADA checkpoint; copy it before damaging it."""
    return _checkpoint(tmp_path_factory.mktemp("safety") / "run")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(2):
        pixels = (rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def _copy(checkpoint: Path, folder: Path) -> Path:
    folder.mkdir()
    for file in checkpoint.iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    return folder


def _edit_weights(folder: Path, edit) -> Path:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def _edit_config(folder: Path, **fields) -> Path:
    config = json.loads((folder / "config.json").read_text())
    for key, value in fields.items():
        tower, _, name = key.rpartition("__")
        (config[tower] if tower else config)[name] = value
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _with_value(name: str, value: float):
    def edit(weights):
        weights[name] = weights[name].clone()
        weights[name].view(-1)[0] = value

    return edit


def _run_predict(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(argument) for argument in argv])
    return exit_info.value.code, capsys.readouterr().err


# ------------------------------------------------------------------ item 6: NaN weights, NaN scores


@pytest.mark.parametrize(
    "tensor, value",
    [
        ("prompt_vectors", NAN),
        ("prompt_vectors", float("inf")),
        ("similarity_logit_scale", NAN),
        ("clip.vision_model.embeddings.patch_embedding.weight", NAN),
        ("clip.text_projection.weight", float("-inf")),
    ],
)
def test_loading_refuses_non_finite_weights_naming_the_tensor(checkpoint, tmp_path, tensor, value):
    damaged = _edit_weights(_copy(checkpoint, tmp_path / "damaged"), _with_value(tensor, value))
    with pytest.raises(ValueError, match="NaN or infinite") as error:
        CLIPADAForAnomalySegmentation.from_pretrained(damaged)
    assert tensor in str(error.value) and str(damaged) in str(error.value)


@pytest.mark.parametrize("model_class", [AnomalyCLIPForAnomalySegmentation, AdaCLIPForAnomalySegmentation])
def test_every_family_refuses_non_finite_weights(tmp_path, model_class):
    folder = _checkpoint(tmp_path / "run", model_class)
    trained = sorted(name for name in load_file(folder / "model.safetensors") if not name.startswith("clip."))[0]
    _edit_weights(folder, _with_value(trained, NAN))
    with pytest.raises(ValueError, match=f"NaN or infinite.*{trained}"):
        model_class.from_pretrained(folder)


def test_predict_with_a_nan_checkpoint_is_a_usage_error_not_a_column_of_ok(checkpoint, images, tmp_path, capsys):
    damaged = _edit_weights(_copy(checkpoint, tmp_path / "damaged"), _with_value("prompt_vectors", NAN))
    code, err = _run_predict(capsys, images, "--model_name_or_path", damaged, "--output_dir", tmp_path / "out")
    assert code == 2 and err.startswith("error: ") and "prompt_vectors" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "predictions.csv").exists()


@pytest.mark.parametrize(
    "scores",
    [
        pytest.param(np.float32(NAN), id="numpy nan"),
        pytest.param(np.array([0.2, np.inf], dtype=np.float32), id="numpy inf"),
        pytest.param(-np.inf, id="python -inf"),
        pytest.param(torch.tensor([0.9, NAN]), id="torch nan"),
        pytest.param(torch.tensor([NAN], dtype=torch.bfloat16), id="torch bfloat16 nan"),
    ],
)
def test_a_non_finite_score_is_never_a_decision(scores):
    with pytest.raises(NonFiniteScoreError, match="1 of .* NaN or infinite"):
        reaches(scores, 0.5)
    with pytest.raises(NonFiniteScoreError):
        normalize_scores(scores, 0.5)


def test_a_non_finite_threshold_is_refused_rather_than_making_everything_ok():
    with pytest.raises(NonFiniteScoreError, match="threshold"):
        reaches(np.float32(0.9), NAN)
    with pytest.raises(NonFiniteScoreError, match="threshold"):
        reaches(torch.tensor([0.9, 0.1]), [0.5, float("inf")])
    with pytest.raises(NonFiniteScoreError, match="threshold"):
        normalize_scores(np.float32(0.9), NAN)


def test_a_nan_pixel_of_the_map_is_refused_by_apply_thresholds():
    anomaly_map = np.zeros((1, 2, 2), dtype=np.float32)
    anomaly_map[0, 1, 1] = NAN
    with pytest.raises(NonFiniteScoreError, match="anomaly map value"):
        apply_thresholds(anomaly_map, np.array([0.3], dtype=np.float32), 0.5, 0.5)
    with pytest.raises(NonFiniteScoreError, match="anomaly map value"):
        apply_thresholds(torch.from_numpy(anomaly_map), torch.tensor([0.3]), 0.5, torch.tensor([0.5]))


def test_finite_scores_decide_as_before():
    label, mask = apply_thresholds(np.array([[[0.2, 0.5]]]), np.array([0.5]), 0.5, 0.5)
    assert label.tolist() == [True] and mask.tolist() == [[[False, True]]]
    assert reaches(np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="numbers"):
        reaches(np.array(["0.7"]), 0.5)


def test_a_calibrated_model_raises_for_nan_scores_and_the_backend_gets_them_to_decide_per_image(checkpoint):
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    pixel_values = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    pixel_values[1] = NAN  # e.g. a preprocessor whose image_std is 0
    with torch.no_grad(), pytest.raises(NonFiniteScoreError):
        model(pixel_values)
    with torch.no_grad():
        undecided = model(pixel_values, decide=False)
    assert undecided.pred_label is None and torch.isnan(undecided.pred_score[1])
    output = TorchBackend(model, device="cpu")(pixel_values)
    scored = ScoredImages(anomaly_maps=list(output.anomaly_map), scores=output.pred_score)
    assert scored.non_finite == [1] and np.isfinite(output.pred_score[0])


def test_decisions_inside_an_exported_graph_are_left_to_the_reader_of_pred_score():
    class Decide(torch.nn.Module):
        def forward(self, anomaly_map, pred_score, image_threshold, pixel_threshold):
            return apply_thresholds(anomaly_map, pred_score, image_threshold, pixel_threshold)

    inputs = (torch.rand(2, 4, 4), torch.rand(2), torch.full((2,), 0.5), torch.full((2,), 0.5))
    program = torch.export.export(Decide(), inputs, strict=False)
    label, mask = program.module()(*inputs)
    assert torch.equal(label, inputs[1] >= 0.5) and torch.equal(mask, inputs[0] >= 0.5)


# ------------------------------------------------------------------ item 13: weights stored in the wrong dtype


@pytest.mark.parametrize(
    "tensor, dtype, name",
    [
        ("prompt_vectors", torch.int64, "int64"),
        ("prompt_vectors", torch.int32, "int32"),
        ("prompt_vectors", torch.bool, "bool"),
        ("patch_projections.0.weight", torch.uint8, "uint8"),
        ("clip.visual_projection.weight", torch.int8, "int8"),
    ],
)
def test_loading_refuses_floating_tensors_stored_as_integers_naming_tensor_file_and_dtype(
    checkpoint, tmp_path, tensor, dtype, name
):
    def to_integers(weights):
        weights[tensor] = (weights[tensor] * 10).to(dtype)

    damaged = _edit_weights(_copy(checkpoint, tmp_path / "damaged"), to_integers)
    with pytest.raises(ValueError, match=f"{tensor} is {name} in .*model.safetensors"):
        CLIPADAForAnomalySegmentation.from_pretrained(damaged)


def test_a_sharded_checkpoint_is_checked_shard_by_shard(checkpoint, tmp_path):
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "sharded" / index["weight_map"]["prompt_vectors"]
    weights = load_file(shard)
    weights["prompt_vectors"] = weights["prompt_vectors"].to(torch.int64)
    save_file(weights, shard, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"prompt_vectors is int64 in {shard}"):
        CLIPADAForAnomalySegmentation.from_pretrained(tmp_path / "sharded")


def test_half_precision_weights_still_load(checkpoint, tmp_path):
    def to_half(weights):
        weights["prompt_vectors"] = weights["prompt_vectors"].half()

    folder = _edit_weights(_copy(checkpoint, tmp_path / "half"), to_half)
    assert CLIPADAForAnomalySegmentation.from_pretrained(folder).prompt_vectors.dtype == torch.float32


@pytest.mark.parametrize(
    "model_class", [CLIPADAForAnomalySegmentation, AnomalyCLIPForAnomalySegmentation, AdaCLIPForAnomalySegmentation]
)
def test_a_loaded_checkpoint_keeps_its_clip_frozen(tmp_path, model_class):
    folder = _checkpoint(tmp_path / model_class.__name__, model_class)
    model = model_class.from_pretrained(folder)
    trainable = {name.split(".")[0] for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and "clip" not in trainable  # only the head trains when a run starts from a checkpoint


# ------------------------------------------------------------------ item 17: config values and flags


def _tiny_fields() -> dict:
    fields = tiny_clip_config().to_dict()
    for key in ("architectures", "model_type", "transformers_version", "dtype"):
        fields.pop(key, None)
    return fields


def _towers(**changes) -> dict:
    """The tiny CLIP's fields with `tower__field=value` changes (`vision_config__patch_size=0`)."""
    fields = _tiny_fields()
    for key, value in changes.items():
        tower, _, name = key.rpartition("__")
        (fields[tower] if tower else fields)[name] = value
    return fields


TOWER_CASES = [
    ({"projection_dim": 0}, "projection_dim"),
    ({"projection_dim": -5}, "projection_dim"),
    ({"vision_config__patch_size": 0}, "vision_config.patch_size"),
    ({"vision_config__patch_size": -4}, "vision_config.patch_size"),
    ({"vision_config__patch_size": 64}, "vision_config.patch_size"),
    ({"vision_config__hidden_size": 65}, "vision_config.hidden_size"),
    ({"text_config__hidden_size": 65}, "text_config.hidden_size"),
    ({"vision_config__num_attention_heads": 0}, "vision_config.num_attention_heads"),
    ({"vision_config__num_hidden_layers": 0}, "vision_config.num_hidden_layers"),
    ({"vision_config__intermediate_size": 0}, "vision_config.intermediate_size"),
    ({"vision_config__image_size": 0}, "vision_config.image_size"),
    ({"vision_config__hidden_size": 10**9}, "vision_config.hidden_size"),
    ({"text_config__vocab_size": 0}, "text_config.vocab_size"),
    ({"text_config__max_position_embeddings": 1}, "text_config.max_position_embeddings"),
    ({"vision_config__image_size": 4096, "vision_config__patch_size": 1}, "vision_config.patch_size"),
    ({"text_config__hidden_act": "bogus"}, "text_config.hidden_act"),
    ({"vision_config__layer_norm_eps": -1.0}, "vision_config.layer_norm_eps"),
    ({"vision_config__attention_dropout": 5.0}, "vision_config.attention_dropout"),
    ({"vision_config__num_channels": 0}, "vision_config.num_channels"),
    ({"text_config__eos_token_id": "end"}, "Invalid CLIP configuration: .*eos_token_id"),
]


@pytest.mark.parametrize("config_class", [CLIPADAConfig, AnomalyCLIPConfig, AdaCLIPConfig])
@pytest.mark.parametrize("changes, field", TOWER_CASES)
def test_clip_fields_out_of_range_are_errors_naming_the_field(config_class, changes, field):
    with pytest.raises(config_class.config_error, match=field if "Invalid" in field else rf"`{field}`"):
        config_class(**_towers(**changes))


@pytest.mark.parametrize(
    "config_class, field, value, allowed",
    [
        (CLIPADAConfig, "num_refinements", 1_000_000, "[0, 8]"),
        (CLIPADAConfig, "smoothing_sigma", 1e6, "[0, 128]"),
        (CLIPADAConfig, "image_score_top_k", 10**12, "[1, 1e+08]"),
        (CLIPADAConfig, "num_prompt_vectors", 100_000, "[0, 75]"),
        (CLIPADAConfig, "similarity_logit_scale_init", 100.0, "6.9"),
        (CLIPADAConfig, "refinement_loss_weight", 1e300, "[0, 1000]"),
        (AnomalyCLIPConfig, "smoothing_sigma", 1e6, "[0, 128]"),
        (AnomalyCLIPConfig, "num_prompt_vectors", 10**6, "0..75"),
        (AnomalyCLIPConfig, "similarity_temperature", 1e-300, ">= 0.001"),
        (AdaCLIPConfig, "smoothing_sigma", 1e6, "[0, 128]"),
        (AdaCLIPConfig, "prompt_length", 10**6, "1..75"),
        (AdaCLIPConfig, "hsf_num_patches", 10**12, "1..65536"),
        (AdaCLIPConfig, "hsf_num_clusters", 10**9, "1..hsf_num_patches"),
        (AdaCLIPConfig, "hsf_max_iterations", 10**12, "1..10000"),
        (AdaCLIPConfig, "similarity_scale", 1e300, "(0, 1000]"),
    ],
)
def test_head_fields_out_of_range_are_errors_naming_the_field_and_the_range(config_class, field, value, allowed):
    head = {"deep_prompt_depth": 2} if config_class is AnomalyCLIPConfig else {}
    head = {"prompt_depth": 2} if config_class is AdaCLIPConfig else head
    with pytest.raises(config_class.config_error, match=rf"`{field}`") as error:
        config_class(**_tiny_fields(), **head, **{field: value})
    assert allowed in str(error.value)


@pytest.mark.parametrize(
    "config_class, fields",
    [
        (CLIPADAConfig, {"prompt_token_ids": [57, 10**9, 1, 58], "prompt_insert_position": 2}),
        (AnomalyCLIPConfig, {"normal_prompt_token_ids": [57, -1, 58], "abnormal_prompt_token_ids": [57, 1, 58]}),
        (AdaCLIPConfig, {"prompt_token_ids": {"disc": [[57, 60, 58]] * 48}}),
    ],
)
def test_prompt_token_ids_outside_the_vocabulary_are_errors_naming_the_field(config_class, fields):
    head = {"deep_prompt_depth": 2} if config_class is AnomalyCLIPConfig else {}
    head = {"prompt_depth": 2} if config_class is AdaCLIPConfig else head
    with pytest.raises(config_class.config_error, match=r"token_ids.*must hold token ids in 0\.\.59"):
        config_class(**_tiny_fields(), **head, **fields)


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"num_refinements": 1_000_000}, "`num_refinements`"),
        ({"smoothing_sigma": 1e6}, "`smoothing_sigma`"),
        ({"vision_config__patch_size": 0}, "`vision_config.patch_size`"),
        ({"text_config__hidden_size": 65}, "`text_config.hidden_size`"),
        ({"num_prompt_vectors": 0}, "prompt_vectors (4, 32) saved, (0, 32) by config.json"),
        ({"projection_dim": 8}, "patch_projections.0.weight"),
        ({"vision_config__intermediate_size": 8}, "fc1.weight"),
    ],
)
def test_an_edited_config_json_is_an_error_naming_the_file_and_the_field(checkpoint, tmp_path, fields, named):
    edited = _edit_config(_copy(checkpoint, tmp_path / "edited"), **fields)
    with pytest.raises(ValueError, match="config.json") as error:
        load_clipada_model(str(edited))
    assert named in str(error.value) and str(edited) in str(error.value)


@pytest.mark.parametrize("image_size", [1, 7, 13, 30, 101])  # the tiny CLIP's patch is 4 px
def test_an_image_size_that_is_not_a_multiple_of_the_patch_size_is_refused_naming_both(checkpoint, image_size):
    with pytest.raises(ModelLoadError, match=f"--image_size {image_size} is not a multiple of the patch size 4"):
        load_processors(str(checkpoint), image_size)
    assert load_processor(str(checkpoint), 64).size.height == 64


def test_predict_refuses_such_an_image_size_before_writing_anything(checkpoint, images, tmp_path, capsys):
    code, err = _run_predict(
        capsys, images, "--model_name_or_path", checkpoint, "--output_dir", tmp_path / "out", "--image_size", "101"
    )
    assert code == 2 and "--image_size 101 is not a multiple of the patch size 4" in err and "use 100 or 104" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("image_size", [None, 64])
def test_an_invalid_preprocessor_config_is_never_replaced_by_defaults_with_image_size(checkpoint, tmp_path, image_size):
    folder = _copy(checkpoint, tmp_path / "run")
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**settings, "image_std": [0.0, 0.0, 0.0]}))
    with pytest.raises(ModelLoadError, match="preprocessor_config.json is not a valid image processor.*image_std"):
        load_processor(str(folder), image_size)


def test_an_image_size_above_the_limit_is_refused(checkpoint):
    with pytest.raises(ModelLoadError, match="--image_size 20000 is above 4096"):
        load_processor(str(checkpoint), 20000)


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", ""])
def test_a_thread_count_that_is_no_whole_number_says_so(value, capsys):
    parser = argparse.ArgumentParser(parents=[threads_argument()])
    with pytest.raises(SystemExit):
        parser.parse_args(["--num_threads", value])
    assert f"--num_threads: must be a whole number, got {value!r}" in capsys.readouterr().err


def test_more_threads_than_cores_are_capped_with_a_note(capsys):
    parser = argparse.ArgumentParser(parents=[threads_argument()])
    assert parser.parse_args(["--num_threads", "100000"]).num_threads == available_cores()
    assert "--num_threads 100000 is more than the" in capsys.readouterr().err
    before = torch.get_num_threads()
    try:
        assert configure_threads(100000) == available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ item 21: mistyped local paths


@pytest.fixture
def no_hub(monkeypatch) -> list[str]:
    """Records Hub look-ups instead of making them (each fails as offline would)."""
    looked_up = []

    def download(repo_id, filename, **kwargs):
        looked_up.append(repo_id)
        raise OSError("offline")

    monkeypatch.setattr(loading, "hf_hub_download", download)
    return looked_up


PATH_SHAPED = ["outputs/modle", "./modle", "../modle", "/nonexistent/run", "~/modle", "outputs/run/step_4", "a/b/c"]


@pytest.mark.parametrize("name", [*PATH_SHAPED, "a\\b", "modle", "bad name/x"])
def test_a_path_shaped_name_is_no_such_folder_without_asking_the_hub(tmp_path, monkeypatch, no_hub, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    with pytest.raises(ModelLoadError, match="no such folder: ") as error:
        check_model_location(name)
    assert f"no such folder: {name}" in str(error.value)
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_clipada_model(name)
    assert no_hub == []


def test_the_folders_spelled_like_the_missing_one_are_suggested(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "model").mkdir(parents=True)
    with pytest.raises(ModelLoadError, match=r"did you mean outputs/model\?"):
        check_model_location("outputs/modle")


def test_predict_says_no_such_folder_for_a_typo(tmp_path, monkeypatch, no_hub, images, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    code, err = _run_predict(capsys, images, "--model_name_or_path", "outputs/modle", "--output_dir", "out")
    assert code == 2 and err.strip().splitlines() == ["error: no such folder: outputs/modle"] and no_hub == []


def test_an_owner_name_id_that_is_no_local_folder_still_goes_to_the_hub(tmp_path, monkeypatch, no_hub):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loading.constants, "HF_HUB_OFFLINE", True)
    check_model_location("someone/clipada-mvtec")  # shaped like a Hub id: not refused here
    with pytest.raises(ModelLoadError, match="the Hub is off \\(HF_HUB_OFFLINE=1\\)"):
        load_clipada_model("someone/clipada-mvtec")
    assert no_hub == ["someone/clipada-mvtec"]


def test_a_quoted_tilde_that_names_a_folder_says_how_to_write_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    with pytest.raises(ModelLoadError, match=f"shell did not expand ~.*{os.fspath(tmp_path / 'run')}"):
        check_model_location("~/run")


def test_an_existing_folder_and_a_patch_multiple_still_load(checkpoint):
    check_model_location(str(checkpoint))
    processor, own = load_processors(str(checkpoint), PATCH_SIZE * 4)
    assert processor.size.height == PATCH_SIZE * 4 and own.size.height == IMAGE_SIZE
