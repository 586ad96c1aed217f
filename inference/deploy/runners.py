"""Runners of exported CLIP-ADA folders on ONNX Runtime or OpenVINO: numpy, Pillow and transformers only, no torch.

An export folder (`clipada-export`) holds the graph (`model.onnx`, or `model.xml` + `model.bin`),
`preprocessor_config.json` (read by the project's own image processor, on its numpy path) and `clipada_export.json`.
The graph takes the thresholds as inputs, one per image; the runner fills them from the JSON's `thresholds`
(global, or per category), so editing that file, or setting `image_threshold` / `pixel_threshold` /
`category_thresholds` on the runner, changes the decisions without exporting again.

Example:
    ```python
    >>> model = ExportedCLIPADA("outputs/run-onnx")                  # the folder's format picks the runtime
    >>> outputs = model.predict(["part.png"], categories=["bottle"])
    >>> outputs["anomaly_map"].shape, outputs["pred_score"], outputs["pred_label"]
    ((1, 224, 224), array([0.61], dtype=float32), array([ True]))
    >>> model.image_threshold = 0.7                                  # a new operating point, same file
    ```
    ```bash
    python -m inference.deploy.runners --model_dir outputs/run-onnx part.png other.png
    ```
"""

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inference.command_line import positive_int, threads_argument, usage_errors
from inference.modes import input_mode, same_mode
from modeling_clipada.decisions import per_image_thresholds
from processing import CLIPADAImageProcessor

EXPORT_CONFIG_NAME = "clipada_export.json"
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
BACKEND_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")


class ExportedModelError(ValueError):
    """An export folder that cannot be run, or inputs it cannot take; the message names the file or the input."""


def read_export_config(folder: str | Path) -> dict:
    """The `clipada_export.json` of an export folder, checked for the fields the runners use.

    Raises:
        ExportedModelError: The folder, the file or a field is missing, or the file is not JSON.
    """
    path = Path(folder) / EXPORT_CONFIG_NAME
    if not path.is_file():
        raise ExportedModelError(f"{folder} has no {EXPORT_CONFIG_NAME}: not a clipada-export folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ExportedModelError(f"{path} is not valid JSON ({error})") from error
    for field in ("format", "input_size", "thresholds"):
        if field not in config:
            raise ExportedModelError(f"{path} lacks the field {field!r}")
    if config["format"] not in MODEL_FILES:
        raise ExportedModelError(f"{path}: unknown format {config['format']!r}; expected one of {sorted(MODEL_FILES)}")
    return config


class OnnxRuntimeSession:
    """An ONNX Runtime session on the CPU: `feeds` in, `{output name: array}` out.

    Args:
        model_file: The `.onnx` file.
        num_threads: Intra-op threads (None: ONNX Runtime's default, one per core).
    """

    def __init__(self, model_file: Path, num_threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise ExportedModelError("ONNX Runtime is not installed: pip install 'clipada[onnxruntime]'") from error
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads, options.inter_op_num_threads = num_threads, 1
        self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class OpenVINOSession:
    """An OpenVINO model compiled for the CPU: `feeds` in, `{output name: array}` out.

    Args:
        model_file: The `.xml` file (its `.bin` beside it).
        num_threads: Inference threads (None: OpenVINO's default).
        precision: `INFERENCE_PRECISION_HINT`: `f32` (the default here, for parity with PyTorch), or `bf16` / `f16`
            where the CPU has them (OpenVINO's own default on CPUs with AVX512_BF16 or AMX is `bf16`).
    """

    def __init__(self, model_file: Path, num_threads: int | None = None, precision: str = "f32"):
        try:
            import openvino
        except ImportError as error:
            raise ExportedModelError("OpenVINO is not installed: pip install 'clipada[openvino]'") from error
        if precision not in OPENVINO_PRECISIONS:
            raise ExportedModelError(f"--precision {precision!r}: choose one of {', '.join(OPENVINO_PRECISIONS)}")
        config = {"INFERENCE_PRECISION_HINT": precision}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.compiled = openvino.Core().compile_model(str(model_file), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        return {port.get_any_name(): np.array(results[port]) for port in self.compiled.outputs}


class ExportedCLIPADA:
    """An export folder ready to run: preprocessing, the graph, and thresholds that can change after export.

    Args:
        folder: The `clipada-export` output folder.
        backend: `onnxruntime` or `openvino`; None picks the folder's format. It must match the folder.
        num_threads: Runtime threads (None: the runtime's default).
        precision: OpenVINO's inference precision (`f32`, `bf16`, `f16`); ONNX Runtime runs float32.

    Attributes:
        image_threshold, pixel_threshold, category_thresholds: The decision thresholds, from the JSON; None
            without calibration (then only `anomaly_map` and `pred_score` come out).
        calibration_mode: The inference mode the thresholds were calibrated in (`inference.modes.input_mode`), from
            the JSON; None for an export written before it was recorded (then the export's own processor's mode).
    """

    def __init__(
        self, folder: str | Path, backend: str | None = None, num_threads: int | None = None, precision: str = "f32"
    ):
        self.folder = Path(folder)
        self.config = read_export_config(self.folder)
        export_format = self.config["format"]
        if backend is not None and BACKEND_FORMATS.get(backend) != export_format:
            raise ExportedModelError(
                f"--backend {backend} cannot run {self.folder}, a {export_format} export; choose --backend "
                f"{next(name for name, fmt in BACKEND_FORMATS.items() if fmt == export_format)}"
            )
        model_file = self.folder / MODEL_FILES[export_format]
        if not model_file.is_file():
            raise ExportedModelError(f"{model_file} is missing")
        thresholds = self.config["thresholds"] or {}
        self.image_threshold = thresholds.get("image_threshold")
        self.pixel_threshold = thresholds.get("pixel_threshold")
        self.category_thresholds = thresholds.get("category_thresholds") or {}
        self.calibration_mode = thresholds.get("calibration_mode")
        self.has_thresholds = self.config.get("graph_inputs", ["pixel_values"]) != ["pixel_values"]
        self.input_size = tuple(self.config["input_size"])
        try:
            self.processor = CLIPADAImageProcessor.from_pretrained(self.folder)
        except (OSError, ValueError) as error:
            raise ExportedModelError(f"{self.folder}: cannot load preprocessor_config.json ({error})") from error
        processor_size = (self.processor.size.height, self.processor.size.width)
        if processor_size != self.input_size or self.processor.resize_mode != "squash" or self.processor.tile_size:
            raise ExportedModelError(
                f"{self.folder / 'preprocessor_config.json'} is not the exported one (it resizes to {processor_size}, "
                f"{self.processor.resize_mode}{', tiles' if self.processor.tile_size else ''}; the graph takes "
                f"{self.input_size}, squashed): export again, or restore the exported preprocessor_config.json"
            )
        self.image_score_top_k = (self.config.get("model") or {}).get("image_score_top_k")
        # thresholds calibrated in another mode than the export's inputs (e.g. exported at another --image_size)
        # never decide: the graph's pred_label/pred_mask are left out, as without thresholds
        self.thresholds_fit_inputs = self.calibration_mode is None or same_mode(
            self.calibration_mode, input_mode(self.processor)
        )
        if export_format == "onnx":
            self.session = OnnxRuntimeSession(model_file, num_threads)
        else:
            self.session = OpenVINOSession(model_file, num_threads, precision)

    @staticmethod
    def runtime_of(folder: str | Path) -> str:
        """The runtime that runs an export folder: `onnxruntime` for ONNX, `openvino` for OpenVINO."""
        export_format = read_export_config(folder)["format"]
        return next(name for name, fmt in BACKEND_FORMATS.items() if fmt == export_format)

    def thresholds_for(self, categories: Sequence[str | None] | None, batch_size: int) -> tuple[np.ndarray, ...]:
        """Each image's thresholds ([`modeling_clipada.decisions.per_image_thresholds`]: its category's when
        calibrated, else the global ones).

        Returns:
            `(image_thresholds, pixel_thresholds)`, float32 `(batch_size,)` each.

        Raises:
            ExportedModelError: No thresholds at all, or `categories` not one per image.
        """
        try:
            image, pixel = per_image_thresholds(self, categories, batch_size)
        except ValueError as error:
            raise ExportedModelError(str(error)) from error
        if None in image or None in pixel:
            raise ExportedModelError(f"{self.folder / EXPORT_CONFIG_NAME} has no image and pixel thresholds to apply")
        return np.asarray(image, dtype=np.float32), np.asarray(pixel, dtype=np.float32)

    def __call__(self, pixel_values: np.ndarray, categories: Sequence[str | None] | None = None) -> dict:
        """Runs the graph on CLIP-normalised pixels.

        Args:
            pixel_values: `(batch_size, 3, H, W)` at the export's input size.
            categories: One category name (or None) per image, for per-category thresholds.

        Returns:
            `anomaly_map` `(batch_size, H, W)` float32, `pred_score` `(batch_size,)` float32, and with thresholds
            `pred_label` `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool (not where
            `clipada_export.json` holds no thresholds any more, nor where they were calibrated in another mode).

        Raises:
            ExportedModelError: `pixel_values` of another shape than `(batch, 3, H, W)` at the input size, or
                `categories` not one per image.
        """
        pixel_values = np.asarray(pixel_values)
        height, width = self.input_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, height, width) or len(pixel_values) == 0:
            raise ExportedModelError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this export takes (batch, 3, {height}, {width})"
            )
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)}
        if not self.has_thresholds:
            return self.session(feeds)
        decides = self.thresholds_fit_inputs
        try:
            image, pixel = self.thresholds_for(categories, len(pixel_values))
        except ExportedModelError:
            if categories is not None and len(categories) != len(pixel_values):
                raise
            decides = False  # thresholds taken out of clipada_export.json
        if not decides:  # the graph still takes its threshold inputs; no decisions come out
            image = pixel = np.zeros(len(pixel_values), dtype=np.float32)
            outputs = self.session({**feeds, "image_threshold": image, "pixel_threshold": pixel})
            return {name: outputs[name] for name in ("anomaly_map", "pred_score")}
        return self.session({**feeds, "image_threshold": image, "pixel_threshold": pixel})

    def predict(self, images: Sequence, categories: Sequence[str | None] | None = None) -> dict:
        """Preprocesses images with the export's own processor (numpy path), then runs the graph.

        Args:
            images: PIL images, arrays or image paths (anything `CLIPADAImageProcessor` reads).
            categories: One category name (or None) per image.

        Returns:
            As [`__call__`].
        """
        pixel_values = self.processor(images=images, return_tensors="np")["pixel_values"]
        return self(pixel_values, categories)


def cli(argv: list[str] | None = None) -> None:
    """`python -m inference.deploy.runners --model_dir OUT INPUT...`: one JSON line per image on stdout, for scripts.

    The same scoring and decisions as `clipada predict` (maps at each image's own size; `inference.scoring`,
    `inference.predict.rows`), without its files. Inputs are files, folders, globs or list files; a file that cannot
    be read gets `"decision": "ERROR"` and the others go on (exit status 1); usage errors exit 2. Thresholds
    calibrated in another mode than the export's (`inference.modes.thresholds_fit`) do not decide, as in predict.
    """
    import sys

    from inference.backends import ExportedBackend  # here: inference.backends imports this module
    from inference.modes import fitting_decision_config, thresholds_note
    from inference.predict.command import predicted_batches
    from inference.predict.inputs import collect_inputs
    from inference.predict.rows import choose_thresholds

    parser = argparse.ArgumentParser(
        description="Run an exported CLIP-ADA folder on images (no torch needed).", parents=[threads_argument()]
    )
    parser.add_argument("--model_dir", required=True, help="a clipada-export output folder")
    parser.add_argument("--backend", choices=sorted(BACKEND_FORMATS), default=None)
    parser.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="f32", help="OpenVINO only")
    parser.add_argument("--category", default=None, help="apply this category's calibrated thresholds")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("inputs", nargs="+", help="image files, folders, globs or .txt lists")
    args = parser.parse_args(argv)
    with usage_errors(ExportedModelError, ValueError, TypeError, OSError):
        runtime = args.backend or ExportedCLIPADA.runtime_of(args.model_dir)
        backend = ExportedBackend(args.model_dir, runtime, args.num_threads, args.precision)
        paths = collect_inputs(args.inputs)
    processor = backend.runner.processor  # the export's own: older thresholds count as calibrated in its mode
    mode_note = thresholds_note(
        backend.decision_config, processor, processor, args.model_dir,
        remedy="calibrate the checkpoint in the export's mode (clipada calibrate) and export it again",
    )  # fmt: skip
    if mode_note:
        print(f"note: {mode_note}", file=sys.stderr)
    applied = fitting_decision_config(backend.decision_config, processor, processor)
    thresholds = choose_thresholds(applied, args.category)
    failed = 0
    for batch in predicted_batches(paths, backend, processor, thresholds, args.category, args.batch_size):
        for predicted in sorted(batch, key=lambda predicted: predicted.index):  # one line per input, in order
            row = predicted.row
            failed += row["decision"] == "ERROR"
            print(json.dumps({key: value for key, value in row.items() if value not in (None, "")}), flush=True)
    if failed:
        raise SystemExit(1)


__all__ = [
    "BACKEND_FORMATS",
    "EXPORT_CONFIG_NAME",
    "MODEL_FILES",
    "ExportedCLIPADA",
    "ExportedModelError",
    "OnnxRuntimeSession",
    "OpenVINOSession",
    "cli",
    "read_export_config",
]


if __name__ == "__main__":
    cli()
