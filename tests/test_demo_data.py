"""Tests of the synthetic demo dataset generator (training/demo_data.py)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from training import demo_data
from training.data import load_anomaly_dataset
from training.demo_data import DEFECT_TYPES, RENDERERS, image_rng, make_demo_dataset

SMALL = {"num_train": 2, "num_test_good": 1, "num_test_defect": 2, "image_size": 48}


@pytest.fixture(autouse=True)
def _isolated_datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow caches of every test in its own temporary folder."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def file_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a tree by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_default_demo_dataset_loads_unchanged_with_expected_counts(tmp_path):
    root = make_demo_dataset(tmp_path / "demo")
    assert (root / "readme.txt").is_file()
    dataset = load_anomaly_dataset(str(root))
    train = Counter(zip(dataset["train"]["category"], dataset["train"]["defect_type"]))
    test = Counter(zip(dataset["test"]["category"], dataset["test"]["defect_type"]))
    assert train == {("disc", "good"): 24, ("weave", "good"): 24}
    assert test == {
        **{(c, "good"): 6 for c in ("disc", "weave")},
        **{(c, d): 6 for c, defects in DEFECT_TYPES.items() for d in defects},
    }
    assert all(len(defects) >= 2 for defects in DEFECT_TYPES.values())
    row = dataset["test"][-1]
    assert row["image"].size == row["mask"].size == (96, 96) and row["image"].mode == "RGB"


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    first = file_bytes(make_demo_dataset(tmp_path / "a", seed=3, **SMALL))
    assert first == file_bytes(make_demo_dataset(tmp_path / "b", seed=3, **SMALL))
    other = file_bytes(make_demo_dataset(tmp_path / "c", seed=4, **SMALL))
    assert other.keys() == first.keys() and other["disc/train/good/000.png"] != first["disc/train/good/000.png"]


def test_a_category_does_not_depend_on_the_others(tmp_path):
    both = file_bytes(make_demo_dataset(tmp_path / "both", **SMALL))
    weave = file_bytes(make_demo_dataset(tmp_path / "weave", categories=("weave",), **SMALL))
    assert all(both[name] == data for name, data in weave.items() if name.startswith("weave/"))


@pytest.mark.parametrize("category", sorted(DEFECT_TYPES))
def test_masks_mark_exactly_the_pixels_each_defect_changed(tmp_path, category):
    root = make_demo_dataset(tmp_path / "demo", categories=(category,), **SMALL)
    for defect in DEFECT_TYPES[category]:
        for index in range(SMALL["num_test_defect"]):
            normal, region = RENDERERS[category](image_rng(0, category, f"test/{defect}", index), 48)
            image = np.asarray(Image.open(root / category / "test" / defect / f"{index:03d}.png"))
            mask = np.asarray(Image.open(root / category / "ground_truth" / defect / f"{index:03d}_mask.png"))
            assert set(np.unique(mask).tolist()) == {0, 255}
            np.testing.assert_array_equal((image != normal).any(axis=-1), mask == 255)
            assert not (mask.astype(bool) & ~region).any()  # a disc's defects stay on the disc


def test_regenerating_replaces_an_earlier_demo_without_stale_files(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", **{**SMALL, "num_train": 3})
    make_demo_dataset(root, **SMALL, overwrite=True)
    assert sorted(p.name for p in (root / "disc" / "train" / "good").iterdir()) == ["000.png", "001.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_existing_unrelated_folder_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_demo_dataset(tmp_path / "mine", **SMALL)
    assert demo_data.main(["--output_dir", str(tmp_path / "mine")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_an_earlier_demo_is_replaced_only_with_overwrite(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "demo", **SMALL)
    (root / "my_notes.txt").write_text("added by the user")
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_dataset(root, **SMALL)
    assert demo_data.main(["--output_dir", str(root)]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert (root / "my_notes.txt").read_text() == "added by the user"
    assert demo_data.main(["--output_dir", str(root), "--overwrite_output_dir", "--num_train", "1"]) == 0
    assert not (root / "my_notes.txt").exists() and (root / "disc" / "train" / "good" / "000.png").is_file()


def test_failed_generation_leaves_nothing_and_keeps_an_earlier_demo(tmp_path, monkeypatch):
    root = make_demo_dataset(tmp_path / "demo", **SMALL)
    before = file_bytes(root)

    def broken_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(demo_data, "_write_category", broken_write)
    with pytest.raises(OSError, match="No space left"):
        make_demo_dataset(root, **SMALL, overwrite=True)
    assert file_bytes(root) == before and [p.name for p in tmp_path.iterdir()] == ["demo"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"categories": ("disc", "gear")}, "unknown demo categories"),
        ({"num_train": 0}, "num_train must be at least 1"),
        ({"image_size": 8}, "image_size must be at least"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_demo_dataset(tmp_path / "demo", **kwargs)
    assert not (tmp_path / "demo").exists()


def test_cli_writes_the_dataset(tmp_path, capsys):
    argv = ["--output_dir", str(tmp_path / "demo"), "--categories", "weave", "--num_train", "2"]
    argv += ["--num_test_good", "1", "--num_test_defect", "1", "--image_size", "40", "--seed", "1"]
    assert demo_data.main(argv) == 0
    assert str(tmp_path / "demo") in capsys.readouterr().out
    assert len(list((tmp_path / "demo" / "weave" / "train" / "good").glob("*.png"))) == 2
