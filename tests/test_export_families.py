"""clipada export of AnomalyCLIP and AdaCLIP: the graph is the model, parity with PyTorch on ONNX Runtime and OpenVINO,
identical decisions, tiled and letterboxed checkpoints merged as predict merges them, a runner without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_export import gap_threshold, sample_images
from tiny_clip import make_tiny_clip

from inference.backends import ExportedBackend
from inference.deploy.export import export, graph_class_names
from inference.deploy.graph import example_inputs, export_graph, export_program, round_to_float16
from inference.deploy.runners import EXPORT_CONFIG_NAME, ExportedCLIPADA, ExportedModelError
from inference.modes import input_mode
from inference.scoring import score_images
from inference.torch_backend import TorchBackend
from modeling_clipada import AdaCLIPForAnomalySegmentation, AnomalyCLIPForAnomalySegmentation
from modeling_clipada.decisions import apply_thresholds
from processing import CLIPADAImageProcessor

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
# letterbox for AdaCLIP, tiles for AnomalyCLIP: each family's export is also the per-input graph of a merged mode
PROCESSORS = {
    "anomalyclip": {"size": IMAGE_SIZE, "tile_size": 24, "tile_overlap": 0.25},
    "adaclip": {"size": IMAGE_SIZE, "resize_mode": "letterbox"},
}
CATEGORIES = ["disc", None, "screw", "disc"]


def build_model(family: str):
    """A tiny random model of `family` (eval); AdaCLIP with dynamic text and visual prompts, HSF on, 3 k-means
    rounds (the graph unrolls them all) and the class names `disc` and `screw`."""
    clip, tokenizer = make_tiny_clip(seed=3)
    torch.manual_seed(3)
    if family == "anomalyclip":
        return AnomalyCLIPForAnomalySegmentation.from_clip(
            clip, tokenizer, num_prompt_vectors=4, deep_prompt_length=2, deep_prompt_depth=2, dpam_start_layer=2,
            feature_layers=[2, 4],
        ).eval()  # fmt: skip
    return AdaCLIPForAnomalySegmentation.from_clip(
        clip, tokenizer, class_names=["disc", "screw"], prompt_length=2, prompt_depth=2, hsf_num_clusters=4,
        hsf_num_patches=20, hsf_max_iterations=3,
    ).eval()  # fmt: skip


def random_pixels(count: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def build_checkpoint(folder: Path, family: str) -> Path:
    """The tiny model with thresholds calibrated (by gaps) in its processor's merged mode on the sample images,
    per-category ones for `screw`, saved with its tokenizer and processor."""
    model = build_model(family)
    processor = CLIPADAImageProcessor(**PROCESSORS[family])
    scored = score_images(TorchBackend(model, "cpu"), processor, [processor.process_image(i) for i in sample_images()])
    model.config.image_threshold = gap_threshold(scored.scores)
    model.config.pixel_threshold = gap_threshold(np.concatenate([m.ravel() for m in scored.anomaly_maps]))
    model.config.category_thresholds = {"screw": {"image_threshold": 0.0, "pixel_threshold": 1.0}}
    model.config.calibration_mode = input_mode(processor)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    make_tiny_clip(seed=3)[1].save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family_checkpoints")
    return {family: build_checkpoint(root / family, family) for family in PROCESSORS}


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """`exports(family, format)`: the export folder, written once per module."""
    root, written = tmp_path_factory.mktemp("family_exports"), {}

    def get(family: str, export_format: str) -> Path:
        if (family, export_format) not in written:
            for module in ("onnx", "onnxscript", "onnxruntime") if export_format == "onnx" else ("openvino",):
                pytest.importorskip(module, reason=f"needs the install extra: pip install -e '.[{export_format}]'")
            folder = root / f"{family}-{export_format}"
            export(str(checkpoints[family]), folder, export_format)
            written[family, export_format] = folder
        return written[family, export_format]

    return get


def loaded(checkpoint: Path):
    model = AnomalyCLIPForAnomalySegmentation if "anomalyclip" in checkpoint.name else AdaCLIPForAnomalySegmentation
    return model.from_pretrained(checkpoint).eval()


# ---------------------------------------------------------------------------------------------- graph = model


@pytest.mark.parametrize("family", ["anomalyclip", "adaclip"])
def test_family_graph_and_its_program_give_the_models_forward(family):
    """The graph (text folded, AdaCLIP's class names as indices, all k-means rounds) and its `torch.export` program,
    traced at batch 2 and run at batch 4, give the eager model's maps, scores and decisions."""
    model = build_model(family)
    graph = export_graph(
        model, (IMAGE_SIZE, IMAGE_SIZE), with_thresholds=True, class_names=graph_class_names(model, None)
    )
    pixel_values, thresholds = random_pixels(), (torch.full((4,), 0.5), torch.full((4,), 0.55))
    categories = CATEGORIES if family == "adaclip" else None
    extra = (torch.tensor([graph.class_names.index(c or "object") for c in categories]),) if categories else ()
    program = export_program(graph)
    with torch.no_grad():
        reference = model(pixel_values, categories=categories)
        eager = graph(pixel_values, *extra, *thresholds)
        exported = program.module()(pixel_values, *extra, *thresholds)
    if family == "anomalyclip":  # AdaCLIP's graph rounds its prompts to float16 by arithmetic (round_to_float16)
        assert torch.equal(eager[0], reference.anomaly_map) and torch.equal(eager[1], reference.pred_score)
    for outputs in (eager, exported):
        assert torch.allclose(outputs[0], reference.anomaly_map, atol=1e-6)
        assert torch.allclose(outputs[1], reference.pred_score, atol=1e-6)
        labels, masks = apply_thresholds(reference.anomaly_map, reference.pred_score, *thresholds)
        assert torch.equal(outputs[2], labels) and torch.equal(outputs[3], masks)
    assert graph.input_names[: 2 if categories else 1] == tuple(
        ["pixel_values", "class_index"][: 2 if categories else 1]
    )
    assert len(example_inputs(graph)) == len(graph.input_names)


def test_float16_rounding_by_arithmetic_is_the_cast_in_float16s_normal_range():
    values = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 0.05
    normal = values.abs() >= 2**-14
    rounded = round_to_float16(values)
    assert torch.equal(rounded[normal], values[normal].half().float())
    assert (rounded - values.half().float()).abs().max() <= 2**-24


def test_graph_class_names_put_the_default_first_and_unknown_names_are_refused():
    model = build_model("adaclip")
    assert graph_class_names(model, None) == ["object", "disc", "screw"]
    assert graph_class_names(model, ["screw", "object"]) == ["object", "screw"]
    assert graph_class_names(build_model("anomalyclip"), None) is None
    with pytest.raises(ValueError, match=r"class names \['bolt'\] were not tokenised"):
        export_graph(model, (IMAGE_SIZE, IMAGE_SIZE), True, ["object", "bolt"])
    model.config.hsf_init = "k-means++"  # random draws: no graph can repeat them
    with pytest.raises(ValueError, match="export with the deterministic start"):
        export_graph(model, (IMAGE_SIZE, IMAGE_SIZE), True)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
@pytest.mark.parametrize("family", ["anomalyclip", "adaclip"])
def test_exported_family_matches_pytorch(checkpoints, exports, family, export_format):
    """Per model input: <= 1e-4 on the map, <= 1e-5 on the score, identical decisions at thresholds that split the
    batch (AdaCLIP: each image's class name selects its prompts, None the default name)."""
    folder = exports(family, export_format)
    model = loaded(checkpoints[family])
    categories = CATEGORIES if family == "adaclip" else [None, None, "screw", None]
    pixel_values = random_pixels(seed=1)
    with torch.no_grad():
        reference = model(pixel_values, categories=categories, decide=False)
    image_threshold = gap_threshold(reference.pred_score.numpy())
    pixel_threshold = gap_threshold(reference.anomaly_map.numpy())
    runner = ExportedCLIPADA(folder)
    runner.image_threshold, runner.pixel_threshold, runner.calibration_mode = image_threshold, pixel_threshold, None
    runner.whole_images = runner.thresholds_fit_inputs = True  # decide on these model inputs themselves
    outputs = runner(pixel_values.numpy(), categories)
    assert np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max() <= 1e-4
    assert np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max() <= 1e-5
    expected = [(image_threshold, pixel_threshold) if c != "screw" else (0.0, 1.0) for c in categories]
    labels, masks = apply_thresholds(reference.anomaly_map, reference.pred_score, *map(torch.tensor, zip(*expected)))
    np.testing.assert_array_equal(outputs["pred_label"], labels.numpy())
    np.testing.assert_array_equal(outputs["pred_mask"], masks.numpy())
    assert 0 < labels.float().mean() < 1 and 0 < masks[[0, 1, 3]].float().mean() < 1
    config = json.loads((folder / EXPORT_CONFIG_NAME).read_text())
    assert config["family"] == family and config["input_mode"] == input_mode(runner.processor)
    assert config["parity"]["anomaly_map_max_abs_diff"] <= 1e-4 and config["parity"]["pred_score_max_abs_diff"] <= 1e-5
    if family == "adaclip":
        assert config["graph_inputs"][:2] == ["pixel_values", "class_index"]
        assert config["class_names"] == ["object", "disc", "screw"]
        with pytest.raises(ExportedModelError, match=r"not \['bolt'\]: export the checkpoint again with --class_names"):
            runner(pixel_values.numpy(), ["bolt"] * 4)
    elif export_format == "openvino":  # AnomalyCLIP's text is folded: no text tower in the file
        assert (
            "text_embeddings" in (folder / "model.xml").read_text()
            and "text_model" not in (folder / "model.xml").read_text()
        )


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
@pytest.mark.parametrize("family", ["anomalyclip", "adaclip"])
def test_tiled_and_letterboxed_exports_merge_like_pytorch(checkpoints, exports, family, export_format):
    """A tiled (AnomalyCLIP) or letterboxed (AdaCLIP) checkpoint exports its per-input graph; the runner cuts and
    merges as `clipada predict` does, and decides with thresholds calibrated in that mode."""
    folder = exports(family, export_format)
    processor = CLIPADAImageProcessor.from_pretrained(checkpoints[family])
    assert processor.tile_size or processor.resize_mode == "letterbox"
    categories = ["disc", None, "screw", "disc"] if family == "adaclip" else [None, None, "screw", None]
    model = loaded(checkpoints[family])
    pixels = [processor.process_image(image) for image in sample_images()]
    reference = score_images(TorchBackend(model, "cpu", str(checkpoints[family])), processor, pixels, categories)
    backend_scored = score_images(ExportedBackend(str(folder), ExportedCLIPADA.runtime_of(folder)), processor, pixels,
                                  categories)  # fmt: skip
    outputs = ExportedCLIPADA(folder).predict(sample_images(), categories)
    for scored in (backend_scored, outputs):
        maps = scored.anomaly_maps if hasattr(scored, "anomaly_maps") else scored["anomaly_map"]
        scores = scored.scores if hasattr(scored, "scores") else scored["pred_score"]
        for anomaly_map, expected in zip(maps, reference.anomaly_maps):
            assert anomaly_map.shape == expected.shape == sample_images()[0].shape[:2]
            assert np.abs(anomaly_map - expected).max() <= 1e-4
        assert np.abs(scores - reference.scores).max() <= 1e-5
    config = model.config
    thresholds = [(0.0, 1.0) if c == "screw" else (config.image_threshold, config.pixel_threshold) for c in categories]
    for index, (image_threshold, pixel_threshold) in enumerate(thresholds):
        label, mask = apply_thresholds(
            reference.anomaly_maps[index][None], reference.scores[index : index + 1], image_threshold, pixel_threshold
        )
        assert outputs["pred_label"][index] == label[0]
        np.testing.assert_array_equal(outputs["pred_mask"][index], mask[0])
    assert 0 < np.mean(outputs["pred_label"]) < 1


# ---------------------------------------------------------------------------------------------- no torch


@pytest.mark.slow
def test_family_export_runs_where_torch_cannot_be_imported(checkpoints, exports, tmp_path):
    """The runners' command on the letterboxed AdaCLIP ONNX export with `--category disc`: torch is never imported,
    and the scores and decisions are PyTorch's."""
    folder = exports("adaclip", "onnx")
    for index, image in enumerate(sample_images()):
        Image.fromarray(image).save(tmp_path / f"{index}.png")
    script = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "sys.argv = ['runners', '--model_dir', *sys.argv[1:], '--category', 'disc']\n"
        "try:\n"
        "    runpy.run_module('inference.deploy.runners', run_name='__main__')\n"
        "finally:\n"
        "    assert sys.modules['torch'] is None and 'torch.nn' not in sys.modules\n"
    )
    files = [str(tmp_path / f"{index}.png") for index in range(4)]
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), *files],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    processor = CLIPADAImageProcessor.from_pretrained(checkpoints["adaclip"])
    model = loaded(checkpoints["adaclip"])
    reference = score_images(
        TorchBackend(model, "cpu"), processor, [processor.process_image(f) for f in files], ["disc"] * 4
    )
    assert [row["path"] for row in rows] == files
    for row, score in zip(rows, reference.scores):
        assert abs(row["score"] - score) <= 1e-5
        assert row["decision"] == ("NG" if score >= model.config.image_threshold else "OK")


# ---------------------------------------------------------------------------------------------- reference memory


@pytest.mark.slow
@pytest.mark.parametrize(
    "family, export_format, memory_categories, categories",
    [
        ("anomalyclip", "onnx", ["disc"], [None, "disc", None, "disc"]),  # one category: None is that one
        ("adaclip", "openvino", ["disc", "screw"], ["screw", "disc", "disc", "screw"]),
    ],
)
def test_exported_family_carries_the_reference_memory(family, export_format, memory_categories, categories, tmp_path):
    """The few-shot memory in the graph: <= 1e-4 on the map, <= 1e-5 on the score and identical decisions against
    PyTorch with the memory (AdaCLIP: each image's category picks both its prompts and its bank)."""
    pytest.importorskip("onnxruntime" if export_format == "onnx" else "openvino")
    model = build_model(family)
    references = random_pixels(count=2 * len(memory_categories), seed=7)
    model.fit_reference(references, [name for name in memory_categories for _ in range(2)])
    pixel_values = random_pixels(seed=1)
    with torch.no_grad():
        uncalibrated = model(pixel_values, categories=categories)
    model.config.image_threshold = float(uncalibrated.pred_score.quantile(0.5))
    model.config.pixel_threshold = float(uncalibrated.anomaly_map.quantile(0.5))
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(checkpoint)
    make_tiny_clip(seed=3)[1].save_pretrained(checkpoint)
    metadata = export(str(checkpoint), tmp_path / "export", export_format)
    assert metadata["memory_categories"] == memory_categories and metadata["graph_inputs"][-1] == "memory_index"
    assert metadata["model"]["reference_memory_sizes"] == model.config.reference_memory_sizes
    with torch.no_grad():
        reference = model(pixel_values, categories=categories)
    runner = ExportedCLIPADA(tmp_path / "export")
    outputs = runner(pixel_values.numpy(), categories)
    assert np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max() <= 1e-4
    assert np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max() <= 1e-5
    np.testing.assert_array_equal(outputs["pred_label"], reference.pred_label.numpy())
    np.testing.assert_array_equal(outputs["pred_mask"], reference.pred_mask.numpy())
    assert 0 < reference.pred_label.float().mean() < 1 and 0 < reference.pred_mask.float().mean() < 1
    # a category without memory (AdaCLIP: none named, with two banks) is that image's error, as in eager
    missing = "bolt" if len(memory_categories) == 1 else None
    with pytest.raises(ExportedModelError, match="image 1 has " + ("category 'bolt'" if missing else "no category")):
        runner(pixel_values[:2].numpy(), ["disc", missing])


def test_adaclip_memory_of_a_category_its_prompts_cannot_name_is_refused():
    from inference.deploy.export import ExportError, check_memory_categories

    model = build_model("adaclip")
    model.fit_reference(random_pixels(count=2, seed=7), ["disc", "bolt"])
    with pytest.raises(ExportError, match=r"reference memory of \['bolt'\].*--class_names bolt disc"):
        check_memory_categories(model, graph_class_names(model, None), "checkpoint")
    assert check_memory_categories(model, ["object", "disc", "bolt"], "checkpoint") == ["bolt", "disc"]
