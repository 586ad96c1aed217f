"""Tests of the few-shot reference memory (modeling_clipada.reference_memory) for every family, and of
`clipada fit-reference`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from run_helpers import run_without_project
from safetensors import safe_open
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference.torch_backend import TorchBackend
from modeling_clipada import (
    AdaCLIPForAnomalySegmentation,
    AnomalyCLIPForAnomalySegmentation,
    CLIPADAConfig,
    CLIPADAForAnomalySegmentation,
)
from modeling_clipada.reference_memory import (
    ReferenceMemory,
    fuse_maps,
    memory_patch_map,
    nearest_distances,
    score_with_global,
)
from processing import CLIPADAImageProcessor
from training.data import load_anomaly_dataset
from training.fit_reference import SHOTS_FILE, select_shots

FAMILIES = {
    "clipada": lambda clip, tokenizer: CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, num_refinements=1),
    "anomalyclip": lambda clip, tokenizer: AnomalyCLIPForAnomalySegmentation.from_clip(
        clip, tokenizer, deep_prompt_length=2, deep_prompt_depth=2, dpam_start_layer=2, feature_layers=[2, 4]
    ),
    "adaclip": lambda clip, tokenizer: AdaCLIPForAnomalySegmentation.from_clip(
        clip,
        tokenizer,
        class_names=["disc"],
        prompt_length=2,
        prompt_depth=2,
        feature_layers=[2, 4],
        hsf_num_clusters=2,
    ),
}


@pytest.fixture(scope="module")
def clip_and_tokenizer():
    return make_tiny_clip()


def _model(family: str, clip_and_tokenizer):
    torch.manual_seed(1)
    return FAMILIES[family](*clip_and_tokenizer).eval()


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def test_distance_is_zero_for_a_stored_patch_and_grows_with_the_angle():
    bank = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    stored = bank[17]
    other = F.normalize(torch.randn(8) - (torch.randn(8) @ stored) * stored, dim=0)
    other = F.normalize(other - (other @ stored) * stored, dim=0)  # orthogonal to the stored patch
    angles = torch.tensor([0.0, 0.05, 0.1, 0.2, 0.4])
    queries = torch.cos(angles)[:, None] * stored + torch.sin(angles)[:, None] * other
    distances = nearest_distances(queries, bank, max_elements=7)  # many chunks
    assert distances[0].item() == pytest.approx(0, abs=1e-6)
    assert torch.all(distances[1:] > distances[:-1])
    exact = (1 - (queries @ bank.T).amax(dim=1)).clamp(0, 1)
    torch.testing.assert_close(distances, exact, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_memory_map_is_zero_on_the_reference_images_and_positive_elsewhere(family, clip_and_tokenizer):
    model = _model(family, clip_and_tokenizer)
    references, others = _images(2, seed=0), _images(2, seed=5)
    sizes = model.fit_reference(references, ["disc", "disc"])
    grid = (IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    num_layers = len(model.reference_features(references))
    assert sizes == {"disc": 2 * grid[0] * grid[1]}
    assert model.reference_memory.bank("disc").shape[:2] == (num_layers, 2 * grid[0] * grid[1])
    on_references = memory_patch_map(model.reference_memory, model.reference_features(references), None, grid)
    on_others = memory_patch_map(model.reference_memory, model.reference_features(others), ["disc"] * 2, grid)
    assert on_references.abs().max().item() < 1e-5
    assert on_others.min().item() > 1e-4


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_memory_and_zero_shots_give_the_familys_own_map(family, clip_and_tokenizer):
    model = _model(family, clip_and_tokenizer)
    images = _images(2, seed=3)
    with torch.no_grad():
        own = model(images, categories=["disc", "disc"])
        model.fit_reference(_images(1, seed=0), ["disc"])
        fused = model(images, categories=["disc", "disc"])
        assert model.fit_reference([], []) == {} and model.config.reference_memory_sizes is None
        again = model(images, categories=["disc", "disc"])
    assert not torch.allclose(fused.anomaly_map, own.anomaly_map)
    torch.testing.assert_close(again.anomaly_map, own.anomaly_map, atol=0, rtol=0)
    torch.testing.assert_close(again.pred_score, own.pred_score, atol=0, rtol=0)
    assert dict(model.state_dict()).keys() == dict(_model(family, clip_and_tokenizer).state_dict()).keys()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_map_is_the_mean_of_the_familys_and_the_memorys(family, clip_and_tokenizer):
    model = _model(family, clip_and_tokenizer)
    images = _images(2, seed=3)
    with torch.no_grad():
        own = model(images, categories=["disc", "disc"])
        model.fit_reference(_images(2, seed=0), ["disc", "disc"])
        fused = model(images, categories=["disc", "disc"])
        model.config.reference_fusion = "memory"
        memory = model(images, categories=["disc", "disc"])
    torch.testing.assert_close(fused.anomaly_map, (own.anomaly_map + memory.anomaly_map) / 2, atol=1e-6, rtol=0)
    if family == "clipada":  # the family's own image score of the fused map
        expected = model.image_score(fused.anomaly_map)
    else:  # the mean of the global score and the memory map's maximum (WinCLIP+)
        expected = (own.pred_score + memory.anomaly_map.flatten(1).amax(1)) / 2
    torch.testing.assert_close(fused.pred_score, expected, atol=1e-6, rtol=0)


def test_max_patches_keeps_a_seeded_subset_of_the_same_patches_in_every_layer(clip_and_tokenizer):
    model = _model("anomalyclip", clip_and_tokenizer)
    images = _images(3, seed=0)
    model.fit_reference(images, ["disc"] * 3)
    full = model.reference_memory.bank("disc").clone()
    assert model.fit_reference(images, ["disc"] * 3, max_patches=50, seed=1) == {"disc": 50}
    subset = model.reference_memory.bank("disc").clone()
    rows = [int((full[0] == row).all(dim=1).nonzero()) for row in subset[0]]
    assert rows == sorted(rows) and len(set(rows)) == 50  # drawn without repeats, kept in their order
    torch.testing.assert_close(subset, full[:, rows], atol=0, rtol=0)  # the same patches in every layer
    model.fit_reference(images, ["disc"] * 3, max_patches=50, seed=1)
    torch.testing.assert_close(model.reference_memory.bank("disc"), subset, atol=0, rtol=0)
    model.fit_reference(images, ["disc"] * 3, max_patches=50, seed=2)
    assert not torch.equal(model.reference_memory.bank("disc"), subset)
    assert model.fit_reference(images, ["disc"] * 3, max_patches=10**6) == {"disc": full.shape[1]}
    with pytest.raises(ValueError, match="max_patches"):
        model.fit_reference(images, ["disc"] * 3, max_patches=0)


def test_the_distance_scale_scales_the_memory_map(clip_and_tokenizer):
    model = _model("anomalyclip", clip_and_tokenizer)
    model.fit_reference(_images(2, seed=0), ["disc", "disc"])
    features = model.reference_features(_images(2, seed=8))
    grid = (IMAGE_SIZE // 4, IMAGE_SIZE // 4)
    full = memory_patch_map(model.reference_memory, features, None, grid)
    half = memory_patch_map(model.reference_memory, features, None, grid, scale=0.5)
    assert 0 < full.max().item() < 1  # nothing clamped here
    torch.testing.assert_close(half, full / 2, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_and_reloaded_memory_gives_identical_maps(family, clip_and_tokenizer, tmp_path):
    model = _model(family, clip_and_tokenizer)
    model.fit_reference(_images(3, seed=0), ["disc", "weave", "disc"])
    images = _images(2, seed=4)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert reloaded.config.reference_memory_sizes == model.config.reference_memory_sizes
    for category in ("disc", "weave"):
        torch.testing.assert_close(reloaded.reference_memory.bank(category), model.reference_memory.bank(category))
    if family == "adaclip":
        categories = ["disc", "disc"]  # its prompts name the class: only "disc" is tokenised
    else:
        categories = ["disc", "weave"]
    with torch.no_grad():
        before, after = model(images, categories=categories), reloaded(images, categories=categories)
    torch.testing.assert_close(after.anomaly_map, before.anomaly_map, atol=1e-5, rtol=0)
    torch.testing.assert_close(after.pred_score, before.pred_score, atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["onnx", "openvino"])
def test_export_carries_the_memory_with_parity(clip_and_tokenizer, tmp_path, export_format):
    """The exported graph holds every category's bank (of unequal sizes: padded) and picks each image's by its
    category: maps <= 1e-4, scores <= 1e-5 and decisions identical to PyTorch with the memory; a category without
    memory is an error naming it, as in eager."""
    pytest.importorskip("onnxruntime" if export_format == "onnx" else "openvino")
    from inference.deploy.export import export
    from inference.deploy.runners import ExportedCLIPADA, ExportedModelError

    model = _model("clipada", clip_and_tokenizer)
    model.fit_reference(_images(3, seed=0), ["disc", "disc", "weave"])  # 2 x and 1 x the patches
    categories, pixel_values = ["weave", "disc", "disc", "weave"], _images(4, seed=1)
    with torch.no_grad():
        uncalibrated = model(pixel_values, categories=categories)
    model.config.image_threshold = float(uncalibrated.pred_score.quantile(0.5))  # between the middle two
    model.config.pixel_threshold = float(uncalibrated.anomaly_map.quantile(0.5))
    model.save_pretrained(tmp_path / "checkpoint")
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(tmp_path / "checkpoint")
    metadata = export(str(tmp_path / "checkpoint"), tmp_path / "export", export_format)
    assert metadata["memory_categories"] == ["disc", "weave"] and metadata["graph_inputs"][-1] == "memory_index"
    assert metadata["parity"]["anomaly_map_max_abs_diff"] <= 1e-4
    assert metadata["parity"]["pred_score_max_abs_diff"] <= 1e-5

    with torch.no_grad():
        reference = model(pixel_values, categories=categories)
    runner = ExportedCLIPADA(tmp_path / "export")
    outputs = runner(pixel_values.numpy(), categories)
    assert np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max() <= 1e-4
    assert np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max() <= 1e-5
    np.testing.assert_array_equal(outputs["pred_label"], reference.pred_label.numpy())
    np.testing.assert_array_equal(outputs["pred_mask"], reference.pred_mask.numpy())
    assert 0 < reference.pred_label.float().mean() < 1 and 0 < reference.pred_mask.float().mean() < 1
    # the memory and each image's own bank matter: another bank, or none, gives other maps
    swapped = runner(pixel_values.numpy(), ["disc", "weave", "weave", "disc"])["anomaly_map"]
    model.fit_reference(torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE), [])
    with torch.no_grad():
        without = model(pixel_values).anomaly_map.numpy()
    assert (
        np.abs(swapped - outputs["anomaly_map"]).max() > 1e-3 and np.abs(without - outputs["anomaly_map"]).max() > 1e-3
    )
    with pytest.raises(ExportedModelError, match="image 1 has category 'screw'"):
        runner(pixel_values[:2].numpy(), ["disc", "screw"])
    with pytest.raises(ExportedModelError, match="image 0 has no category"):
        runner(pixel_values[:1].numpy())


def test_a_checkpoint_missing_its_memory_tensors_is_refused(clip_and_tokenizer, tmp_path):
    model = _model("clipada", clip_and_tokenizer)
    model.save_pretrained(tmp_path)  # no memory in the weights
    config = json.loads((tmp_path / "config.json").read_text())
    config["reference_memory_sizes"] = {"disc": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="reference_memory.bank_0"):
        CLIPADAForAnomalySegmentation.from_pretrained(tmp_path)


def test_an_image_of_a_category_without_memory_is_an_error_naming_it(clip_and_tokenizer):
    model = _model("clipada", clip_and_tokenizer)
    model.fit_reference(_images(2, seed=0), ["disc", "weave"])
    with pytest.raises(ValueError, match="'screw'"):
        model(_images(1, seed=1), categories=["screw"])
    with pytest.raises(ValueError, match="no category"):
        model(_images(1, seed=1))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"reference_fusion": "max"}, "reference_fusion"),
        ({"reference_memory_sizes": {"disc": 0}}, "reference_memory"),
        ({"reference_distance_scale": 0.0}, "reference_distance_scale"),
        ({"reference_distance_scale": 1.5}, "reference_distance_scale"),
        ({"reference_distance_scale": float("nan")}, "reference_distance_scale"),
    ],
)
def test_invalid_memory_fields_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        CLIPADAConfig(**overrides)


def test_memory_fields_are_no_training_flags():
    fields = {"reference_memory_sizes", "reference_fusion", "reference_distance_scale"}
    assert not fields & set(CLIPADAConfig.head_field_names())


# ---------------------------------------------------------------------- shots and the command


@pytest.fixture(scope="module")
def demo_split(tmp_path_factory):
    from training.demo_data import make_demo_dataset

    root = make_demo_dataset(tmp_path_factory.mktemp("data") / "data", num_train=6, image_size=32)
    return root, load_anomaly_dataset(str(root))


def test_shot_lists_are_seeded_per_category_and_hold_only_normal_training_images(demo_split):
    _, dataset = demo_split
    train, test = dataset["train"], dataset["test"]
    first, same, other = (select_shots(train, 2, seed) for seed in (0, 0, 1))
    assert first == same and first != other
    assert sorted(first) == ["disc", "weave"] and all(len(rows) == 2 for rows in first.values())
    for category, rows in first.items():
        assert all(train[row]["label"] == 0 and train[row]["category"] == category for row in rows)
    chosen = {train[row]["image_path"] for rows in first.values() for row in rows}
    assert not chosen & set(test["image_path"])
    assert select_shots(train, 2, 0, ["disc"])["disc"] == first["disc"]  # independent of the other categories
    with pytest.raises(ValueError, match="fewer than --shots 7"):
        select_shots(train, 7, 0)


def test_fit_reference_command_writes_the_memory_and_the_shot_list(demo_split, clip_and_tokenizer, tmp_path):
    from training import fit_reference

    root, dataset = demo_split
    checkpoint = tmp_path / "checkpoint"
    _model("clipada", clip_and_tokenizer).save_pretrained(checkpoint)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(checkpoint)
    output = tmp_path / "four_shot"
    args = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(root), "--device", "cpu"]
    shots = fit_reference.main([*args, "--shots", "2", "--seed", "3", "--output_dir", str(output)])
    record = json.loads((output / SHOTS_FILE).read_text())
    assert record["images"] == shots and record["seed"] == 3 and record["split"] == "train"
    assert set(shots) == {"disc", "weave"} and all(len(paths) == 2 for paths in shots.values())
    assert all("/train/good/" in f"/{path}" for paths in shots.values() for path in paths)
    assert not {p for paths in shots.values() for p in paths} & set(dataset["test"]["image_path"])
    model = CLIPADAForAnomalySegmentation.from_pretrained(output).eval()
    assert model.config.reference_memory_sizes == {"disc": 128, "weave": 128}
    # predict, calibrate and eval score through TorchBackend, which loads with from_pretrained and calls forward
    backend = TorchBackend.from_pretrained(str(output), device="cpu")
    images = _images(2, seed=6)
    with torch.no_grad():
        expected = model(images, categories=["disc", "weave"]).anomaly_map
        unfused = _model("clipada", clip_and_tokenizer)(images).anomaly_map
    scored = backend(images, categories=["disc", "weave"])
    torch.testing.assert_close(torch.as_tensor(scored.anomaly_map), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(expected, unfused)
    with pytest.raises(SystemExit) as refused:  # its own folder again, without --overwrite_output_dir
        fit_reference.main([*args, "--shots", "2", "--output_dir", str(output)])
    assert refused.value.code == 2
    extra = ["--max_memory_patches", "40", "--reference_fusion", "memory", "--reference_distance_scale", "0.5"]
    fit_reference.main([*args, "--shots", "2", *extra, "--output_dir", str(tmp_path / "sub")])
    config = CLIPADAForAnomalySegmentation.from_pretrained(tmp_path / "sub").config
    assert config.reference_memory_sizes == {"disc": 40, "weave": 40}
    assert (config.reference_fusion, config.reference_distance_scale) == ("memory", 0.5)
    fit_reference.main([*args, "--shots", "0", "--output_dir", str(output), "--overwrite_output_dir"])
    assert CLIPADAForAnomalySegmentation.from_pretrained(output).config.reference_memory_sizes is None


@pytest.mark.slow
def test_a_checkpoint_with_memory_loads_as_remote_code_where_the_project_is_not_importable(
    clip_and_tokenizer, tmp_path
):
    model = _model("anomalyclip", clip_and_tokenizer)
    model.fit_reference(_images(2, seed=0), ["disc", "disc"])
    model.save_pretrained(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "reference_memory.py").is_file()
    images = _images(2, seed=7)
    torch.save(images, tmp_path / "pixel_values.pt")
    with torch.no_grad():
        torch.save(model(images, categories=["disc", "disc"]).anomaly_map, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            pixel_values = torch.load({str(tmp_path / "pixel_values.pt")!r})
            anomaly_map = model(pixel_values, categories=["disc", "disc"]).anomaly_map
        difference = (anomaly_map - torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
        assert model.config.reference_memory_sizes == {{"disc": 128}}, model.config.reference_memory_sizes
        assert difference <= 1e-5, difference
        print("ok", difference)
        """
    result = run_without_project(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def test_the_benchmark_runs_and_sizes_the_memory():
    import importlib.util
    import sys

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("bench_reference_memory", folder / "bench_reference_memory.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(str(folder))
    assert bench.memory_mib(4, 8, 37 * 37, 768) == pytest.approx(4 * 8 * 1369 * 768 * 4 / 2**20)
    result = bench.main(["--quick", "--shots", "1", "2", "--forward_shots", "0", "1"])
    search = [r for r in result["records"] if r["part"] == "search"]
    assert [r["memory_patches"] for r in search] == [64, 128]
    assert all(r["ms_per_image"] > 0 for r in result["records"])


# ---------------------------------------------------------------------- parity with WinCLIP+ (anomalib)

WINCLIP_FIXTURE = Path(__file__).parent / "fixtures" / "winclip_few_shot_reference.safetensors"


def test_memory_map_and_fusion_equal_winclip_plus_at_the_patch_scale():
    """The fixture holds anomalib's `visual_association_score` (run unmodified, commit in its metadata) on shared
    random features, and WinCLIP+'s fusion: the configuration that mirrors it is `reference_distance_scale=0.5`,
    `reference_fusion="mean"`, and a family with a global score."""
    with safe_open(WINCLIP_FIXTURE, framework="pt") as fixture:
        assert fixture.metadata()["commit"] == "161bb369547d06df29d468e4980ddefae25a0ba5"
        tensors = {name: fixture.get_tensor(name) for name in fixture.keys()}
    embeddings, reference = tensors["embeddings"], tensors["reference"]
    batch, patches, dim = embeddings.shape
    side = int(patches**0.5)
    memory = ReferenceMemory(None, 1, dim)
    memory.replace({"part": F.normalize(reference.reshape(1, -1, dim), dim=-1)})
    memory_map = memory_patch_map(memory, [F.normalize(embeddings, dim=-1)], None, (side, side), scale=0.5)
    assert (memory_map - tensors["few_shot_map"]).abs().max().item() <= 1e-5
    assert memory_map[0].flatten()[11].item() == pytest.approx(0, abs=1e-6)
    fused = fuse_maps(tensors["zero_shot_map"], memory_map, "mean")
    assert (fused - tensors["fused_map"]).abs().max().item() <= 1e-5
    score = score_with_global(tensors["image_scores"], memory_map)
    assert (score - tensors["fused_score"]).abs().max().item() <= 1e-5
    # APRIL-GAN's distance (scale 1) is twice WinCLIP's: the comparison fails without the mirrored scale
    unscaled = memory_patch_map(memory, [F.normalize(embeddings, dim=-1)], None, (side, side))
    assert (unscaled - tensors["few_shot_map"]).abs().max().item() > 1e-2
