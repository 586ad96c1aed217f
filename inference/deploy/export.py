"""Export a checkpoint of any family to serve without PyTorch: ONNX (ONNX Runtime) or OpenVINO IR (`clipada export`).

The output folder holds the graph (`model.onnx`, or `model.xml` + `model.bin`), the checkpoint's
`preprocessor_config.json`, `clipada_export.json` (input size, opset, graph inputs and outputs, the thresholds --
editable: the runners feed them to the graph, see `inference.deploy.runners` --, the SHA-256 of the graph files and
of the source checkpoint, and the parity with PyTorch measured on the written file) and the ownership marker
`.clipada_output.json` (`inference.output_folder`): `--overwrite_output_dir` replaces an earlier export of
`clipada export` only, never a folder it did not write, nor the source checkpoint. The graph is the family's
(`inference.deploy.graph`): text embeddings that do not depend on the image are constants, the batch size is
dynamic. A letterbox or tiled checkpoint exports the graph of one model input (one tile); the runners cut and merge
as `clipada predict` does. A checkpoint with a few-shot reference memory (`clipada fit-reference`) carries it in the
graph: every category's bank is a constant, each image's picked by its category (`memory_categories` in the JSON).
With `--int8`, an OpenVINO export is quantised to INT8 by NNCF on normal images and kept only if it passes the
accuracy gate (`inference.deploy.int8`).

Example:
    ```bash
    clipada export --model_name_or_path outputs/run --output_dir outputs/run-onnx --format onnx
    clipada export --model_name_or_path outputs/run --output_dir outputs/run-ov --format openvino --fp16
    ```
"""

import argparse
import contextlib
import importlib.util
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import transformers

from inference.atomic import atomic_dir
from inference.command_line import overwrite_argument, positive_int, threads_argument, usage_errors
from inference.deploy.graph import export_graph, export_program, write_onnx, write_openvino
from inference.deploy.int8 import Int8GateError, Int8Request, check_int8_request, quantize_export
from inference.deploy.runners import (
    EXPORT_CONFIG_NAME,
    EXPORT_FAMILIES,
    GRAPH_FILES,
    MODEL_FILES,
    ExportedCLIPADA,
    ExportedModelError,
    file_sha256,
)
from inference.devices import configure_threads
from inference.families import FAMILIES
from inference.loading import (
    ModelLoadError,
    add_class_names,
    check_model_location,
    load_clipada_model,
    saved_model_type,
)
from inference.modes import calibration_mode, input_mode, load_processors
from inference.output_folder import (
    OUTPUT_MARKER,
    OutputFolderError,
    check_output_folder,
    read_marker,
    write_marker,
)
from modeling_clipada.decisions import DECISION_FIELDS

COMMAND = "clipada export"
FORMATS = tuple(MODEL_FILES)
DEFAULT_OPSET = 20
# 18: the oldest opset torch's dynamo exporter writes; 23: the newest ONNX Runtime 1.2x runs throughout.
SUPPORTED_OPSETS = range(18, 24)
PARITY_BATCH_SIZE = 4
# The largest --image_size: the parity check runs PARITY_BATCH_SIZE images through the ViT, whose attention grows
# with the square of the patch count (1024 px, patch 16: 4096 tokens, a few GB); larger images are tiled at predict.
MAX_IMAGE_SIZE = 1024


class ExportError(ValueError):
    """A request the exporter refuses; the message names the flag or the folder."""


class _DeprecatedOverwrite(argparse.Action):
    """`--overwrite`, the old name of `--overwrite_output_dir`: still accepted, with a note on stderr."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("note: --overwrite is deprecated; use --overwrite_output_dir", file=sys.stderr)
        setattr(namespace, self.dest, True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], parents=[overwrite_argument("an earlier export"), threads_argument()]
    )
    parser.add_argument(
        "--model_name_or_path",
        required=True,
        help="a trained CLIP-ADA, AnomalyCLIP or AdaCLIP checkpoint (folder or Hub id)",
    )
    parser.add_argument(
        "--output_dir", required=True, help="the export folder: new, or an earlier export (--overwrite_output_dir)"
    )
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, 18 to 23 (default 20)")
    parser.add_argument("--fp16", action="store_true", help="OpenVINO only: store the weights as float16")
    parser.add_argument(
        "--image_size",
        type=positive_int,
        default=None,
        help=f"input side, a multiple of the patch size, at most {MAX_IMAGE_SIZE}; default the checkpoint processor's",
    )
    parser.add_argument(
        "--class_names",
        nargs="+",
        default=None,
        help="AdaCLIP: the categories its prompts may name (default: those the checkpoint tokenised); others are "
        "refused at run time",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="OpenVINO: quantise to INT8 (NNCF) on --calibration_data and keep it only if the accuracy gate passes",
    )
    parser.add_argument(
        "--calibration_data",
        default=None,
        help="--int8: a dataset (its train/good images calibrate, its test split gates) or a folder of normal images "
        "(then --int8_test_data gates)",
    )
    parser.add_argument("--int8_test_data", default=None, help="--int8: the dataset whose test split gates INT8")
    parser.add_argument("--overwrite", action=_DeprecatedOverwrite, dest="overwrite_output_dir", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# What each format needs beyond torch (the `onnx` and `openvino` install extras).
_RUNTIME_MODULES = {"onnx": ("onnx", "onnxscript", "onnxruntime", "onnx_ir"), "openvino": ("openvino",)}


def check_request(
    export_format: str,
    opset: int,
    fp16: bool,
    output_dir: Path,
    overwrite: bool,
    model_name_or_path: str | None = None,
    image_size: int | None = None,
) -> None:
    """Refuses what cannot be exported before anything is loaded.

    Raises:
        ExportError: An unknown format, an opset outside 18..23, `--fp16` with ONNX, an `--image_size` below 1 or
            above `MAX_IMAGE_SIZE`, a missing runtime.
        OutputFolderError: An output folder `clipada export` may not write ([`check_output_folder`]).
    """
    if export_format not in FORMATS:
        raise ExportError(f"--format {export_format!r} is not supported; choose one of {', '.join(FORMATS)}")
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"--opset {opset} is not supported; choose {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"
        )
    if fp16 and export_format != "openvino":
        raise ExportError("--fp16 stores OpenVINO weights as float16; ONNX exports are float32 (drop --fp16)")
    if image_size is not None and (
        not isinstance(image_size, int) or isinstance(image_size, bool) or not 1 <= image_size <= MAX_IMAGE_SIZE
    ):
        raise ExportError(f"--image_size {image_size!r} must be a whole number of pixels from 1 to {MAX_IMAGE_SIZE}")
    check_export_folder(output_dir, overwrite, model_name_or_path)
    missing = [name for name in _RUNTIME_MODULES[export_format] if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"--format {export_format} needs {', '.join(missing)}: pip install 'clipada[{export_format}]'"
        )


def check_export_folder(output_dir: Path, overwrite: bool, model_name_or_path: str | None = None) -> None:
    """Refuses an `--output_dir` that `clipada export` may not replace: the source checkpoint, a folder inside it or
    holding it, a folder it did not write, an earlier export without `--overwrite_output_dir`, and an export written
    before exports carried the ownership marker (it may hold the user's own files: they delete it themselves).

    Raises:
        ExportError, OutputFolderError: Naming the folder and what to do.
    """
    output_dir = Path(output_dir)
    if output_dir.is_dir() and (output_dir / EXPORT_CONFIG_NAME).exists() and read_marker(output_dir) is None:
        raise ExportError(
            f"--output_dir {output_dir} holds an export written before exports were marked with {OUTPUT_MARKER}, so "
            f"it may hold files that are not the export's, and {COMMAND} does not replace it; delete the folder "
            "yourself and export again, or choose another --output_dir"
        )
    sources = [Path(model_name_or_path)] if model_name_or_path and Path(model_name_or_path).exists() else []
    check_output_folder(output_dir, COMMAND, overwrite=overwrite, sources=sources)


def checkpoint_hashes(model_name_or_path: str) -> dict[str, str]:
    """SHA-256 of the checkpoint's `config.json` and weight files (local folders; a Hub id records its name only)."""
    folder = Path(model_name_or_path)
    if not folder.is_dir():
        return {}
    files = [folder / "config.json", *sorted(folder.glob("*.safetensors"))]
    return {path.name: file_sha256(path) for path in files if path.is_file()}


@contextlib.contextmanager
def quiet_known_warnings() -> Iterator[None]:
    """Silences, around tracing and writing the graph only, the library messages known to be harmless here:

    - torch.onnx's registry logs "torchvision is not installed. Skipping torchvision::nms" (and roi_align, ...):
      torchvision's operators are not in this graph, and torchvision is no dependency of this project.
    - torch.export's pytree code emits `FutureWarning: isinstance(treespec, LeafSpec) is deprecated` from torch's
      own internals (not from this project's code); nothing the user can act on.
    Every other warning still shows.
    """
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)
            yield
    finally:
        registry_logger.setLevel(level)


def parity_categories(exported: ExportedCLIPADA, batch_size: int) -> list[str | None] | None:
    """The categories of the parity batch, in turn, so that the graph's choice of text and memory is checked too:
    AdaCLIP's class names (None, the default name, first); with a reference memory, its categories (None first when
    it holds one only; AdaCLIP: those it has prompts for); None where nothing depends on the category."""
    if exported.memory_categories is not None:
        names = [None] if len(exported.memory_categories) == 1 else []
        known = exported.class_names or exported.memory_categories
        names += [name for name in exported.memory_categories if name in known]
    elif exported.class_names is not None:
        names = [None, *exported.class_names[1:]]
    else:
        return None
    return [names[index % len(names)] for index in range(batch_size)]


def measure_parity(model, exported: ExportedCLIPADA, seed: int = 0) -> dict:
    """Largest differences between the exported graph and the PyTorch model on a seeded batch of random pixels.

    Args:
        model: The float32 model the graph came from (any family).
        exported: The export, loaded by its runner.
        seed: Seed of the `(PARITY_BATCH_SIZE, 3, H, W)` standard-normal pixels.

    Returns:
        `anomaly_map_max_abs_diff`, `pred_score_max_abs_diff`, and with thresholds the share of identical
        `pred_label` and `pred_mask` values.
    """
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(PARITY_BATCH_SIZE, 3, *exported.input_size, generator=generator)
    categories = parity_categories(exported, PARITY_BATCH_SIZE)
    with torch.no_grad():
        reference = model(pixel_values, categories=categories)
    outputs = exported(pixel_values.numpy(), categories)
    parity = {
        "images": PARITY_BATCH_SIZE,
        "inputs": f"standard-normal pixels, seed {seed}",
        "anomaly_map_max_abs_diff": float(np.abs(outputs["anomaly_map"] - reference.anomaly_map.numpy()).max()),
        "pred_score_max_abs_diff": float(np.abs(outputs["pred_score"] - reference.pred_score.numpy()).max()),
    }
    if reference.pred_label is not None and "pred_label" in outputs:  # not where the thresholds do not decide
        parity["pred_label_agreement"] = float((outputs["pred_label"] == reference.pred_label.numpy()).mean())
        parity["pred_mask_agreement"] = float((outputs["pred_mask"] == reference.pred_mask.numpy()).mean())
    return parity


# The fields of each family's config that an export records under `model` (for people reading the JSON; the runners
# use `image_score_top_k` only).
MODEL_FIELDS = {
    "clipada": ("num_refinements", "feature_layer", "image_score_top_k", "smoothing_sigma"),
    "anomalyclip": ("feature_layers", "dpam_start_layer", "similarity_temperature", "smoothing_sigma"),
    "adaclip": (
        "feature_layers",
        "prompt_length",
        "prompt_depth",
        "static_prompts",
        "dynamic_prompts",
        "use_hsf",
        "hsf_num_clusters",
        "hsf_num_patches",
        "hsf_max_iterations",
        "smoothing_sigma",
    ),  # fmt: skip
}
# and with a reference memory
MEMORY_FIELDS = ("reference_memory_sizes", "reference_fusion", "reference_distance_scale")


def load_exportable_model(model_name_or_path: str, class_names: list[str] | None):
    """The float32 model of a checkpoint of an exportable family, with `class_names` tokenised (AdaCLIP).

    Raises:
        ExportError: Another model type, or `--class_names` for a family whose prompts name no category.
        ModelLoadError: A checkpoint that cannot be loaded, or new class names without tokenizer files.
    """
    check_model_location(model_name_or_path)
    model_type = saved_model_type(model_name_or_path)
    if model_type not in EXPORT_FAMILIES:
        titles = " and ".join(FAMILIES[name].title for name in EXPORT_FAMILIES).replace(" and ", ", ", 1)
        raise ExportError(
            f"--model_name_or_path {model_name_or_path} is a {model_type!r} checkpoint; clipada-export exports trained "
            f"{titles} checkpoints"
        )
    if class_names and not FAMILIES[model_type].needs_class_names:
        raise ExportError(f"--class_names: {FAMILIES[model_type].title} names no category in its prompts; drop it")
    model = load_clipada_model(model_name_or_path, dtype=torch.float32).eval()
    if class_names:
        add_class_names(model, list(class_names), model_name_or_path)
    return model


def check_memory_categories(model, names: list[str] | None, model_name_or_path: str) -> list[str] | None:
    """The categories of the checkpoint's reference memory, in the order the graph's `memory_index` counts them;
    None without a memory.

    Raises:
        ExportError: AdaCLIP with a memory category its exported prompts cannot name (its images could never be
            scored: their prompts name the category too).
    """
    memory = getattr(model, "reference_memory", None)
    if memory is None or not len(memory):
        return None
    categories = list(memory.categories)
    unnamed = [category for category in categories if names is not None and category not in names]
    if unnamed:
        raise ExportError(
            f"--model_name_or_path {model_name_or_path} holds a reference memory of {unnamed}, categories its "
            f"exported prompts cannot name ({names}); pass --class_names {' '.join(categories)}"
        )
    return categories


def graph_class_names(model, class_names: list[str] | None) -> list[str] | None:
    """AdaCLIP: the names `class_index` indexes, the default class name first; None for the other families."""
    if not FAMILIES[model.config.model_type].needs_class_names:
        return None
    default = model.config.default_class_name
    names = class_names if class_names else list(model.config.prompt_token_ids or {})
    return [default, *dict.fromkeys(name for name in names if name != default)]


def export(
    model_name_or_path: str,
    output_dir: str | Path,
    export_format: str,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    image_size: int | None = None,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    int8: Int8Request | None = None,
) -> dict:
    """Writes the export folder (atomically: an existing folder is replaced only once the new one is complete).

    Args:
        model_name_or_path: A trained checkpoint of any family (folder or Hub id).
        output_dir: The export folder (see [`check_export_folder`]).
        export_format: `onnx` or `openvino`.
        opset: ONNX opset.
        fp16: OpenVINO: weights stored as float16.
        image_size: The input side instead of the checkpoint processor's.
        overwrite: Replace an earlier export of `clipada export`.
        class_names: AdaCLIP: the categories its prompts may name (default: the checkpoint's).
        int8: OpenVINO: quantise to INT8 on these normal images and keep it only if the gate passes
            ([`inference.deploy.int8`]); nothing is written when it does not.

    Returns:
        The content of `clipada_export.json`.

    Raises:
        ExportError, OutputFolderError, ModelLoadError: A refused request or output folder, or a checkpoint that is
            missing, damaged or of another kind, naming the flag or folder. `Int8GateError` (an `ExportError`): the
            INT8 model missed the gate; the message says by how much.
    """
    output_dir = Path(output_dir)
    check_request(export_format, opset, fp16, output_dir, overwrite, str(model_name_or_path), image_size)
    if int8 is not None and (export_format != "openvino" or fp16):
        raise ExportError("--int8 quantises OpenVINO exports: use --format openvino without --fp16")
    if int8 is not None:
        check_int8_request(int8)
    model = load_exportable_model(model_name_or_path, class_names)
    family = model.config.model_type
    processor, own_processor = load_processors(model_name_or_path, image_size)
    size = (processor.size["height"], processor.size["width"])
    patch = model.config.vision_config.patch_size
    if size[0] % patch or size[1] % patch:
        if image_size is not None:
            raise ExportError(f"--image_size {image_size} is not a multiple of the model's patch size {patch}")
        raise ExportError(
            f"the input size {size} of {model_name_or_path}'s preprocessor_config.json is not a multiple of the patch "
            f"size {patch}; pass --image_size"
        )
    names = graph_class_names(model, class_names)
    memory_categories = check_memory_categories(model, names, str(model_name_or_path))
    try:
        graph = export_graph(model, size, with_thresholds=model.config.has_thresholds, class_names=names)
    except ValueError as error:  # AdaCLIP's random k-means start
        raise ExportError(f"{model_name_or_path}: {error}") from error
    with quiet_known_warnings():
        program = export_program(graph)
    with atomic_dir(output_dir) as staging:
        model_file = staging / MODEL_FILES[export_format]
        with quiet_known_warnings():
            if export_format == "onnx":
                write_onnx(program, model_file, opset, graph)
            else:
                write_openvino(program, model_file, graph, fp16)
        processor.save_pretrained(staging)
        metadata = {
            "format": export_format,
            "family": family,
            "file": model_file.name,
            "file_mib": round(sum(p.stat().st_size for p in staging.glob("model.*")) / 2**20, 2),
            "opset": opset if export_format == "onnx" else None,
            "weights": "float16" if fp16 else "float32",
            "input_size": list(size),
            "input_mode": input_mode(processor),
            "batch_size": "dynamic",
            "graph_inputs": list(graph.input_names),
            "graph_outputs": list(graph.output_names),
            **({"class_names": names} if names is not None else {}),
            **({"memory_categories": memory_categories} if memory_categories is not None else {}),
            "file_sha256": {name: file_sha256(staging / name) for name in GRAPH_FILES[export_format]},
            "thresholds": {
                **{field: getattr(model.config, field) for field in DECISION_FIELDS},
                # the mode they were calibrated in (older checkpoints: their own preprocessor_config.json's), so that
                # an export at another --image_size, or predict in another mode, does not decide with them
                "calibration_mode": calibration_mode(model.config, own_processor),
            }
            if model.config.has_thresholds
            else None,
            "model": {
                field: getattr(model.config, field)
                for field in MODEL_FIELDS[family] + (MEMORY_FIELDS if memory_categories is not None else ())
            },
            "source": {"model_name_or_path": str(model_name_or_path), "sha256": checkpoint_hashes(model_name_or_path)},
            "versions": _versions(export_format),
        }
        (staging / EXPORT_CONFIG_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        metadata["parity"] = measure_parity(model, ExportedCLIPADA(staging))
        if int8 is not None:  # raises Int8GateError when the gate refuses: atomic_dir then writes nothing
            metadata.update(quantize_export(staging, int8))
            metadata["file_sha256"] = {name: file_sha256(staging / name) for name in GRAPH_FILES[export_format]}
            metadata["file_mib"] = round(sum(p.stat().st_size for p in staging.glob("model.*")) / 2**20, 2)
            (staging / EXPORT_CONFIG_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
            metadata["parity"] = measure_parity(model, ExportedCLIPADA(staging))  # of the INT8 file, for the record
        (staging / EXPORT_CONFIG_NAME).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        write_marker(staging, COMMAND)  # last: it lists every entry of the folder
    return metadata


def _versions(export_format: str) -> dict[str, str]:
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if export_format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    else:
        import openvino

        versions["openvino"] = openvino.__version__
    return versions


def main(argv: list[str] | None = None, build_int8_request: Callable | None = None) -> dict:
    """Parses the command line and exports; a refused request prints one line `error: ...` and exits 2.

    Args:
        argv: The arguments (default `sys.argv[1:]`).
        build_int8_request: `(args, processor) -> Int8Request`, for `--int8`: reading datasets and computing metrics is
            training code (`training.quantize`, which `clipada export` runs), which this module does not import.
    """
    args = parse_args(argv)
    configure_threads(args.num_threads)
    errors = (ExportError, ExportedModelError, Int8GateError, ModelLoadError, OutputFolderError, OSError)
    with usage_errors(*errors):
        int8 = None
        if args.int8 or args.calibration_data or args.int8_test_data:
            if not args.int8 or not args.calibration_data:
                raise ExportError("--int8 and --calibration_data go together")
            if build_int8_request is None:
                raise ExportError("--int8 reads datasets and computes the gate's metrics: run it as `clipada export`")
            if args.format != "openvino" or args.fp16:
                raise ExportError("--int8 quantises OpenVINO exports: use --format openvino without --fp16")
            check_request(args.format, args.opset, args.fp16, Path(args.output_dir), args.overwrite_output_dir,
                          args.model_name_or_path, args.image_size)  # fmt: skip
            int8 = build_int8_request(args, load_processors(args.model_name_or_path, args.image_size)[0])
        metadata = export(
            args.model_name_or_path,
            args.output_dir,
            args.format,
            opset=args.opset,
            fp16=args.fp16,
            image_size=args.image_size,
            overwrite=args.overwrite_output_dir,
            class_names=args.class_names,
            int8=int8,
        )
    parity = metadata["parity"]
    print(
        f"wrote {args.output_dir} ({metadata['file']}, {metadata['file_mib']} MiB); parity with PyTorch: "
        f"anomaly_map {parity['anomaly_map_max_abs_diff']:.2e}, pred_score {parity['pred_score_max_abs_diff']:.2e}"
    )
    if metadata.get("int8"):
        gate = metadata["int8"]
        print(
            f"INT8 gate passed on {gate['test_images']} test images: decisions identical on "
            f"{100 * gate['decision_agreement']:.1f}%, pixel AUROC {100 * gate['fp32']['pixel_auroc']:.2f} -> "
            f"{100 * gate['int8']['pixel_auroc']:.2f}, AUPRO {100 * gate['fp32']['aupro']:.2f} -> "
            f"{100 * gate['int8']['aupro']:.2f}"
        )
    return metadata


def cli(argv: list[str] | None = None) -> None:
    """`clipada export` (alias `clipada-export`, `python -m inference.deploy.export`)."""
    main(argv)


__all__ = [
    "ExportError",
    "check_export_folder",
    "check_request",
    "check_memory_categories",
    "checkpoint_hashes",
    "export",
    "graph_class_names",
    "load_exportable_model",
    "main",
    "measure_parity",
    "parity_categories",
    "parse_args",
    "quiet_known_warnings",
]


if __name__ == "__main__":
    cli()
