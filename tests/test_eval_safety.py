"""clipada eval and clipada calibrate on hostile input (issue 19): dataset values that would leave the output folder,
folders the command does not own, models that produce NaN, output paths that are files or read-only, and the modes
of the files they write."""

import json
import os
import shutil
import stat
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference.output_folder import OUTPUT_MARKER, OutputFolderError, read_marker
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor
from training import calibrate as calibrate_cli
from training import evaluation
from training.calibrate import format_calibration
from training.calibration import NormalScores, calibrate
from training.data.schema import anomaly_features

MASK = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
MASK[8:16, 8:16] = 255


def _image(seed: int) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((IMAGE_SIZE, IMAGE_SIZE, 3)) * 255).astype(np.uint8))


def _rows(category: str, normal: int, defective: int, defect_type: str = "scratch", mask=MASK) -> list[dict]:
    rows = [
        {"image": _image(i), "mask": None, "label": 0, "category": category, "defect_type": "good"}
        for i in range(normal)
    ]
    rows += [
        {
            "image": _image(100 + i),
            "mask": None if mask is None else Image.fromarray(mask),
            "label": 1,
            "category": category,
            "defect_type": defect_type,
        }
        for i in range(defective)
    ]
    return [{**row, "image_path": f"{category}/{index}.png"} for index, row in enumerate(rows)]


def _split(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=anomaly_features())


def _save_dataset(folder: Path, test_rows: list[dict], train_rows: list[dict] | None = None) -> Path:
    """A dataset written with `datasets` directly (as a hostile or hand-made one would be), bypassing every check of
    prepare-dataset."""
    train_rows = train_rows if train_rows is not None else _rows(test_rows[0]["category"], 3, 0)
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the commands' stderr must hold their one error line only
    try:
        datasets.DatasetDict({"train": _split(train_rows), "test": _split(test_rows)}).save_to_disk(str(folder))
    finally:
        if enabled:
            datasets.enable_progress_bars()
    return folder


def _tiny_model() -> CLIPADAForAnomalySegmentation:
    clip, tokenizer = make_tiny_clip()
    return CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=2).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("eval_safety") / "checkpoint"
    _tiny_model().save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose finite prompt vectors overflow float32 in the text tower: every score it gives is NaN,
    although every weight is finite (a checkpoint with NaN weights is refused when it is loaded)."""
    model = _tiny_model()
    with torch.no_grad():
        model.prompt_vectors.fill_(3e38)
    folder = tmp_path_factory.mktemp("eval_safety") / "nan_checkpoint"
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _save_dataset(tmp_path_factory.mktemp("eval_safety") / "data", _rows("disc", 2, 2))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _eval(checkpoint: Path, data: Path, output: Path, *flags: str) -> dict:
    argv = ["--model_name_or_path", str(checkpoint), "--dataset_name", str(data), "--output_dir", str(output)]
    return evaluation.main([*argv, "--num_heatmaps", "1", *flags])


def _calibrate(checkpoint: Path, data: Path, *flags: str):
    return calibrate_cli.main(["--model_name_or_path", str(checkpoint), "--dataset_name", str(data), *flags])


def _usage_error(capsys, run, *args) -> str:
    """Runs a command that must fail on bad input: exit 2 and ONE line `error: ...` on stderr; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        run(*args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------------- item 4: names from the dataset


@pytest.mark.parametrize(
    "category, defect_type",
    [("../victim", "scratch"), ("../../victim", "scratch"), ("a/b", "scratch"), ("..", "scratch"),
     ("disc", "../victim"), ("disc", "bad\nname")],
)  # fmt: skip
def test_evaluate_model_refuses_names_that_would_leave_the_output_folder(tmp_path, category, defect_type):
    """A dataset handed to `evaluate_model` directly (no loader check on the way): nothing is written outside, and
    nothing at all, before the first image is scored."""
    (tmp_path / "victim.npz").write_bytes(b"the user's file")
    output = tmp_path / "work" / "out"
    test = _split(_rows(category, 1, 1, defect_type=defect_type))
    model, processor = _tiny_model(), CLIPADAImageProcessor(size=IMAGE_SIZE)
    with pytest.raises(OutputFolderError, match="category|defect_type") as error:
        evaluation.evaluate_model(model, processor, test, output_dir=output, save_predictions=True, num_heatmaps=2)
    assert repr(category if "disc" != category else defect_type) in str(error.value)
    assert (tmp_path / "victim.npz").read_bytes() == b"the user's file"
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["victim.npz"]


def test_eval_of_a_saved_dataset_with_a_traversing_category_is_one_error_and_writes_nothing(
    checkpoint, tmp_path, capsys
):
    data = _save_dataset(tmp_path / "hostile", _rows("../../victim", 1, 1))
    (tmp_path / "victim.npz").write_bytes(b"the user's file")
    line = _usage_error(capsys, _eval, checkpoint, data, tmp_path / "runs" / "out", "--save_predictions")
    assert "../../victim" in line
    assert (tmp_path / "victim.npz").read_bytes() == b"the user's file"
    assert not (tmp_path / "runs").exists() and not (tmp_path / "heatmaps").exists()


# --------------------------------------------------------------------------------- item 5: folders eval/calibrate own


@pytest.mark.parametrize("overwrite", [[], ["--overwrite_output_dir"]])
def test_eval_refuses_a_foreign_folder_and_leaves_it_as_it_was(checkpoint, dataset, tmp_path, capsys, overwrite):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "metrics.json").write_text('{"mine": 1}')
    (folder / "thesis.tex").write_text("chapter 1")
    before = _files(folder)
    line = _usage_error(capsys, _eval, checkpoint, dataset, folder, *overwrite)
    assert str(folder) in line and "not written by clipada eval" in line
    assert _files(folder) == before


def test_eval_replaces_its_own_earlier_output_only_with_the_flag_and_never_a_users_file(
    checkpoint, dataset, tmp_path, capsys
):
    folder = tmp_path / "eval"
    _eval(checkpoint, dataset, folder, "--save_predictions")
    assert read_marker(folder)["written_by"] == "clipada eval"
    assert {"metrics.json", "metrics.md", "heatmaps", "predictions"} <= set(read_marker(folder)["entries"])
    (folder / "metrics.json").write_text("earlier")
    line = _usage_error(capsys, _eval, checkpoint, dataset, folder)
    assert "--overwrite_output_dir" in line and (folder / "metrics.json").read_text() == "earlier"
    _eval(checkpoint, dataset, folder, "--overwrite_output_dir")  # no --save_predictions this time
    assert json.loads((folder / "metrics.json").read_text())["per_category"]["disc"]["image_auroc"] is not None
    assert not (folder / "predictions").exists()  # the earlier run's predictions went with its metrics
    (folder / "notes.txt").write_text("mine")
    line = _usage_error(capsys, _eval, checkpoint, dataset, folder, "--overwrite_output_dir")
    assert "notes.txt" in line and (folder / "notes.txt").read_text() == "mine"


def test_eval_never_writes_into_its_checkpoint_or_dataset_but_may_write_a_folder_inside_the_checkpoint(
    checkpoint, dataset, tmp_path, capsys
):
    before = _files(checkpoint)
    for output in (checkpoint, dataset, dataset / "evaluation", checkpoint.parent):
        line = _usage_error(capsys, _eval, checkpoint, dataset, output, "--overwrite_output_dir")
        assert "own input" in line
    assert _files(checkpoint) == before
    inside_checkpoint = checkpoint / "evaluation"
    try:
        _eval(checkpoint, dataset, inside_checkpoint)  # as the README does: outputs/run/evaluation
        assert (inside_checkpoint / "metrics.json").is_file()
    finally:
        shutil.rmtree(inside_checkpoint, ignore_errors=True)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite_output_dir"]])
def test_calibrate_refuses_a_foreign_output_folder_and_leaves_its_model_files(
    checkpoint, dataset, tmp_path, capsys, overwrite
):
    folder = tmp_path / "someone"
    folder.mkdir()
    (folder / "config.json").write_text('{"theirs": true}')
    (folder / "model.safetensors").write_bytes(b"their weights")
    before = _files(folder)
    line = _usage_error(capsys, _calibrate, checkpoint, dataset, "--output_dir", str(folder), *overwrite)
    assert str(folder) in line and "not written by clipada calibrate" in line
    assert _files(folder) == before


def test_calibrate_output_dir_is_never_its_own_checkpoint(checkpoint, dataset, capsys):
    before = _files(checkpoint)
    for flags in (["--output_dir", str(checkpoint)], ["--output_dir", str(checkpoint), "--overwrite_output_dir"]):
        line = _usage_error(capsys, _calibrate, checkpoint, dataset, *flags)
        assert "own input" in line
    assert _files(checkpoint) == before


def test_calibrate_rewrites_a_folder_it_wrote_with_the_flag(checkpoint, dataset, tmp_path, capsys):
    folder = tmp_path / "calibrated"
    _calibrate(checkpoint, dataset, "--output_dir", str(folder), "--target_fpr", "0.4")
    assert read_marker(folder)["written_by"] == "clipada calibrate"
    assert {"config.json", "model.safetensors", "calibration.json"} <= set(read_marker(folder)["entries"])
    line = _usage_error(capsys, _calibrate, checkpoint, dataset, "--output_dir", str(folder), "--target_fpr", "0.3")
    assert "--overwrite_output_dir" in line
    assert json.loads((folder / "config.json").read_text())["target_image_fpr"] == 0.4
    _calibrate(checkpoint, dataset, "--output_dir", str(folder), "--target_fpr", "0.3", "--overwrite_output_dir")
    assert json.loads((folder / "config.json").read_text())["target_image_fpr"] == 0.3
    assert not list(folder.parent.glob(".calibrated*"))  # no staging folder left


# --------------------------------------------------------------------------------- item 13: strict metrics.json


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_metrics_json_writes_null_with_the_reason_for_all_zero_masks_and_one_class_categories(tmp_path):
    test = _split(
        _rows("zero_masks", 2, 2, mask=np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8))
        + _rows("only_good", 3, 0)
        + _rows("only_defects", 0, 2)
    )
    model, processor = _tiny_model(), CLIPADAImageProcessor(size=IMAGE_SIZE)
    per_category, mean = evaluation.evaluate_model(model, processor, test, num_heatmaps=0)
    evaluation.write_evaluation(tmp_path, per_category, mean)
    saved = _strict_json((tmp_path / "metrics.json").read_text())
    zero, good, defects = (saved["per_category"][name] for name in ("zero_masks", "only_good", "only_defects"))
    assert zero["pixel_auroc"] is None and zero["aupro"] is None and zero["image_auroc"] is not None
    assert zero["pixel_metrics"] == "not defined: no anomalous pixel in the ground-truth masks"
    assert good["image_auroc"] is None and good["image_metrics"] == "not defined: no defective images"
    assert defects["image_auroc"] is None and defects["image_metrics"] == "not defined: no normal images"
    assert "image_metrics" not in zero
    for row in (*saved["per_category"].values(), saved["mean"]):
        for name, value in row.items():
            if value is None and name in ("image_auroc", "image_f1_max"):
                assert "image_metrics" in row, (name, row)
            if value is None and name in ("pixel_auroc", "pixel_ap", "aupro", "pixel_f1_max"):
                assert "pixel_metrics" in row, (name, row)
    table = (tmp_path / "metrics.md").read_text()
    assert "only_good: image metrics not defined: no defective images." in table
    assert "zero_masks: pixel metrics not defined: no anomalous pixel in the ground-truth masks." in table


# --------------------------------------------------------------------------------- item 20: NaN models, bad folders


def test_eval_of_a_nan_model_says_how_many_images_and_writes_nothing(nan_checkpoint, dataset, tmp_path, capsys):
    output = tmp_path / "out"
    line = _usage_error(capsys, _eval, nan_checkpoint, dataset, output, "--save_predictions")
    assert "NaN" in line and "4 of 4 images" in line
    assert not output.exists() and os.listdir(tmp_path) == []


def test_eval_of_a_nan_model_keeps_the_earlier_results(checkpoint, nan_checkpoint, dataset, tmp_path, capsys):
    folder = tmp_path / "eval"
    _eval(checkpoint, dataset, folder)
    before = _files(folder)
    _usage_error(capsys, _eval, nan_checkpoint, dataset, folder, "--overwrite_output_dir")
    assert _files(folder) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["eval"]  # no staging folder left


def _copy_checkpoint(source: Path, target: Path) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_calibrate_of_a_nan_model_says_how_many_images_and_writes_nothing(nan_checkpoint, dataset, tmp_path, capsys):
    in_place = _copy_checkpoint(nan_checkpoint, tmp_path / "run")
    before = _files(in_place)
    line = _usage_error(capsys, _calibrate, in_place, dataset)
    assert "NaN" in line and "3 of 3 normal images" in line
    assert _files(in_place) == before and not list(in_place.glob(".calibrate*"))
    line = _usage_error(capsys, _calibrate, in_place, dataset, "--output_dir", str(tmp_path / "out"))
    assert "NaN" in line and not (tmp_path / "out").exists()


def test_calibrate_output_dir_that_is_a_file_is_one_error(checkpoint, dataset, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = _usage_error(capsys, _calibrate, checkpoint, dataset, "--output_dir", str(target))
    assert str(target) in line and "not a folder" in line
    assert target.read_text() == "mine"


def test_eval_output_dir_that_is_a_file_is_one_error(checkpoint, dataset, tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    line = _usage_error(capsys, _eval, checkpoint, dataset, target)
    assert str(target) in line and "not a folder" in line
    assert target.read_text() == "mine"


@pytest.fixture
def read_only(monkeypatch):
    """`read_only(folder)`: creating anything in `folder` fails as in a read-only folder (the tests may run as root,
    which writes anywhere)."""

    def make(folder: Path) -> Path:
        real_mkdir, real_open = os.mkdir, os.open
        folder = folder.resolve()

        def refuse(path) -> None:
            if Path(path).resolve().parent == folder:
                raise PermissionError(13, "Permission denied", str(path))

        def mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            if flags & os.O_CREAT:
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)
        return folder

    return make


def test_a_read_only_output_folder_is_one_error_for_eval_and_calibrate(
    checkpoint, dataset, tmp_path, capsys, read_only
):
    parent = tmp_path / "read_only"
    parent.mkdir()
    read_only(parent)
    line = _usage_error(capsys, _eval, checkpoint, dataset, parent / "eval")
    assert "Permission denied" in line and str(parent) in line
    line = _usage_error(capsys, _calibrate, checkpoint, dataset, "--output_dir", str(parent / "calibrated"))
    assert "Permission denied" in line and str(parent) in line
    in_place = _copy_checkpoint(checkpoint, tmp_path / "run")
    before = _files(in_place)
    read_only(in_place)
    line = _usage_error(capsys, _calibrate, in_place, dataset)
    assert "Permission denied" in line and str(in_place) in line
    assert _files(in_place) == before


# --------------------------------------------------------------------------------- item 25: grammar, file modes


def test_one_normal_image_is_singular_in_the_report():
    scores = NormalScores(np.array([0.5]), np.array(["disc"]), [np.random.default_rng(0).random(16)])
    report = format_calibration(calibrate(scores, target_image_fpr=0.1))
    assert "1 normal images" not in report
    assert "resolution: 1 normal image resolves false-reject rates down to 1" in report
    assert "note: 1 normal image cannot resolve a false-positive rate of 0.1" in report


def test_calibrate_writes_files_with_the_umask_mode(checkpoint, dataset, tmp_path):
    old = os.umask(0o027)
    try:
        in_place = _copy_checkpoint(checkpoint, tmp_path / "run")
        _calibrate(in_place, dataset, "--target_fpr", "0.4", "--resize_mode", "letterbox")
        _calibrate(checkpoint, dataset, "--output_dir", str(tmp_path / "copy"), "--target_fpr", "0.4")
    finally:
        os.umask(old)
    for folder in (in_place, tmp_path / "copy"):
        for name in ("config.json", "calibration.json", "preprocessor_config.json"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o640, (folder, name)
    assert stat.S_IMODE((tmp_path / "copy" / "model.safetensors").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o750
    assert (tmp_path / "copy" / OUTPUT_MARKER).is_file()
