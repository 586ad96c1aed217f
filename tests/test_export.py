"""clipada-export and the torch-free runners: parity with PyTorch (R = 0, 1, 2), thresholds after export, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import make_tiny_clip

from inference.deploy.export import ExportError, check_request, export, main, parse_args
from inference.deploy.graph import CLIPADAExportGraph, export_program
from inference.deploy.runners import EXPORT_CONFIG_NAME, ExportedCLIPADA, ExportedModelError
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
FEATURE_LAYER = 2


def sample_images(count: int = 4) -> list[np.ndarray]:
    """Noise, a gradient and a bright square: uint8 (40, 48, 3) images, resized by the processor to 32 px."""
    generator = np.random.default_rng(0)
    images = [generator.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(count - 2)]
    gradient = np.broadcast_to(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], (40, 48, 3)).copy()
    square = np.full((40, 48, 3), 90, dtype=np.uint8)
    square[10:22, 14:30] = 250
    return images + [gradient, square]


def gap_threshold(values: np.ndarray) -> float:
    """A threshold in the widest gap between neighbouring values of the middle half: mixed decisions that a
    float rounding cannot flip."""
    ordered = np.sort(values.ravel())
    low, high = len(ordered) // 4, max(len(ordered) // 4 + 1, 3 * len(ordered) // 4)
    gaps = np.diff(ordered[low : high + 1])
    index = low + int(np.argmax(gaps))
    return float((ordered[index] + ordered[index + 1]) / 2)


def build_checkpoint(folder: Path, num_refinements: int) -> Path:
    """A tiny random CLIP-ADA with thresholds that split the test images, and a per-category pair for `screw`."""
    clip, tokenizer = make_tiny_clip(seed=num_refinements)
    torch.manual_seed(num_refinements)
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, num_refinements=num_refinements, feature_layer=FEATURE_LAYER
    ).eval()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    with torch.no_grad():
        outputs = model(processor(images=sample_images())["pixel_values"])
    model.config.image_threshold = gap_threshold(outputs.pred_score.numpy())
    model.config.pixel_threshold = gap_threshold(outputs.anomaly_map.numpy())
    model.config.category_thresholds = {"screw": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("export_checkpoints")
    return {r: build_checkpoint(root / f"r{r}", r) for r in (0, 1, 2)}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """`exports(r, format, fp16=False)`: the export folder, written once per module."""
    root, written = tmp_path_factory.mktemp("exports"), {}

    def get(num_refinements: int, export_format: str, fp16: bool = False) -> Path:
        key = (num_refinements, export_format, fp16)
        if key not in written:
            for module in ("onnx", "onnxscript", "onnxruntime") if export_format == "onnx" else ("openvino",):
                pytest.importorskip(module, reason=f"needs the install extra: pip install -e '.[{export_format}]'")
            folder = root / f"r{num_refinements}-{export_format}{'-fp16' if fp16 else ''}"
            export(str(checkpoints[num_refinements]), folder, export_format, fp16=fp16)
            written[key] = folder
        return written[key]

    return get


def pytorch_outputs(checkpoint: Path, categories=None):
    model = CLIPADAForAnomalySegmentation.from_pretrained(checkpoint).eval()
    pixel_values = CLIPADAImageProcessor.from_pretrained(checkpoint)(images=sample_images())["pixel_values"]
    with torch.no_grad():
        return model(pixel_values, categories=categories)


# ---------------------------------------------------------------------------------------------- graph = model


def random_model_and_pixels(num_refinements: int) -> tuple[CLIPADAForAnomalySegmentation, torch.Tensor]:
    """A tiny random CLIP-ADA (eval) with a non-trivial head, and 3 random CLIP-normalised images."""
    clip, tokenizer = make_tiny_clip(seed=num_refinements)
    torch.manual_seed(num_refinements)
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, num_refinements=num_refinements, feature_layer=FEATURE_LAYER
    ).eval()
    pixel_values = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    return model, pixel_values


def test_export_graph_and_its_program_give_the_models_forward_bit_for_bit():
    model, pixel_values = random_model_and_pixels(num_refinements=2)
    graph = CLIPADAExportGraph(model, (IMAGE_SIZE, IMAGE_SIZE), with_thresholds=True)
    thresholds = (torch.full((3,), 0.5), torch.full((3,), 0.5))
    program = export_program(graph)  # traced at batch 2, run at batch 3
    with torch.no_grad():
        reference = model(pixel_values)
        eager = graph(pixel_values, *thresholds)
        exported = program.module()(pixel_values, *thresholds)
    assert torch.equal(eager[0], reference.anomaly_map) and torch.equal(eager[1], reference.pred_score)
    assert torch.equal(eager[2], reference.pred_score >= 0.5) and torch.equal(eager[3], reference.anomaly_map >= 0.5)
    # the same kernels today (equal here); a tolerance keeps a future decomposition from failing the test
    torch.testing.assert_close(exported[0], reference.anomaly_map, rtol=0, atol=1e-6)
    torch.testing.assert_close(exported[1], reference.pred_score, rtol=0, atol=1e-6)


def test_export_graph_runs_the_models_own_step_methods(monkeypatch):
    """Changing the model's step methods changes the graph (and forward) alike: the graph calls them, no copy."""
    model, pixel_values = random_model_and_pixels(num_refinements=1)
    graph = CLIPADAExportGraph(model, (IMAGE_SIZE, IMAGE_SIZE), with_thresholds=False)
    with torch.no_grad():
        before = graph(pixel_values)[0]
    stage_logits, anomaly_map_and_score, calls = model.compute_stage_logits, model.anomaly_map_and_score, []
    shifted = lambda *args: calls.append("steps 2-3") or tuple(logits + 1 for logits in stage_logits(*args))  # noqa: E731
    monkeypatch.setattr(model, "compute_stage_logits", shifted)
    monkeypatch.setattr(
        model, "anomaly_map_and_score", lambda *args: calls.append("step 5") or anomaly_map_and_score(*args)
    )
    with torch.no_grad():
        after = graph(pixel_values)[0]
        reference = model(pixel_values).anomaly_map
    assert calls == ["steps 2-3", "step 5"] * 2
    assert torch.equal(after, reference) and not torch.equal(after, before)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
@pytest.mark.parametrize("num_refinements", [0, 1, 2])
def test_exported_graph_matches_pytorch(checkpoints, exports, num_refinements, export_format):
    folder = exports(num_refinements, export_format)
    categories = [None, "screw", None, "bottle"]
    reference = pytorch_outputs(checkpoints[num_refinements], categories)
    outputs = ExportedCLIPADA(folder).predict(sample_images(), categories=categories)
    assert np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max() <= 1e-4
    assert np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max() <= 1e-5
    np.testing.assert_array_equal(outputs["pred_label"], reference.pred_label.numpy())
    np.testing.assert_array_equal(outputs["pred_mask"], reference.pred_mask.numpy())
    assert 0 < reference.pred_mask[[0, 2, 3]].float().mean() < 1  # the global thresholds split the pixels
    parity = json.loads((folder / EXPORT_CONFIG_NAME).read_text())["parity"]
    assert parity["anomaly_map_max_abs_diff"] <= 1e-4 and parity["pred_score_max_abs_diff"] <= 1e-5


@pytest.mark.slow
def test_openvino_fp16_weights_keep_the_decisions(checkpoints, exports):
    folder = exports(1, "openvino", fp16=True)
    assert (folder / "model.bin").stat().st_size < (exports(1, "openvino") / "model.bin").stat().st_size
    reference = pytorch_outputs(checkpoints[1])
    outputs = ExportedCLIPADA(folder).predict(sample_images())
    assert np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max() <= 5e-3
    assert np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max() <= 1e-3
    np.testing.assert_array_equal(outputs["pred_label"], reference.pred_label.numpy())
    assert (outputs["pred_mask"] == reference.pred_mask.numpy()).mean() >= 0.999


@pytest.mark.slow
def test_graph_holds_neither_the_text_tower_nor_later_layers(exports):
    onnx = pytest.importorskip("onnx")

    config = json.loads((exports(2, "onnx") / EXPORT_CONFIG_NAME).read_text())
    names = [tensor.name for tensor in onnx.load(exports(2, "onnx") / "model.onnx").graph.initializer]
    assert "text_embedding" in names
    assert not [name for name in names if "text_model" in name or "text_projection" in name]
    assert not [name for name in names if any(f"layers.{i}." in name for i in range(FEATURE_LAYER, 4))]
    xml = (exports(2, "openvino") / "model.xml").read_text()
    assert "text_model" not in xml and f"layers.{FEATURE_LAYER}." not in xml
    assert config["input_size"] == [IMAGE_SIZE, IMAGE_SIZE] and config["opset"] == 20
    assert set(config["source"]["sha256"]) == {"config.json", "model.safetensors"}


@pytest.mark.slow
def test_thresholds_change_after_export_without_exporting_again(exports, tmp_path):
    folder = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(exports(0, "onnx")), str(folder)], check=True)
    config_file = folder / EXPORT_CONFIG_NAME
    config = json.loads(config_file.read_text())
    config["thresholds"].update(image_threshold=0.0, pixel_threshold=1.0)
    config_file.write_text(json.dumps(config))
    outputs = ExportedCLIPADA(folder).predict(sample_images())
    assert outputs["pred_label"].all() and not outputs["pred_mask"].any()
    runner = ExportedCLIPADA(folder)
    runner.image_threshold = 1.0  # scores are probabilities: none of these reaches 1
    assert not runner.predict(sample_images())["pred_label"].any()
    runner.image_threshold = 2.0  # issue 19: out of [0, 1] is refused, not "everything OK"
    with pytest.raises(ExportedModelError, match=r"`image_threshold` must be a score in \[0, 1\], got 2.0"):
        runner.predict(sample_images())


# ---------------------------------------------------------------------------------------------- no torch


@pytest.mark.slow
def test_onnx_runner_runs_where_torch_cannot_be_imported(exports, tmp_path):
    """The runners' own command: a folder and a list with a missing file; predict's rows as JSON lines, ERROR for the
    missing one (the others still scored, exit status 1), and torch never imported."""
    (tmp_path / "images").mkdir()
    image_file = tmp_path / "images" / "part.png"
    Image.fromarray(sample_images()[0]).save(image_file)
    (tmp_path / "list.txt").write_text("images/missing.png\n")
    script = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "sys.argv = ['runners', '--model_dir', sys.argv[1], sys.argv[2], sys.argv[3], '--category', 'screw']\n"
        "try:\n"
        "    runpy.run_module('inference.deploy.runners', run_name='__main__')\n"
        "finally:\n"
        "    assert sys.modules['torch'] is None and 'torch.nn' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(exports(0, "onnx")), str(tmp_path / "images"), str(tmp_path / "list.txt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    part, missing = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert part["path"] == str(image_file) and part["decision"] == "NG"  # screw: image threshold 0
    assert part["anomalous_area"] == 0.0 and part["boxes"] == []  # screw: pixel threshold 1.0
    assert part["threshold_source"] == "category" and part["width"] == sample_images()[0].shape[1]
    assert missing["decision"] == "ERROR" and missing["path"].endswith("missing.png") and missing["error"]


@pytest.mark.slow
def test_clipada_predict_scores_an_export_folder_where_torch_cannot_be_imported(checkpoints, exports, tmp_path):
    """`clipada predict` on an export folder: the runtime is found from the folder, torch is never imported, one
    missing file gets its ERROR row while the others are decided, and the decisions are torch's."""
    from inference import predict

    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(sample_images()):
        Image.fromarray(image).save(images / f"{index}.png")
    (tmp_path / "list.txt").write_text("images/0.png\nimages/missing.png\n")
    script = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "sys.argv = ['predict', *sys.argv[1:]]\n"
        "try:\n"
        "    runpy.run_module('inference.predict', run_name='__main__')\n"
        "finally:\n"
        "    assert sys.modules['torch'] is None and 'torch.nn' not in sys.modules\n"
    )
    args = [str(images), str(tmp_path / "list.txt"), "--model_name_or_path", str(exports(0, "onnx"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script, *args, "--output_dir", str(tmp_path / "onnx")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # 1: one file failed, the others were scored
    assert "4 images" not in result.stdout and "5 images: " in result.stdout
    predict.main([*args[:2], "--model_name_or_path", str(checkpoints[0]), "--output_dir", str(tmp_path / "torch")])
    runs = {
        name: {row["path"]: row for row in map(json.loads, (tmp_path / name / "predictions.jsonl").open())}
        for name in ("onnx", "torch")
    }
    assert runs["onnx"].keys() == runs["torch"].keys() and len(runs["onnx"]) == 5
    for path, row in runs["onnx"].items():
        reference = runs["torch"][path]
        assert row["decision"] == reference["decision"] and row["decision"] in ("OK", "NG", "ERROR")
        if row["decision"] == "ERROR":
            assert path.endswith("missing.png") and row["error"]  # the row's path names the file
        else:
            assert abs(row["score"] - reference["score"]) <= 1e-5 and row["boxes"] == reference["boxes"]
            assert (tmp_path / "onnx" / row["overlay"]).is_file()


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (("tflite", 20, False), "--format 'tflite' is not supported"),
        (("onnx", 17, False), "--opset 17 is not supported"),
        (("onnx", 99, False), "--opset 99 is not supported"),
        (("onnx", 20, True), "--fp16 stores OpenVINO weights"),
    ],
)
def test_check_request_names_the_flag(tmp_path, request_, message):
    with pytest.raises(ExportError, match=message.replace("(", r"\(")):
        check_request(*request_, tmp_path / "new", overwrite=False)


def test_existing_output_folder_is_refused_and_kept(tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(folder), "--format", "onnx"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (  # issue 19: a folder export did not write, flag or not
        f"error: --output_dir {folder} is not empty (keep.txt) and was not written by clipada export; choose a new "
        "folder (nothing is replaced in a folder this command did not write, even with --overwrite_output_dir)"
    )
    assert (folder / "keep.txt").read_text() == "mine"


def test_the_old_overwrite_flag_still_works_with_a_note(tmp_path, capsys):
    argv = ["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--format", "onnx"]
    assert parse_args(argv).overwrite_output_dir is False
    assert parse_args([*argv, "--overwrite_output_dir"]).overwrite_output_dir is True
    assert capsys.readouterr().err == ""
    assert parse_args([*argv, "--overwrite"]).overwrite_output_dir is True
    assert "--overwrite is deprecated; use --overwrite_output_dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "tflite"], "error: --format 'tflite' is not supported; choose one of onnx, openvino"),
        (["--format", "onnx", "--opset", "12"], "error: --opset 12 is not supported; choose 18 to 23"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"), *flags])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_bad_flag_values_are_argparse_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--opset", "x"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: argument --opset: invalid int value: 'x'")


def test_a_plain_clip_checkpoint_is_refused(tiny_clip_dir, tmp_path, capsys):
    for module in ("onnx", "onnxscript", "onnxruntime"):  # checked before the checkpoint is read
        pytest.importorskip(module)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(tiny_clip_dir), "--output_dir", str(tmp_path / "out"), "--format", "onnx"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "is a 'clip' checkpoint; clipada-export exports trained CLIP-ADA" in error
    assert "\n" not in error and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_inputs_of_the_wrong_size_are_refused_at_run_time(exports, tmp_path, capsys):
    runner = ExportedCLIPADA(exports(0, "openvino"))
    with pytest.raises(ExportedModelError, match=r"shape \(1, 3, 64, 64\); this export takes \(batch, 3, 32, 32\)"):
        runner(np.zeros((1, 3, 64, 64), dtype=np.float32))
    with pytest.raises(ExportedModelError, match="--backend onnxruntime cannot run"):
        ExportedCLIPADA(exports(0, "openvino"), backend="onnxruntime")
    folder = tmp_path / "resized"
    subprocess.run(["cp", "-r", str(exports(0, "onnx")), str(folder)], check=True)
    CLIPADAImageProcessor(size=48).save_pretrained(folder)  # a processor that no longer fits the graph
    image_file = tmp_path / "part.png"
    Image.fromarray(sample_images()[0]).save(image_file)
    from inference.deploy.runners import cli

    with pytest.raises(SystemExit) as exit_info:
        cli(["--model_dir", str(folder), str(image_file)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {folder / 'preprocessor_config.json'} is not the exported one (it resizes to (48, 48), squash; the "
        "graph takes (32, 32), squashed): export again, or restore the exported preprocessor_config.json"
    )
    CLIPADAImageProcessor(size=32, tile_size=64).save_pretrained(folder)  # the right size, but tiles
    with pytest.raises(ExportedModelError, match=r"\(32, 32\), squash, tiles; the graph takes"):
        ExportedCLIPADA(folder)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["onnxruntime", "openvino"])
def test_predict_backends_run_the_export_folder(checkpoints, exports, backend_name):
    from inference.backends import load_backend

    folder = exports(1, "onnx" if backend_name == "onnxruntime" else "openvino")
    backend = load_backend(backend_name, str(folder))
    pixel_values = CLIPADAImageProcessor.from_pretrained(folder)(images=sample_images())["pixel_values"]
    result = backend(pixel_values)
    reference = pytorch_outputs(checkpoints[1])
    assert np.abs(result.anomaly_map - reference.anomaly_map.numpy()).max() <= 1e-4
    assert np.abs(result.pred_score - reference.pred_score.numpy()).max() <= 1e-5
    assert backend.decision_config.category_thresholds == {"screw": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
    with pytest.raises(ValueError, match="runs on the CPU in float32"):
        load_backend(backend_name, str(folder), dtype="bfloat16")


@pytest.mark.slow
def test_clipada_predict_with_the_onnxruntime_backend_decides_like_torch(checkpoints, exports, tmp_path):
    from inference import predict

    for index, image in enumerate(sample_images()):
        Image.fromarray(image).save(tmp_path / f"{index}.png")
    runs = {}
    for backend_name, model in (("torch", checkpoints[0]), ("onnxruntime", exports(0, "onnx"))):
        output_dir = tmp_path / backend_name
        predict.main([str(tmp_path / f"{i}.png") for i in range(4)] + ["--model_name_or_path", str(model),
                     "--output_dir", str(output_dir), "--backend", backend_name, "--no-overlays"])  # fmt: skip
        runs[backend_name] = [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    for torch_row, onnx_row in zip(runs["torch"], runs["onnxruntime"]):
        assert torch_row["decision"] == onnx_row["decision"] and abs(torch_row["score"] - onnx_row["score"]) <= 1e-5
