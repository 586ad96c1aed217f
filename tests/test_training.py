"""Tests of training (resume, two processes, checkpoints, Hub upload), evaluation and the offline main job."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from run_helpers import stop_after_steps, training_args
from safetensors.torch import load_file

from modeling_clipada import CLIPADAForAnomalySegmentation
from training import evaluation, train
from training.checkpointing import TRAINABLE_WEIGHTS
from training.loop import synthesis_generator
from training.metrics import compute_anomaly_metrics
from training.preparation import build_scheduler

REPO = Path(__file__).resolve().parents[1]
TRAINABLE = ("prompt_vectors", "similarity_logit_scale", "similarity_logit_bias", "patch_projections")


def _trainable_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(folder / "model.safetensors")
    return {name: value for name, value in weights.items() if name.startswith(TRAINABLE)}


@pytest.mark.slow
def test_training_saves_a_loadable_model_with_card_metrics_and_heatmaps(workspace, tmp_path):
    metrics = train.main(training_args(workspace, tmp_path / "run", "--max_train_steps", "6"))
    run = tmp_path / "run"
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_clipada.py",
        "configuration_clipada.py",
        "preprocessor_config.json",
        "image_processing_clipada.py",
        "README.md",
    ):
        assert (run / name).is_file(), name
    saved = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["per_category"]) == {"disc", "weave"}
    paper_metrics = {"image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max"}
    overkill = {f"overkill_at_{escape}pct_escape" for escape in (2, 5, 10)}
    assert paper_metrics | overkill | {"false_reject_rate", "escape_rate"} <= set(saved["mean"])
    assert all(0 <= saved["mean"][name] <= 1 for name in paper_metrics | overkill)
    # calibrated at the end of training: the operating point of the checkpoint's own thresholds, as counts
    assert saved["mean"]["normal_images"] > 0 and 0 <= saved["mean"]["false_reject_rate"] <= 1
    assert len(list((run / "evaluation" / "heatmaps").glob("*.png"))) == 4
    card = (run / "README.md").read_text()
    assert "| Mean |" in card and "trust_remote_code=True" in card and str(workspace / "data") in card
    model = CLIPADAForAnomalySegmentation.from_pretrained(run)
    initial = CLIPADAForAnomalySegmentation.from_clip(str(workspace / "clip"))
    assert not torch.equal(model.patch_projections[0].weight, initial.patch_projections[0].weight)


@pytest.mark.slow
def test_checkpoints_hold_only_the_trainable_weights(trained_run):
    checkpoints = trained_run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_2", "step_4"]
    weights = load_file(checkpoints / "step_4" / TRAINABLE_WEIGHTS)
    assert set(weights) == set(_trainable_weights(trained_run))
    assert not any(name.startswith("clip.") for name in weights)
    assert not list((checkpoints / "step_4").glob("model*.safetensors"))


@pytest.mark.slow
def test_resume_continues_exactly(workspace, tmp_path, monkeypatch):
    # 12 images at batch 4 = 3 steps per epoch: the resume at step 10 lands mid-epoch, after a lr milestone.
    train.main(training_args(workspace, tmp_path / "straight", "--max_train_steps", "20", "--skip_evaluation"))
    resumed = tmp_path / "resumed"
    stop_after_steps(monkeypatch, 10)  # preempted after step 10
    with pytest.raises(SystemExit, match=str(train.PREEMPTED_EXIT_CODE)):
        train.main(training_args(workspace, resumed, "--max_train_steps", "20", "--skip_evaluation"))
    monkeypatch.undo()
    (resumed / "checkpoints" / ".partial_step_15").mkdir()  # a write killed midway is never "latest"
    train.main(
        training_args(
            workspace, resumed, "--max_train_steps", "20", "--resume_from_checkpoint", "latest", "--skip_evaluation"
        )
    )
    straight, after_resume = _trainable_weights(tmp_path / "straight"), _trainable_weights(resumed)
    assert set(straight) == set(after_resume) and len(straight) == 7
    for name in straight:
        assert torch.equal(straight[name], after_resume[name]), name


def test_resume_errors_are_clear(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(training_args(workspace, tmp_path / "empty", "--resume_from_checkpoint", "latest"))
    assert exit_info.value.code == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_missing_dataset_is_a_clear_error(workspace, tmp_path, capsys):
    args = training_args(workspace, tmp_path / "run")
    args[args.index("--dataset_name") + 1] = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit) as exit_info:
        train.main(args)
    assert exit_info.value.code == 2
    assert "nowhere" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--per_device_train_batch_size", "0"),
        ("--learning_rate", "-1"),
        ("--checkpointing_steps", "often"),
        ("--num_refinements", "-1"),
    ],
)
def test_bad_arguments_are_rejected(workspace, tmp_path, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(training_args(workspace, tmp_path / "run", flag, value))
    assert exit_info.value.code == 2
    assert flag.lstrip("-") in capsys.readouterr().err


def test_presets_set_the_papers_schedules_and_explicit_flags_win():
    mvtec = train.parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "mvtec_ad"])
    assert (mvtec.num_train_epochs, mvtec.per_device_train_batch_size, mvtec.lr_milestones) == (800, 16, [400, 700])
    visa = train.parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "visa", "--num_train_epochs", "3"])
    assert (visa.num_train_epochs, visa.per_device_train_batch_size, visa.lr_milestones) == (3, 64, [250])


def test_learning_rate_is_multiplied_by_0_2_at_each_milestone():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, milestones_epochs=[2, 3], steps_per_epoch=5)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert (
        rates[:10] == [1.0] * 10
        and rates[10:15] == pytest.approx([0.2] * 5)
        and rates[15:] == pytest.approx([0.04] * 5)
    )


@pytest.mark.slow
def test_continuing_a_clipada_checkpoint(workspace, tmp_path):
    train.main(
        training_args(
            workspace, tmp_path / "first", "--max_train_steps", "2", "--skip_evaluation", "--num_refinements", "2"
        )
    )
    args = training_args(workspace, tmp_path / "second", "--max_train_steps", "1", "--skip_evaluation")
    args[args.index("--model_name_or_path") + 1] = str(tmp_path / "first")
    train.main(args)
    assert json.loads((tmp_path / "second" / "config.json").read_text())["num_refinements"] == 2


@pytest.mark.slow
def test_push_to_hub_uploads_the_final_model_only(workspace, tmp_path, hub_uploads):
    train.main(
        training_args(
            workspace,
            tmp_path / "run",
            "--max_train_steps",
            "2",
            "--checkpointing_steps",
            "1",
            "--push_to_hub",
            "--hub_model_id",
            "someone/clipada-demo",
        )
    )
    assert len(hub_uploads) == 1 and hub_uploads[0]["repo_id"] == "someone/clipada-demo"
    files = set(hub_uploads[0]["files"])
    assert {
        "config.json",
        "model.safetensors",
        "modeling_clipada.py",
        "configuration_clipada.py",
        "preprocessor_config.json",
        "image_processing_clipada.py",
        "README.md",
        "evaluation/metrics.json",
    } <= files
    assert not any(name.startswith("checkpoints/") for name in files)


@pytest.mark.slow
def test_two_processes_hold_identical_weights_equal_to_one_process(workspace, tmp_path):
    # All 12 normal images (no calibration hold-out), so that 2 processes x batch 2 divide them evenly.
    common = ["--max_train_steps", "4", "--per_device_train_batch_size", "2", "--skip_evaluation"]
    common += ["--calibration_fraction", "0"]
    two = tmp_path / "two"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29533",
        "-m",
        "training.train",
        *training_args(workspace, two, *common),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trainable weights identical on all 2 processes." in result.stdout + result.stderr
    # One process, two accumulated micro-batches of 2 = the same global batches of 4.
    train.main(training_args(workspace, tmp_path / "one", *common, "--gradient_accumulation_steps", "2"))
    one, both = _trainable_weights(tmp_path / "one"), _trainable_weights(two)
    for name in one:
        torch.testing.assert_close(both[name], one[name], rtol=0, atol=1e-6)


def test_synthesis_seed_depends_on_data_order_only():
    a = synthesis_generator(1, 2, 3).initial_seed()
    assert a == synthesis_generator(1, 2, 3).initial_seed()
    assert (
        len(
            {
                a,
                synthesis_generator(1, 2, 4).initial_seed(),
                synthesis_generator(1, 3, 3).initial_seed(),
                synthesis_generator(2, 2, 3).initial_seed(),
            }
        )
        == 4
    )


@pytest.mark.slow
def test_eval_cli_writes_metrics_predictions_and_heatmaps(workspace, tmp_path):
    # Its own short run: recomputing from the float16 maps of the npz agrees to 2e-3 for this model.
    args = ["--max_train_steps", "2", "--skip_evaluation", "--calibration_fraction", "0"]
    train.main(training_args(workspace, tmp_path / "run", *args))
    output = tmp_path / "evaluation"
    metrics = evaluation.main(
        [
            "--model_name_or_path",
            str(tmp_path / "run"),
            "--dataset_name",
            str(workspace / "data"),
            "--output_dir",
            str(output),
            "--save_predictions",
            "--num_heatmaps",
            "3",
            "--per_device_eval_batch_size",
            "3",
        ]
    )
    assert json.loads((output / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert "| Mean |" in (output / "metrics.md").read_text()
    for category in ("disc", "weave"):
        predictions = np.load(output / "predictions" / f"{category}.npz")
        assert predictions["anomaly_maps"].dtype == np.float16 and predictions["masks"].dtype == np.uint8
        assert predictions["anomaly_maps"].shape == predictions["masks"].shape == (8, 32, 32)
        assert predictions["image_scores"].shape == predictions["image_labels"].shape == (8,)
        assert predictions["image_labels"].sum() == 6 and predictions["masks"].max() == 1
        recomputed = compute_anomaly_metrics(
            predictions["anomaly_maps"].astype(np.float32),
            predictions["masks"],
            predictions["image_scores"],
            predictions["image_labels"],
            include_thresholds=True,
        )
        for key, value in metrics["per_category"][category].items():
            assert recomputed[key] == pytest.approx(value, abs=2e-3), key
    assert len(list((output / "heatmaps").glob("disc_*.png"))) == 3


def test_eval_of_a_missing_checkpoint_is_a_clear_error(workspace, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(
            [
                "--model_name_or_path",
                str(tmp_path / "missing"),
                "--dataset_name",
                str(workspace / "data"),
                "--output_dir",
                str(tmp_path / "e"),
            ]
        )
    assert exit_info.value.code == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_offline_main_job_runs_end_to_end(tmp_path, capsys):
    from training import demo

    metrics = demo.main(["--output_dir", str(tmp_path / "demo"), "--max_train_steps", "3"])
    printed = capsys.readouterr().out
    assert "SMOKE MODEL" in printed and "| Mean |" in printed
    model_dir = tmp_path / "demo" / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "evaluation" / "metrics.json").is_file()
    assert list((model_dir / "evaluation" / "heatmaps").glob("*.png"))
    assert set(metrics["per_category"]) == {"disc", "weave"}
    again = demo.main(["--output_dir", str(tmp_path / "demo"), "--max_train_steps", "1"])  # the README's re-run
    assert set(again["per_category"]) == {"disc", "weave"}
    shutil.rmtree(tmp_path / "demo")


@pytest.mark.slow
def test_with_tracking_writes_tensorboard_logs(workspace, tmp_path):
    train.main(
        training_args(workspace, tmp_path / "run", "--max_train_steps", "2", "--skip_evaluation", "--with_tracking")
    )
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
