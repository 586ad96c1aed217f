"""Smoke tests of the benchmark scripts: their tiny modes run every code path and write valid JSON and Markdown."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Imports `benchmarks/<name>.py` by path (the folder is not a package)."""
    sys.path.insert(0, str(BENCHMARKS_DIR))
    try:
        spec = importlib.util.spec_from_file_location(f"clipada_benchmarks_{name}", BENCHMARKS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS_DIR))


@pytest.fixture(scope="module")
def benchmark_results(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("benchmark")
    # --malloc default: the test process keeps glibc's settings
    results = _load("benchmark").main(
        ["--tiny", "--malloc", "default", "--output_dir", str(output_dir), "--name", "tiny"]
    )
    return output_dir, results


def test_tiny_benchmark_writes_valid_json_with_every_measurement(benchmark_results):
    output_dir, results = benchmark_results
    written = json.loads((output_dir / "tiny.json").read_text())
    assert written["environment"]["cpu"] and written["environment"]["torch_threads"] >= 1
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
        assert record["median_ms"] > 0 and record["min_ms"] <= record["median_ms"] <= record["max_ms"]
        assert len(record["samples_ms"]) == written["settings"]["repeats"]
        assert record["peak_mib"] is None or record["peak_mib"] > 0
    steps = [r for r in written["records"] if r["kind"] == "clipada_training_step"]
    assert {(r["precision"], r["R"], r["batch_size"]) for r in steps} == {
        (precision, refinements, batch)
        for precision in ("float32", "bfloat16", "bf16-frozen")
        for refinements in (0, 1, 2)
        for batch in (1, 2)
    }
    derived = written["derived"]
    assert len(derived["inference"]) == 2 * 3 * 2 and len(derived["training"]) == 3 * 3 * 2
    assert all(entry["ratio"]["median"] > 0 for entry in derived["inference"] + derived["training"])
    assert {target["target"].split(" ")[0] for target in derived["targets"]} >= {
        "inference",
        "training",
        "bf16",
        "synthesis",
    }
    assert written == json.loads(json.dumps(results))


def test_tiny_benchmark_writes_markdown_tables(benchmark_results):
    output_dir, _ = benchmark_results
    markdown = (output_dir / "tiny.md").read_text()
    for heading in (
        "## Targets",
        "## Inference",
        "## Training step",
        "## Synthesis, loading",
        "## bf16 speed-up",
        "## Inference throughput",
    ):
        assert heading in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table_rows) > 40 and all(line.endswith(" |") for line in table_rows)


def test_from_json_recomputes_the_tables_without_measuring(benchmark_results, tmp_path):
    output_dir, results = benchmark_results
    copy = tmp_path / "copy.json"
    copy.write_text((output_dir / "tiny.json").read_text())
    rederived = _load("benchmark").main(["--from_json", str(copy)])
    assert rederived["derived"] == json.loads(json.dumps(results["derived"]))
    assert (tmp_path / "copy.md").read_text() == (output_dir / "tiny.md").read_text()


def test_tiny_eval_memory_check_reports_each_checkpoint(tmp_path):
    eval_memory = _load("eval_memory")
    results = eval_memory.main(
        [
            "--tiny",
            "--num_images",
            "48",
            "--checkpoints",
            "16",
            "32",
            "48",
            "--batch_size",
            "8",
            "--output_dir",
            str(tmp_path),
            "--name",
            "evalmem",
        ]
    )
    written = json.loads((tmp_path / "evalmem.json").read_text())
    assert [snapshot["checkpoint"] for snapshot in written["snapshots"]] == [16, 32, 48]
    assert written["snapshots"][-1]["images"] == 48
    buffers = [snapshot["metric_buffers_mib"] for snapshot in written["snapshots"]]
    assert buffers == sorted(buffers)  # the metric buffers only grow within a category
    assert written["flat"] == results["flat"] and isinstance(written["flat"], bool)
    assert "| images |" in (tmp_path / "evalmem.md").read_text()
