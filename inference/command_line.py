"""What every `clipada` command line shares: argument types, parent parsers, and one way to fail on bad input.

Usage errors (a bad flag value, a missing file, a folder that is not a checkpoint) print one line, `error: ...`, on
stderr and exit with status 2, as argparse does for its own errors; nothing else is printed, no traceback.

Example:
    ```python
    >>> parser = argparse.ArgumentParser(parents=[device_arguments(), overwrite_argument()])
    >>> parser.add_argument("--batch_size", type=positive_int, default=8)
    >>> with usage_errors():
    ...     model = load_model(args.model_name_or_path)     # a ModelLoadError becomes "error: ..." and exit 2
    ```
"""

import argparse
import contextlib
import math
import sys
from collections.abc import Iterator

from .devices import DTYPE_NAMES, capped_num_threads, default_num_threads

# the install extra that brings each optional package
OPTIONAL_PACKAGES = {
    **dict.fromkeys(("torch", "accelerate", "datasets", "evaluate", "tensorboard"), "torch"),
    **dict.fromkeys(("onnx", "onnxscript", "onnx_ir"), "onnx"),
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "gradio": "demo",
    "ray": "ray",  # predict --engine ray; clipada serve names its own extra (serve)
    "nncf": "int8",
    "tifffile": "mvtec-ad2",
}


def integer(text: str) -> int:
    """An argparse type: an integer (`1.5`, `abc` and `1e3` are refused with that said, not argparse's "invalid
    <function name> value")."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    number = integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    number = integer(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {number}")
    return number


def open_unit_interval(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a probability threshold, a rate)."""
    number = float(text)
    if not 0.0 < number < 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return number


def finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    number = float(text)
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return number


def thread_count(text: str) -> int:
    """An argparse type: a number of threads, at least 1; more than the cores this process may use is capped at
    that number, with a note (`devices.capped_num_threads`)."""
    return capped_num_threads(positive_int(text))


def threads_argument(note: str = "") -> argparse.ArgumentParser:
    """The parent parser of `--num_threads` (at least 1, at most the available cores; default: the available cores
    minus those other processes keep busy, see `devices.default_num_threads`).

    Args:
        note: Appended to the help (e.g. how processes share them).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--num_threads",
        type=thread_count,
        default=None,
        help="CPU threads, at most the available cores. Default: the available cores minus those other processes "
        f"keep busy (now {default_num_threads()}). On a shared machine set it to the cores you may use.{note}",
    )
    return parser


def device_arguments(backend_note: bool = False) -> argparse.ArgumentParser:
    """The parent parser of `--device`, `--dtype` and `--num_threads`.

    `--device` defaults to None, which [`devices.resolve_device`] turns into `cuda` when a GPU is available and
    `cpu` otherwise (exported models always run on the CPU).

    Args:
        backend_note: Say in the help that exported backends run on the CPU.
    """
    parser = argparse.ArgumentParser(add_help=False, parents=[threads_argument()])
    note = "; exported models (--backend onnxruntime|openvino) run on the cpu" if backend_note else ""
    parser.add_argument("--device", default=None, help=f"cpu, cuda, cuda:1, ... Default: cuda when available{note}.")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32", help="The model's precision.")
    return parser


def overwrite_argument(what: str = "an earlier run's results") -> argparse.ArgumentParser:
    """The parent parser of `--overwrite_output_dir` (one name for every command that writes a folder)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--overwrite_output_dir", action="store_true", help=f"Replace {what} in --output_dir.")
    return parser


def missing_extra(error: ImportError) -> str | None:
    """What to install when `error` is an optional package of this project that is missing; None otherwise."""
    name = (error.name or "").split(".")[0]
    extra = OPTIONAL_PACKAGES.get(name)
    return None if extra is None else f"{name} is not installed: pip install 'clipada[{extra}]'"


@contextlib.contextmanager
def missing_extras() -> Iterator[None]:
    """A missing optional package (torch for a checkpoint, onnxruntime for an export, gradio for the app) becomes
    `error: ... pip install 'clipada[<extra>]'` on stderr and exit status 2; other import errors pass."""
    try:
        yield
    except ImportError as error:
        message = missing_extra(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from error


@contextlib.contextmanager
def usage_errors(*error_types: type[BaseException]) -> Iterator[None]:
    """Turns the errors raised inside into `error: <message>` on stderr and exit status 2 (and a missing optional
    package into the extra to install, as [`missing_extras`]).

    Args:
        *error_types: The exception classes that mean bad input; default `ValueError` (every named error of this
            project derives from it: `ModelLoadError`, `InputError`, `DatasetFormatError`, ...) and `OSError`.
    """
    caught = error_types or (ValueError, OSError)
    with missing_extras():
        try:
            yield
        except caught as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from error


__all__ = [
    "DTYPE_NAMES",
    "OPTIONAL_PACKAGES",
    "missing_extra",
    "missing_extras",
    "device_arguments",
    "finite_float",
    "integer",
    "non_negative_int",
    "open_unit_interval",
    "overwrite_argument",
    "positive_int",
    "thread_count",
    "threads_argument",
    "usage_errors",
]
