"""Hostile and ambiguous dataset input (issue 19, items 4, 10, 11 and Ctrl-C): names that would become paths, one
reading rule for float and 16-bit files, multi-frame files, the same image twice, an interrupted prepare-dataset."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from fake_trees import read_visa_rows, write_folder_tree, write_mvtec_tree, write_visa_rows, write_visa_tree
from PIL import Image

from processing.image_inputs import to_array, to_unit_range
from training import cli, prepare_dataset
from training.data import (
    DatasetFormatError,
    anomaly_features,
    build_folder_dataset,
    build_mvtec_ad,
    build_visa,
    load_anomaly_dataset,
)
from training.data import build as build_module

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

REPO_ROOT = Path(__file__).resolve().parents[1]

HOSTILE_NAMES = ["../../../../tmp/victim", "..", "a/b", "a\\b", "line\nbreak", "tab\there", "x" * 201]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run prepare_dataset's main in-process; return (exit code, stdout, stderr)."""
    code = prepare_dataset.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def entries(folder: Path) -> list[str]:
    """Every name in ``folder``, hidden ones included."""
    return sorted(p.name for p in folder.iterdir())


def stored_pixels(split: datasets.Dataset, image_path: str) -> np.ndarray:
    """The stored (decoded) RGB pixels of the row with ``image_path``."""
    return np.asarray(split[split["image_path"].index(image_path)]["image"])


# ----------------------------------------------------------------------------------------------------
# Item 4: values that become file names are single safe names
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_visa_object_that_is_not_a_file_name_is_refused_naming_the_csv_row_and_column(tmp_path, capsys, name):
    tree = write_visa_tree(tmp_path / "visa")
    rows = [[name if row[0] == "candle" else row[0], *row[1:]] for row in read_visa_rows(tree.root)]
    csv_file = write_visa_rows(tree.root, rows)
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(csv_file))} line 2.*column 'object'"):
        build_visa(tree.root)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(out)], capsys)
    assert code == 2 and stderr.startswith(f"error: {csv_file} line 2") and stderr.count("\n") == 1
    assert not out.exists() and entries(tmp_path) == ["visa"]


@pytest.mark.parametrize("name", ["../../victim", "..", "a/b", "new\nline"])
def test_visa_defect_label_that_is_not_a_file_name_is_refused_naming_the_annotation_row(tmp_path, name):
    tree = write_visa_tree(tmp_path / "visa")
    anno = tree.root / "candle" / "image_anno.csv"
    anno.write_text(
        'image,label,mask\r\ncandle/Data/Images/Anomaly/000.JPG,"' + name + '",candle/Data/Masks/Anomaly/000.png\r\n'
    )
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(anno))} line 2.*column 'label'"):
        build_visa(tree.root)


def test_visa_image_whose_file_name_is_not_safe_is_refused_naming_the_row(tmp_path):
    tree = write_visa_tree(tmp_path / "visa")
    rows = read_visa_rows(tree.root)
    old = tree.root / rows[0][3]
    new_name = "candle/Data/Images/Normal/bad\nname.JPG"
    old.rename(tree.root / new_name)
    rows[0][3] = new_name
    csv_file = write_visa_rows(tree.root, rows)
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(csv_file))} line 2.*column 'image'"):
        build_visa(tree.root)


@pytest.mark.parametrize("builder", [build_mvtec_ad, build_folder_dataset])
@pytest.mark.parametrize("where", ["category", "defect", "image"])
def test_folder_names_that_are_not_safe_file_names_are_refused_naming_the_folder(tmp_path, builder, where):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    bottle = tree.root / "bottle"
    if where == "category":
        bad = bottle.rename(tree.root / "bot\ntle")
    elif where == "defect":
        (bottle / "ground_truth" / "crack").rename(bottle / "ground_truth" / "cr\tack")
        bad = (bottle / "test" / "crack").rename(bottle / "test" / "cr\tack")
    else:
        bad = (bottle / "train" / "good" / "000.png").rename(bottle / "train" / "good" / "0\r00.png")
    with pytest.raises(DatasetFormatError, match=re.escape(repr(bad.name)[1:-1])) as caught:
        builder(tree.root)
    assert "control character" in str(caught.value) and str(bad.parent) in str(caught.value)


@pytest.mark.parametrize("builder", [build_mvtec_ad, build_folder_dataset])
def test_a_category_folder_given_through_dot_dot_is_named_after_the_folder_not_dot_dot(tmp_path, builder):
    tree = write_mvtec_tree(tmp_path / "bottle", categories=("x",))
    category = tree.root / "x"
    dataset = builder(category / "train" / "..")
    assert set(dataset["train"]["category"]) == {"x"}
    assert dataset["train"][0]["image_path"] == "x/train/good/000.png"


def hostile_saved_dataset(folder: Path, column: str, value: str) -> None:
    """Save a one-row-per-split dataset whose ``column`` holds ``value`` in the test split."""
    image = io.BytesIO()
    Image.new("RGB", (8, 8)).save(image, format="PNG")
    row = {"image": {"bytes": image.getvalue(), "path": None}, "mask": None, "label": 0}
    row |= {"category": "bottle", "defect_type": "good", "image_path": "bottle/train/good/000.png"}
    hostile = {**row, column: value}
    splits = {
        "train": datasets.Dataset.from_list([row], features=anomaly_features()),
        "test": datasets.Dataset.from_list([hostile], features=anomaly_features()),
    }
    datasets.DatasetDict(splits).save_to_disk(str(folder))


@pytest.mark.parametrize(
    "column, value",
    [
        ("category", "../../../../tmp/victim"),
        ("category", ".."),
        ("defect_type", "../escape"),
        ("defect_type", "a\nb"),
        ("image_path", "../../etc/passwd"),
        ("image_path", "/etc/passwd"),
    ],
)
def test_a_saved_dataset_with_hostile_names_is_refused_naming_split_and_column(tmp_path, column, value):
    folder = tmp_path / "saved"
    hostile_saved_dataset(folder, column, value)
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(folder))}: split 'test' column '{column}'"):
        load_anomaly_dataset(str(folder))


def test_a_hub_dataset_with_a_hostile_category_is_refused(tmp_path, monkeypatch):
    hostile_saved_dataset(tmp_path / "saved", "category", "../x")
    monkeypatch.setattr(datasets, "load_dataset", lambda name: datasets.load_from_disk(str(tmp_path / "saved")))
    with pytest.raises(DatasetFormatError, match=r"user/hostile: split 'test' column 'category'"):
        load_anomaly_dataset("user/hostile")


def test_a_broken_symbolic_link_to_an_image_is_an_error_not_a_silently_missing_row(tmp_path, capsys):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    link = tree.root / "bottle" / "train" / "good" / "099.png"
    link.symlink_to(tmp_path / "moved_away.png")
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(link))}: broken symbolic link"):
        build_mvtec_ad(tree.root)


def test_a_data_dir_that_is_a_file_is_named_as_a_file(tmp_path, capsys):
    (tmp_path / "data.zip").write_bytes(b"PK")
    argv = ["--data_dir", str(tmp_path / "data.zip"), "--output_dir", str(tmp_path / "out")]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and stderr == f"error: {tmp_path / 'data.zip'}: data_dir is a file (expected a folder)\n"


# ----------------------------------------------------------------------------------------------------
# Item 10: one reading rule for float and 16-bit files; multi-frame files are refused
# ----------------------------------------------------------------------------------------------------


def replace_train_image(tree_root: Path, name: str, save) -> Path:
    """Replace bottle/train/good/000.png by ``name`` written with ``save(path)``; return its path."""
    train = tree_root / "bottle" / "train" / "good"
    (train / "000.png").unlink()
    save(train / name)
    return train / name


def gradient(height: int = 16, width: int = 20) -> np.ndarray:
    """A float32 (H, W) ramp over [0, 1]."""
    return np.linspace(0, 1, height * width, dtype=np.float32).reshape(height, width)


@pytest.mark.parametrize(
    "name, pixels",
    [
        ("000.tif", gradient()),  # PIL mode F
        ("000.png", (gradient() * 65535).round().astype(np.uint16)),  # 16-bit PNG
        ("000.tiff", (gradient() * 65535).round().astype(np.uint16)),  # 16-bit TIFF
        ("000.bmp", (gradient() * 255).round().astype(np.uint8)),  # 8-bit grey
    ],
)
def test_dataset_images_are_read_by_the_same_rule_as_predict(tmp_path, name, pixels):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    path = replace_train_image(tree.root, name, lambda p: Image.fromarray(pixels).save(p))
    stored = stored_pixels(build_mvtec_ad(tree.root)["train"], f"bottle/train/good/{name}")
    expected = np.round(to_unit_range(to_array(str(path), "image"), "image") * 255).astype(np.uint8)
    assert stored.shape == (16, 20, 3) and stored.dtype == np.uint8
    np.testing.assert_array_equal(stored, np.repeat(expected[..., None], 3, axis=-1))
    assert stored.max() == 255 and stored.min() == 0  # a float ramp is not stored all black


@pytest.mark.parametrize("values", [lambda p: p * 2, lambda p: p - 0.5, lambda p: np.where(p > 0.5, np.nan, p)])
def test_float_images_outside_the_unit_range_are_refused_naming_the_file(tmp_path, capsys, values):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    path = replace_train_image(tree.root, "000.tif", lambda p: Image.fromarray(values(gradient())).save(p))
    with pytest.raises(DatasetFormatError, match=re.escape(str(path))):
        build_mvtec_ad(tree.root)
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and stderr.startswith(f"error: {path}: ") and not (tmp_path / "out").exists()


def save_frames(path: Path, count: int) -> None:
    frames = [Image.new("RGB", (20, 16), (40 * i, 0, 0)) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


@pytest.mark.parametrize("name", ["000.tif", "000.png", "000.webp"])
def test_multi_frame_images_are_refused_naming_the_file_and_the_frame_count(tmp_path, capsys, name):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    path = replace_train_image(tree.root, name, lambda p: save_frames(p, 3))
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(path))}: .*3 frames"):
        build_mvtec_ad(tree.root)
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and "3 frames" in stderr and not (tmp_path / "out").exists()


def test_multi_frame_masks_are_refused_too(tmp_path):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    mask = tree.root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    frames = [Image.new("L", (20, 16), 255 * i) for i in range(2)]
    frames[0].save(mask, save_all=True, append_images=frames[1:])
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(mask))}: .*2 frames"):
        build_mvtec_ad(tree.root)


def test_a_float_mask_holding_nan_is_refused_naming_the_mask(tmp_path):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    mask = tree.root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    mask.unlink()
    mask = mask.with_suffix(".tif")
    values = np.zeros((16, 20), dtype=np.float32)
    values[2:5, 3:6], values[0, 0] = 1.0, np.nan
    Image.fromarray(values).save(mask)
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(mask))}: .*NaN"):
        build_mvtec_ad(tree.root)


# ----------------------------------------------------------------------------------------------------
# Item 11: the same image twice (train/test leakage, normal and anomalous at once) is refused
# ----------------------------------------------------------------------------------------------------


def visa_with_rows(tmp_path: Path, edit) -> tuple[Path, Path]:
    """A VisA tree whose csv rows were changed by ``edit(rows)``; return (root, csv file)."""
    tree = write_visa_tree(tmp_path / "visa")
    rows = read_visa_rows(tree.root)
    edit(rows)
    return tree.root, write_visa_rows(tree.root, rows)


@pytest.mark.parametrize(
    "edit, lines, what",
    [
        (lambda rows: rows.append(list(rows[0])), (2, 12), "listed twice"),  # a duplicated row
        (lambda rows: rows.append(["candle", "test", "normal", rows[0][3], ""]), (2, 12), "train and test"),
        (lambda rows: rows.append(["candle", "test", "anomaly", rows[2][3], rows[3][4]]), (4, 12), "normal and"),
        # the same file through another spelling of its path
        (lambda rows: rows.append(["candle", "test", "normal", "candle/Data/../" + rows[0][3][7:], ""]), (2, 12),
         "train and test"),
    ],
)  # fmt: skip
def test_visa_csv_naming_one_image_twice_is_refused_naming_both_rows(tmp_path, capsys, edit, lines, what):
    root, csv_file = visa_with_rows(tmp_path, edit)
    with pytest.raises(
        DatasetFormatError, match=rf"{re.escape(str(csv_file))} lines {lines[0]} and {lines[1]}: .*{what}"
    ):
        build_visa(root)
    code, _, stderr = run_cli(["--data_dir", str(root), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and f"lines {lines[0]} and {lines[1]}" in stderr and not (tmp_path / "out").exists()


def test_visa_duplicates_in_an_unselected_object_do_not_block_another(tmp_path):
    root, _ = visa_with_rows(tmp_path, lambda rows: rows.append(list(rows[0])))  # candle listed twice
    assert set(build_visa(root, ["pcb1"])["train"]["category"]) == {"pcb1"}


@pytest.mark.parametrize("builder", [build_mvtec_ad, build_folder_dataset])
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_one_file_reachable_twice_in_a_folder_layout_is_refused_naming_both_paths(tmp_path, builder, link):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    train_image = tree.root / "bottle" / "train" / "good" / "000.png"
    test_image = tree.root / "bottle" / "test" / "good" / "005.png"
    if link == "symlink":
        test_image.symlink_to(train_image)
    else:
        os.link(train_image, test_image)
    with pytest.raises(DatasetFormatError, match=re.escape(f"{train_image} and {test_image}")):
        builder(tree.root)


def test_a_symlinked_folder_reaching_the_train_images_again_is_refused(tmp_path):
    tree = write_folder_tree(tmp_path / "widget")
    (tree.root / "test" / "copy").symlink_to(tree.root / "train" / "good", target_is_directory=True)
    with pytest.raises(DatasetFormatError, match="train and test"):
        build_folder_dataset(tree.root)


# ----------------------------------------------------------------------------------------------------
# Ctrl-C: an interrupted prepare-dataset leaves nothing behind
# ----------------------------------------------------------------------------------------------------


def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "target, name",
    [
        (build_module, "encode_sample"),
        (datasets.DatasetDict, "save_to_disk"),
        (prepare_dataset, "load_anomaly_dataset"),
    ],
)
def test_an_interrupted_prepare_dataset_leaves_no_staging_or_cache_folder(tmp_path, capsys, monkeypatch, target, name):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    out = tmp_path / "outputs" / "bottle"
    monkeypatch.setattr(target, name, interrupt)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare-dataset", "--data_dir", str(tree.root), "--output_dir", str(out)])
    assert exit_info.value.code == 130
    stderr = capsys.readouterr().err
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert entries(tmp_path) == ["hf_cache", "outputs", "raw"] or entries(tmp_path) == ["outputs", "raw"]
    assert entries(tmp_path / "outputs") == []


@pytest.mark.slow
def test_python_m_prepare_dataset_reports_ctrl_c_in_one_line(tmp_path):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    script = (
        "import runpy, sys\n"
        "import training.data.build as build\n"
        "def interrupt(sample): raise KeyboardInterrupt\n"
        "build.encode_sample = interrupt\n"
        "sys.argv[1:] = ['--data_dir', sys.argv[1], '--output_dir', sys.argv[2]]\n"
        "runpy.run_module('training.prepare_dataset', run_name='__main__')\n"
    )
    out = tmp_path / "outputs" / "bottle"
    result = subprocess.run(
        [sys.executable, "-c", script, str(tree.root), str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 130 and "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert entries(tmp_path / "outputs") == []


def test_an_interrupted_overwrite_keeps_the_earlier_dataset(tmp_path, monkeypatch):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    out = tmp_path / "out"
    prepare_dataset.prepare_dataset(tree.root, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset.prepare_dataset(tree.root, out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert [name for name in entries(tmp_path) if name.startswith(".")] == []


# ----------------------------------------------------------------------------------------------------
# The output folder is never the command's own input
# ----------------------------------------------------------------------------------------------------


def test_output_folder_inside_the_raw_folder_is_refused(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget")
    out = tree.root / "test" / "prepared"
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(out)], capsys)
    assert code == 2 and stderr.startswith(f"error: {out}") and "lies inside" in stderr
    assert not out.exists()


def test_overwriting_a_saved_dataset_that_holds_the_input_is_refused(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget")
    out = tmp_path / "out"
    assert run_cli(["--data_dir", str(tree.root), "--output_dir", str(out)], capsys)[0] == 0
    raw = out / "raw_copy"
    write_folder_tree(raw)
    code, _, stderr = run_cli(["--data_dir", str(raw), "--output_dir", str(out), "--overwrite_output_dir"], capsys)
    assert code == 2 and "contains" in stderr and (raw / "train" / "good" / "000.png").is_file()


def test_overwrite_refuses_a_saved_dataset_folder_holding_files_it_did_not_write(tmp_path, capsys):
    tree = write_folder_tree(tmp_path / "widget")
    out = tmp_path / "out"
    argv = ["--data_dir", str(tree.root), "--output_dir", str(out), "--overwrite_output_dir"]
    assert run_cli(argv, capsys)[0] == 0
    (out / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and stderr.startswith(f"error: {out}: ") and "notes.txt" in stderr
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert run_cli(argv, capsys)[0] == 0  # its own earlier output alone is replaced
