"""The inspection web app (Gradio) for a checkpoint, or a ready-to-push Hub Space folder that runs it.

Example:
    ```bash
    clipada app --model_name_or_path outputs/run --examples line3/ --port 7860
    clipada app --model_name_or_path outputs/run-onnx          # an export: no torch needed
    clipada app --write_space space/ --model_id user/clipada-mvtec --examples line3/
    ```
"""

import argparse
import sys
from pathlib import Path

from inference.app.model import checkpoint_examples, folder_examples, load_served_model
from inference.app.results import MAX_IMAGE_PIXELS
from inference.app.space import write_space
from inference.backends import BACKENDS
from inference.command_line import device_arguments, positive_int, usage_errors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Anomaly inspection web app for a checkpoint or an export folder, or a Hub Space folder.",
        parents=[device_arguments(backend_note=True)],
    )
    parser.add_argument(
        "--model_name_or_path", help="A checkpoint folder or Hub id of this library (any family), or an export folder."
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=None, help="Default: the export's runtime for an export, else torch."
    )
    parser.add_argument("--examples", help="A folder of example images offered in the page (and copied to a Space).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 for the whole network).")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--max_image_pixels",
        type=positive_int,
        default=MAX_IMAGE_PIXELS,
        help="Refuse larger uploads (width x height).",
    )
    parser.add_argument("--write_space", metavar="OUT", help="Write a Hub Space folder for --model_id and exit.")
    parser.add_argument("--model_id", help="With --write_space: the checkpoint's Hub id (user/name) the Space loads.")
    parser.add_argument("--wheel", help="With --write_space: the clipada wheel to ship (default: built here).")
    args = parser.parse_args(argv)
    if args.write_space is None and args.model_name_or_path is None:
        parser.error("--model_name_or_path is required (or --write_space OUT --model_id user/name)")
    if args.write_space is not None and args.model_id is None:
        parser.error("--write_space needs --model_id user/name: the Hub checkpoint the Space loads")
    if not 0 < args.port < 65536:
        parser.error(f"--port must lie in 1..65535, got {args.port}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Writes the Space folder, or serves the app until Ctrl-C or SIGTERM (then its temporary folder is removed)."""
    args = parse_args(argv)
    with usage_errors():
        examples = folder_examples(args.examples) if args.examples else []
        if args.write_space is not None:
            wheel = Path(args.wheel) if args.wheel else None
            sources = [Path(args.examples)] if args.examples else []
            write_space(Path(args.write_space), args.model_id, examples, wheel, sources=sources)
            print(
                f"Space for {args.model_id} written to {args.write_space}: push it with `hf upload --repo-type space`"
            )
            return
        served = load_served_model(args.model_name_or_path, args.device, args.dtype, args.backend, args.num_threads)
        examples = checkpoint_examples(args.model_name_or_path) + examples
        try:
            from inference.app.ui import build_demo, serve  # Gradio is needed for serving only
        except ModuleNotFoundError as error:
            print(f"error: the app needs {error.name}: pip install 'clipada[demo]'", file=sys.stderr)
            raise SystemExit(2) from error
        demo = build_demo(served, examples=examples, max_pixels=args.max_image_pixels)
    try:
        serve(demo, args.host, args.port)
    except OSError as error:  # the port is taken or the address is not this machine's
        print(f"error: cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        raise SystemExit(2) from error


def cli(argv: list[str] | None = None) -> None:
    """`clipada app` (alias `clipada-app`, `python -m inference.app`)."""
    main(argv)


if __name__ == "__main__":
    cli()
