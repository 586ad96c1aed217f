"""Tests of the benchmark scripts: the figures' arithmetic, the interleaving, and tiny runs through every code path."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Imports `benchmarks/<name>.py` by path (the folder is not a package; its modules import each other)."""
    sys.path.insert(0, str(BENCHMARKS_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"clipada_benchmarks_{name}", BENCHMARKS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS_DIR))


def _record(kind: str, samples_ms: list[float], **fields) -> dict:
    common = {"image_size": 224, "precision": "float32", "batch_size": 1}
    return {"kind": kind, **common, **fields, "samples_ms": samples_ms, "peak_mib": 1.0, "extra_mib": 0.0}


def test_ratios_are_taken_round_by_round():
    report = _load("report")
    records = [
        _record("reference_full", [100.0, 200.0], layers=12, feature_layer=6),
        _record("clipada_inference", [120.0, 220.0], R=1),  # ideal (1 + 1) * 6 / 12 * bare = bare
        _record("reference_nograd_to_l", [10.0, 20.0]),
        _record("reference_fwdbwd_to_l", [30.0, 60.0]),
        _record("clipada_training_step", [44.0, 80.0], R=1),  # ideal 10 + 30 = 40, then 20 + 60 = 80
        _record("text_embedding_fwdbwd", [4.0, 8.0]),
        _record("synthesis", [1.0, 2.0], precision=None),
        _record("loading", [1.0, 2.0], precision=None, file_size=224),
    ]
    for record in records:
        record["ms"] = report.spread(record["samples_ms"])
    derived = report.derive(records)
    (inference,) = derived["inference"]
    assert inference["ratio"] == {"median": 1.15, "min": 1.1, "max": 1.2}  # the ratio of medians would be 1.133
    assert inference["ideal_ms"] == 150.0 and inference["images_per_s"] == pytest.approx(1e3 / 170, abs=0.01)
    (training,) = derived["training"]
    assert training["ideal_ms"] == 60.0
    assert training["ratio"] == {"median": 1.05, "min": 1.0, "max": 1.1}
    assert training["text_share"]["min"] == pytest.approx(4 / 44, abs=1e-4)
    assert training["ratio_without_text"] == {"median": 0.95, "min": 0.9, "max": 1.0}
    (data_share,) = training["data_share"]
    assert data_share["share"]["max"] == pytest.approx(4 / 82, abs=1e-4)  # (synthesis + loading) / (loading + step)
    holds = {target["target"].split(" ")[0]: target["holds"] for target in derived["targets"]}
    assert holds == {"inference": False, "training": True, "synthesis": True}  # 1.15 > 1.05; 1.05 <= 1.15; 5% < 10%


def test_time_in_rounds_interleaves_and_rotates_the_order():
    measure = _load("measure")
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    samples = measure.time_in_rounds(calls, rounds=3, min_run_time=0.0, warmup=1)
    assert {name: len(values) for name, values in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(value > 0 for values in samples.values() for value in values)
    order = "".join(name for index, name in enumerate(log) if index == 0 or log[index - 1] != name)
    assert order == "abc" + "abc" + "bca" + "cab"  # warm-up, then one round each


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """`benchmark.py --tiny` in its own process (it sets the process's threads, malloc and accelerate state)."""
    output_dir = tmp_path_factory.mktemp("benchmark")
    command = [sys.executable, str(BENCHMARKS_DIR / "benchmark.py"), "--tiny", "--output_dir", str(output_dir)]
    result = subprocess.run(
        [*command, "--name", "tiny"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir


@pytest.mark.slow
def test_tiny_benchmark_writes_valid_json_with_every_measurement(tiny_run):
    written = json.loads((tiny_run / "tiny.json").read_text())
    assert written["environment"]["cpu"] and written["environment"]["torch_threads"] == written["settings"]["threads"]
    kinds = {record["kind"] for record in written["records"]}
    assert kinds == {
        "reference_full",
        "clipada_inference",
        "reference_nograd_to_l",
        "reference_fwdbwd_to_l",
        "clipada_training_step",
        "text_embedding_fwdbwd",
        "synthesis",
        "loading",
    }
    for record in written["records"]:
        assert 0 < record["ms"]["min"] <= record["ms"]["median"] <= record["ms"]["max"]
        assert len(record["samples_ms"]) == written["settings"]["repeats"]
        assert record["peak_mib"] is None or record["peak_mib"] > 0
    steps = [r for r in written["records"] if r["kind"] == "clipada_training_step"]
    assert {(r["precision"], r["R"], r["batch_size"]) for r in steps} == {
        (precision, refinements, batch)
        for precision in ("float32", "bfloat16", "bf16-frozen")
        for refinements in (0, 1, 2)
        for batch in (1, 2)
    }
    loadings = [r for r in written["records"] if r["kind"] == "loading"]
    assert {(r["file_size"], r["batch_size"]) for r in loadings} == {(32, 1), (32, 2), (64, 1), (64, 2)}
    assert all(r["once_ms_per_image"] > 0 for r in loadings)
    derived = written["derived"]
    assert len(derived["inference"]) == 2 * 3 * 2 and len(derived["training"]) == 3 * 3 * 2
    assert all(entry["ratio"]["median"] > 0 for entry in derived["inference"] + derived["training"])
    assert all(len(entry["data_share"]) == 2 for entry in derived["training"])
    assert {target["target"].split(" ")[0] for target in derived["targets"]} == {
        "inference",
        "training",
        "bf16",
        "synthesis",
    }


@pytest.mark.slow
def test_tiny_benchmark_writes_markdown_tables(tiny_run):
    markdown = (tiny_run / "tiny.md").read_text()
    sections = markdown.split("\n## ")[1:]
    titles = [section.splitlines()[0] for section in sections]
    assert [title.split(" ")[0] for title in titles] == ["Targets", "Inference", "Training", "Synthesis,", "bf16"]
    rows = {
        title.split(" ")[0]: [line for line in section.splitlines() if line.startswith("| ")]
        for title, section in zip(titles, sections)
    }
    assert len(rows["Inference"]) == 1 + 2 * 3 * 2 and len(rows["Training"]) == 1 + 3 * 3 * 2
    assert all(
        line.endswith(" |") and line.count(" | ") == rows[key][0].count(" | ") for key in rows for line in rows[key]
    )


@pytest.mark.slow
def test_from_json_recomputes_the_tables_without_measuring(tiny_run, tmp_path):
    written = json.loads((tiny_run / "tiny.json").read_text())
    copy = tmp_path / "copy.json"
    copy.write_text(json.dumps({**written, "derived": None}))
    benchmark = _load("benchmark")

    def measure_nothing(*args, **kwargs):
        raise AssertionError("--from_json measured")

    benchmark.run_grid = measure_nothing
    rebuilt = benchmark.main(["--from_json", str(copy)])
    assert rebuilt["derived"] == written["derived"]
    assert json.loads(copy.read_text()) == written
    assert (tmp_path / "copy.md").read_text() == (tiny_run / "tiny.md").read_text()


@pytest.mark.slow
def test_tiny_eval_memory_check_reports_each_checkpoint(tmp_path):
    eval_memory = _load("eval_memory")
    arguments = ["--tiny", "--num_images", "48", "--checkpoints", "16", "32", "48", "--batch_size", "8"]
    results = eval_memory.main([*arguments, "--output_dir", str(tmp_path), "--name", "evalmem"])
    written = json.loads((tmp_path / "evalmem.json").read_text())
    assert [snapshot["checkpoint"] for snapshot in written["snapshots"]] == [16, 32, 48]
    assert written["snapshots"][-1]["images"] == 48
    buffers = [snapshot["metric_buffers_mib"] for snapshot in written["snapshots"]]
    assert buffers == sorted(buffers) and buffers[-1] > buffers[0]  # the metric buffers grow within a category
    assert written["flat"] == results["flat"] and isinstance(written["flat"], bool)
    assert "| images |" in (tmp_path / "evalmem.md").read_text()


@pytest.mark.slow
def test_tiny_families_benchmark_times_every_family_and_precision(tmp_path):
    script = str(BENCHMARKS_DIR / "bench_families.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, script, "--tiny", "--batch_sizes", "1", "2", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((tmp_path / "families-tiny.json").read_text())
    records = written["records"]
    assert {(r["family"], r["precision"], r["batch_size"]) for r in records} == {
        (family, precision, batch)
        for family in ("clipada", "anomalyclip", "adaclip")
        for precision in ("float32", "bfloat16")
        for batch in (1, 2)
    }
    for record in records:
        assert len(record["samples_ms"]) == written["settings"]["repeats"] == 2
        rate = record["images_per_s"]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert rate["max"] == pytest.approx(record["batch_size"] * 1e3 / record["ms"]["min"], rel=1e-3)
    assert "official" not in written and written["environment"]["torch_threads"] == 1
    table = [line for line in (tmp_path / "families-tiny.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(records) and all(line.count(" | ") == 6 for line in table)
    not_official = subprocess.run([*command, "--official", str(tmp_path)], capture_output=True, text=True, env=env)
    assert not_official.returncode == 2 and "no AnomalyCLIP_lib folder" in not_official.stderr


@pytest.mark.slow
def test_tiny_predict_benchmark_times_the_forward_and_the_command(tmp_path):
    bench_predict = _load("bench_predict")
    arguments = ["--counts", "4", "8", "--image_size", "32", "--batch_size", "4", "--threads", "1"]
    results = bench_predict.main([*arguments, "--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path)])
    written = json.loads((tmp_path / "predict.json").read_text())
    assert written["results"] == results
    assert [(r["mode"], r["images"]) for r in results] == [
        ("forward", 4),
        ("predict", 4),
        ("predict_no_overlays", 4),
        ("predict", 8),
    ]
    for record in results:
        assert record["images_per_second"] > 0
        assert record["peak_rss_mib"] >= record["rss_after_imports_mib"] > 0
    for mode, count, overlays in (("predict", 4, True), ("predict_no_overlays", 4, False), ("predict", 8, True)):
        output_dir = tmp_path / "work" / f"out_{mode}_{count}"  # the command itself ran and wrote every row
        assert len((output_dir / "predictions.csv").read_text().splitlines()) == 1 + count
        assert (output_dir / "overlays").is_dir() == overlays
    assert written["machine"]["threads"] == 1 and written["machine"]["device"] == "cpu"
    table = [line for line in (tmp_path / "predict.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(results)
