"""Tests of the Hub path: save/load round trip, remote code in a fresh process, push_to_hub contents."""

import json
import textwrap

import pytest
import torch
from run_helpers import run_without_project
from safetensors.torch import load_file, save_file
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor


def _trained_looking_model(num_refinements: int = 1) -> CLIPADAForAnomalySegmentation:
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, num_refinements=num_refinements, feature_layer=3)
    with torch.no_grad():  # move the head away from its initial values, as training would
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = _trained_looking_model(num_refinements=2)
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    reloaded = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path).eval()
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name  # guards head names clashing with CLIP's
    with torch.no_grad():
        outputs = reloaded(pixel_values)
    assert (outputs.anomaly_map - expected.anomaly_map).abs().max() <= 1e-5
    assert (outputs.logits - expected.logits).abs().max() <= 1e-5
    assert reloaded.config.num_refinements == 2 and reloaded.config.feature_layer == 3


def test_init_weights_never_overwrites_a_loaded_head(tmp_path):
    model = _trained_looking_model()
    model.save_pretrained(tmp_path)
    reloaded = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path)
    reloaded._init_weights(reloaded)
    for name, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


@pytest.mark.parametrize(
    "dropped",
    [
        ["prompt_vectors"],
        ["patch_projections.1.weight", "similarity_logit_scale", "similarity_logit_bias"],
        ["clip.text_projection.weight"],
    ],
)
def test_from_pretrained_of_a_checkpoint_lacking_tensors_is_an_error_naming_them(tmp_path, dropped):
    _trained_looking_model().save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({name: value for name, value in weights.items() if name not in dropped}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="lacks") as error:
        CLIPADAForAnomalySegmentation.from_pretrained(tmp_path)
    assert all(name in str(error.value) for name in dropped)


def test_from_pretrained_of_a_truncated_safetensors_file_is_an_error_naming_the_file(tmp_path):
    _trained_looking_model().save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    with pytest.raises(OSError, match="model.safetensors.*truncated"):
        CLIPADAForAnomalySegmentation.from_pretrained(tmp_path)


def test_saved_checkpoint_loads_with_trust_remote_code_where_the_project_is_not_importable(tmp_path):
    model = _trained_looking_model()
    model.save_pretrained(tmp_path / "ckpt")
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_clipada.CLIPADAConfig",
        "AutoModel": "modeling_clipada.CLIPADAForAnomalySegmentation",
    }
    image = torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3)
    torch.save(image, tmp_path / "image.pt")
    with torch.no_grad():
        pixel_values = CLIPADAImageProcessor(size=IMAGE_SIZE)(images=image)["pixel_values"]
        torch.save(model(pixel_values).anomaly_map, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoImageProcessor, AutoModel
        try:
            import modeling_clipada
            raise SystemExit("project still importable")
        except ImportError:
            pass
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        inputs = processor(images=torch.load({str(tmp_path / "image.pt")!r}))
        with torch.no_grad():
            anomaly_map = model(**inputs).anomaly_map
        difference = (anomaly_map - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        print(type(model).__name__, type(processor).__name__, difference)
        assert difference <= 1e-5, difference
        """
    )
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CLIPADAForAnomalySegmentation CLIPADAImageProcessor" in result.stdout


def test_push_to_hub_uploads_safetensors_config_and_remote_code(hub_uploads):
    model = _trained_looking_model()
    model.push_to_hub("someone/clipada-mvtec")
    CLIPADAImageProcessor(size=IMAGE_SIZE).push_to_hub("someone/clipada-mvtec")
    model_files, processor_files = hub_uploads[0]["files"], hub_uploads[1]["files"]
    assert hub_uploads[0]["repo_id"] == "someone/clipada-mvtec"
    assert {"config.json", "model.safetensors", "modeling_clipada.py", "configuration_clipada.py"} <= set(model_files)
    assert not any(name.endswith((".bin", ".pt")) for name in model_files)
    assert "auto_map" in json.loads(model_files["config.json"])
    assert {"preprocessor_config.json", "image_processing_clipada.py"} <= set(processor_files)
    assert "AutoImageProcessor" in json.loads(processor_files["preprocessor_config.json"])["auto_map"]
    from safetensors.torch import load

    weights = load(model_files["model.safetensors"])
    assert torch.equal(weights["prompt_vectors"], model.prompt_vectors.detach())


def test_from_pretrained_in_bfloat16_with_sdpa(tmp_path):
    model = _trained_looking_model()
    model.save_pretrained(tmp_path)
    reloaded = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert reloaded.prompt_vectors.dtype == torch.bfloat16
    assert reloaded.clip.vision_model.config._attn_implementation == "sdpa"
    pixel_values = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = model(pixel_values).anomaly_map
        outputs = reloaded.eval()(pixel_values)
    assert (outputs.anomaly_map - expected).abs().max() < 0.05
