"""`clipada predict`'s pipeline (issue 20): loader workers and writer threads give the rows of one process,
`--overlays ng`, bounded queues, and `--resume` scoring every input exactly once after a SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference.backends import BackendOutput, load_backend
from inference.predict import command, stages
from inference.predict.pipeline import LoaderError, PipelineStats
from inference.predict.resume import RUN_RECORD, recover_rows
from inference.predict.rows import Thresholds
from inference.predict.writers import PredictionWriter, csv_line, json_line
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny CLIP-ADA checkpoint with thresholds (a mix of OK and NG is not needed here)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(clip, tokenizer, feature_layer=3, image_score_top_k=16)
    model.config.image_threshold, model.config.pixel_threshold = 0.5, 0.5
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def line(tmp_path_factory) -> tuple[Path, list[Path]]:
    """23 images of several sizes and brightnesses, and two broken files, in one folder (sorted = input order)."""
    folder = tmp_path_factory.mktemp("line")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(23):
        height, width = (IMAGE_SIZE, IMAGE_SIZE) if index % 3 else (20 + index, 50)
        pixels = rng.random((height, width, 3)) * (0.3 + 0.7 * (index % 5) / 4)
        path = folder / f"{index:03d}.png"
        Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
        paths.append(path)
    (folder / "007_empty.png").write_bytes(b"")
    (folder / "015_text.png").write_text("not an image")
    return folder, sorted(folder.iterdir())


def _brightness_backend(pixel_values, categories=None) -> BackendOutput:
    """Score = the input's mean brightness (CLIP-normalised), map = its brightness per pixel, squashed to (0, 1)."""
    values = 1 / (1 + np.exp(-np.asarray(pixel_values, dtype=np.float32).mean(axis=1)))  # (N, H, W)
    return BackendOutput(values.astype(np.float32), values.mean(axis=(1, 2)).astype(np.float32))


def _predict(paths, output_dir: Path, **options) -> dict:
    output_dir.mkdir()
    processor = CLIPADAImageProcessor(size=IMAGE_SIZE)
    thresholds = Thresholds(0.5, 0.52, "override")
    backend = options.pop("backend", _brightness_backend)
    return command.predict_images(paths, backend, processor, thresholds, output_dir, batch_size=4, **options)


def _jsonl(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def test_workers_and_writers_give_the_rows_and_files_of_one_process(line, checkpoint, tmp_path):
    _, paths = line
    backend = load_backend("torch", str(checkpoint), "cpu", "float32", 1)
    alone = _predict(paths, tmp_path / "alone", backend=backend, map_format="npz")
    piped = _predict(paths, tmp_path / "piped", backend=backend, map_format="npz", num_workers=2, num_writers=2)
    assert alone == piped and alone["ERROR"] == 2 and sum(alone.values()) == len(paths)
    for name in ("predictions.csv", "predictions.jsonl"):  # the same bytes: rows in input order, same values
        assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "piped" / name).read_bytes()
    assert [row["path"] for row in _jsonl(tmp_path / "piped")] == [str(path) for path in paths]
    for folder in ("overlays", "maps"):
        names = sorted(path.name for path in (tmp_path / "alone" / folder).iterdir())
        assert names == sorted(path.name for path in (tmp_path / "piped" / folder).iterdir()) and len(names) == 23
    overlay = "overlays/000.png"
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "alone" / overlay)), np.asarray(Image.open(tmp_path / "piped" / overlay))
    )


def test_overlays_ng_draws_exactly_the_ng_images(line, tmp_path):
    _, paths = line
    _predict(paths, tmp_path / "ng", draw_overlays="ng", num_workers=1, num_writers=2)
    rows = _jsonl(tmp_path / "ng")
    decisions = {row["decision"] for row in rows}
    assert {"OK", "NG", "ERROR"} <= decisions  # the thresholds split the line
    drawn = sorted(path.name for path in (tmp_path / "ng" / "overlays").iterdir())
    assert drawn == sorted(Path(row["path"]).stem + ".png" for row in rows if row["decision"] == "NG")
    assert all((row["overlay"] is not None) == (row["decision"] == "NG") for row in rows)
    _predict(paths, tmp_path / "none", draw_overlays="none")
    assert not (tmp_path / "none" / "overlays").exists() and all(
        row["overlay"] is None for row in _jsonl(tmp_path / "none")
    )


def test_the_overlay_flags_map_to_one_mode():
    common = ["x.png", "--model_name_or_path", "m", "--output_dir", "o"]
    assert command.parse_args(common).overlays == "all"
    assert command.parse_args([*common, "--overlays", "ng"]).overlays == "ng"
    assert command.parse_args([*common, "--overlays"]).overlays == "all"
    assert command.parse_args([*common, "--no-overlays"]).overlays == "none"
    assert command.parse_args([*common, "--num_workers", "0"]).num_workers == 0
    with pytest.raises(SystemExit) as exit_info:
        command.parse_args([*common, "--resume", "--overwrite_output_dir"])
    assert exit_info.value.code == 2


def test_queues_stay_within_their_bounds_whatever_the_image_count(line, tmp_path, monkeypatch):
    _, paths = line
    paths = paths * 3  # 75 images (a path given twice is scored twice here: the command removes duplicates)
    calls = []

    def slow_backend(pixel_values, categories=None):  # the loaders run ahead of a slow model
        calls.append(len(pixel_values))
        time.sleep(0.01)
        return _brightness_backend(pixel_values)

    def slow_draw(*args, **kwargs):  # and the model runs ahead of slow writers
        time.sleep(0.01)
        return Image.new("RGB", (8, 8))

    monkeypatch.setattr(command, "draw_overlay", slow_draw)
    stats = PipelineStats()
    counts = _predict(paths, tmp_path / "out", backend=slow_backend, num_workers=2, num_writers=2, stats=stats)
    assert sum(counts.values()) == 75 and max(calls) <= 4
    assert stats.loading_bound == 8 and 0 < stats.loading_peak <= stats.loading_bound
    assert stats.writing_bound == 12 and 0 < stats.writing_peak <= stats.writing_bound
    assert len(_jsonl(tmp_path / "out")) == 75


def test_a_loader_that_dies_stops_the_run_with_one_error_and_keeps_the_rows_written(line, tmp_path, monkeypatch):
    _, paths = line
    real = stages.input_problem

    def dies_on_the_tenth(path):  # runs in the forked loaders only (num_workers > 0)
        if path.name == "009.png":
            os._exit(1)
        return real(path)

    monkeypatch.setattr(stages, "input_problem", dies_on_the_tenth)
    with pytest.raises(LoaderError, match="--resume"):
        _predict(paths, tmp_path / "out", num_workers=1, num_writers=2)
    rows = _jsonl(tmp_path / "out")
    assert len(rows) <= 10 and [row["path"] for row in rows] == [str(path) for path in paths[: len(rows)]]


def test_recover_rows_cuts_a_torn_line_and_keeps_only_the_rows_both_files_hold(line, tmp_path):
    _, paths = line
    _predict(paths[:6], tmp_path / "run")
    output_dir = tmp_path / "run"
    rows = _jsonl(output_dir)
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as file:  # 4 rows, then a torn one
        file.write("".join(json_line(row) for row in rows[:4]) + json_line(rows[4])[:30])
    recovered = recover_rows(output_dir, paths[:6])
    assert recovered.count == 4 and recovered.decisions == Counter(row["decision"] for row in rows[:4])
    assert _jsonl(output_dir) == rows[:4]
    csv_text = (output_dir / "predictions.csv").read_bytes().decode("utf-8")
    assert csv_text.endswith(csv_line(rows[3])) and csv_text.count("\r\n") == 5  # the header and 4 rows
    with PredictionWriter(output_dir, append=True) as writer:
        writer.write(rows[4])
    assert _jsonl(output_dir) == rows[:5]


_KILLER = """
import json, multiprocessing, os, signal, sys
from inference.predict import command, writers
limit, argv, pids_file = int(sys.argv[1]), sys.argv[3:], sys.argv[2]
write, written = writers.PredictionWriter.write, []

def write_then_die(self, row):
    written.append(row)
    if len(written) <= limit:
        return write(self, row)
    self.csv_file.write(writers.csv_line(row))  # killed in the middle of a row: the CSV has it, the JSONL half
    self.jsonl_file.write(writers.json_line(row)[:40])
    self.flush()
    with open(pids_file, "w") as file:
        json.dump([child.pid for child in multiprocessing.active_children()], file)
    os.kill(os.getpid(), signal.SIGKILL)

writers.PredictionWriter.write = write_then_die
command.cli(argv)
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_scores_every_input_exactly_once(line, checkpoint, tmp_path):
    folder, paths = line
    output_dir = tmp_path / "out"
    argv = [str(folder), "--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir)]
    argv += ["--batch_size", "3", "--num_workers", "2", "--num_writers", "2", "--overlays", "ng", "--save_maps", "npz"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, "10", str(tmp_path / "pids.json"), *argv],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (output_dir / "predictions.jsonl").read_text().count("\n") == 10  # 10 whole rows and a torn one
    loaders = json.loads((tmp_path / "pids.json").read_text())
    assert len(loaders) == 2
    deadline = time.monotonic() + 5
    while not all(map(_gone, loaders)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(map(_gone, loaders)), "a loader process outlived the run"

    summary = command.main([*argv, "--resume"])
    assert summary["images"] == len(paths) and summary["ERROR"] == 2
    rows = _jsonl(output_dir)
    assert [row["path"] for row in rows] == [str(path) for path in paths]  # each input once, in order
    # the same files as a run that was never stopped
    command.main([*argv[:3], "--output_dir", str(tmp_path / "whole"), *argv[5:]])
    for name in ("predictions.csv", "predictions.jsonl"):
        assert (output_dir / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    for sub in ("overlays", "maps"):
        assert sorted(p.name for p in (output_dir / sub).iterdir()) == sorted(
            p.name for p in (tmp_path / "whole" / sub).iterdir()
        )
    again = command.main([*argv, "--resume"])  # nothing left: nothing scored again
    assert again == summary and _jsonl(output_dir) == rows


def test_resume_refuses_other_settings_another_model_and_folders_it_cannot_continue(line, checkpoint, tmp_path, capsys):
    _, paths = line
    output_dir = tmp_path / "out"
    common = [str(paths[0]), str(paths[1]), "--model_name_or_path", str(checkpoint), "--output_dir", str(output_dir)]
    assert command.main([*common, "--resume"])["images"] == 2  # --resume into a new folder: a fresh run
    before = {name: (output_dir / name).read_bytes() for name in ("predictions.csv", "predictions.jsonl", RUN_RECORD)}
    capsys.readouterr()

    def refused(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            command.main(argv)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    error = refused([*common, "--resume", "--category", "bottle", "--overlays", "ng"])
    assert error.startswith("error: --resume") and "--category (None there, bottle now)" in error
    assert "--overlays (all there, ng now)" in error
    assert "the inputs (2 images there, 1 now)" in refused([*common[1:], "--resume"])
    weights = next(path for path in checkpoint.iterdir() if path.suffix == ".safetensors")
    status = weights.stat()
    os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    try:
        assert f"the model's files changed since ({weights.name})" in refused([*common, "--resume"])
    finally:
        os.utime(weights, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert {name: (output_dir / name).read_bytes() for name in before} == before  # a refusal changes nothing
    (output_dir / RUN_RECORD).unlink()
    assert RUN_RECORD in refused([*common, "--resume"])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert "was not written by clipada predict" in refused([*common[:-1], str(theirs), "--resume"])
    assert (theirs / "notes.txt").read_text() == "mine"
