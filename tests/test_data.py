"""Tests of the MVTec-AD / VisA loaders (training/data.py) and the prepare_dataset command line."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets.arrow_writer import ArrowWriter
from fake_trees import MVTEC_BAD_CASES, VISA_BAD_CASES, counts, write_mvtec_tree, write_visa_tree
from PIL import ExifTags, Image, ImageFile, ImageOps

from training import prepare_dataset
from training.data import (
    DatasetFormatError,
    build_mvtec_ad,
    build_visa,
    encode_binary_mask,
    encode_rgb_image,
    infer_dataset_layout,
    load_anomaly_dataset,
    save_dataset_atomically,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def assert_well_formed(dataset_dict: datasets.DatasetDict) -> None:
    """Images are RGB; masks are None for normal images, else binary 0/255 L masks of the image's size."""
    for split in dataset_dict.values():
        assert split.features["label"].names == ["good", "anomaly"]
        for row in split:
            assert row["image"].mode == "RGB"
            assert (row["label"] == 0) == (row["defect_type"] == "good")
            if row["label"] == 0:
                assert row["mask"] is None
                continue
            assert row["mask"].mode == "L" and row["mask"].size == row["image"].size
            values = set(np.unique(np.asarray(row["mask"])).tolist())
            assert values <= {0, 255} and 255 in values


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run prepare_dataset's main in-process; return (exit code, stdout, stderr)."""
    code = prepare_dataset.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(folder: Path) -> list[str]:
    """Hidden staging/cache folders left behind in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a tree by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# MVTec-AD layout
# ----------------------------------------------------------------------------------------------------


def test_mvtec_tree_gives_expected_rows_and_columns(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec")
    dataset = build_mvtec_ad(tree.root)
    assert counts(dataset) == {
        "train": {("bottle", "good"): 2, ("grid", "good"): 2},
        "test": {(c, d): n for c in ("bottle", "grid") for d, n in (("good", 1), ("crack", 2), ("scratch", 2))},
    }
    assert set(dataset["train"].column_names) == {"image", "mask", "label", "category", "defect_type", "image_path"}
    assert dataset["test"]["image_path"][:3] == [
        "bottle/test/crack/000.png",
        "bottle/test/crack/001.png",
        "bottle/test/good/000.png",
    ]
    assert_well_formed(dataset)  # also checks the grayscale "grid" images came out RGB


def test_mvtec_masks_are_paired_by_stem_within_each_defect_folder(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",), num_per_defect=3)
    test = build_mvtec_ad(tree.root)["test"]
    for row in test:
        if row["label"] == 1:
            index = int(Path(row["image_path"]).stem)  # the fake mask's rectangle starts at row 2 + index % 3
            rows = np.nonzero(np.asarray(row["mask"]).any(axis=1))[0]
            assert rows[0] == 2 + index % 3


def test_mvtec_category_folder_can_be_the_root(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec")
    dataset = load_anomaly_dataset(str(tree.root / "grid"))
    assert set(dataset["test"]["category"]) == {"grid"}
    assert dataset["train"]["image_path"][0] == "grid/train/good/000.png"


def test_categories_filter_raw_folder_and_unknown_category_lists_available(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec")
    dataset = load_anomaly_dataset(str(tree.root), categories=["grid"])
    assert set(dataset["train"]["category"]) == set(dataset["test"]["category"]) == {"grid"}
    with pytest.raises(DatasetFormatError, match="unknown categories 'cable'.*available: bottle, grid"):
        load_anomaly_dataset(str(tree.root), categories=["cable"])


@pytest.mark.parametrize("bad_case", MVTEC_BAD_CASES)
def test_mvtec_bad_input_raises_error_naming_the_file(tmp_path, bad_case):
    tree = write_mvtec_tree(tmp_path / "mvtec", bad_case=bad_case)
    with pytest.raises(DatasetFormatError) as error:
        load_anomaly_dataset(str(tree.root))
    assert str(tree.bad_file) in str(error.value)


def test_truncated_image_is_caught_even_when_pil_allows_truncated_images(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    tree = write_mvtec_tree(tmp_path / "mvtec", bad_case="truncated_image")
    with pytest.raises(DatasetFormatError, match="truncated"):
        build_mvtec_ad(tree.root)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the user's setting is restored


def test_changed_files_are_not_served_from_a_stale_cache(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",))
    first = build_mvtec_ad(tree.root)["train"][0]["image"]
    image_file = tree.root / "bottle" / "train" / "good" / "000.png"
    Image.new("RGB", first.size, (255, 0, 0)).save(image_file)
    os.utime(image_file, ns=(image_file.stat().st_atime_ns, image_file.stat().st_mtime_ns + 10**9))
    second = build_mvtec_ad(tree.root)["train"][0]["image"]
    assert np.asarray(second)[0, 0].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------------------------------
# VisA layout
# ----------------------------------------------------------------------------------------------------


def test_visa_tree_gives_expected_rows_binary_masks_and_defect_types(tmp_path):
    tree = write_visa_tree(tmp_path / "visa")
    assert b"\r\n" in (tree.root / "split_csv" / "1cls.csv").read_bytes()
    dataset = load_anomaly_dataset(str(tree.root))
    assert counts(dataset) == {
        "train": {("candle", "good"): 2, ("pcb1", "good"): 2},
        "test": {(c, d): 1 for c in ("candle", "pcb1") for d in ("good", "scratch", "chip,scratch")},
    }
    assert dataset["test"]["image_path"][1] == "candle/Data/Images/Anomaly/000.JPG"
    assert_well_formed(dataset)  # the fake masks hold defect ids 1 and 2, not 255


def test_visa_missing_files_need_the_flag(tmp_path):
    tree = write_visa_tree(tmp_path / "visa", missing_rows=2)
    with pytest.raises(DatasetFormatError, match="9000.JPG: file not found.*allow_missing_files"):
        build_visa(tree.root)
    dataset = build_visa(tree.root, allow_missing_files=True)
    assert sum(counts(dataset)["test"].values()) == 6  # the missing rows and the absent object are dropped
    with pytest.raises(DatasetFormatError, match="empty train split for category 'pcb1'"):
        build_visa(write_visa_tree(tmp_path / "test_only", num_train=0).root, categories=["pcb1"])
    with pytest.raises(DatasetFormatError, match="1cls.csv: none of the files listed for absent exist"):
        build_visa(tree.root, categories=["absent"], allow_missing_files=True)


@pytest.mark.parametrize("bad_case", VISA_BAD_CASES)
def test_visa_bad_input_raises_error_naming_the_file(tmp_path, bad_case):
    tree = write_visa_tree(tmp_path / "visa", bad_case=bad_case)
    with pytest.raises(DatasetFormatError) as error:
        load_anomaly_dataset(str(tree.root), dataset="visa")
    assert str(tree.bad_file) in str(error.value)


def test_visa_csv_with_wrong_columns_is_rejected(tmp_path):
    tree = write_visa_tree(tmp_path / "visa")
    csv_file = tree.root / "split_csv" / "1cls.csv"
    csv_file.write_text("object,split,image\r\ncandle,train,x.JPG\r\n")
    with pytest.raises(DatasetFormatError, match=f"{csv_file}: missing columns label, mask"):
        build_visa(tree.root)


# ----------------------------------------------------------------------------------------------------
# Layout inference, saved folders and Hub ids
# ----------------------------------------------------------------------------------------------------


def test_layout_is_inferred_and_unknown_layouts_are_named(tmp_path):
    assert infer_dataset_layout(write_mvtec_tree(tmp_path / "m").root) == "mvtec_ad"
    assert infer_dataset_layout(write_visa_tree(tmp_path / "v").root) == "visa"
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    with pytest.raises(DatasetFormatError, match=f"{tmp_path / 'other'}: cannot tell the dataset layout"):
        load_anomaly_dataset(str(tmp_path / "other"))
    with pytest.raises(DatasetFormatError, match="1cls.csv: VisA split csv not found"):
        load_anomaly_dataset(str(tmp_path / "m"), dataset="visa")
    with pytest.raises(DatasetFormatError, match="unknown dataset 'mvtec'"):
        load_anomaly_dataset(str(tmp_path / "m"), dataset="mvtec")


def test_missing_local_folder_is_an_error_without_trying_the_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub must not be tried"))
    with pytest.raises(DatasetFormatError, match="folder not found"):
        load_anomaly_dataset(str(tmp_path / "does_not_exist"))
    with pytest.raises(DatasetFormatError, match="data_dir not found"):
        build_mvtec_ad(tmp_path / "does_not_exist")


def test_saved_dataset_reloads_and_filters_categories(tmp_path):
    saved = save_dataset_atomically(build_mvtec_ad(write_mvtec_tree(tmp_path / "raw").root), tmp_path / "out")
    assert leftovers(tmp_path) == []
    reloaded = load_anomaly_dataset(str(saved), categories=["bottle"])
    assert counts(reloaded)["train"] == {("bottle", "good"): 2}
    assert sum(counts(reloaded)["test"].values()) == 5
    assert not list(saved.glob("*/cache-*"))  # filtering wrote nothing into the saved folder
    with pytest.raises(DatasetFormatError, match="unknown categories 'wood'.*available: bottle, grid"):
        load_anomaly_dataset(str(saved), categories=["wood"])


def test_saved_dataset_without_the_expected_columns_is_rejected(tmp_path):
    plain = datasets.DatasetDict({s: datasets.Dataset.from_dict({"image": ["a"]}) for s in ("train", "test")})
    plain.save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DatasetFormatError, match="lacks the columns mask, label, category, defect_type"):
        load_anomaly_dataset(str(tmp_path / "plain"))


def test_hub_id_is_loaded_with_load_dataset_and_filtered(tmp_path, monkeypatch):
    built = build_mvtec_ad(write_mvtec_tree(tmp_path / "raw").root)
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: calls.append(name) or built)
    dataset = load_anomaly_dataset("someone/mvtec_ad", categories=["grid"])
    assert calls == ["someone/mvtec_ad"]
    assert set(dataset["test"]["category"]) == {"grid"}


def test_hub_failure_becomes_a_format_error(monkeypatch):
    def fail(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DatasetFormatError, match="someone/nothing: not an existing folder.*offline"):
        load_anomaly_dataset("someone/nothing")


# ----------------------------------------------------------------------------------------------------
# Atomic saving and the command line
# ----------------------------------------------------------------------------------------------------


def test_failed_save_leaves_no_output_and_keeps_an_existing_one(tmp_path, monkeypatch):
    dataset = build_mvtec_ad(write_mvtec_tree(tmp_path / "raw", categories=("bottle",)).root)
    out = tmp_path / "out"

    def broken_save(self, path, **kwargs):
        (Path(path) / "half_written.arrow").write_bytes(b"x")
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(datasets.DatasetDict, "save_to_disk", broken_save)
        with pytest.raises(RuntimeError, match="disk full"):
            save_dataset_atomically(dataset, out)
    assert not out.exists() and leftovers(tmp_path) == []
    save_dataset_atomically(dataset, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with monkeypatch.context() as patch:
        patch.setattr(datasets.DatasetDict, "save_to_disk", broken_save)
        with pytest.raises(RuntimeError):
            save_dataset_atomically(dataset, out, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert leftovers(tmp_path) == []


def test_save_refuses_to_replace_an_unrelated_folder(tmp_path):
    dataset = build_mvtec_ad(write_mvtec_tree(tmp_path / "raw", categories=("bottle",)).root)
    (tmp_path / "home" / "notes.txt").parent.mkdir()
    (tmp_path / "home" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetFormatError, match="not empty and not a saved dataset"):
        save_dataset_atomically(dataset, tmp_path / "home")
    assert (tmp_path / "home" / "notes.txt").read_text() == "keep me"


def test_cli_writes_a_self_contained_dataset(tmp_path, capsys):
    tree = write_mvtec_tree(tmp_path / "raw")
    out = tmp_path / "out"
    argv = ["--dataset", "mvtec_ad", "--data_dir", str(tree.root), "--output_dir", str(out)]
    code, stdout, _ = run_cli(argv, capsys)
    assert code == 0 and "grid" in stdout and "scratch" in stdout
    assert leftovers(tmp_path) == []
    for path in tree.root.rglob("*.png"):
        path.unlink()  # the saved dataset must not need the raw files
    reloaded = load_anomaly_dataset(str(out))
    raw_images = reloaded["test"].cast_column("image", datasets.Image(decode=False))["image"]
    assert all(item["bytes"] for item in raw_images)
    assert_well_formed(reloaded)
    argv = ["--data_dir", str(out), "--output_dir", str(out), "--categories", "grid", "--overwrite_output_dir"]
    code, _, _ = run_cli(argv, capsys)
    assert code == 0 and set(load_anomaly_dataset(str(out))["train"]["category"]) == {"grid"}


@pytest.mark.parametrize(
    "layout, bad_case", [("mvtec", c) for c in MVTEC_BAD_CASES] + [("visa", c) for c in VISA_BAD_CASES]
)
def test_cli_bad_input_exits_2_names_the_file_and_writes_nothing(tmp_path, capsys, layout, bad_case):
    writer = write_mvtec_tree if layout == "mvtec" else write_visa_tree
    tree = writer(tmp_path / "raw", bad_case=bad_case)
    out = tmp_path / "out"
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(out)], capsys)
    assert code == 2
    assert stderr.startswith("error: ") and str(tree.bad_file) in stderr
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "extra, message",
    [(["--categories", "cable"], "unknown categories 'cable'"), ([], "data_dir not found")],
)
def test_cli_unknown_category_and_missing_data_dir(tmp_path, capsys, extra, message):
    data_dir = write_mvtec_tree(tmp_path / "raw").root if extra else tmp_path / "missing"
    code, _, stderr = run_cli(["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "out"), *extra], capsys)
    assert code == 2 and message in stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_process_exit_code_without_traceback(tmp_path):
    tree = write_mvtec_tree(tmp_path / "raw", bad_case="missing_mask")
    command = [sys.executable, "-m", "training.prepare_dataset", "--data_dir", str(tree.root)]
    result = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert f"error: {tree.bad_file}" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_push_to_hub_calls_datasetdict_push_to_hub(tmp_path, capsys, monkeypatch):
    pushed = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda self, repo_id, **k: pushed.append((repo_id, self)))
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    argv = ["--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out"), "--push_to_hub"]
    code, _, _ = run_cli([*argv, "--hub_dataset_id", "user/fake_mvtec"], capsys)
    assert code == 0 and [repo for repo, _ in pushed] == ["user/fake_mvtec"]
    assert pushed[0][1]["test"].num_rows == 5
    with pytest.raises(SystemExit) as exit_info:
        prepare_dataset.parse_args(argv)
    assert exit_info.value.code == 2


# ----------------------------------------------------------------------------------------------------
# Hardening (issue 9): output folders, 16-bit and EXIF images, csv paths and encodings, full disks
# ----------------------------------------------------------------------------------------------------


def test_saved_dataset_carries_our_marker_and_is_replaced_only_with_overwrite(tmp_path):
    dataset = build_mvtec_ad(write_mvtec_tree(tmp_path / "raw", categories=("bottle",)).root)
    out = save_dataset_atomically(dataset, tmp_path / "out")
    assert json.loads((out / ".clipada_dataset.json").read_text())["version"] == 1
    with pytest.raises(DatasetFormatError, match=f"{re.escape(str(out))}: .*overwrite=True"):
        save_dataset_atomically(dataset, out)
    (out / "notes.txt").write_text("added by the user")
    for overwrite in (False, True):  # a file the user added is never replaced, flag or not
        with pytest.raises(DatasetFormatError, match=f"{re.escape(str(out))}: .*did not write \\(notes.txt\\)"):
            save_dataset_atomically(dataset, out, overwrite=overwrite)
        assert (out / "notes.txt").read_text() == "added by the user"
    (out / "notes.txt").unlink()
    save_dataset_atomically(dataset, out, overwrite=True)
    assert (out / ".clipada_dataset.json").is_file()


@pytest.mark.parametrize("flag", [[], ["--overwrite_output_dir"]])
def test_cli_never_replaces_a_saved_dataset_it_did_not_write(tmp_path, capsys, flag):
    foreign = tmp_path / "out"
    splits = {s: datasets.Dataset.from_dict({"x": [1]}) for s in ("train", "test")}
    datasets.DatasetDict(splits).save_to_disk(str(foreign))  # holds dataset_dict.json, but not our marker
    (foreign / "results.csv").write_text("my results")
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    code, _, stderr = run_cli(["--data_dir", str(tree.root), "--output_dir", str(foreign), *flag], capsys)
    assert code == 2 and stderr.startswith(f"error: {foreign}: ") and "not a saved dataset of ours" in stderr
    assert (foreign / "results.csv").read_text() == "my results" and (foreign / "dataset_dict.json").is_file()
    assert leftovers(tmp_path) == []


def test_cli_rerun_into_its_own_output_needs_the_overwrite_flag(tmp_path, capsys, monkeypatch):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    out = tmp_path / "out"
    argv = ["--data_dir", str(tree.root), "--output_dir", str(out)]
    assert run_cli(argv, capsys)[0] == 0
    before = file_bytes(out)
    with monkeypatch.context() as patch:  # the refusal comes before anything is built
        patch.setattr(prepare_dataset, "load_anomaly_dataset", lambda *a, **k: pytest.fail("must not build"))
        code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and stderr.startswith(f"error: {out}: ") and "--overwrite_output_dir" in stderr
    assert file_bytes(out) == before
    assert run_cli([*argv, "--overwrite_output_dir"], capsys)[0] == 0


@pytest.mark.parametrize("mode, dtype", [("I;16", "<u2"), ("I;16B", ">u2"), ("I", "<i4")])
def test_16bit_images_are_scaled_by_their_bit_depth_not_their_content(mode, dtype):
    values = np.array([[0, 128, 129, 1000], [2570, 30000, 65278, 65535]])
    image = Image.fromarray(values.astype(dtype))
    assert image.mode == mode
    rgb = np.asarray(Image.open(io.BytesIO(encode_rgb_image(image, None))))
    assert rgb.shape == (2, 4, 3) and (rgb == rgb[..., :1]).all()
    assert rgb[..., 0].tolist() == [[0, 0, 1, 4], [10, 117, 254, 255]]  # round(v / 257)


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"])
def test_16bit_masks_binarise_any_nonzero_value(dtype):
    mask = Image.fromarray(np.array([[0, 1, 2], [256, 0, 65535]]).astype(dtype))
    binary = Image.open(io.BytesIO(encode_binary_mask(mask, None)))
    assert binary.mode == "L" and np.asarray(binary).tolist() == [[0, 255, 255], [255, 0, 255]]


def test_16bit_png_files_stay_dark_end_to_end(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",))  # images and masks are 20x16
    dark = np.full((16, 20), 1000, dtype=np.uint16)
    dark[0, 0] = 65535
    Image.fromarray(dark).save(tree.root / "bottle" / "train" / "good" / "000.png")
    mask = np.zeros((16, 20), dtype=np.uint16)
    mask[2:6, 3:9] = 3  # a defect id stored in 16 bits
    Image.fromarray(mask).save(tree.root / "bottle" / "ground_truth" / "crack" / "000_mask.png")
    dataset = build_mvtec_ad(tree.root)
    assert dataset["train"][0]["image_path"] == "bottle/train/good/000.png"
    assert np.unique(np.asarray(dataset["train"][0]["image"])).tolist() == [4, 255]
    assert_well_formed(dataset)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied_once_and_the_mask_checked_against_the_upright_image(tmp_path, orientation):
    tree = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",))  # images and masks are 20x16 (w x h)
    image_file = tree.root / "bottle" / "test" / "crack" / "000.png"
    image_file.unlink()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation  # rotate by 90 degrees to view: 16x20 pixels show as 20x16
    pixels = np.random.default_rng(0).integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image_file.with_suffix(".jpg"), exif=exif)
    with Image.open(image_file.with_suffix(".jpg")) as raw:
        assert raw.size == (16, 20)
        upright = np.asarray(ImageOps.exif_transpose(raw))
    test = build_mvtec_ad(tree.root)["test"]
    index = test["image_path"].index("bottle/test/crack/000.jpg")
    assert test[index]["image"].size == test[index]["mask"].size == (20, 16)
    np.testing.assert_array_equal(np.asarray(test[index]["image"]), upright)
    stored = test.cast_column("image", datasets.Image(decode=False))[index]["image"]["bytes"]
    assert Image.open(io.BytesIO(stored)).size == (20, 16)  # upright pixels, not a tag for the reader to apply


def test_visa_csv_paths_are_checked_after_resolving_symlinks(tmp_path):
    tree = write_visa_tree(tmp_path / "visa", bad_case="parent_path")
    csv_file = tree.root / "split_csv" / "1cls.csv"
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(csv_file))} line \d+: path '\.\./outside\.JPG'"):
        build_visa(tree.root)
    tree = write_visa_tree(tmp_path / "linked")
    anomalies = tree.root / "candle" / "Data" / "Images" / "Anomaly"
    shutil.move(anomalies, tmp_path / "elsewhere")
    anomalies.symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a link inside the root leading out
    with pytest.raises(DatasetFormatError, match=r"1cls\.csv line 5: path 'candle/Data/Images/Anomaly/000\.JPG'"):
        build_visa(tree.root)
    shutil.move(tmp_path / "elsewhere", tree.root / "moved")
    anomalies.unlink()
    anomalies.symlink_to(tree.root / "moved", target_is_directory=True)  # a link that stays inside is fine
    assert build_visa(tree.root)["test"].num_rows == 6


def test_non_utf8_annotation_csv_is_a_clear_error(tmp_path):
    tree = write_visa_tree(tmp_path / "visa")
    anno_file = tree.root / "candle" / "image_anno.csv"
    anno_file.write_bytes(anno_file.read_bytes().replace(b"scratch", "rayure \xe9".encode("latin-1"), 1))
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(anno_file))}: not UTF-8 text"):
        build_visa(tree.root)


def test_empty_image_file_is_named_as_empty(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mvtec", bad_case="empty_image")
    with pytest.raises(DatasetFormatError, match=rf"{re.escape(str(tree.bad_file))}: empty file \(0 bytes\)"):
        build_mvtec_ad(tree.root)


@pytest.mark.parametrize("writer", ["arrow_cache", "save_to_disk"])
def test_cli_full_disk_is_a_clear_error_that_keeps_the_existing_dataset(tmp_path, capsys, monkeypatch, writer):
    tree = write_mvtec_tree(tmp_path / "raw", categories=("bottle",))
    out = tmp_path / "out"
    argv = ["--data_dir", str(tree.root), "--output_dir", str(out), "--overwrite_output_dir"]
    assert run_cli(argv, capsys)[0] == 0
    before = file_bytes(out)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if writer == "arrow_cache":  # building the splits
        monkeypatch.setattr(ArrowWriter, "write_table", disk_full)
    else:
        monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", disk_full)
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("error:")] == [stderr.strip()]
    assert stderr.startswith(f"error: {out}: ") and "No space left on device" in stderr
    assert file_bytes(out) == before and leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# Real MVTec-AD / VisA files (../shared/realdata beside the repository), skipped when absent
# ----------------------------------------------------------------------------------------------------


needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real sample files not found at {REALDATA}")

REAL_MVTEC_COUNTS = {
    "train": {("bottle", "good"): 5, ("leather", "good"): 2},
    "test": {
        ("bottle", "good"): 5,
        ("bottle", "broken_large"): 20,
        ("bottle", "contamination"): 5,
        ("leather", "good"): 2,
        ("leather", "cut"): 2,
        ("leather", "glue"): 3,
    },
}
REAL_VISA_COUNTS = {
    "train": {("capsules", "good"): 3, ("macaroni1", "good"): 3},
    "test": {
        ("capsules", "good"): 3,
        ("capsules", "bubble"): 10,
        ("capsules", "bubble,discolor"): 1,
        ("macaroni1", "good"): 3,
        ("macaroni1", "chip around edge and corner"): 7,
        ("macaroni1", "chip around edge and corner,small scratches"): 3,
    },
}


@pytest.fixture(scope="module")
def real_outputs(tmp_path_factory) -> dict[str, Path]:
    """The real MVTec-AD and VisA samples converted once with the command line."""
    if not REALDATA.is_dir():
        pytest.skip(f"real sample files not found at {REALDATA}")
    folder = tmp_path_factory.mktemp("real")
    outputs = {"mvtec": folder / "mvtec", "visa": folder / "visa"}
    mvtec = ["--dataset", "mvtec_ad", "--data_dir", str(REALDATA / "mvtec"), "--categories", "bottle", "leather"]
    visa = ["--data_dir", str(REALDATA / "visa"), "--categories", "capsules", "macaroni1", "--skip_missing_files"]
    assert prepare_dataset.main([*mvtec, "--output_dir", str(outputs["mvtec"])]) == 0
    assert prepare_dataset.main([*visa, "--output_dir", str(outputs["visa"])]) == 0
    return outputs


@needs_realdata
@pytest.mark.slow
@pytest.mark.parametrize("name, expected", [("mvtec", REAL_MVTEC_COUNTS), ("visa", REAL_VISA_COUNTS)])
def test_real_files_give_expected_counts_and_well_formed_rows(real_outputs, name, expected):
    dataset = load_anomaly_dataset(str(real_outputs[name]))
    assert counts(dataset) == expected
    assert_well_formed(dataset)


@needs_realdata
@pytest.mark.slow
def test_real_image_sizes_and_paths(real_outputs):
    visa_test = load_anomaly_dataset(str(real_outputs["visa"]), categories=["capsules"])["test"]
    assert visa_test[0]["image"].size == (1500, 1000)
    assert all(p.startswith("capsules/Data/Images/") and p.endswith(".JPG") for p in visa_test["image_path"])
    bottle = load_anomaly_dataset(str(real_outputs["mvtec"]), categories=["bottle"])["test"]
    assert "bottle/test/broken_large/000.png" in bottle["image_path"]


@needs_realdata
def test_real_visa_without_the_flag_names_a_missing_file():
    with pytest.raises(DatasetFormatError, match=r"\.JPG: file not found.*skip_missing_files"):
        build_visa(REALDATA / "visa", categories=["capsules"])


@needs_realdata
@pytest.mark.parametrize("folder", ["mvtec_partial", "mvtec_partial/screw"])
def test_real_partial_category_without_test_folder_is_a_clear_error(folder):
    with pytest.raises(DatasetFormatError, match=r"mvtec_partial/screw/test: folder not found"):
        load_anomaly_dataset(str(REALDATA / folder))
