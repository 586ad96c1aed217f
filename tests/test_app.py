"""The inspection app without a browser: scoring uploads once, redrawing at any threshold, the CSV, the Space folder."""

import csv
import importlib.metadata
import os
import shutil
import subprocess
import sysconfig
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import app
from inference.app import space as space_module
from inference.app.model import checkpoint_examples, load_served_model
from inference.app.results import (
    DEFAULT_THRESHOLD,
    UploadError,
    check_upload,
    colour_map_picture,
    render_results,
    score_uploads,
    slider_start,
    slider_thresholds,
    write_predictions_csv,
)
from inference.app.space import write_space
from inference.overlays import colour_table, draw_overlay
from inference.predict.rows import COLUMNS, Thresholds, prediction_row
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = {"image_threshold": 0.6, "pixel_threshold": 0.5}
PER_CATEGORY = {"bottle": {"image_threshold": 0.3, "pixel_threshold": 0.7}}


def _save_checkpoint(folder: Path, **config) -> Path:
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=16, smoothing_sigma=1.0, **config
    )
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


def _write_image(path: Path, height: int, width: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class CountingBackend:
    """Wraps a backend and counts its calls, to show that redrawing never runs the model."""

    name = "counting"

    def __init__(self, backend):
        self.backend, self.calls = backend, 0

    def __call__(self, pixel_values, category=None):
        self.calls += 1
        return self.backend(pixel_values, category)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = _save_checkpoint(tmp_path_factory.mktemp("checkpoint"), **THRESHOLDS, category_thresholds=PER_CATEGORY)
    _write_image(folder / "examples" / "plate.png", 20, 24)
    return load_served_model(str(folder))


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> list[Path]:
    """Two images of their own sizes, a text file, an empty file."""
    folder = tmp_path_factory.mktemp("uploads")
    first, second = _write_image(folder / "a.png", 40, 56, seed=1), _write_image(folder / "b.jpg", 33, 30, seed=2)
    (folder / "notes.txt").write_text("not a picture")
    (folder / "empty.png").write_bytes(b"")
    return [first, folder / "notes.txt", second, folder / "empty.png"]


def test_the_model_runs_once_and_every_upload_keeps_its_own_size_or_its_error(served, uploads):
    backend = CountingBackend(served.backend)
    results = score_uploads(uploads, backend, served.processor)
    assert backend.calls == 1 and [result.name for result in results] == ["a.png", "notes.txt", "b.jpg", "empty.png"]
    assert results[0].anomaly_map.shape == (40, 56) and results[2].anomaly_map.shape == (33, 30)
    assert results[0].image.dtype == np.uint8 and np.array_equal(results[0].image, np.asarray(Image.open(uploads[0])))
    assert "not an image file" in results[1].error and "empty (0 bytes)" in results[3].error
    model = CLIPADAForAnomalySegmentation.from_pretrained(served.name).eval()
    with torch.no_grad():
        expected = model(served.processor(images=[str(uploads[0]), str(uploads[2])])["pixel_values"]).pred_score
    assert [results[0].score, results[2].score] == pytest.approx(expected.tolist(), abs=1e-6)


def test_redrawing_at_other_thresholds_never_runs_the_model_and_matches_predict(served, uploads):
    backend = CountingBackend(served.backend)
    results = score_uploads(uploads[:1], backend, served.processor)
    score = results[0].score
    low, high = Thresholds(score - 0.01, 0.0, "override"), Thresholds(score + 0.01, 1.0, "override")
    rendered_low, rendered_high = render_results(results, low), render_results(results, high)
    assert backend.calls == 1
    assert rendered_low[0].row["decision"] == "NG" and rendered_high[0].row["decision"] == "OK"
    assert rendered_low[0].row["anomalous_area"] == 1.0 and rendered_high[0].row["boxes"] == []
    # the same row and the same drawing as inference.predict (which draws from float pixels in [0, 1])
    pixels = served.processor.process_image(str(uploads[0]))
    row, pred_mask = prediction_row("a.png", None, results[0].anomaly_map, score, low)
    assert rendered_low[0].row == row
    expected = draw_overlay(pixels, results[0].anomaly_map, pred_mask, score, "NG", low.image, "a.png", low.pixel)
    difference = np.abs(np.asarray(rendered_low[0].overlay, dtype=int) - np.asarray(expected, dtype=int))
    assert rendered_low[0].overlay.size == expected.size and difference.max() <= 1


def test_sliders_start_at_the_calibrated_thresholds_and_a_moved_slider_is_an_override(served):
    assert slider_start(served.config, None) == pytest.approx((0.6, 0.5))
    assert slider_start(served.config, "bottle") == pytest.approx((0.3, 0.7))
    exact = slider_thresholds(served.config, None, 0.60004, 0.49996)  # the slider's rounding of the calibrated ones
    assert exact == Thresholds(0.6, 0.5, "global")
    assert slider_thresholds(served.config, None, 0.6, 0.5) == Thresholds(0.6, 0.5, "global")
    assert slider_thresholds(served.config, "bottle", 0.3, 0.7) == Thresholds(0.3, 0.7, "category")
    moved = slider_thresholds(served.config, "bottle", 0.45, 0.7)
    assert moved == Thresholds(0.45, 0.7, "image:override,pixel:category")
    assert served.categories == ["bottle"]


def test_an_uncalibrated_checkpoint_decides_with_the_sliders(tmp_path):
    config = load_served_model(str(_save_checkpoint(tmp_path / "plain"))).config
    assert slider_start(config, None) == pytest.approx((DEFAULT_THRESHOLD, DEFAULT_THRESHOLD))
    assert slider_thresholds(config, None, 0.5, 0.5) == Thresholds(0.5, 0.5, "override")


def test_bad_uploads_get_a_message_naming_the_file(tmp_path):
    big = _write_image(tmp_path / "big.png", 200, 300)
    with pytest.raises(UploadError, match=r"big.png is 300x200 pixels \(0.1 MP\).*up to 0.0 MP"):
        check_upload(big, "big.png", max_pixels=10_000)
    check_upload(big, "big.png", max_pixels=60_000)
    (tmp_path / "fake.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(UploadError, match="fake.png is not an image file"):
        check_upload(tmp_path / "fake.png", "fake.png")
    with pytest.raises(UploadError, match="gone.png: the upload did not arrive"):
        check_upload(tmp_path / "gone.png", "gone.png")


def test_the_csv_has_predicts_columns_and_error_rows(served, uploads, tmp_path):
    results = score_uploads(uploads, served.backend, served.processor)
    rendered = render_results(results, Thresholds(0.5, 0.5, "global"), category="bottle")
    csv_path = write_predictions_csv([item.row for item in rendered], tmp_path / "session")
    with open(csv_path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    assert tuple(reader.fieldnames) == COLUMNS and [row["path"] for row in rows] == [path.name for path in uploads]
    assert [row["decision"] for row in rows][1::2] == ["ERROR", "ERROR"] and rows[1]["error"]
    assert rows[0]["category"] == "bottle" and rows[0]["width"] == "56" and rows[0]["boxes"].startswith("[")
    assert rendered[1].overlay is None and rendered[0].anomaly_map.size == (56, 40)


def test_the_raw_map_is_coloured_on_the_fixed_scale():
    picture = np.asarray(colour_map_picture(np.array([[0.0, 1.0, 2.0]], dtype=np.float32)))
    table = colour_table("inferno").round().astype(np.uint8)
    assert np.array_equal(picture[0], np.stack([table[0], table[255], table[255]]))


def test_examples_shipped_in_the_checkpoint_are_found(served, tmp_path):
    assert [path.name for path in checkpoint_examples(served.name)] == ["plate.png"]
    assert checkpoint_examples(str(tmp_path)) == []


@pytest.fixture(scope="module")
def space(tmp_path_factory, served) -> Path:
    """A Space folder for user/clipada-mvtec with a wheel built from the checkout (built once: it takes seconds)."""
    pytest.importorskip("gradio")
    folder = tmp_path_factory.mktemp("space") / "space"
    return write_space(folder, "user/clipada-mvtec", examples=checkpoint_examples(served.name))


def test_the_space_folder_is_complete_and_installs_the_wheels_dependencies(space):
    (wheel,) = space.glob("clipada-*.whl")
    assert sorted(path.name for path in space.iterdir()) == sorted(
        ["README.md", "app.py", "examples", "requirements.txt", wheel.name]
    )
    readme = (space / "README.md").read_text(encoding="utf-8")
    header = yaml.safe_load(readme.split("---\n")[1])  # written by a YAML dumper (issue 19)
    assert header["sdk"] == "gradio" and header["app_file"] == "app.py" and header["models"] == ["user/clipada-mvtec"]
    assert header["title"] and header["sdk_version"] == importlib.metadata.version("gradio")
    app_code = (space / "app.py").read_text()
    assert f"MODEL_ID = {'user/clipada-mvtec'!r}" in app_code and f"HERE / {wheel.name!r}" in app_code
    assert [path.name for path in (space / "examples").iterdir()] == ["000_plate.png"]
    with zipfile.ZipFile(wheel) as archive:
        modules = [name for name in archive.namelist() if name.endswith(".py")]
    wanted = {"inference/app/ui.py", "inference/overlays.py", "processing/__init__.py", "modeling_clipada/__init__.py"}
    assert wanted <= set(modules)
    assert all((REPO / name).is_file() for name in modules)  # built from the sources: no stale build/ leftovers
    lines = (space / "requirements.txt").read_text().splitlines()
    requirements = {canonicalize_name(Requirement(line).name) for line in lines}
    assert {"torch", "accelerate", "gradio", "transformers", "huggingface-hub", "filelock"} <= requirements
    assert not requirements & {"clipada", "onnxruntime", "onnx", "openvino", "pytest", "selenium"}


def test_the_space_writer_refuses_a_used_folder_and_a_local_model(tmp_path, served):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_space(tmp_path / "used", "user/model")
    with pytest.raises(ValueError, match="--model_id .* Hub id"):
        write_space(tmp_path / "new", served.name)
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine" and not (tmp_path / "new").exists()


def test_the_space_writer_asks_for_a_wheel_where_it_cannot_build_one(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.setattr(space_module, "PROJECT_ROOT", tmp_path / "site-packages")  # an installed package
    with pytest.raises(ValueError, match="holds no pyproject.toml .* pass --wheel"):
        write_space(tmp_path / "space", "user/model")
    (tmp_path / "notes.whl").write_text("not a zip")
    with pytest.raises(ValueError, match="notes.whl is not a wheel file"):
        write_space(tmp_path / "space", "user/model", wheel=tmp_path / "notes.whl")
    with zipfile.ZipFile(tmp_path / "other-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("other-1.0.dist-info/METADATA", "Metadata-Version: 2.4\nName: other\nVersion: 1.0\n")
    with pytest.raises(ValueError, match="is a wheel of 'other', not of clipada"):
        write_space(tmp_path / "space", "user/model", wheel=tmp_path / "other-1.0-py3-none-any.whl")
    assert not (tmp_path / "space").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--model_name_or_path", "no/such/folder", "--num_threads", "1"],
            "error: no such folder: no/such/folder",  # issue 19 item 21: a path-shaped name is not looked up
        ),
        (["--model_name_or_path", "x", "--examples", "missing_dir"], "error: --examples missing_dir is not a folder"),
        (["--write_space", "space"], "--write_space needs --model_id"),
        ([], "--model_name_or_path is required"),
        (["--model_name_or_path", "x", "--port", "0"], "--port must lie in 1..65535"),
    ],
)
def test_the_command_line_says_what_is_wrong(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        app.main(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_command_writes_a_space_with_the_wheel_it_is_given(tmp_path, capsys, monkeypatch, space):
    (wheel,) = space.glob("clipada-*.whl")
    monkeypatch.setattr(space_module, "build_project_wheel", None)  # --wheel: nothing is built
    app.main(["--write_space", str(tmp_path / "space"), "--model_id", "user/model", "--wheel", str(wheel)])
    assert (tmp_path / "space" / "app.py").is_file() and "user/model" in capsys.readouterr().out
    assert (tmp_path / "space" / wheel.name).read_bytes() == wheel.read_bytes()


def test_the_page_is_built_for_a_checkpoint_with_categories(served):
    gradio = pytest.importorskip("gradio")
    from inference.app.ui import build_demo

    demo = build_demo(served, examples=checkpoint_examples(served.name))
    assert isinstance(demo, gradio.Blocks)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"upload", "verdict", "overlay", "anomaly-map", "image-threshold", "category", "results"} <= ids


def test_the_verdict_says_where_the_image_threshold_came_from(served, uploads):
    pytest.importorskip("gradio")
    from inference.app.ui import _verdict

    results = score_uploads(uploads[:2], served.backend, served.processor)
    for source, words in [("global", "(calibrated)"), ("category", "(calibrated for the category)"),
                          ("image:override,pixel:global", "(set by the slider)")]:  # fmt: skip
        rendered = render_results(results, Thresholds(0.5, 0.5, source))
        assert words in _verdict(rendered[0].row) and rendered[0].row["decision"] in _verdict(rendered[0].row)
    assert "notes.txt is not an image file" in _verdict(rendered[1].row)


@pytest.mark.slow
def test_the_space_app_runs_from_its_own_folder(tmp_path, served, space):
    """The Space's app.py, run by an interpreter that cannot import the checkout, loads the model and builds the
    page with the project's modules from the wheel in the Space folder."""
    copy = shutil.copytree(space, tmp_path / "space")
    app_file = copy / "app.py"
    app_file.write_text(app_file.read_text().replace(repr("user/clipada-mvtec"), repr(served.name)))  # offline
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=False)
    python = environment / "bin" / "python"
    site_packages = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    # this interpreter's packages as a plain path entry: their .pth files (the editable checkout) are not run
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    check = (
        "import sys; from pathlib import Path; import app, inference, modeling_clipada, processing; "
        "wheel = str(next(Path.cwd().resolve().glob('clipada-*.whl'))); "
        "modules = inference, modeling_clipada, processing; "
        "outside = [m.__file__ for m in modules if not m.__file__.startswith(wheel)]; "
        f"assert not outside, outside; assert {str(REPO)!r} not in sys.path, sys.path; "
        "assert not [f for f in sys.meta_path if 'editable' in getattr(f, '__module__', '')], sys.meta_path; "
        "print(type(app.demo).__name__)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", OMP_NUM_THREADS="1")
    done = subprocess.run([python, "-c", check], cwd=copy, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("Blocks")
