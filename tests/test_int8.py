"""INT8 OpenVINO exports (NNCF on normal images): kept when the gate passes, refused with the miss figures and nothing
written when it does not."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_export import build_checkpoint, sample_images

from inference.deploy.export import export
from inference.deploy.int8 import Int8GateError, Int8Request, gate_misses, quantize_export
from inference.deploy.runners import EXPORT_CONFIG_NAME, ExportedCLIPADA, file_sha256
from inference.output_folder import OUTPUT_MARKER
from processing import CLIPADAImageProcessor
from training import cli
from training.int8_gate import build_int8_request, pixel_gate_metrics

pytest.importorskip("openvino", reason="needs the install extra: pip install -e '.[openvino]'")
pytest.importorskip("nncf", reason="needs the install extra: pip install -e '.[int8]'")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo dataset, one category: 4 normal training images, 2 normal and 3 defective test images, 64 px."""
    from training.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("int8_demo")
    return make_demo_dataset(root / "demo", categories=("disc",), num_train=4, num_test_good=2, num_test_defect=1,
                             image_size=64)  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("int8_checkpoint") / "run", num_refinements=1)


@pytest.fixture(scope="module")
def fp32_export(checkpoint, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("int8_exports") / "fp32"
    export(str(checkpoint), folder, "openvino")
    return folder


def request_for(demo: Path, checkpoint: Path, **tolerances) -> Int8Request:
    """The request `clipada export --int8 --calibration_data demo` builds, with other gate tolerances."""
    args = type("Args", (), {"calibration_data": str(demo), "int8_test_data": None})()
    request = build_int8_request(args, CLIPADAImageProcessor.from_pretrained(checkpoint))
    for name, value in tolerances.items():
        setattr(request, name, value)
    return request


def test_the_request_holds_normal_training_images_and_the_test_split_with_masks(demo, checkpoint):
    request = request_for(demo, checkpoint)
    assert len(request.calibration_images) == 4 and set(request.calibration_categories) == {"disc"}
    assert len(request.test_images) == 5 and sum(bool(mask.any()) for mask in request.test_masks) == 3
    assert all(mask.shape == image.shape[-2:] for mask, image in zip(request.test_masks, request.test_images))
    masks = request.test_masks
    perfect = [mask.astype(np.float32) for mask in masks]
    metrics = pixel_gate_metrics(perfect, masks, ["disc"] * len(masks))
    assert metrics == {"pixel_auroc": 1.0, "aupro": 1.0}


def test_the_gate_keeps_an_int8_model_that_passes(demo, checkpoint, fp32_export, tmp_path):
    """Tolerances this tiny random model meets: the INT8 IR replaces the float32 one (smaller weights), the figures
    are recorded, and the runner loads it."""
    folder = tmp_path / "int8"
    shutil.copytree(fp32_export, folder)
    request = request_for(demo, checkpoint, min_decision_agreement=0.5, max_metric_change=0.5)
    fields = quantize_export(folder, request)
    assert fields["weights"] == "int8" and not list(folder.glob(".int8*"))
    figures = fields["int8"]
    assert figures["test_images"] == 5 and figures["calibration_inputs"] == 4
    assert set(figures["fp32"]) == set(figures["int8"]) == {"pixel_auroc", "aupro"}
    assert 0 < figures["anomaly_map_max_abs_diff"] < 0.5  # quantised: close, not equal
    assert (folder / "model.bin").stat().st_size < 0.6 * (fp32_export / "model.bin").stat().st_size
    assert "i8" in (folder / "model.xml").read_text() or "u8" in (folder / "model.xml").read_text()


def test_a_missed_gate_raises_with_the_miss_figures(demo, checkpoint, fp32_export, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(fp32_export, folder)
    before = {name: file_sha256(folder / name) for name in ("model.xml", "model.bin")}
    request = request_for(demo, checkpoint, max_metric_change=0.0)  # impossible unless INT8 equals float32
    with pytest.raises(Int8GateError, match=r"misses the gate on .*pixel AUROC [\d.]+ vs float32 [\d.]+ \([\d.]+ "
                       r"points off; allowed 0, missed by [\d.]+\)") as error:  # fmt: skip
        quantize_export(folder, request)
    assert "nothing was written" in str(error.value)
    assert {name: file_sha256(folder / name) for name in before} == before and not list(folder.glob(".int8*"))


def test_gate_misses_say_by_how_much():
    request = Int8Request([], None, [], [], None, pixel_gate_metrics, "data")
    figures = {"test_images": 200, "decision_agreement": 0.975, "fp32": {"pixel_auroc": 0.95, "aupro": 0.8},
               "int8": {"pixel_auroc": 0.94, "aupro": 0.798}}  # fmt: skip
    assert gate_misses(figures, request) == [
        "decisions identical to float32 on 97.5% of 200 test images (needs >= 99%: 1.5 points short)",
        "pixel AUROC 94.00 vs float32 95.00 (1.00 points off; allowed 0.5, missed by 0.50)",
    ]
    figures["int8"] = dict(figures["fp32"])
    figures["decision_agreement"] = 0.99
    assert gate_misses(figures, request) == []


def test_clipada_export_int8_keeps_a_passing_model_and_a_refusal_keeps_the_earlier_export(
    demo, checkpoint, tmp_path, monkeypatch, capsys
):
    """Through `clipada export`: with tolerances the tiny model meets, the folder holds the INT8 IR (hashes and
    figures recorded, the runner loads it); the same folder replaced with --overwrite_output_dir by an INT8 model
    forced to miss is one line with the figures, exit status 2, and the earlier export is left as it was."""
    import training.int8_gate as int8_gate

    original, tolerances = int8_gate.build_int8_request, {}

    def with_tolerances(args, processor):
        request = original(args, processor)
        request.min_decision_agreement, request.max_metric_change = tolerances["agreement"], tolerances["change"]
        return request

    monkeypatch.setattr(int8_gate, "build_int8_request", with_tolerances)
    folder = tmp_path / "int8"
    argv = ["export", "--model_name_or_path", str(checkpoint), "--output_dir", str(folder), "--format", "openvino",
            "--int8", "--calibration_data", str(demo)]  # fmt: skip
    tolerances.update(agreement=0.5, change=0.5)
    cli.main(argv)
    assert "INT8 gate passed on 5 test images" in capsys.readouterr().out
    config = json.loads((folder / EXPORT_CONFIG_NAME).read_text())
    assert config["weights"] == "int8" and config["int8"]["gate"]["max_metric_change"] == 0.5
    assert config["parity"]["anomaly_map_max_abs_diff"] > 1e-4  # the INT8 file's, not the float32 one's
    assert ExportedCLIPADA(folder).predict(sample_images())["anomaly_map"].shape == (4, 32, 32)
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    tolerances.update(agreement=1.0, change=0.0)  # impossible unless INT8 equals float32
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--overwrite_output_dir"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --int8: the INT8 model misses the gate on ") and "points off" in error
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == files and OUTPUT_MARKER in files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["int8"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--format", "onnx", "--int8", "--calibration_data", "x"], "--int8 quantises OpenVINO exports"),
        (["--format", "openvino", "--int8"], "--int8 and --calibration_data go together"),
        (["--format", "openvino", "--calibration_data", "x"], "--int8 and --calibration_data go together"),
    ],
)
def test_int8_flags_are_checked_first(checkpoint, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "o"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_int8_needs_the_gate_reader_of_clipada_export(checkpoint, tmp_path, capsys):
    """`python -m inference.deploy.export` imports no training code, so it cannot read the gate's datasets."""
    from inference.deploy.export import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--model_name_or_path", str(checkpoint), "--output_dir", str(tmp_path / "o"), "--format", "openvino",
              "--int8", "--calibration_data", "x"])  # fmt: skip
    assert exit_info.value.code == 2 and "run it as `clipada export`" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
