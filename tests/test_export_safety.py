"""clipada export never loses data and damaged export folders never decide (issue 19 items 5, 7, 17, 18, 25).

Output folders: export replaces only an earlier export of its own (`inference.output_folder`), never its source
checkpoint, a foreign folder or an unmarked older export. Export folders: every decision field of
`clipada_export.json` is checked by the checkpoint configs' rules, and every damaged file is one named error from the
runner API, and `error: ...` with exit status 2 from `clipada predict` and the runners' command.
"""

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_export import build_checkpoint, sample_images
from tiny_clip import PATCH_SIZE

from inference.deploy.export import export, main
from inference.deploy.runners import EXPORT_CONFIG_NAME, ExportedCLIPADA, ExportedModelError
from inference.deploy.runners import cli as runners_cli
from inference.output_folder import OUTPUT_MARKER

ROOT = Path(__file__).resolve().parents[1]


def needs(export_format: str) -> None:
    for module in ("onnx", "onnxscript", "onnxruntime") if export_format == "onnx" else ("openvino",):
        pytest.importorskip(module, reason=f"needs the install extra: pip install -e '.[{export_format}]'")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("safety") / "checkpoint", num_refinements=0)


@pytest.fixture(scope="module")
def good_exports(checkpoint, tmp_path_factory):
    """`good_exports(format)`: one export folder per format, written once; tests damage copies of it."""
    root, written = tmp_path_factory.mktemp("good_exports"), {}

    def get(export_format: str) -> Path:
        needs(export_format)
        if export_format not in written:
            written[export_format] = root / export_format
            export(str(checkpoint), written[export_format], export_format)
        return written[export_format]

    return get


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under `folder` (relative path -> SHA-256 of its bytes)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def export_cli(capsys, *argv) -> tuple[int, str]:
    """Runs `clipada export` in-process; returns its exit status and stderr."""
    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- item 5: output folder


@pytest.mark.parametrize("where", ["the checkpoint itself", "a folder inside the checkpoint"])
def test_export_never_writes_into_its_source_checkpoint_even_with_overwrite(checkpoint, capsys, where):
    needs("onnx")
    before = folder_state(checkpoint)
    output_dir = checkpoint if where == "the checkpoint itself" else checkpoint / "onnx"
    code, err = export_cli(
        capsys, "--model_name_or_path", checkpoint, "--output_dir", output_dir, "--format", "onnx",
        "--overwrite_output_dir",
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: --output_dir {output_dir} ")
    assert "the command's own input" in err
    assert folder_state(checkpoint) == before and not (checkpoint / "onnx").exists()


def test_a_foreign_folder_is_refused_and_kept_even_with_overwrite(checkpoint, tmp_path, capsys):
    needs("onnx")
    folder = tmp_path / "thesis"
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Results}")
    (folder / "data" / "runs.csv").write_text("a,b\n1,2\n")
    before = folder_state(folder)
    code, err = export_cli(
        capsys, "--model_name_or_path", checkpoint, "--output_dir", folder, "--format", "onnx", "--overwrite_output_dir"
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --output_dir {folder} is not empty (data, thesis.tex) and was not written by ")
    assert folder_state(folder) == before


def test_an_earlier_export_is_replaced_only_with_overwrite_and_only_while_it_holds_only_its_files(
    checkpoint, tmp_path, capsys
):
    needs("onnx")
    folder = tmp_path / "export"
    assert export_cli(capsys, "--model_name_or_path", checkpoint, "--output_dir", folder, "--format", "onnx")[0] == 0
    marker = json.loads((folder / OUTPUT_MARKER).read_text())
    assert marker["written_by"] == "clipada export"
    assert set(marker["entries"]) == {path.name for path in folder.iterdir()} - {OUTPUT_MARKER}
    code, err = export_cli(capsys, "--model_name_or_path", checkpoint, "--output_dir", folder, "--format", "onnx")
    assert code == 2 and "already holds the output of an earlier clipada export" in err
    assert "--overwrite_output_dir" in err
    flags = ["--model_name_or_path", checkpoint, "--output_dir", folder, "--format", "openvino"]
    if importlib.util.find_spec("openvino"):
        assert export_cli(capsys, *flags, "--overwrite_output_dir")[0] == 0  # replaced: now OpenVINO
        assert (folder / "model.xml").is_file() and not (folder / "model.onnx").exists()
    (folder / "notes.txt").write_text("mine")
    code, err = export_cli(capsys, *flags, "--overwrite_output_dir")
    assert code == 2 and "holds files clipada export did not write (notes.txt)" in err
    assert (folder / "notes.txt").read_text() == "mine" and (folder / EXPORT_CONFIG_NAME).is_file()


def test_an_unmarked_export_from_before_is_refused_with_how_to_replace_it(good_exports, tmp_path, capsys, checkpoint):
    folder = tmp_path / "old-export"
    shutil.copytree(good_exports("onnx"), folder)
    (folder / OUTPUT_MARKER).unlink()  # as written before exports were marked
    (folder / "my-notes.txt").write_text("kept")
    before = folder_state(folder)
    code, err = export_cli(
        capsys, "--model_name_or_path", checkpoint, "--output_dir", folder, "--format", "onnx", "--overwrite_output_dir"
    )
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --output_dir {folder} holds an export written before exports were marked")
    assert "delete the folder yourself and export again" in err
    assert folder_state(folder) == before


# ---------------------------------------------------------------------------------------------- item 17: --image_size


@pytest.mark.parametrize("image_size", [0, -8, 4096])
def test_export_api_refuses_image_sizes_out_of_range_naming_the_flag(checkpoint, tmp_path, image_size):
    needs("onnx")
    with pytest.raises(ValueError, match=rf"^--image_size {image_size} must be a whole number of pixels from 1 to "):
        export(str(checkpoint), tmp_path / "out", "onnx", image_size=image_size)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag_value", ["0", "-8"])
def test_export_cli_refuses_image_sizes_below_1(checkpoint, tmp_path, capsys, flag_value):
    code, err = export_cli(
        capsys, "--model_name_or_path", checkpoint, "--output_dir", tmp_path / "out", "--format", "onnx",
        f"--image_size={flag_value}",
    )  # fmt: skip
    assert code == 2 and err.strip().endswith(f"argument --image_size: must be at least 1, got {flag_value}")


def test_export_refuses_an_image_size_off_the_patch_grid_naming_the_flag(checkpoint, tmp_path, capsys):
    needs("onnx")
    image_size = 3 * PATCH_SIZE + 1
    code, err = export_cli(
        capsys, "--model_name_or_path", checkpoint, "--output_dir", tmp_path / "out", "--format", "onnx",
        "--image_size", image_size,
    )  # fmt: skip
    assert code == 2
    assert err.startswith(f"error: --image_size {image_size} is not a multiple of the ") and err.count("\n") == 1
    assert f"patch size {PATCH_SIZE}" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- items 7 and 18


def damaged_copy(good: Path, folder: Path, damage) -> Path:
    shutil.copytree(good, folder)
    damage(folder)
    return folder


def edit_thresholds(**fields):
    def damage(folder: Path) -> None:
        path = folder / EXPORT_CONFIG_NAME
        config = json.loads(path.read_text())
        config["thresholds"].update(fields)
        path.write_text(json.dumps(config))

    return damage


THRESHOLD_DAMAGE = {
    "image_threshold NaN": (edit_thresholds(image_threshold=math.nan), "`image_threshold` must be a score in [0, 1]"),
    "image_threshold -1": (edit_thresholds(image_threshold=-1), "`image_threshold` must be a score in [0, 1], got -1"),
    "image_threshold 2": (edit_thresholds(image_threshold=2), "`image_threshold` must be a score in [0, 1], got 2"),
    "pixel_threshold inf": (edit_thresholds(pixel_threshold=math.inf), "`pixel_threshold` must be a score in [0, 1]"),
    "image_threshold list": (edit_thresholds(image_threshold=[0.5]), "Invalid `image_threshold`"),
    "image_threshold string": (edit_thresholds(image_threshold="0.5"), "Invalid `image_threshold`"),
    "pixel_threshold true": (edit_thresholds(pixel_threshold=True), "Invalid `pixel_threshold`"),
    "category threshold null": (
        edit_thresholds(category_thresholds={"screw": {"image_threshold": None, "pixel_threshold": 0.5}}),
        "Invalid `category_thresholds`",
    ),
    "category threshold 5.0": (
        edit_thresholds(category_thresholds={"screw": {"image_threshold": 5.0, "pixel_threshold": 0.5}}),
        "`category_thresholds['screw'].image_threshold` must be a score in [0, 1]",
    ),
    "calibration_mode text": (edit_thresholds(calibration_mode="squash"), "Invalid `calibration_mode`"),
    "target_image_fpr 1.5": (edit_thresholds(target_image_fpr=1.5), "`target_image_fpr` must be a rate in (0, 1)"),
}


@pytest.mark.parametrize("case", list(THRESHOLD_DAMAGE))
def test_every_decision_field_of_the_export_is_checked_on_load(good_exports, tmp_path, case):
    damage, message = THRESHOLD_DAMAGE[case]
    folder = damaged_copy(good_exports("onnx"), tmp_path / "export", damage)
    with pytest.raises(ExportedModelError) as error_info:
        ExportedCLIPADA(folder)
    error = str(error_info.value)
    assert error.startswith(f"{folder / EXPORT_CONFIG_NAME}: ") and message in error and "\n" not in error


def test_thresholds_set_on_the_runner_are_checked_before_they_decide(good_exports):
    runner = ExportedCLIPADA(good_exports("onnx"))
    runner.image_threshold = math.nan
    with pytest.raises(ExportedModelError, match=r"`image_threshold` must be a score in \[0, 1\], got nan"):
        runner.predict(sample_images(1))


def truncate(name: str):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:1000])


def random_bytes(name: str):
    return lambda folder: (folder / name).write_bytes(np.random.default_rng(0).bytes((folder / name).stat().st_size))


def without_hashes(damage):
    """As an export written before `file_sha256` was recorded: the runtime itself meets the damaged file."""

    def apply(folder: Path) -> None:
        path = folder / EXPORT_CONFIG_NAME
        config = json.loads(path.read_text())
        config.pop("file_sha256", None)
        path.write_text(json.dumps(config))
        damage(folder)

    return apply


def external_data_outside(folder: Path) -> None:
    """Points the largest weight of model.onnx at a file outside the folder (ONNX external data)."""
    onnx = pytest.importorskip("onnx")
    (folder.parent / "outside.bin").write_bytes(b"\0" * 4096)
    model = onnx.load(folder / "model.onnx")
    tensor = max(model.graph.initializer, key=lambda initializer: len(initializer.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "64")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, folder / "model.onnx")


def bogus_xml(folder: Path) -> None:
    (folder / "model.xml").write_text('<?xml version="1.0"?>\n<html><body>not a model</body></html>\n')


FILE_DAMAGE = {
    "truncated model.onnx": ("onnx", truncate("model.onnx"), "model.onnx does not match the SHA-256 recorded"),
    "random model.onnx": ("onnx", random_bytes("model.onnx"), "model.onnx does not match the SHA-256 recorded"),
    "truncated model.onnx, older export": (
        "onnx", without_hashes(truncate("model.onnx")), "model.onnx cannot be loaded by ONNX Runtime: ",
    ),
    "random model.onnx, older export": (
        "onnx", without_hashes(random_bytes("model.onnx")), "model.onnx cannot be loaded by ONNX Runtime: ",
    ),
    "external data outside, older export": (
        "onnx", without_hashes(external_data_outside), "model.onnx cannot be loaded by ONNX Runtime: ",
    ),
    "random model.bin": ("openvino", random_bytes("model.bin"), "model.bin does not match the SHA-256 recorded"),
    "truncated model.bin, older export": (
        "openvino", without_hashes(truncate("model.bin")), "model.xml (with model.bin) cannot be loaded by OpenVINO: ",
    ),
    "bogus model.xml": ("openvino", bogus_xml, "model.xml does not match the SHA-256 recorded"),
    "bogus model.xml, older export": (
        "openvino", without_hashes(bogus_xml), "is not an OpenVINO IR file (its root element is <html>, not <net>)",
    ),
    "list threshold": ("onnx", edit_thresholds(image_threshold=[0.5]), "export.json: Invalid `image_threshold`"),
    "string threshold": ("onnx", edit_thresholds(pixel_threshold="x"), "export.json: Invalid `pixel_threshold`"),
    "thresholds a list": (
        "onnx",
        lambda folder: (folder / EXPORT_CONFIG_NAME).write_text(
            json.dumps({**json.loads((folder / EXPORT_CONFIG_NAME).read_text()), "thresholds": [0.5, 0.5]})
        ),
        "clipada_export.json: `thresholds` must be an object of decision fields or null, got list",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FILE_DAMAGE))
def test_a_damaged_export_folder_is_one_named_error_from_the_api_predict_and_the_runner(
    good_exports, tmp_path, capsys, case
):
    from inference import predict

    export_format, damage, message = FILE_DAMAGE[case]
    folder = damaged_copy(good_exports(export_format), tmp_path / "export", damage)
    backend = "onnxruntime" if export_format == "onnx" else "openvino"
    with pytest.raises(ExportedModelError) as error_info:
        ExportedCLIPADA(folder, backend=backend)
    assert message in str(error_info.value) and "\n" not in str(error_info.value)
    image_file = tmp_path / "part.png"
    Image.fromarray(sample_images(1)[0]).save(image_file)
    commands = {
        "clipada predict": lambda: predict.main(
            [str(image_file), "--model_name_or_path", str(folder), "--backend", backend,
             "--output_dir", str(tmp_path / "predictions")]
        ),
        "runners": lambda: runners_cli(["--model_dir", str(folder), "--backend", backend, str(image_file)]),
    }  # fmt: skip
    for name, command in commands.items():
        with pytest.raises(SystemExit) as exit_info:
            command()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        assert err.startswith(f"error: {folder}") and message in err and err.count("\n") == 1, (name, err)
    assert not (tmp_path / "predictions").exists()


def test_another_graph_in_place_of_model_onnx_is_named(good_exports, tmp_path):
    onnx = pytest.importorskip("onnx")

    def other_graph(folder: Path) -> None:
        value = onnx.helper.make_tensor_value_info
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"])], "other",
            [value("x", onnx.TensorProto.FLOAT, [None, 3])], [value("y", onnx.TensorProto.FLOAT, [None, 3])],
        )  # fmt: skip
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
        onnx.save(model, folder / "model.onnx")

    folder = damaged_copy(good_exports("onnx"), tmp_path / "export", without_hashes(other_graph))
    with pytest.raises(ExportedModelError, match=r"model.onnx is not a clipada export graph \(inputs \['x'\]"):
        ExportedCLIPADA(folder)


# ---------------------------------------------------------------------------------------------- item 25


def test_export_prints_no_known_harmless_library_warnings_and_files_get_the_umask_mode(checkpoint, tmp_path):
    needs("onnx")
    folder = tmp_path / "export"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "inference.deploy.export", "--model_name_or_path", str(checkpoint),
               "--output_dir", str(folder), "--format", "onnx"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300, preexec_fn=lambda: os.umask(0o002)
    )
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr and "LeafSpec" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
    assert modes and set(modes.values()) == {0o664}, modes
    assert folder.stat().st_mode & 0o777 == 0o775
