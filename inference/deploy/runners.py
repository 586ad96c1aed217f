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
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import numpy as np

from inference.command_line import positive_int, threads_argument, usage_errors
from inference.modes import input_mode, same_mode
from modeling_clipada.configuration_clipada import CLIPADAConfig
from modeling_clipada.decisions import DECISION_FIELDS, apply_thresholds, per_image_thresholds
from processing import CLIPADAImageProcessor
from processing.tiling import DEFAULT_IMAGE_SCORE_TOP_K

EXPORT_CONFIG_NAME = "clipada_export.json"
MODEL_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
# every file of the graph, per format: what `file_sha256` in clipada_export.json may name
GRAPH_FILES = {"onnx": ("model.onnx",), "openvino": ("model.xml", "model.bin")}
BACKEND_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")
# the graph's inputs and outputs (`inference.deploy.graph.CLIPADAExportGraph`); the decisions only with thresholds
ANOMALY_OUTPUTS = ("anomaly_map", "pred_score")
DECISION_OUTPUTS = ("pred_label", "pred_mask")
THRESHOLD_INPUTS = ("image_threshold", "pixel_threshold")
# AdaCLIP's graph also takes each image's class name, as an index into the export's `class_names`
CLASS_INPUT = "class_index"
# a checkpoint with a few-shot reference memory: each image's memory bank, an index into `memory_categories`
MEMORY_INPUT = "memory_index"
GRAPH_SIGNATURES = tuple(
    (("pixel_values", *classes, *thresholds, *memory), ANOMALY_OUTPUTS + (DECISION_OUTPUTS if thresholds else ()))
    for memory in ((), (MEMORY_INPUT,))
    for classes in ((), (CLASS_INPUT,))
    for thresholds in ((), THRESHOLD_INPUTS)
)
# the families an export may hold (`family` in clipada_export.json; exports written before it are CLIP-ADA)
EXPORT_FAMILIES = ("clipada", "anomalyclip", "adaclip")


_MODE_WORDS = {"squash": "squashed", "letterbox": "letterboxed"}


class ExportedModelError(ValueError):
    """An export folder that cannot be run, or inputs it cannot take; the message names the file or the input."""


def read_export_config(folder: str | Path) -> dict:
    """The `clipada_export.json` of an export folder, with every field the runners use checked.

    The decision fields (`thresholds`) and `model.image_score_top_k` are checked by the rules of a checkpoint's
    config (`CLIPADAConfig`: types, thresholds in [0, 1], rates in (0, 1), ...), so an edited file never decides
    with NaN, negative or out-of-range thresholds.

    Raises:
        ExportedModelError: The folder, the file or a field is missing or invalid, or the file is not JSON; the
            message names the file and the field.
    """
    path = Path(folder) / EXPORT_CONFIG_NAME
    if not path.is_file():
        raise ExportedModelError(f"{folder} has no {EXPORT_CONFIG_NAME}: not a clipada-export folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ExportedModelError(f"{path} is not valid JSON ({_one_line(error)})") from error
    if not isinstance(config, dict):
        raise ExportedModelError(f"{path} must hold a JSON object, got {type(config).__name__}")
    for field in ("format", "input_size", "thresholds"):
        if field not in config:
            raise ExportedModelError(f"{path} lacks the field {field!r}")
    if not isinstance(config["format"], str) or config["format"] not in MODEL_FILES:
        raise ExportedModelError(f"{path}: unknown format {config['format']!r}; expected one of {sorted(MODEL_FILES)}")
    _check_input_size(path, config["input_size"])
    _check_graph_names(path, config)
    _check_family(path, config)
    _check_decision_fields(path, config["thresholds"], config.get("model"))
    _check_file_hashes(path, config)
    return config


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _check_input_size(path: Path, input_size) -> None:
    if (
        not isinstance(input_size, list)
        or len(input_size) != 2
        or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in input_size)
    ):
        raise ExportedModelError(f"{path}: `input_size` must be [height, width] in pixels, got {input_size!r}")


def _check_graph_names(path: Path, config: dict) -> None:
    """`graph_inputs` / `graph_outputs` (optional: older exports) must be one of the graphs' signatures."""
    inputs, outputs = config.get("graph_inputs"), config.get("graph_outputs")
    if inputs is None and outputs is None:
        return
    signatures = [[list(names) for names in signature] for signature in GRAPH_SIGNATURES]
    if [inputs, outputs] not in signatures:
        raise ExportedModelError(
            f"{path}: `graph_inputs` {inputs!r} and `graph_outputs` {outputs!r} are not those of a clipada export "
            f"({' or '.join(f'{list(i)} -> {list(o)}' for i, o in GRAPH_SIGNATURES)})"
        )


def _check_family(path: Path, config: dict) -> None:
    """`family` (optional: older exports are CLIP-ADA) must be known, `input_mode` (optional: older exports took
    squashed images) well formed, a graph with `class_index` needs `class_names`: distinct non-empty strings, the
    first the name that images without a category get, and a graph with `memory_index` needs `memory_categories`:
    distinct non-empty strings, in the order of the graph's memory banks."""
    family = config.get("family", "clipada")
    if family not in EXPORT_FAMILIES:
        raise ExportedModelError(f"{path}: unknown `family` {family!r}; expected one of {', '.join(EXPORT_FAMILIES)}")
    mode = config.get("input_mode")
    if mode is not None and (
        not isinstance(mode, dict)
        or mode.get("resize_mode") not in ("squash", "letterbox")
        or not (mode.get("tile_size") is None or isinstance(mode.get("tile_size"), int))
        or not (mode.get("tile_overlap") is None or isinstance(mode.get("tile_overlap"), (int, float)))
    ):
        raise ExportedModelError(
            f"{path}: `input_mode` must be {{'resize_mode': 'squash' or 'letterbox', 'tile_size': int or null, "
            f"'tile_overlap': number or null, 'size': [h, w]}}, got {mode!r}"
        )
    inputs = config.get("graph_inputs") or ()
    indexed = ((CLASS_INPUT, "class_names", "class names"), (MEMORY_INPUT, "memory_categories", "memory's categories"))
    for graph_input, field, what in indexed:
        names = config.get(field)
        if graph_input in inputs and (
            not isinstance(names, list)
            or not names
            or not all(isinstance(name, str) and name for name in names)
            or len(set(names)) != len(names)
        ):
            raise ExportedModelError(
                f"{path}: `{field}` must list the distinct {what} the graph's `{graph_input}` indexes, got {names!r}"
            )


def check_decision_fields(source: str | Path, thresholds, image_score_top_k=None) -> None:
    """Checks decision fields by the rules of a checkpoint's config ([`CLIPADAConfig`]), reused, not copied.

    Args:
        source: What the fields come from, for the error (the JSON file, or the runner).
        thresholds: None (not calibrated) or a mapping of decision fields (`DECISION_FIELDS`); others are ignored.
        image_score_top_k: The number of top pixels an image score averages, or None.

    Raises:
        ExportedModelError: Naming `source` and the field.
    """
    if thresholds is None and image_score_top_k is None:
        return
    if thresholds is not None and not isinstance(thresholds, dict):
        raise ExportedModelError(
            f"{source}: `thresholds` must be an object of decision fields or null, got {type(thresholds).__name__}"
        )
    fields = {name: value for name, value in (thresholds or {}).items() if name in DECISION_FIELDS}
    if image_score_top_k is not None:
        fields["image_score_top_k"] = image_score_top_k
    try:
        CLIPADAConfig(**fields)
    except (ValueError, TypeError) as error:
        raise ExportedModelError(f"{source}: {_one_line(error)}") from error


def _check_decision_fields(path: Path, thresholds, model) -> None:
    if model is not None and not isinstance(model, dict):
        raise ExportedModelError(f"{path}: `model` must be an object, got {type(model).__name__}")
    check_decision_fields(path, thresholds, (model or {}).get("image_score_top_k"))


def _check_file_hashes(path: Path, config: dict) -> None:
    """Each graph file against the SHA-256 that export recorded (`file_sha256`; absent in older exports): a damaged
    or replaced `model.onnx` / `model.bin` / `model.xml` is named before a runtime reads it."""
    recorded = config.get("file_sha256")
    if recorded is None:
        return
    names = GRAPH_FILES[config["format"]]
    if not isinstance(recorded, dict) or sorted(recorded) != sorted(names):
        raise ExportedModelError(f"{path}: `file_sha256` must hold the SHA-256 of {', '.join(names)}")
    for name in names:
        file = path.parent / name
        if not file.is_file():
            raise ExportedModelError(f"{file} is missing")
        if file_sha256(file) != recorded[name]:
            raise ExportedModelError(
                f"{file} does not match the SHA-256 recorded in {path} at export: the file is damaged or was "
                "replaced; export the checkpoint again"
            )


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _runtime_error(model_files: str | Path, runtime: str, error: BaseException) -> ExportedModelError:
    """One line naming the file(s) a runtime could not load; OpenVINO's messages list its C++ source lines first."""
    lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith("Exception from")]
    return ExportedModelError(f"{model_files} cannot be loaded by {runtime}: {_one_line(' '.join(lines[:3]))}")


def _check_signature(model_file: Path, input_names: list[str], output_names: list[str]) -> None:
    """The graph's inputs and outputs must be an export's (another ONNX/IR file in its place would fail later)."""
    if (tuple(input_names), tuple(output_names)) not in GRAPH_SIGNATURES:
        raise ExportedModelError(
            f"{model_file} is not a clipada export graph (inputs {input_names}, outputs {output_names}); export the "
            "checkpoint again"
        )


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
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) derive from Exception only
            raise _runtime_error(model_file, "ONNX Runtime", error) from error
        self.output_names = [output.name for output in self.session.get_outputs()]
        _check_signature(model_file, [node.name for node in self.session.get_inputs()], self.output_names)

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
        weights_file = _check_openvino_files(model_file)
        core = openvino.Core()
        try:
            self.compiled = core.compile_model(core.read_model(str(model_file), str(weights_file)), "CPU", config)
        except RuntimeError as error:
            raise _runtime_error(f"{model_file} (with {weights_file.name})", "OpenVINO", error) from error
        self.request = self.compiled.create_infer_request()
        _check_signature(
            model_file,
            [port.get_any_name() for port in self.compiled.inputs],
            [port.get_any_name() for port in self.compiled.outputs],
        )

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer(feeds)
        # copies: the request reuses its output buffers on the next call
        return {port.get_any_name(): np.array(results[port]) for port in self.compiled.outputs}


def _check_openvino_files(model_file: Path) -> Path:
    """`model.xml` must be an OpenVINO IR (XML with a `<net>` root) and `model.bin` beside it; checked here because
    OpenVINO tries its other front ends (TensorFlow, ...) on a file its IR reader refuses, printing their errors.

    Returns:
        The weights file.
    """
    try:
        root = ElementTree.parse(model_file).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ExportedModelError(f"{model_file} is not an OpenVINO IR file ({_one_line(error)})") from error
    if root.tag != "net":
        raise ExportedModelError(
            f"{model_file} is not an OpenVINO IR file (its root element is <{root.tag}>, not <net>)"
        )
    weights_file = model_file.with_suffix(".bin")
    if not weights_file.is_file():
        raise ExportedModelError(f"{weights_file} is missing")
    return weights_file


class ExportedCLIPADA:
    """An export folder ready to run: preprocessing, the graph, and thresholds that can change after export.

    Args:
        folder: The `clipada-export` output folder.
        backend: `onnxruntime` or `openvino`; None picks the folder's format. It must match the folder.
        num_threads: Runtime threads (None: the runtime's default).
        precision: OpenVINO's inference precision (`f32`, `bf16`, `f16`); ONNX Runtime runs float32.
        graph_file: Another graph file of the folder's format and signature to run instead of the folder's own (the
            INT8 IR `clipada export --int8` gates before it replaces the float32 one); None: the folder's.

    Attributes:
        image_threshold, pixel_threshold, category_thresholds: The decision thresholds, from the JSON; None
            without calibration (then only `anomaly_map` and `pred_score` come out).
        calibration_mode: The inference mode the thresholds were calibrated in (`inference.modes.input_mode`), from
            the JSON; None for an export written before it was recorded (then the export's own processor's mode).
    """

    def __init__(
        self,
        folder: str | Path,
        backend: str | None = None,
        num_threads: int | None = None,
        precision: str = "f32",
        graph_file: str | Path | None = None,
    ):
        self.folder = Path(folder)
        self.config = read_export_config(self.folder)
        export_format = self.config["format"]
        if backend is not None and BACKEND_FORMATS.get(backend) != export_format:
            raise ExportedModelError(
                f"--backend {backend} cannot run {self.folder}, an {export_format} export; choose --backend "
                f"{next(name for name, fmt in BACKEND_FORMATS.items() if fmt == export_format)}"
            )
        model_file = Path(graph_file) if graph_file is not None else self.folder / MODEL_FILES[export_format]
        if not model_file.is_file():
            raise ExportedModelError(f"{model_file} is missing")
        thresholds = self.config["thresholds"] or {}
        self.image_threshold = thresholds.get("image_threshold")
        self.pixel_threshold = thresholds.get("pixel_threshold")
        self.category_thresholds = thresholds.get("category_thresholds") or {}
        self.calibration_mode = thresholds.get("calibration_mode")
        self.has_thresholds = set(THRESHOLD_INPUTS) <= set(self.config.get("graph_inputs") or ["pixel_values"])
        self.input_size = tuple(self.config["input_size"])
        try:
            self.processor = CLIPADAImageProcessor.from_pretrained(self.folder)
        except (OSError, ValueError, TypeError, AttributeError) as error:  # the last two: a JSON list, not an object
            raise ExportedModelError(
                f"{self.folder / 'preprocessor_config.json'} cannot be loaded ({_one_line(error)})"
            ) from error
        processor_size = (self.processor.size.height, self.processor.size.width)
        recorded_mode = self.config.get("input_mode")  # absent in older exports: those took squashed images only
        mode = input_mode(self.processor)
        expected = recorded_mode or {**mode, "resize_mode": "squash", "tile_size": None, "tile_overlap": None}
        if processor_size != self.input_size or not same_mode(mode, {**expected, "size": list(self.input_size)}):
            tiles = f" in tiles of {expected['tile_size']} px" if expected["tile_size"] else ""
            raise ExportedModelError(
                f"{self.folder / 'preprocessor_config.json'} is not the exported one (it resizes to {processor_size}, "
                f"{self.processor.resize_mode}{', tiles' if self.processor.tile_size else ''}; the graph takes "
                f"{self.input_size}, {_MODE_WORDS[expected['resize_mode']]}{tiles}): export "
                "again, or restore the exported preprocessor_config.json"
            )
        # letterbox and tiles: the graph scores each input (tile); `predict` merges them as `clipada predict` does
        self.whole_images = self.processor.resize_mode == "squash" and not self.processor.tile_size
        self.family = self.config.get("family", "clipada")
        self.class_names = (
            self.config.get("class_names") if CLASS_INPUT in self.config.get("graph_inputs", []) else None
        )
        # the categories of the few-shot reference memory the graph carries, in the order `memory_index` counts them
        self.memory_categories = (
            self.config.get("memory_categories") if MEMORY_INPUT in self.config.get("graph_inputs", []) else None
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

    def check_thresholds(self) -> None:
        """The runner's thresholds (from the JSON, or set on it since) by a checkpoint config's rules.

        Raises:
            ExportedModelError: Naming the runner's folder and the field.
        """
        check_decision_fields(
            f"{type(self).__name__}({str(self.folder)!r})",
            {name: getattr(self, name) for name in ("image_threshold", "pixel_threshold", "category_thresholds")},
        )

    def thresholds_for(self, categories: Sequence[str | None] | None, batch_size: int) -> tuple[np.ndarray, ...]:
        """Each image's thresholds ([`modeling_clipada.decisions.per_image_thresholds`]: its category's when
        calibrated, else the global ones).

        Returns:
            `(image_thresholds, pixel_thresholds)`, float32 `(batch_size,)` each.

        Raises:
            ExportedModelError: No thresholds at all, thresholds set on the runner that a checkpoint's config would
                refuse (NaN, outside [0, 1], ...), or `categories` not one per image.
        """
        self.check_thresholds()
        try:
            image, pixel = per_image_thresholds(self, categories, batch_size)
        except ValueError as error:
            raise ExportedModelError(str(error)) from error
        if None in image or None in pixel:
            raise ExportedModelError(f"{self.folder / EXPORT_CONFIG_NAME} has no image and pixel thresholds to apply")
        return np.asarray(image, dtype=np.float32), np.asarray(pixel, dtype=np.float32)

    def class_index(self, categories: Sequence[str | None] | None, batch_size: int) -> np.ndarray:
        """Each input's index into the export's `class_names` (AdaCLIP): its category's, or the first name (the
        model's `default_class_name`) for None.

        Returns:
            `(batch_size,)` int64.

        Raises:
            ExportedModelError: `categories` not one per input, or a category the export was not made with.
        """
        categories = [None] * batch_size if categories is None else list(categories)
        if len(categories) != batch_size:
            raise ExportedModelError(f"categories: one per image ({batch_size}) expected, got {len(categories)}")
        unknown = sorted({name for name in categories if name is not None and name not in self.class_names})
        if unknown:
            raise ExportedModelError(
                f"{self.folder} names {self.class_names} in its prompts, not {unknown}: export the checkpoint again "
                f"with --class_names {' '.join(unknown)}"
            )
        return np.asarray([0 if name is None else self.class_names.index(name) for name in categories], np.int64)

    @property
    def takes_categories(self) -> bool:
        """Whether the graph's scores depend on each image's category (AdaCLIP's prompts, a reference memory)."""
        return self.class_names is not None or self.memory_categories is not None

    def memory_index(self, categories: Sequence[str | None] | None, batch_size: int) -> np.ndarray:
        """Each input's memory bank, an index into `memory_categories`: its category's, or the only one for None
        (as the eager model's `reference_memory.image_memory_categories`).

        Returns:
            `(batch_size,)` int64.

        Raises:
            ExportedModelError: `categories` not one per input, or an input whose category has no memory (or none
                named while the memory holds several), naming it.
        """
        categories = [None] * batch_size if categories is None else list(categories)
        if len(categories) != batch_size:
            raise ExportedModelError(f"categories: one per image ({batch_size}) expected, got {len(categories)}")
        known, indices = self.memory_categories, []
        for position, category in enumerate(categories):
            if category is None and len(known) == 1:
                category = known[0]
            if category not in known:
                shown = "no category" if category is None else f"category {category!r}"
                raise ExportedModelError(
                    f"{self.folder} holds the reference memory of {known}, but image {position} has {shown}: pass "
                    "one of them as its category, or fit the memory for it and export again"
                )
            indices.append(known.index(category))
        return np.asarray(indices, dtype=np.int64)

    def __call__(self, pixel_values: np.ndarray, categories: Sequence[str | None] | None = None) -> dict:
        """Runs the graph on CLIP-normalised model inputs (whole images, or the tiles / letterboxed images of
        `processor`; [`predict`] merges those).

        Args:
            pixel_values: `(batch_size, 3, H, W)` at the export's input size.
            categories: One category name (or None) per input: per-category thresholds, AdaCLIP's prompts, and the
                memory bank of an export with a reference memory.

        Returns:
            `anomaly_map` `(batch_size, H, W)` float32, `pred_score` `(batch_size,)` float32, and with thresholds
            `pred_label` `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool (not where
            `clipada_export.json` holds no thresholds any more, nor where they were calibrated in another mode, nor
            for the inputs of a letterbox or tiled export, which decide only once merged).

        Raises:
            ExportedModelError: `pixel_values` of another shape than `(batch, 3, H, W)` at the input size,
                `categories` not one per image (or a class name the export lacks, or a category without memory in an
                export with a reference memory), or invalid thresholds set on the runner.
        """
        pixel_values = np.asarray(pixel_values)
        height, width = self.input_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, height, width) or len(pixel_values) == 0:
            raise ExportedModelError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; this export takes (batch, 3, {height}, {width})"
            )
        feeds = {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)}
        if self.class_names is not None:
            feeds[CLASS_INPUT] = self.class_index(categories, len(pixel_values))
        if self.memory_categories is not None:
            feeds[MEMORY_INPUT] = self.memory_index(categories, len(pixel_values))
        if not self.has_thresholds:
            return self.session(feeds)
        decides = self.thresholds_fit_inputs and self.whole_images
        self.check_thresholds()  # an invalid threshold set on the runner is an error, not "no decisions"
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
        """Preprocesses images with the export's own processor (numpy path), runs the graph, and for letterbox and
        tiled exports crops or blends the inputs' maps back into one map per image, as `clipada predict` does
        (`processor.post_process_anomaly_detection`: the same top-k image score), then decides.

        Args:
            images: PIL images, arrays or image paths (anything `CLIPADAImageProcessor` reads).
            categories: One category name (or None) per image.

        Returns:
            As [`__call__`] for squash exports. Letterbox and tiles: `anomaly_map` a list of `(H_i, W_i)` maps at
            each image's own size, `pred_score` `(B,)`, and with thresholds that fit `pred_label` `(B,)` and
            `pred_mask` a list of `(H_i, W_i)` bool maps.
        """
        inputs = self.processor(images=images, return_tensors="np")
        if self.whole_images:
            return self(inputs["pixel_values"], categories)
        layouts = inputs["image_layouts"]
        if categories is not None and len(categories) != len(layouts):
            raise ExportedModelError(f"categories: one per image ({len(layouts)}) expected, got {len(categories)}")
        per_input = None
        if categories is not None:
            per_input = [category for category, layout in zip(categories, layouts) for _ in range(layout.num_inputs)]
        outputs = self(inputs["pixel_values"], per_input)
        top_k = self.image_score_top_k or DEFAULT_IMAGE_SCORE_TOP_K
        maps, scores = self.processor.post_process_anomaly_detection(outputs, None, layouts, top_k)
        merged = {"anomaly_map": maps, "pred_score": np.asarray(scores, dtype=np.float32)}
        if not (self.has_thresholds and self.thresholds_fit_inputs):
            return merged
        try:
            image, pixel = self.thresholds_for(categories, len(layouts))
        except ExportedModelError:
            return merged
        decisions = [
            apply_thresholds(anomaly_map[None], merged["pred_score"][index : index + 1], image[index], pixel[index])
            for index, anomaly_map in enumerate(maps)
        ]  # one image at a time: the maps differ in size
        merged["pred_label"] = np.concatenate([label for label, _ in decisions])
        merged["pred_mask"] = [mask[0] for _, mask in decisions]
        return merged


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
    "ANOMALY_OUTPUTS",
    "BACKEND_FORMATS",
    "CLASS_INPUT",
    "DECISION_OUTPUTS",
    "EXPORT_CONFIG_NAME",
    "EXPORT_FAMILIES",
    "GRAPH_FILES",
    "MEMORY_INPUT",
    "MODEL_FILES",
    "THRESHOLD_INPUTS",
    "ExportedCLIPADA",
    "ExportedModelError",
    "OnnxRuntimeSession",
    "OpenVINOSession",
    "check_decision_fields",
    "cli",
    "file_sha256",
    "read_export_config",
]


if __name__ == "__main__":
    cli()
