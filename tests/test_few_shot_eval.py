"""Tests of the few-shot protocol (`clipada eval --shots ... --seeds ...`, training.few_shot_eval)."""

import json

import pytest
import torch
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training.few_shot_eval import format_summary, planned_runs, summarise


def test_runs_are_every_shots_and_seed_pair_with_zero_shots_once():
    assert planned_runs([1, 4, 0], [0, 1]) == [(1, 0), (1, 1), (4, 0), (4, 1), (0, 0)]
    assert planned_runs([2, 2], [3, 3]) == [(2, 3)]


def test_summary_is_mean_and_population_std_over_the_seeds():
    means = [
        {"image_auroc": 0.8, "pixel_ap": None, "operating_point": "not calibrated", "images": 10},
        {"image_auroc": 0.9, "pixel_ap": None, "operating_point": "not calibrated", "images": 10},
        {"image_auroc": 1.0, "pixel_ap": None, "operating_point": "not calibrated", "images": 10},
    ]
    summary = summarise(means)
    assert summary["image_auroc"]["mean"] == pytest.approx(0.9)
    assert summary["image_auroc"]["std"] == pytest.approx((0.02 / 3) ** 0.5)
    assert summary["pixel_ap"] == {"mean": None, "std": None, "runs": 0}
    assert "operating_point" not in summary
    table = format_summary({4: summary}, ("image_auroc", "pixel_ap"))
    assert "| 4 | 3 | 90.0 ± 8.2 | - |" in table


@pytest.mark.slow
def test_eval_with_shots_and_seeds_writes_every_run_its_shot_list_and_the_summary(tmp_path):
    from training import evaluation
    from training.data import load_anomaly_dataset
    from training.demo_data import make_demo_dataset

    data = make_demo_dataset(tmp_path / "data", num_train=6, num_test_good=2, num_test_defect=2, image_size=32)
    clip, tokenizer = make_tiny_clip()
    torch.manual_seed(0)
    CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, num_refinements=0).save_pretrained(tmp_path / "ckpt")
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(tmp_path / "ckpt")
    output_dir = tmp_path / "few_shot"
    argv = ["--model_name_or_path", str(tmp_path / "ckpt"), "--dataset_name", str(data), "--device", "cpu"]
    argv += ["--output_dir", str(output_dir), "--num_heatmaps", "0", "--shots", "0", "1", "2", "--seeds", "0", "1"]
    result = evaluation.main(argv)
    assert list(result["runs"]) == [f"shots_{k}_seed_{s}" for k, s in ((0, 0), (1, 0), (1, 1), (2, 0), (2, 1))]
    test_paths = set(load_anomaly_dataset(str(data))["test"]["image_path"])
    for name, run in result["runs"].items():
        shot_record = json.loads((output_dir / name / "reference_shots.json").read_text())
        assert shot_record["images"] == run["images"]
        assert all(len(paths) == run["shots"] for paths in run["images"].values())
        assert not {p for paths in run["images"].values() for p in paths} & test_paths  # never a test image
        metrics = json.loads((output_dir / name / "metrics.json").read_text())
        assert metrics["mean"]["image_auroc"] == pytest.approx(run["mean"]["image_auroc"])
    assert result["runs"]["shots_1_seed_0"]["images"] != result["runs"]["shots_1_seed_1"]["images"]
    summary = json.loads((output_dir / "few_shot.json").read_text())["summary"]
    assert summary["1"]["image_auroc"]["runs"] == 2 and summary["0"]["image_auroc"]["runs"] == 1
    expected = [result["runs"][f"shots_2_seed_{s}"]["mean"]["pixel_auroc"] for s in (0, 1)]
    assert summary["2"]["pixel_auroc"]["mean"] == pytest.approx(sum(expected) / 2)
    assert "± " in (output_dir / "few_shot.md").read_text()
    with pytest.raises(SystemExit) as refused:  # the folder is its own now: only with --overwrite_output_dir
        evaluation.main(argv)
    assert refused.value.code == 2
