"""Convert a raw MVTec-AD, VisA, MVTec AD 2, Real-IAD, BTAD or MPDD download, or a folder of your own images, into a
`DatasetDict` on disk.

The output folder (written with `save_to_disk`, splits ``train`` and ``test``; MVTec AD 2 adds ``validation``,
``test_private`` and ``test_private_mixed``) embeds the image and
mask bytes, so it survives deleting the raw folder; it appears only once complete. A non-empty output
folder is never replaced unless it is a dataset this command wrote earlier (it holds
``.clipada_dataset.json`` and nothing it did not write) and ``--overwrite_output_dir`` is given; it never lies
inside ``--data_dir`` or contains it. Bad input (including a category, defect or image name that is not a single
file name, and one image file listed or reachable twice), a refused output folder or a failed write (e.g. a full
disk) prints ``error: ...`` naming the offending file or folder and exits with code 2, leaving the output folder
as it was; Ctrl-C prints one line, exits with code 130 and leaves no staging or cache folder behind. Your own
images (``--dataset folder``) need only ``train/good``; ``test/<defect>`` and ``ground_truth/<defect>`` masks are
optional (see `training.data.folder`).

Example:
    $ python -m training.prepare_dataset --dataset mvtec_ad --data_dir ~/mvtec_anomaly_detection \\
        --output_dir ~/data/mvtec_ad_hf --categories bottle leather --overwrite_output_dir
    $ python -m training.prepare_dataset --dataset visa --data_dir ~/VisA --output_dir ~/data/visa_hf \\
        --skip_missing_files --push_to_hub --hub_dataset_id user/visa
    $ python -m training.prepare_dataset --dataset folder --data_dir ~/widget --output_dir ~/data/widget_hf
    $ python -m training.prepare_dataset --dataset real_iad --data_dir ~/Real-IAD --output_dir ~/data/realiad_hf \
        --real_iad_protocol single_view --real_iad_resolution 1024 --categories audiojack
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import datasets
import pyarrow.compute as pc

from inference.command_line import overwrite_argument, threads_argument
from inference.devices import configure_threads
from training.data import (
    DATASET_NAMES,
    REAL_IAD_PROTOCOLS,
    REAL_IAD_RESOLUTIONS,
    DatasetFormatError,
    check_output_dir,
    load_anomaly_dataset,
    save_dataset_atomically,
)

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        description="Convert a raw MVTec-AD, VisA, MVTec AD 2, Real-IAD, BTAD or MPDD folder, or a folder of your own "
        "images (train/good, optional test/<defect> and ground_truth/<defect>), into a Hugging Face DatasetDict "
        "(save_to_disk).",
        parents=[overwrite_argument("a dataset written earlier by this command"), threads_argument()],
    )
    parser.add_argument(
        "--dataset",
        choices=DATASET_NAMES,
        default=None,
        help="Layout of --data_dir (default: inferred; 'folder' for your own images, masks optional; MPDD has "
        "MVTec-AD's layout and is read as MPDD only when named).",
    )
    parser.add_argument("--data_dir", type=Path, required=True, help="The raw dataset folder.")
    parser.add_argument("--output_dir", type=Path, required=True, help="Folder to write the DatasetDict to.")
    parser.add_argument("--categories", nargs="+", default=None, help="Only these categories (default: all).")
    parser.add_argument(
        "--skip_missing_files",
        action="store_true",
        help="VisA and Real-IAD: keep only the split-file rows whose files exist (for partial downloads).",
    )
    parser.add_argument(
        "--real_iad_protocol",
        choices=list(REAL_IAD_PROTOCOLS),
        default="multi_view",
        help="Real-IAD: whose JSON split files to read: multi_view (realiad_jsons, default), single_view "
        "(realiad_jsons_sv) or noisy_<ratio> (realiad_jsons_fuiad_<ratio>: anomalies among the training images).",
    )
    parser.add_argument(
        "--real_iad_resolution",
        choices=list(REAL_IAD_RESOLUTIONS),
        default=None,
        help="Real-IAD: the image folder realiad_<resolution> (default: the first of 1024, 512, 256, raw present).",
    )
    parser.add_argument("--push_to_hub", action="store_true", help="Also push the dataset to the Hub.")
    parser.add_argument("--hub_dataset_id", default=None, help="Hub dataset repository, e.g. user/mvtec_ad.")
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_dataset_id:
        parser.error("--push_to_hub needs --hub_dataset_id")
    return args


def prepare_dataset(
    data_dir: str | Path,
    output_dir: str | Path,
    dataset: str | None = None,
    categories: Sequence[str] | None = None,
    allow_missing_files: bool = False,
    overwrite: bool = False,
    real_iad_protocol: str = "multi_view",
    real_iad_resolution: str | None = None,
) -> datasets.DatasetDict:
    """Build the dataset of a raw folder and save it atomically to ``output_dir``.

    ``output_dir`` is checked before anything is built (see `check_apart` and `training.data.check_output_dir`).
    The Arrow cache used while building lives in a temporary folder beside ``output_dir`` (same disk) and is
    removed afterwards, also when the run is interrupted (Ctrl-C), so nothing is left in the `datasets` cache or
    beside ``output_dir``.

    Args:
        data_dir: The raw MVTec-AD, VisA or own-images folder (a saved dataset folder is re-saved, filtered).
        output_dir: Folder to write with `save_to_disk`.
        dataset: One of `training.data.DATASET_NAMES` or ``None`` to infer it from the layout.
        categories: Only these categories (all when ``None``).
        allow_missing_files: VisA and Real-IAD: drop split-file rows whose files are missing.
        overwrite: Replace ``output_dir`` when it holds a dataset written earlier by this function.
        real_iad_protocol: Real-IAD: the protocol whose JSON split files are read.
        real_iad_resolution: Real-IAD: the image folder ``realiad_<resolution>``; by default the first of 1024, 512,
            256, raw present.

    Returns:
        The saved dataset, loaded back from ``output_dir``.

    Raises:
        DatasetFormatError: Bad input, an ``output_dir`` that may not be replaced, or a failed write (e.g.
            a full disk); ``output_dir`` is then left as it was.
    """
    data_dir, output_dir = Path(data_dir).expanduser(), Path(output_dir).expanduser().absolute()
    if not data_dir.is_dir():
        found = "is a file" if data_dir.exists() else "not found"
        raise DatasetFormatError(f"{data_dir}: data_dir {found} (expected a folder)")
    check_apart(data_dir, output_dir)
    check_output_dir(output_dir, overwrite)
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        cache = tempfile.TemporaryDirectory(
            prefix=f".{output_dir.name}.cache-", dir=output_dir.parent, ignore_cleanup_errors=True
        )
        with cache as cache_dir:
            dataset_dict = load_anomaly_dataset(
                str(data_dir),
                dataset,
                categories,
                allow_missing_files=allow_missing_files,
                cache_dir=cache_dir,
                real_iad_protocol=real_iad_protocol,
                real_iad_resolution=real_iad_resolution,
            )
            save_dataset_atomically(dataset_dict, output_dir, overwrite=overwrite)
    except OSError as error:
        raise DatasetFormatError(
            f"{output_dir}: building or writing the dataset failed ({error}); the folder was left as it was"
        ) from error
    return datasets.load_from_disk(str(output_dir))


def check_apart(data_dir: Path, output_dir: Path) -> None:
    """Raise when ``output_dir`` lies inside ``data_dir`` or contains it (symbolic links followed).

    The output may be ``data_dir`` itself only when that is a dataset saved by this command (re-saving it
    filtered); `check_output_dir` refuses any other non-empty folder.

    Raises:
        DatasetFormatError: Naming both folders.
    """
    data, output = data_dir.resolve(), output_dir.resolve()
    if data in output.parents:
        raise DatasetFormatError(
            f"{output_dir}: output folder lies inside the input folder {data_dir} (--data_dir); choose a folder "
            "outside it"
        )
    if output in data.parents:
        raise DatasetFormatError(
            f"{output_dir}: output folder contains the input folder {data_dir} (--data_dir); choose another folder"
        )


def count_samples(dataset_dict: datasets.DatasetDict) -> dict[str, Counter]:
    """Count the rows of every split per (category, defect_type).

    Args:
        dataset_dict: A dataset with ``category`` and ``defect_type`` columns.

    Returns:
        For each split, a `Counter` keyed by ``(category, defect_type)``.
    """
    return {name: Counter(zip(split["category"], split["defect_type"])) for name, split in dataset_dict.items()}


def count_images_without_mask(dataset_dict: datasets.DatasetDict) -> int:
    """Count the anomalous rows whose mask is not available (``mask`` ``None``; folder layout only).

    Args:
        dataset_dict: A dataset with ``label`` and ``mask`` columns.

    Returns:
        The number of such rows over all splits (read from the Arrow columns, no image is decoded).
    """
    total = 0
    for split in dataset_dict.values():
        table = split.select_columns(["label", "mask"]).with_format("arrow")[:]
        missing = pc.and_(pc.equal(table["label"], 1), pc.is_null(table["mask"]))
        total += pc.sum(missing).as_py() or 0
    return total


def format_counts(counts: dict[str, Counter]) -> str:
    """Render `count_samples` output as an aligned table.

    Args:
        counts: Rows per split and (category, defect_type).

    Returns:
        One line per split, category and defect type, plus a total per split.
    """
    keys = [key for counter in counts.values() for key in counter]
    width_s = max([len("split"), *(len(split) for split in counts)])
    width_c = max([len("(total)"), *(len(category) for category, _ in keys)])
    width_d = max([len("defect_type"), *(len(defect) for _, defect in keys)])
    lines = [f"{'split':<{width_s}} {'category':<{width_c}} {'defect_type':<{width_d}} {'count':>6}"]
    for split, counter in counts.items():
        for (category, defect), count in sorted(counter.items()):
            lines.append(f"{split:<{width_s}} {category:<{width_c}} {defect:<{width_d}} {count:>6}")
        lines.append(f"{split:<{width_s}} {'(total)':<{width_c}} {'':<{width_d}} {sum(counter.values()):>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code: 0 on success, 2 for bad input, 1 when pushing to the Hub failed.
    """
    args = parse_args(argv)
    configure_threads(args.num_threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        dataset_dict = prepare_dataset(
            args.data_dir,
            args.output_dir,
            args.dataset,
            args.categories,
            args.skip_missing_files,
            overwrite=args.overwrite_output_dir,
            real_iad_protocol=args.real_iad_protocol,
            real_iad_resolution=args.real_iad_resolution,
        )
    except DatasetFormatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_counts(count_samples(dataset_dict)))
    without_mask = count_images_without_mask(dataset_dict)
    if without_mask:
        print(f"{without_mask} anomalous images have no mask: evaluation leaves them out of the pixel metrics")
    print(f"Saved to {args.output_dir}")
    if args.push_to_hub:
        try:
            dataset_dict.push_to_hub(args.hub_dataset_id)
        except Exception as error:  # network, authentication, ...: the saved folder is still complete
            print(f"error: push_to_hub to {args.hub_dataset_id} failed: {error}", file=sys.stderr)
            return 1
        print(f"Pushed to the Hub as {args.hub_dataset_id}")
    return 0


def cli(argv: Sequence[str] | None = None) -> None:
    """`clipada prepare-dataset` (alias `clipada-prepare-dataset`, `python -m training.prepare_dataset`): exits
    with `main`'s code."""
    raise SystemExit(main(argv))


__all__ = [
    "check_apart",
    "cli",
    "count_images_without_mask",
    "count_samples",
    "format_counts",
    "main",
    "parse_args",
    "prepare_dataset",
]


if __name__ == "__main__":
    from training.cli import run_command  # Ctrl-C as one line and exit code 130, as in `clipada prepare-dataset`

    run_command("prepare-dataset", sys.argv[1:])
