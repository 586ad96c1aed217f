"""Tests of `--train_fraction` (the marginal-data study): per-category, seeded selection, and the run fingerprint."""

import json
from argparse import Namespace

import datasets
import pytest
from run_helpers import training_args

from training.preparation import run_fingerprint, select_train_fraction


def _split(counts: dict[str, int]) -> datasets.Dataset:
    rows = [(category, index) for category, count in counts.items() for index in range(count)]
    return datasets.Dataset.from_dict(
        {"category": [c for c, _ in rows], "image_path": [f"{c}/train/good/{i:03d}.png" for c, i in rows]}
    )


@pytest.mark.parametrize(
    "fraction, expected",
    [(0.1, {"a": 1, "b": 2, "c": 1}), (0.3, {"a": 3, "b": 6, "c": 1}), (0.5, {"a": 5, "b": 10, "c": 1})],
)
def test_the_fraction_keeps_the_rounded_count_of_every_category(fraction, expected):
    split = _split({"a": 10, "b": 20, "c": 1})
    selected = select_train_fraction(split, fraction, seed=0)
    counts = {c: selected["category"].count(c) for c in ("a", "b", "c")}
    assert counts == expected
    assert len(set(selected["image_path"])) == len(selected)  # no row twice


def test_the_selection_is_seeded():
    split = _split({"a": 30, "b": 40})
    first, same, other = (select_train_fraction(split, 0.2, seed)["image_path"] for seed in (0, 0, 1))
    assert first == same and first != other
    assert first == sorted(first)  # the kept rows stay in their original order


def test_the_whole_split_at_fraction_one_and_bad_fractions_refused():
    split = _split({"a": 4})
    assert select_train_fraction(split, 1.0, seed=0) is split
    for fraction in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="--train_fraction"):
            select_train_fraction(split, fraction, seed=0)


@pytest.mark.parametrize("value", ["0", "1.5", "nan"])
def test_the_flag_refuses_values_outside_the_unit_interval(value, capsys):
    from training.arguments import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--dataset_name", "data", "--output_dir", "out", "--train_fraction", value])
    assert exit_info.value.code == 2
    assert "--train_fraction" in capsys.readouterr().err


def test_the_fingerprint_records_a_fraction_below_one_only():
    from training.arguments import parse_args

    class Model:
        class config:  # noqa: N801
            model_type = "clipada"
            vision_config = Namespace(image_size=32)

            @staticmethod
            def head_field_names():
                return ()

    dataset = {"train": _split({"a": 2})}
    base = ["--dataset_name", "data", "--output_dir", "out"]
    whole = run_fingerprint(parse_args(base), Model, dataset, 1)
    half = run_fingerprint(parse_args([*base, "--train_fraction", "0.5"]), Model, dataset, 1)
    assert "train_fraction" not in whole and half["train_fraction"] == 0.5
    assert {k: v for k, v in half.items() if k != "train_fraction"} == whole


@pytest.mark.slow
def test_a_run_trains_on_the_fraction_and_records_it(workspace, tmp_path, monkeypatch):
    from training import preparation, train

    seen = {}
    build = preparation.build_train_dataloader

    def recording(split, *args, **kwargs):
        seen["categories"] = list(split["category"])
        return build(split, *args, **kwargs)

    monkeypatch.setattr(preparation, "build_train_dataloader", recording)
    output_dir = tmp_path / "run"
    extra = ["--max_train_steps", "1", "--checkpointing_steps", "1", "--skip_evaluation", "--calibration_fraction", "0"]
    train.main(training_args(workspace, output_dir, *extra, "--train_fraction", "0.34"))
    # the demo data: 2 categories x 6 normal training images -> round(0.34 * 6) = 2 each
    assert sorted(seen["categories"]) == ["disc", "disc", "weave", "weave"]
    state = json.loads(next(output_dir.rglob("training_state.json")).read_text())
    assert state["fingerprint"]["train_fraction"] == 0.34


@pytest.mark.slow
def test_the_marginal_data_script_tabulates_every_fraction(workspace, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "marginal_data.py"
    spec = importlib.util.spec_from_file_location("marginal_data", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    output_dir = tmp_path / "study"
    argv = training_args(workspace, output_dir, "--max_train_steps", "1", "--num_heatmaps", "0")
    argv = [a for a in argv if a != str(output_dir)]
    argv.remove("--output_dir")
    rows = script.main(["--fractions", "0.5", "1.0", "--output_dir", str(output_dir), *argv])
    assert list(rows) == ["fraction_0.5", "fraction_1.0"]
    assert all(0 <= rows[name]["image_auroc"] <= 1 for name in rows)
    table = (output_dir / script.TABLE).read_text()
    assert "| 50% |" in table and "| 100% |" in table
    assert json.loads((output_dir / script.NUMBERS).read_text())["mean"] == rows
    assert (output_dir / "fraction_0.5" / "config.json").is_file()
