"""`clipada predict --engine ray`: on a two-node Ray cluster on loopback it writes the rows of the single-process
command, and a model worker killed mid-run loses and duplicates nothing; the shard merge keeps every input once."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
from test_predict import _model_outputs, _rows, _save_checkpoint, _write_images
from tiny_clip import IMAGE_SIZE

pytest.importorskip("ray")
pytest.importorskip("ray.data")

from inference import predict  # noqa: E402
from inference.predict import ray_engine  # noqa: E402
from inference.predict.ray_cluster import QUIET_ENV, LoopbackCluster  # noqa: E402
from inference.predict.ray_engine import merge_shards  # noqa: E402
from inference.predict.ray_stages import CRASH_ONCE_ENV, ModelSettings, write_shard  # noqa: E402
from inference.predict.rows import Thresholds, error_row  # noqa: E402

NUM_IMAGES = 9


def _row(path: str, decision: str = "OK") -> dict:
    return {**error_row(path, None, ""), "decision": decision}


def test_the_merge_keeps_every_input_once_in_input_order(tmp_path):
    shards, output = tmp_path / "shards", tmp_path / "out"
    shards.mkdir(), output.mkdir()
    rows = [_row(f"{index}.png", "NG" if index % 3 == 0 else "OK") for index in range(7)]
    write_shard(shards, [(index, rows[index]) for index in (4, 5, 6)])
    write_shard(shards, [(index, rows[index]) for index in (0, 1, 2)])
    write_shard(shards, [(index, rows[index]) for index in (2, 3, 4)])  # a retry batched differently
    write_shard(shards, [(index, rows[index]) for index in (0, 1, 2)])  # a retry of the same batch: replaced
    assert len(list(shards.iterdir())) == 3

    counts, missing = merge_shards(shards, output, 7)

    assert missing == [] and counts == {"NG": 3, "OK": 4}
    written = [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert [row["path"] for row in written] == [f"{index}.png" for index in range(7)]
    assert (output / "predictions.csv").read_text().count("\n") == 8  # header + 7 rows


def test_the_merge_names_inputs_without_a_row_and_keeps_the_others(tmp_path):
    shards, output = tmp_path / "shards", tmp_path / "out"
    shards.mkdir(), output.mkdir()
    write_shard(shards, [(0, _row("0.png")), (1, _row("1.png"))])
    write_shard(shards, [(3, _row("3.png"))])

    counts, missing = merge_shards(shards, output, 5)

    assert missing == [2, 4] and counts == {"OK": 3}
    written = [json.loads(line)["path"] for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert written == ["0.png", "1.png", "3.png"]


def test_a_run_that_stops_writes_the_rows_it_scored_and_names_what_is_missing(tmp_path, monkeypatch):
    class Running:  # Ray already initialised by the caller: nothing is started or stopped
        is_initialized = staticmethod(lambda: True)

    def pipeline(ray, items, model, settings, output_dir, shards_dir, batch_size, concurrency):
        class Dataset:
            def iter_batches(self, **kwargs):
                write_shard(shards_dir, [(0, _row(items[0]["path"]))])
                yield {"index": np.array([0])}
                raise RuntimeError("a node was lost\n(traceback)")

        return Dataset()

    monkeypatch.setattr(ray_engine, "import_ray", lambda: Running)
    monkeypatch.setattr(ray_engine, "_pipeline", pipeline)
    paths, output_dir = [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out"
    output_dir.mkdir()
    with pytest.raises(ray_engine.RayRunError, match=r"stopped \(a node was lost\): 1 of 2 images got no row"):
        ray_engine.predict_with_ray(
            paths, ModelSettings(None, "m"), None, Thresholds(None, None, "none"), output_dir, overlays="none"
        )
    written = [json.loads(line)["path"] for line in (output_dir / "predictions.jsonl").read_text().splitlines()]
    assert written == [str(paths[0])]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no shards folder left beside it


def test_ray_flags_without_the_ray_engine_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["x.png", "--model_name_or_path", "m", "--output_dir", str(tmp_path), "--ray_concurrency", "2"])
    assert exit_info.value.code == 2 and "--ray_concurrency needs --engine ray" in capsys.readouterr().err


def test_a_cluster_address_that_answers_nothing_is_a_usage_error_before_any_output(tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["x.png", "--model_name_or_path", "m", "--output_dir", str(output_dir), "--engine", "ray",
                      "--ray_address", address])  # fmt: skip
    assert exit_info.value.code == 2 and f"cannot join the Ray cluster at {address}" in capsys.readouterr().err
    assert not output_dir.exists()


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> tuple[Path, Path]:
    """A calibrated tiny checkpoint and a folder of 9 images of several sizes plus 2 broken files."""
    root = tmp_path_factory.mktemp("ray_line")
    sizes = {f"{kind}/{index:03d}.png": (IMAGE_SIZE + index, IMAGE_SIZE + 2 * index) for kind in ("good", "bad")
             for index in range(NUM_IMAGES // 2)}  # fmt: skip
    sizes["bad/large.png"] = (3 * IMAGE_SIZE, 2 * IMAGE_SIZE)
    paths = _write_images(root / "images", sizes)
    (root / "images" / "bad" / "empty.png").write_bytes(b"")
    (root / "images" / "bad" / "notes.jpg").write_text("not an image")
    checkpoint = _save_checkpoint(root / "checkpoint")
    threshold = float(np.median(_model_outputs(checkpoint, paths).pred_score.numpy()))  # some OK, some NG
    return root / "images", _save_checkpoint(checkpoint, image_threshold=threshold, pixel_threshold=0.6)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node on 127.0.0.1, one CPU each; their workers see the crash hook's file."""
    crash_file = tmp_path_factory.mktemp("crash") / "crash_once"
    with (
        pytest.MonkeyPatch.context() as patch,
        LoopbackCluster(num_nodes=2, cpus_per_node=1, env={CRASH_ONCE_ENV: str(crash_file)}) as running,
    ):
        for name, value in QUIET_ENV.items():  # the driver joins without a token, as the nodes run
            patch.setenv(name, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield running, crash_file


@pytest.fixture(scope="module")
def runs(line, cluster, tmp_path_factory) -> dict:
    """The same inputs scored by the single-process command and by `--engine ray` on the cluster, with the model
    worker killed (os._exit) on its first batch."""
    folder, checkpoint = line
    running, crash_file = cluster
    root = tmp_path_factory.mktemp("ray_runs")
    common = [str(folder), "--model_name_or_path", str(checkpoint), "--batch_size", "2", "--overlays", "ng"]
    local = predict.main([*common, "--output_dir", str(root / "local"), "--num_workers", "0", "--num_writers", "0"])
    crash_file.write_text("armed")
    ray_argv = [*common, "--output_dir", str(root / "ray"), "--engine", "ray", "--ray_address", running.address]
    ray_run = predict.main(ray_argv)
    return {"local": (local, root / "local"), "ray": (ray_run, root / "ray"), "crash_file": crash_file}


@pytest.mark.slow
def test_the_ray_engine_on_two_nodes_writes_the_rows_of_the_single_process_command(runs):
    (local, local_dir), (ray_summary, ray_dir) = runs["local"], runs["ray"]
    assert {key: ray_summary[key] for key in ("images", "OK", "NG", "ERROR")} == {
        key: local[key] for key in ("images", "OK", "NG", "ERROR")
    }
    assert local["ERROR"] == 2 and local["NG"] and local["OK"]
    expected, got = _rows(local_dir), _rows(ray_dir)
    assert list(got) == list(expected)  # input order
    for path, row in expected.items():
        for key in ("score", "normalized_score", "anomalous_area"):
            assert got[path][key] == pytest.approx(row[key], abs=1e-6), (path, key)
        for key in ("decision", "num_regions", "boxes", "width", "height", "overlay", "threshold_source"):
            assert got[path][key] == row[key], (path, key)
        assert bool(got[path]["error"]) == bool(row["error"])
    assert sorted(os.listdir(ray_dir / "overlays")) == sorted(os.listdir(local_dir / "overlays"))  # NG ones only


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(runs, line):
    (summary, ray_dir), crash_file = runs["ray"], runs["crash_file"]
    assert not crash_file.exists() and Path(f"{crash_file}.fired").exists()  # the model actor did die once
    paths = [json.loads(line)["path"] for line in (ray_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(paths) == len(set(paths)) == summary["images"] == NUM_IMAGES + 2
    assert set(paths) == {str(path) for path in line[0].rglob("*") if path.is_file()}
    overlays = {row["overlay"] for row in _rows(ray_dir).values() if row["overlay"]}
    assert overlays == {f"overlays/{name}" for name in os.listdir(ray_dir / "overlays")}
    assert not any(name.startswith(f".{ray_dir.name}.") for name in os.listdir(ray_dir.parent))  # shards removed
    assert np.isfinite([row["score"] for row in _rows(ray_dir).values() if row["score"] is not None]).all()
