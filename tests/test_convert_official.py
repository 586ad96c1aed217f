"""Tests of `clipada convert-official`: files the official code saved become checkpoints with the official outputs.

The two `*_official_checkpoint.pth` fixtures were written by the official code's own save calls
(`tests/fixtures/make_*_reference.py`), from the same tiny random CLIP and head as the parity fixtures, whose
expected outputs the converted models must reproduce. The tiny CLIPs use a reduced vocabulary; the tests put its
rows back at their CLIP BPE ids, so that the converted model reads the official (BPE) token ids.
"""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_adaclip import compare_with_reference as compare_adaclip
from test_adaclip import parity_limit as adaclip_limit
from test_anomalyclip import compare_with_reference as compare_anomalyclip
from test_anomalyclip import parity_limit as anomalyclip_limit
from tiny_clip import write_real_clip_tokenizer
from transformers import CLIPConfig, CLIPModel

from inference.output_folder import OUTPUT_MARKER
from modeling_clipada import AdaCLIPForAnomalySegmentation, AnomalyCLIPForAnomalySegmentation
from training import convert_official

FIXTURES = Path(__file__).parent / "fixtures"
ANOMALYCLIP_FILE = FIXTURES / "anomalyclip_official_checkpoint.pth"
ADACLIP_FILE = FIXTURES / "adaclip_official_checkpoint.pth"


def _reference(name: str) -> tuple[dict, dict]:
    with safe_open(FIXTURES / f"{name}_reference.safetensors", "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118


def _official_vocabulary_clip(name: str, folder: Path, shift: float = 0.0) -> Path:
    """The fixture's tiny CLIP with its token embedding rows at their CLIP BPE ids (49,408 rows), saved to `folder`."""
    tensors, metadata = _reference(name)
    config = json.loads(metadata["config"])
    bpe_ids = json.loads(metadata["bpe_ids"])
    text_config = {**config["text_config"], "vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407}
    clip = CLIPModel(
        CLIPConfig(
            text_config=text_config, vision_config=config["vision_config"], projection_dim=config["projection_dim"]
        )
    )
    weights = {key.removeprefix("weights.clip."): value.float() for key, value in tensors.items() if ".clip." in key}
    tiny = weights.pop("text_model.embeddings.token_embedding.weight")
    full = torch.zeros(49408, tiny.shape[1])
    full[0], full[bpe_ids] = tiny[0], tiny[1 : len(bpe_ids) + 1]
    weights["text_model.embeddings.token_embedding.weight"] = full + shift
    clip.load_state_dict(weights, strict=False)  # position_ids buffers
    clip.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def anomalyclip_clip(tmp_path_factory) -> Path:
    return _official_vocabulary_clip("anomalyclip", tmp_path_factory.mktemp("anomalyclip_clip"))


@pytest.fixture(scope="module")
def adaclip_clip(tmp_path_factory) -> Path:
    folder = _official_vocabulary_clip("adaclip", tmp_path_factory.mktemp("adaclip_clip"))
    tokenizer = write_real_clip_tokenizer(folder)
    if tokenizer is None:
        pytest.skip("../shared/clip-bpe is absent: AdaCLIP's class names need the real CLIP tokenizer")
    tokenizer.save_pretrained(folder)
    return folder


def _convert(file: Path, family: str, clip: Path, output: Path, *extra: str) -> Path:
    argv = [str(file), "--family", family, "--output_dir", str(output), "--clip_model_name_or_path", str(clip)]
    return convert_official.main([*argv, *extra])


def _error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _convert(*args)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ---------------------------------------------------------------------- the official outputs


def test_an_anomalyclip_file_converts_to_a_checkpoint_with_the_official_outputs(anomalyclip_clip, tmp_path):
    _, metadata = _reference("anomalyclip")
    config = json.loads(metadata["config"])  # the fixture's test-time layers (official --features_list, DPAM_layer)
    layers = [str(layer) for layer in config["feature_layers"]]
    extra = ["--feature_layers", *layers, "--dpam_start_layer", str(config["dpam_start_layer"])]
    output = _convert(ANOMALYCLIP_FILE, "anomalyclip", anomalyclip_clip, tmp_path / "converted", *extra)
    model = AnomalyCLIPForAnomalySegmentation.from_pretrained(output)
    assert model.config.official_fp16_prompts and model.config.normal_prompt_token_ids[0] == 49406
    tensors, _ = _reference("anomalyclip")
    for name, difference in compare_anomalyclip(model, tensors).items():
        assert difference <= anomalyclip_limit(name), (name, difference)
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 518, "width": 518}
    card = (output / "README.md").read_text()
    assert hashlib.sha256(ANOMALYCLIP_FILE.read_bytes()).hexdigest() in card
    assert "compound_prompt_projections.0.weight" in card  # dropped: never used by the official code
    assert json.loads((output / OUTPUT_MARKER).read_text())["written_by"] == "clipada convert-official"


def test_an_adaclip_file_converts_to_a_checkpoint_with_the_official_outputs(adaclip_clip, tmp_path):
    _, metadata = _reference("adaclip")
    class_names = json.loads(metadata["class_names"])
    names = sorted(set(class_names))
    output = _convert(
        ADACLIP_FILE,
        "adaclip",
        adaclip_clip,
        tmp_path / "converted",
        "--class_names",
        *names,
        "--hsf_num_clusters",
        "8",
    )
    model = AdaCLIPForAnomalySegmentation.from_pretrained(output)
    config = model.config
    assert (config.prompt_length, config.prompt_depth, config.feature_layers) == (2, 3, [1, 2, 3, 4])
    assert config.text_config.hidden_act == "gelu" and config.official_fp16_prompts
    tensors, _ = _reference("adaclip")
    assert (config.hsf_num_clusters, config.hsf_num_patches) == (8, 40)  # official k_clusters, 5 x k patches
    for name, difference in compare_adaclip(model, tensors, class_names).items():
        assert difference <= adaclip_limit(name), (name, difference)
    assert "clip_model.text_prompter.static_prompts.0" in (output / "README.md").read_text()
    assert (output / "tokenizer_config.json").is_file()  # new categories can be tokenised later


# ---------------------------------------------------------------------- bad files and folders


def _anomalyclip_state() -> dict:
    return torch.load(ANOMALYCLIP_FILE, weights_only=True)


def _write(path: Path, state) -> Path:
    torch.save(state, path)
    return path


def _edited(path: Path, edit) -> Path:
    state = _anomalyclip_state()
    edit(state["prompt_learner"])
    return _write(path, state)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda state: state.pop("ctx_neg"), "missing tensors: ctx_neg"),
        (lambda state: state.pop("compound_prompts_text.0"), "missing tensors: compound_prompts_text.0"),
        (lambda state: state.update(extra=torch.zeros(3)), "tensors left over .*: extra"),
        (lambda state: state.update(ctx_pos=torch.zeros(2, 1, 12, 32)), "ctx_pos must have shape \\(1, 1, N, C\\)"),
        (lambda state: state.update(ctx_neg=torch.zeros(1, 1, 12, 16)), "ctx_pos .* and ctx_neg .* same shape"),
        (lambda state: state.update({"compound_prompts_text.1": torch.zeros(4, 16)}), "compound_prompts_text.1"),
        (lambda state: state.update(ctx_pos=torch.zeros(1, 1, 12, 32, dtype=torch.long)), "must be floating"),
    ],
)
def test_a_bad_anomalyclip_file_is_one_line_naming_the_file_and_tensors(edit, expected, tmp_path, capsys):
    import re

    path = _edited(tmp_path / "bad.pth", edit)
    message = _error(capsys, path, "anomalyclip", tmp_path / "no_clip_needed", tmp_path / "out")
    assert str(path) in message and re.search(expected, message), message
    assert not (tmp_path / "out").exists()


def test_a_file_that_needs_code_to_unpickle_is_refused(tmp_path, capsys):
    path = _write(tmp_path / "code.pth", {"prompt_learner": {"ctx_pos": Path("/")}})  # a class to unpickle
    message = _error(capsys, path, "anomalyclip", tmp_path / "clip", tmp_path / "out")
    assert str(path) in message and "needs code to unpickle" in message and "weights_only=True" in message


def test_the_wrong_family_and_a_non_checkpoint_are_named(tmp_path, capsys):
    message = _error(capsys, ADACLIP_FILE, "anomalyclip", tmp_path / "clip", tmp_path / "out")
    assert "is an AdaCLIP file, not an AnomalyCLIP one; pass --family adaclip" in message
    message = _error(capsys, ANOMALYCLIP_FILE, "adaclip", tmp_path / "clip", tmp_path / "out")
    assert "pass --family anomalyclip" in message
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    assert "is not a PyTorch weight file" in _error(capsys, text, "adaclip", tmp_path / "clip", tmp_path / "out")
    message = _error(capsys, tmp_path / "absent.pth", "adaclip", tmp_path / "clip", tmp_path / "out")
    assert "absent.pth: no such file" in message


def test_a_bad_adaclip_file_names_the_tensors(tmp_path, capsys):
    state = torch.load(ADACLIP_FILE, weights_only=True)
    state.pop("clip_model.cls_token_layer.head.0.bias")
    message = _error(capsys, _write(tmp_path / "a.pth", state), "adaclip", tmp_path / "clip", tmp_path / "out")
    assert "missing tensors: clip_model.cls_token_layer.head.0.bias" in message
    state = torch.load(ADACLIP_FILE, weights_only=True) | {"clip_model.freeze_clip.visual.proj": torch.zeros(2)}
    message = _error(capsys, _write(tmp_path / "b.pth", state), "adaclip", tmp_path / "clip", tmp_path / "out")
    assert "tensors left over" in message and "clip_model.freeze_clip.visual.proj" in message
    state = torch.load(ADACLIP_FILE, weights_only=True)
    state["clip_model.visual_prompter.static_prompts.1"] = torch.zeros(3, 64)
    message = _error(capsys, _write(tmp_path / "c.pth", state), "adaclip", tmp_path / "clip", tmp_path / "out")
    assert "clip_model.visual_prompter.static_prompts.1 has shape (3, 64)" in message


def test_a_file_on_another_clip_is_refused_naming_the_tensors(anomalyclip_clip, tmp_path, capsys):
    other = _official_vocabulary_clip("anomalyclip", tmp_path / "other_clip", shift=0.05)
    message = _error(capsys, ANOMALYCLIP_FILE, "anomalyclip", other, tmp_path / "out")
    assert "token_prefix_pos differs from" in message and "trained on another CLIP" in message
    state = _anomalyclip_state()
    learner = state["prompt_learner"]
    learner["ctx_pos"], learner["ctx_neg"] = learner["ctx_pos"][..., :16], learner["ctx_neg"][..., :16]
    for index in range(2):
        learner[f"compound_prompts_text.{index}"] = learner[f"compound_prompts_text.{index}"][:, :16]
    path = _write(tmp_path / "narrow.pth", state)
    message = _error(capsys, path, "anomalyclip", anomalyclip_clip, tmp_path / "out")
    assert "ctx_pos give normal_prompt_vectors of shape (12, 16)" in message and "(12, 32)" in message
    assert not (tmp_path / "out").exists()


def test_the_output_folder_follows_the_ownership_rule(anomalyclip_clip, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    message = _error(capsys, ANOMALYCLIP_FILE, "anomalyclip", anomalyclip_clip, foreign)
    assert "was not written by clipada convert-official" in message
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    output = _convert(ANOMALYCLIP_FILE, "anomalyclip", anomalyclip_clip, tmp_path / "out")
    assert "already holds the output of an earlier" in _error(
        capsys, ANOMALYCLIP_FILE, "anomalyclip", anomalyclip_clip, output
    )
    _convert(ANOMALYCLIP_FILE, "anomalyclip", anomalyclip_clip, output, "--overwrite_output_dir")
    assert (output / "model.safetensors").is_file()


def test_settings_the_file_does_not_hold_are_asked_for_and_checked(tmp_path, capsys):
    state = torch.load(ADACLIP_FILE, weights_only=True)
    dynamic_only = {key: value for key, value in state.items() if "static_prompts" not in key}  # official type "D"
    path = _write(tmp_path / "dynamic.pth", dynamic_only)
    assert "pass --prompt_depth" in _error(capsys, path, "adaclip", tmp_path / "clip", tmp_path / "out")
    message = _error(capsys, ADACLIP_FILE, "adaclip", tmp_path / "clip", tmp_path / "out", "--feature_layers", "4")
    assert "--feature_layers apply to --family anomalyclip, not adaclip" in message
