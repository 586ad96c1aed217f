"""Issue 19, the inspection app and its Hub Space: no code injection through --model_id, only the example files are
served, formula cells neutralised in the app's CSV, one bad upload never stops a batch, one CSV per inspection, and
the app's temporary folder removed on exit (SIGTERM included)."""

import ast
import csv
import json
import signal
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from app_server import free_port, start_app
from PIL import Image
from tiny_clip import IMAGE_SIZE, make_tiny_clip

from inference import app
from inference.app.model import load_served_model
from inference.app.results import render_results, score_uploads, write_predictions_csv
from inference.app.space import _write_space_files, write_space
from inference.predict.rows import Thresholds
from modeling_clipada import CLIPADAForAnomalySegmentation
from processing import CLIPADAImageProcessor

ISSUE_PAYLOAD = 'user/x" + str(__import__("os").system("touch PWNED")) + "'
DOCSTRING_PAYLOAD = 'user/x"""\nimport os; os.system("touch PWNED")\n"""'
FORMULA_CATEGORY = '=HYPERLINK("http://x","y")'


def _image(path: Path, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _fake_wheel(folder: Path) -> Path:
    """A wheel of clipada as far as the Space writer looks (its METADATA), without building one."""
    wheel = folder / "clipada-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(
            "clipada-0.2.0.dist-info/METADATA",
            "Metadata-Version: 2.4\nName: clipada\nVersion: 0.2.0\nRequires-Dist: torch\n",
        )
    return wheel


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    clip, tokenizer = make_tiny_clip()
    model = CLIPADAForAnomalySegmentation.from_clip(
        clip, tokenizer, feature_layer=3, image_score_top_k=16, smoothing_sigma=1.0, image_threshold=0.6,
        pixel_threshold=0.5, category_thresholds={FORMULA_CATEGORY: {"image_threshold": 0.3, "pixel_threshold": 0.7}},
    )  # fmt: skip
    model.save_pretrained(folder)
    CLIPADAImageProcessor(size=IMAGE_SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(checkpoint):
    return load_served_model(str(checkpoint))


# item 1: --model_id never becomes code or YAML


@pytest.mark.parametrize(
    "model_id",
    [
        ISSUE_PAYLOAD,
        DOCSTRING_PAYLOAD,
        "user/x\nsdk: docker",
        "user/my model",
        "user/x'",
        "user/a--b",
        "user/..",
        " /x",
    ],
)
def test_a_model_id_that_is_not_a_hub_id_is_refused_and_nothing_is_written(model_id, tmp_path, capsys, monkeypatch):
    pytest.importorskip("gradio")
    monkeypatch.chdir(tmp_path)
    wheel = _fake_wheel(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        app.main(["--write_space", "space", "--model_id", model_id, "--wheel", str(wheel)])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith("error: --model_id ") and error.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [wheel.name]  # no space/, no PWNED


@pytest.mark.parametrize("model_id", [ISSUE_PAYLOAD, DOCSTRING_PAYLOAD, "user/x\nsdk: docker\nevil: 1", "user/x.y-z_1"])
def test_the_space_files_hold_the_model_id_only_as_quoted_values(model_id, tmp_path):
    """Whatever the id (the writer's own check is bypassed here), app.py is code of ours with the id as string
    constants only, and the README's front matter is YAML with exactly our keys."""
    wheel = _fake_wheel(tmp_path)
    _write_space_files(tmp_path / "space", model_id, [], wheel, ["torch"], "6.0.0")
    code = (tmp_path / "space" / "app.py").read_text(encoding="utf-8")
    tree = ast.parse(code)
    assignments = {
        node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign) and len(node.targets) == 1
    }
    assert isinstance(assignments["MODEL_ID"], ast.Constant) and assignments["MODEL_ID"].value == model_id
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):  # no call is built from the id's text
            assert model_id not in ast.get_source_segment(code, node)
            assert "system" not in ast.unparse(node) and "__import__" not in ast.unparse(node)
        if isinstance(node, ast.Import):
            assert {alias.name for alias in node.names} <= {"sys", "torch"}
    readme = (tmp_path / "space" / "README.md").read_text(encoding="utf-8")
    front_matter = yaml.safe_load(readme.split("---\n")[1])
    assert set(front_matter) == {
        "title", "emoji", "colorFrom", "colorTo", "sdk", "sdk_version", "app_file", "pinned", "license", "models",
        "short_description",
    }  # fmt: skip
    assert front_matter["models"] == [model_id] and front_matter["sdk"] == "gradio"
    assert front_matter["sdk_version"] == "6.0.0"


def test_a_valid_hub_id_writes_a_space(tmp_path):
    pytest.importorskip("gradio")
    write_space(tmp_path / "space", "user/x.y-z_1", wheel=_fake_wheel(tmp_path))
    assert "MODEL_ID = 'user/x.y-z_1'" in (tmp_path / "space" / "app.py").read_text()


def test_the_space_folder_is_never_inside_or_around_the_examples(tmp_path, capsys):
    pytest.importorskip("gradio")
    _image(tmp_path / "examples" / "a.png")
    wheel = _fake_wheel(tmp_path)
    for folder in (tmp_path / "examples" / "space", tmp_path):
        with pytest.raises(SystemExit) as stopped:
            app.main(["--write_space", str(folder), "--model_id", "user/m", "--examples", str(tmp_path / "examples"),
                      "--wheel", str(wheel)])  # fmt: skip
        assert stopped.value.code == 2 and "error: --write_space" in capsys.readouterr().err
    assert sorted(path.name for path in (tmp_path / "examples").iterdir()) == ["a.png"]


# item 3: formula cells in the app's CSV


def test_the_apps_csv_neutralises_formula_cells(served, tmp_path):
    names = ["=1+1.png", "+SUM(A1).png", "@x.png", "-2+3.png", "plain.png"]
    paths = [_image(tmp_path / "in" / f"{index}.png", seed=index) for index in range(len(names))]
    results = score_uploads(paths, served.backend, served.processor, names=names, category=FORMULA_CATEGORY)
    rendered = render_results(results, Thresholds(0.5, 0.5, "category"), category=FORMULA_CATEGORY)
    csv_path = write_predictions_csv([item.row for item in rendered], tmp_path / "session")
    with open(csv_path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["path"] for row in rows] == ["'=1+1.png", "'+SUM(A1).png", "'@x.png", "'-2+3.png", "plain.png"]
    assert {row["category"] for row in rows} == {"'" + FORMULA_CATEGORY}
    raw = [json.loads(line) for line in (tmp_path / "session" / "predictions.jsonl").read_text().splitlines()]
    assert [row["path"] for row in raw] == names and raw[0]["category"] == FORMULA_CATEGORY


# items 15 and 16: one bad upload is that file's error; the others are inspected


class FailingOnOneBackend:
    """Refuses any batch holding the image whose mean pixel is `bad_mean`, like a runtime failing on one input."""

    name = "failing"

    def __init__(self, backend, bad_mean: float):
        self.backend, self.bad_mean = backend, bad_mean

    def __call__(self, pixel_values, category=None):
        means = pixel_values.reshape(pixel_values.shape[0], -1).mean(1)
        if any(abs(float(mean) - self.bad_mean) < 1e-6 for mean in means):
            raise RuntimeError("the runtime refused this input")
        return self.backend(pixel_values, category)


def test_one_image_the_backend_fails_on_is_its_error_and_the_others_are_scored(served, tmp_path):
    paths = [_image(tmp_path / f"{index}.png", seed=index) for index in range(3)]
    bad_mean = float(served.processor(images=[str(paths[1])])["pixel_values"].mean())
    results = score_uploads(paths, FailingOnOneBackend(served.backend, bad_mean), served.processor)
    assert [result.error == "" for result in results] == [True, False, True]
    assert "1.png" in results[1].error and "the runtime refused this input" in results[1].error
    assert results[0].anomaly_map.shape == (IMAGE_SIZE, IMAGE_SIZE) and np.isfinite(results[2].score)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 2), (2, 1), (1, 2000), (2000, 1), (3, 200), (200, 3)])
def test_thin_and_tiny_images_are_inspected_at_their_own_size(served, tmp_path, height, width):
    path = _image(tmp_path / "thin.png", height, width)
    (result,) = score_uploads([path], served.backend, served.processor)
    assert (
        result.error == "" and result.anomaly_map.shape == (height, width) and result.image.shape[:2] == (height, width)
    )
    (rendered,) = render_results([result], Thresholds(0.5, 0.5, "global"))
    assert rendered.row["decision"] in ("OK", "NG") and (rendered.row["height"], rendered.row["width"]) == (
        height,
        width,
    )
    assert rendered.overlay is not None and rendered.anomaly_map.size == (width, height)


def test_a_drawing_that_fails_is_that_files_error_and_the_others_are_drawn(served, tmp_path, monkeypatch):
    from inference.app import results as results_module

    def draw_overlay(*arguments, title, **options):
        if title == "b.png":
            raise ValueError("cannot draw this one")
        return real_draw_overlay(*arguments, title=title, **options)

    real_draw_overlay = results_module.draw_overlay
    monkeypatch.setattr(results_module, "draw_overlay", draw_overlay)
    paths = [_image(tmp_path / f"{index}.png", seed=index) for index in range(3)]
    results = score_uploads(paths, served.backend, served.processor, names=["a.png", "b.png", "new\nline.png"])
    rendered = render_results(results, Thresholds(0.5, 0.5, "global"))
    assert [item.row["decision"] == "ERROR" for item in rendered] == [False, True, False]
    assert rendered[1].row["error"] == "b.png: could not be drawn (ValueError: cannot draw this one)"
    assert rendered[0].overlay is not None and rendered[2].overlay is not None and rendered[1].overlay is None


def _handler(demo, name: str):
    """The page's event handler called `name` (as Gradio calls it)."""
    return next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == name)


def test_a_batch_with_bad_files_names_each_and_inspects_the_rest(served, tmp_path):
    gradio = pytest.importorskip("gradio")
    from inference.app.ui import TABLE_COLUMNS, build_demo

    good = _image(tmp_path / "good.png", seed=1)
    big = _image(tmp_path / "big.png", 120, 120, seed=2)
    (tmp_path / "broken.png").write_bytes(good.read_bytes()[:60])  # a PNG cut short
    thin = _image(tmp_path / "thin.png", 1, 300, seed=3)
    demo = build_demo(served, max_pixels=100 * 100)
    try:
        state, _, message, verdict, overlay, raw_map, gallery, table, download = _handler(demo, "inspect")(
            None, [str(big), str(good), str(tmp_path / "broken.png"), str(thin)], None, 0.6, 0.5
        )
        decisions = [row[TABLE_COLUMNS.index("decision")] for row in table]
        assert [row[0] for row in table] == ["big.png", "good.png", "broken.png", "thin.png"]
        assert decisions[0] == decisions[2] == "ERROR" and decisions[1] in ("OK", "NG") and decisions[3] in ("OK", "NG")
        assert "big.png is 120x120 pixels" in message and "broken.png" in message and "error" in message
        assert isinstance(gallery, gradio.Gallery) and len(gallery.value) == 2
    finally:
        demo.workspace.cleanup()


# item 25: one CSV per inspection, replaced by the sliders


def test_slider_moves_replace_the_inspections_csv_instead_of_adding_folders(served, tmp_path):
    pytest.importorskip("gradio")
    from inference.app.ui import GLOBAL_CATEGORY, build_demo

    demo = build_demo(served)
    workspace = Path(demo.workspace.name)
    try:
        paths = [str(_image(tmp_path / f"{index}.png", seed=index)) for index in range(2)]
        state, selected, *view = _handler(demo, "inspect")(None, paths, GLOBAL_CATEGORY, 0.6, 0.5)
        before = sorted(str(path) for path in workspace.rglob("*"))
        for value in (0.1, 0.2, 0.9, 0.95):
            *_, download = _handler(demo, "redraw")(state, selected, GLOBAL_CATEGORY, value, 0.5)
            assert download.value is not None
        assert sorted(str(path) for path in workspace.rglob("*")) == before
        (csv_file,) = workspace.rglob("predictions.csv")
        with open(csv_file, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        assert [row["image_threshold"] for row in rows] == ["0.95", "0.95"]
        second_state, *_ = _handler(demo, "inspect")(state, paths[:1], GLOBAL_CATEGORY, 0.6, 0.5)
        assert len(list(workspace.rglob("predictions.csv"))) == 1  # the session's earlier inspection is replaced
    finally:
        demo.workspace.cleanup()
    assert not workspace.exists()


# items 2 and 25: a real app on 127.0.0.1: only the examples are served; its temporary folder goes on SIGTERM


def _status(port: int, path: Path | str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/file={path}", timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def _served_example_paths(port: int) -> list[str]:
    """The files the page's examples gallery points at, from the app's config."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=10) as answer:
        config = json.load(answer)
    gallery = next(item for item in config["components"] if item["props"].get("elem_id") == "examples")
    return [entry["image"]["path"] for entry in gallery["props"]["value"]]


@pytest.mark.slow
@pytest.mark.parametrize("stop, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_the_app_serves_its_examples_and_nothing_beside_them_and_cleans_up_when_stopped(
    checkpoint, tmp_path, stop, code
):
    pytest.importorskip("gradio")
    examples = tmp_path / "line3"
    example = _image(examples / "part.png")
    secrets = [examples / ".env", examples / "secret.txt", examples / ".ssh" / "id_rsa", examples / "notes.png.txt"]
    for secret in secrets:
        secret.parent.mkdir(exist_ok=True)
        secret.write_text("TOKEN=hf_secret\n")
    temp, port = tmp_path / "temp", free_port()
    temp.mkdir()
    arguments = ["--model_name_or_path", str(checkpoint), "--examples", str(examples)]
    temp_env = {"TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(temp / "gradio")}
    server = start_app(arguments, port, tmp_path / "app.log", env=temp_env)
    try:
        served = _served_example_paths(port)
        assert len(served) == 1 and all(_status(port, path) == 200 for path in served)
        for secret in [*secrets, example, checkpoint / "config.json"]:
            assert _status(port, secret) == 403, secret
        (workspace,) = temp.glob("clipada-app-*")
        assert all(
            _status(port, path) == 403
            for path in workspace.rglob("*")
            if path.is_file() and "examples" not in path.parts
        )
        server.send_signal(stop)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    log = (tmp_path / "app.log").read_text()
    assert server.returncode == code and "Traceback" not in log, log[-3000:]
    assert not list(temp.glob("clipada-app-*")), log[-3000:]
    assert ("interrupted (Ctrl-C)" if stop == signal.SIGINT else "stopped (SIGTERM)") in log
