"""MVTec AD 2, Real-IAD, BTAD and MPDD in `clipada prepare-dataset`: generated trees in each official layout."""

import json

import numpy as np
import pytest
from fake_trees import (
    BTAD_BAD_CASES,
    MVTEC_AD2_BAD_CASES,
    REAL_IAD_BAD_CASES,
    REAL_IAD_VIEWS,
    write_btad_tree,
    write_mvtec_ad2_tree,
    write_mvtec_tree,
    write_real_iad_tree,
)
from PIL import Image

from training.data import DATASET_MARKER, DatasetFormatError, infer_dataset_layout, load_anomaly_dataset
from training.data.mpdd import MPDD_CATEGORIES, build_mpdd
from training.prepare_dataset import main, prepare_dataset

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def _mask_values(dataset) -> set[int]:
    return {int(v) for row in dataset for v in np.unique(np.asarray(row["mask"]))} if len(dataset) else set()


def test_mvtec_ad2_round_trip_keeps_splits_labels_and_masks(tmp_path):
    tree = write_mvtec_ad2_tree(tmp_path / "ad2")
    saved = prepare_dataset(tree.root, tmp_path / "out", categories=["vial"])
    assert (tmp_path / "out" / DATASET_MARKER).is_file()
    assert list(saved) == ["train", "validation", "test", "test_private", "test_private_mixed"]
    assert {name: len(split) for name, split in saved.items()} == {
        "train": 2, "validation": 2, "test": 3, "test_private": 3, "test_private_mixed": 2
    }  # fmt: skip
    test = saved["test"]
    assert set(test["split_name"]) == {"test_public"} and set(saved["validation"]["split_name"]) == {"validation"}
    assert sorted(zip(test["defect_type"], test["label"])) == [("bad", 1), ("bad", 1), ("good", 0)]
    for row in test:  # every anomalous image paired with its own mask file (the two masks differ)
        if row["label"] == 1:
            mask_file = tree.root / row["image_path"].replace("/bad/", "/ground_truth/bad/").replace(
                ".png", "_mask.png"
            )
            assert np.array_equal(np.asarray(row["mask"]), np.asarray(Image.open(mask_file)))
    assert _mask_values(test.filter(lambda row: row["label"] == 1)) == {0, 255}
    private = saved["test_private"]  # no labels, no masks, the official file names kept
    assert set(private["label"]) == {-1} and set(private["defect_type"]) == {"unknown"}
    assert all(mask is None for mask in private["mask"])
    assert sorted(private["image_path"]) == [f"vial/test_private/{i:03d}_regular.png" for i in range(3)]
    assert set(saved["test_private_mixed"]["split_name"]) == {"test_private_mixed"}
    again = load_anomaly_dataset(str(tmp_path / "out"), categories=["vial"])  # a saved folder, filtered: all splits
    assert {name: len(split) for name, split in again.items()} == {name: len(split) for name, split in saved.items()}
    with pytest.raises(DatasetFormatError, match="unknown categories 'can'"):
        load_anomaly_dataset(str(tmp_path / "out"), categories=["can"])


def test_mvtec_ad2_without_private_sets_gives_empty_private_splits(tmp_path):
    tree = write_mvtec_ad2_tree(tmp_path / "ad2", scenarios=("can",), private=False)
    dataset = load_anomaly_dataset(str(tree.root), "mvtec_ad2")
    assert len(dataset["test_private"]) == 0 and len(dataset["test_private_mixed"]) == 0
    assert len(dataset["test"]) == 3


@pytest.mark.parametrize("bad_case", MVTEC_AD2_BAD_CASES)
def test_mvtec_ad2_bad_trees_name_the_file(tmp_path, bad_case):
    tree = write_mvtec_ad2_tree(tmp_path / "ad2", bad_case=bad_case)
    with pytest.raises(DatasetFormatError, match=str(tree.bad_file)):
        load_anomaly_dataset(str(tree.root), "mvtec_ad2")


def test_real_iad_multi_view_rows_carry_sample_view_and_the_official_labels(tmp_path):
    tree = write_real_iad_tree(tmp_path / "realiad")
    dataset = load_anomaly_dataset(str(tree.root), categories=["audiojack"])  # layout inferred from realiad_jsons
    train, test = dataset["train"], dataset["test"]
    assert test.column_names[-3:] == ["sample_id", "view", "anomaly_class"]
    assert len(train) == 2 * len(REAL_IAD_VIEWS) and set(train["label"]) == {0}
    assert sorted(set(test["sample_id"])) == ["audiojack_0003_OK", "audiojack_0004_NG_AK"]
    rows = {(row["sample_id"], row["view"]): row for row in test}
    assert sorted(view for (_, view) in rows if _ == "audiojack_0004_NG_AK") == list(REAL_IAD_VIEWS)
    for (sample, view), row in rows.items():
        defective_view = "_NG_" in sample and view in ("C1", "C2")  # only views with a mask are anomalous
        assert row["label"] == int(defective_view)
        assert (row["mask"] is not None) == defective_view
        assert row["defect_type"] == ("AK" if defective_view else "good")
        assert row["anomaly_class"] == ("AK" if "_NG_" in sample else "OK")
        assert row["image_path"].startswith(f"realiad_256/audiojack/{'NG/AK' if '_NG_' in sample else 'OK'}/")


def test_real_iad_protocols_single_view_and_noisy_training(tmp_path):
    tree = write_real_iad_tree(tmp_path / "realiad", objects=("toy_brick",))
    single = load_anomaly_dataset(str(tree.root), "real_iad", real_iad_protocol="single_view")
    assert set(single["test"]["view"]) == {"C1"} and len(single["train"]) == 2
    noisy = load_anomaly_dataset(str(tree.root), "real_iad", real_iad_protocol="noisy_0.4")
    assert set(noisy["train"]["label"]) == {0}  # the protocol trains on them as normal ...
    assert noisy["train"]["anomaly_class"].count("HS") == len(REAL_IAD_VIEWS)  # ... and the column keeps the truth
    with pytest.raises(DatasetFormatError, match="realiad_512: image folder not found"):
        load_anomaly_dataset(str(tree.root), "real_iad", real_iad_resolution="512")


@pytest.mark.parametrize("bad_case", REAL_IAD_BAD_CASES)
def test_real_iad_bad_trees_name_the_file(tmp_path, bad_case):
    tree = write_real_iad_tree(tmp_path / "realiad", bad_case=bad_case)
    with pytest.raises(DatasetFormatError, match=str(tree.bad_file)):
        load_anomaly_dataset(str(tree.root), "real_iad")


def test_real_iad_skip_missing_files_keeps_the_rest(tmp_path):
    tree = write_real_iad_tree(tmp_path / "realiad", objects=("audiojack",), bad_case="missing_file")
    dataset = load_anomaly_dataset(str(tree.root), "real_iad", allow_missing_files=True)
    assert len(dataset["test"]) == 2 * len(REAL_IAD_VIEWS) - 1


def test_btad_mixed_bmp_and_png_round_trip(tmp_path):
    tree = write_btad_tree(tmp_path / "btad")
    assert infer_dataset_layout(tree.root) == "btad"
    saved = prepare_dataset(tree.root, tmp_path / "out", "btad")
    test = saved["test"]
    assert sorted(set(test["category"])) == ["01", "02", "03"]
    assert sorted(set(zip(test["defect_type"], test["label"]))) == [("good", 0), ("ko", 1)]
    assert {path.rsplit(".", 1)[1] for path in saved["train"]["image_path"]} == {"bmp", "png"}
    assert {row["image"].mode for row in saved["train"]} == {"RGB"}
    anomalous = test.filter(lambda row: row["label"] == 1)
    assert len(anomalous) == 6 and all(row["mask"].size == row["image"].size for row in anomalous)
    assert _mask_values(anomalous) == {0, 255}


@pytest.mark.parametrize("bad_case", BTAD_BAD_CASES)
def test_btad_bad_trees_name_the_file(tmp_path, bad_case):
    tree = write_btad_tree(tmp_path / "btad", bad_case=bad_case)
    with pytest.raises(DatasetFormatError, match=str(tree.bad_file)):
        load_anomaly_dataset(str(tree.root), "btad")


def test_mpdd_reads_mvtec_layout_and_refuses_other_categories(tmp_path):
    tree = write_mvtec_tree(tmp_path / "mpdd", categories=("tubes", "metal_plate"), grayscale=())
    dataset = build_mpdd(tree.root, ["tubes"])
    assert set(dataset["test"]["category"]) == {"tubes"} and len(dataset["test"]) == 5
    with pytest.raises(DatasetFormatError, match="available: metal_plate, tubes"):
        build_mpdd(tree.root, ["bracket_black"])
    other = write_mvtec_tree(tmp_path / "mvtec", categories=("bottle",))
    with pytest.raises(DatasetFormatError, match=f"none of MPDD's categories \\({', '.join(MPDD_CATEGORIES)}\\)"):
        build_mpdd(other.root)


def test_prepare_dataset_command_real_iad_flags_and_named_errors(tmp_path, capsys):
    tree = write_real_iad_tree(tmp_path / "realiad")
    argv = ["--dataset", "real_iad", "--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out")]
    assert main([*argv, "--real_iad_protocol", "single_view", "--categories", "toy_brick"]) == 0
    assert "test_private" not in capsys.readouterr().out
    marker = json.loads((tmp_path / "out" / DATASET_MARKER).read_text())
    assert "dataset_dict.json" in marker["entries"]
    saved = load_anomaly_dataset(str(tmp_path / "out"))  # the saved folder reads back with its extra columns
    assert saved["test"].column_names[-3:] == ["sample_id", "view", "anomaly_class"]
    assert set(saved["test"]["sample_id"]) == {"toy_brick_0003_OK", "toy_brick_0004_NG_AK"}
    assert set(saved["test"]["view"]) == {"C1"}
    assert main([*argv, "--overwrite_output_dir", "--categories", "nope"]) == 2
    assert "unknown categories 'nope'" in capsys.readouterr().err
    inside = ["--dataset", "btad", "--data_dir", str(tree.root), "--output_dir", str(tree.root / "x")]
    assert main(inside) == 2 and "lies inside the input folder" in capsys.readouterr().err


def test_prepare_dataset_prints_the_mvtec_ad2_private_splits(tmp_path, capsys):
    tree = write_mvtec_ad2_tree(tmp_path / "ad2", scenarios=("can",))
    assert main(["--data_dir", str(tree.root), "--output_dir", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["test_private_mixed", "can", "unknown"] for line in lines)


@pytest.mark.parametrize(
    ("preset", "schedule"),
    [("mvtec_ad2", (500, 64, [250])), ("real_iad", (40, 64, [20])), ("btad", (800, 16, [400, 700])),
     ("mpdd", (800, 16, [400, 700]))],
)  # fmt: skip
def test_training_presets_of_the_new_datasets(preset, schedule):
    from training.arguments import parse_args

    args = parse_args(["--dataset_name", "data", "--output_dir", "out", "--preset", preset])
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.lr_milestones) == schedule
    args = parse_args(["--dataset_name", "data", "--output_dir", "out", "--preset", preset, "--num_train_epochs", "3"])
    assert args.num_train_epochs == 3  # an explicit flag wins
