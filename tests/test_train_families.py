"""Training every model family through the same command: both protocols (synthetic anomalies, real masks)."""

import json
import shutil

import pytest
import torch
from run_helpers import training_args
from transformers import AutoModel, pipeline

from inference import predict
from training import calibrate, evaluation, train
from training.arguments import parse_args

pytestmark = pytest.mark.slow
ANOMALYCLIP_HEAD = ["--feature_layers", "2", "4", "--dpam_start_layer", "2", "--deep_prompt_depth", "2"]


def _anomalyclip_args(workspace, output_dir, *extra):
    argv = training_args(workspace, output_dir, "--model_type", "anomalyclip", *ANOMALYCLIP_HEAD, *extra)
    return [*argv, "--max_train_steps", "3", "--num_prompt_vectors", "2", "--deep_prompt_length", "2"]


def test_anomalyclip_trains_on_labelled_test_images_and_evaluates_on_another_dataset(workspace, tmp_path):
    run = tmp_path / "run"
    argv = _anomalyclip_args(workspace, run, "--train_split", "test", "--anomaly_source", "real")
    metrics = train.main([*argv, "--eval_dataset_name", str(workspace / "data"), "--calibration_fraction", "0"])
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "anomalyclip" and config["feature_layers"] == [2, 4]
    assert set(metrics["per_category"]) == {"disc", "weave"}
    log = json.loads((run / "training_log.json").read_text())["log_history"]
    assert len(log) == 3 and all(entry["loss"] > 0 for entry in log)
    model = AutoModel.from_pretrained(run, trust_remote_code=True)
    assert type(model).__name__ == "AnomalyCLIPForAnomalySegmentation"
    evaluated = evaluation.main(
        [
            "--model_name_or_path",
            str(run),
            "--dataset_name",
            str(workspace / "data"),
            "--output_dir",
            str(tmp_path / "e"),
        ]
    )
    assert evaluated["per_category"].keys() == metrics["per_category"].keys()


def test_anomalyclip_trains_on_normal_images_with_synthetic_anomalies_calibrates_and_predicts(workspace, tmp_path):
    run = tmp_path / "run"
    train.main(_anomalyclip_args(workspace, run, "--skip_evaluation"))
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "anomalyclip" and config["image_threshold"] is not None
    result = calibrate.main(["--model_name_or_path", str(run), "--dataset_name", str(workspace / "data")])
    assert result.image.num_images == 12
    images = str(workspace / "data" / "disc" / "test")
    summary = predict.main([images, "--model_name_or_path", str(run), "--output_dir", str(tmp_path / "p")])
    assert summary["images"] == 8 and summary["OK"] + summary["NG"] == 8
    detector = pipeline("image-anomaly-detection", model=str(run), trust_remote_code=True)
    assert detector(str(next((workspace / "data" / "disc" / "test" / "good").iterdir())))["label"] in ("OK", "NG")


def test_continuing_an_anomalyclip_checkpoint_keeps_its_family(workspace, tmp_path):
    first = tmp_path / "first"
    train.main(_anomalyclip_args(workspace, first, "--skip_evaluation"))
    argv = training_args(workspace, tmp_path / "second", "--max_train_steps", "1", "--skip_evaluation")
    argv[argv.index("--model_name_or_path") + 1] = str(first)
    assert parse_args(argv).model_type == "anomalyclip"
    train.main(argv)
    before = AutoModel.from_pretrained(first, trust_remote_code=True).deep_prompts
    after = AutoModel.from_pretrained(tmp_path / "second", trust_remote_code=True).deep_prompts
    assert before.shape == after.shape and not torch.equal(before, after)


def test_the_zero_shot_presets_set_the_official_schedule():
    args = parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "anomalyclip_train_on_visa",
                       "--eval_dataset_name", "e"])  # fmt: skip
    schedule = (args.model_type, args.train_split, args.anomaly_source, args.num_train_epochs, args.optimizer)
    assert schedule == ("anomalyclip", "test", "real", 15, "adam")
    assert (args.adam_beta1, args.learning_rate, args.per_device_train_batch_size, args.image_size) == (
        0.5,
        1e-3,
        8,
        518,
    )
    adaclip = parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "adaclip_train_on_mvtec_ad",
                          "--skip_evaluation"])  # fmt: skip
    schedule = (
        adaclip.model_type,
        adaclip.optimizer,
        adaclip.learning_rate,
        adaclip.weight_decay,
        adaclip.num_train_epochs,
    )
    assert schedule == ("adaclip", "adamw", 1e-2, 0.01, 5) and adaclip.adam_beta1 == 0.5
    explicit = parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "anomalyclip_train_on_visa",
                           "--seed", "3", "--image_size", "336", "--skip_evaluation"])  # fmt: skip
    assert (explicit.seed, explicit.image_size) == (3, 336)


def test_a_split_that_does_not_exist_is_a_clear_error(workspace, tmp_path, capsys):
    argv = training_args(workspace, tmp_path / "run", "--train_split", "validation")
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2 and "no split 'validation'" in capsys.readouterr().err


ADACLIP_HEAD = ["--prompt_length", "2", "--prompt_depth", "2", "--hsf_num_clusters", "4", "--hsf_num_patches", "20"]


def test_adaclip_trains_zero_shot_names_new_categories_and_evaluates_calibrates_and_predicts(workspace, tmp_path):
    run = tmp_path / "run"
    argv = training_args(workspace, run, "--model_type", "adaclip", *ADACLIP_HEAD, "--max_train_steps", "2")
    argv += ["--train_split", "test", "--anomaly_source", "real", "--calibration_fraction", "0"]
    metrics = train.main([*argv, "--eval_dataset_name", str(workspace / "data")])
    config = json.loads((run / "config.json").read_text())
    assert config["model_type"] == "adaclip" and {"disc", "weave"} <= set(config["prompt_token_ids"])
    assert set(metrics["per_category"]) == {"disc", "weave"} and (run / "tokenizer.json").is_file()
    # a category the checkpoint has never named: tokenised from the tokenizer kept with the checkpoint
    renamed = tmp_path / "renamed"
    shutil.copytree(workspace / "data", renamed)
    (renamed / "disc").rename(renamed / "coin")
    evaluated = evaluation.main(
        ["--model_name_or_path", str(run), "--dataset_name", str(renamed), "--output_dir", str(tmp_path / "e")]
    )
    assert set(evaluated["per_category"]) == {"coin", "weave"}
    result = calibrate.main(["--model_name_or_path", str(run), "--dataset_name", str(renamed)])
    assert result.image.num_images == 12 and "coin" in json.loads((run / "config.json").read_text())["prompt_token_ids"]
    images = str(workspace / "data" / "disc" / "test")
    summary = predict.main([images, "--model_name_or_path", str(run), "--output_dir", str(tmp_path / "p")])
    assert summary["OK"] + summary["NG"] == 8


def test_training_on_a_test_split_without_another_evaluation_dataset_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--dataset_name", "d", "--output_dir", "o", "--preset", "anomalyclip_train_on_visa"])
    assert "--eval_dataset_name" in capsys.readouterr().err
