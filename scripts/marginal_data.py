"""CLIP-ADA's marginal-data study (paper Sec. 4, Fig. 6): train on 10/20/30/40/50/100% of each category's training
images and tabulate the paper's metrics per fraction.

Every other flag goes to `clipada train` unchanged (the dataset, the CLIP, the preset, the schedule, the seed); each
fraction trains into `<output_dir>/fraction_<f>` with `--train_fraction f` and evaluates on the test split at the end.
The table (`marginal_data.md`) and the numbers (`marginal_data.json`) go into `--output_dir`.

Example:
    ```bash
    python scripts/marginal_data.py --output_dir outputs/marginal --dataset_name data/mvtec \\
        --model_name_or_path openai/clip-vit-base-patch16 --preset mvtec_ad
    python scripts/marginal_data.py --fractions 0.1 1.0 --output_dir outputs/marginal --dataset_name data/visa \\
        --model_name_or_path openai/clip-vit-base-patch16 --preset visa
    ```
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.output_folder import claim_output_folder  # noqa: E402

COMMAND = "scripts/marginal_data.py"
DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
# the paper's three metrics first, then the extras users expect
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "aupro", "image_f1_max", "pixel_f1_max")
TABLE, NUMBERS = "marginal_data.md", "marginal_data.json"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """The study's own flags, and the rest for `clipada train`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(DEFAULT_FRACTIONS))
    parser.add_argument("--output_dir", required=True, help="A new folder (or one this script wrote).")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="Replace this script's earlier results.")
    args, train_argv = parser.parse_known_args(argv)
    bad = [f for f in args.fractions if not 0 < f <= 1]
    if bad:
        parser.error(f"--fractions must lie in (0, 1], got {bad[0]}")
    if "--skip_evaluation" in train_argv:
        parser.error("--skip_evaluation: the study tabulates the test metrics of every fraction")
    return args, train_argv


def run_name(fraction: float) -> str:
    """The training run's folder: `fraction_0.1`, ..., `fraction_1.0`."""
    return f"fraction_{fraction:g}" if fraction != 1 else "fraction_1.0"


def format_table(rows: dict[str, dict[str, float | None]]) -> str:
    """A Markdown table, one row per fraction (its name), one column per metric of `METRICS`, in percent.

    Args:
        rows: `{run name: mean metrics}`.
    """
    lines = ["| training images | " + " | ".join(METRICS) + " |", "|:---|" + "---:|" * len(METRICS)]
    for name, metrics in rows.items():
        fraction = name.removeprefix("fraction_")
        cells = ["-" if metrics.get(m) is None else f"{100 * metrics[m]:.1f}" for m in METRICS]
        lines.append(f"| {100 * float(fraction):g}% | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float | None]]:
    """Trains and evaluates every fraction; returns `{run name: mean metrics}` and writes the table."""
    from training import train

    args, train_argv = parse_args(argv)
    output_dir = Path(args.output_dir)
    names = [run_name(f) for f in args.fractions]
    claim_output_folder(output_dir, COMMAND, [*names, TABLE, NUMBERS], overwrite=args.overwrite_output_dir)
    rows = {}
    for fraction, name in zip(args.fractions, names):
        print(f"training on {100 * fraction:g}% of the training images into {output_dir / name}")
        metrics = train.main([*train_argv, "--train_fraction", str(fraction), "--output_dir", str(output_dir / name)])
        rows[name] = {m: (metrics or {}).get("mean", {}).get(m) for m in METRICS}
    (output_dir / NUMBERS).write_text(json.dumps({"fractions": args.fractions, "mean": rows}, indent=2) + "\n")
    table = format_table(rows)
    (output_dir / TABLE).write_text(table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
