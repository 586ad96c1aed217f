"""Write a PNG grid of synthetic anomalies: rows original | synthetic | mask, one column per sample.

Every column gets an anomaly (``anomaly_ratio=1``) so the grid shows what training sees inside the masks.
Without ``--image_dir`` the images come from ``training.demo_data`` (the generated demo dataset), or from
simple procedural images when that module is unavailable.

Example:
    ```bash
    python scripts/synthetic_grid.py --output docs/synthetic_anomalies.png --colors 256
    python scripts/synthetic_grid.py --output grid.png --image_dir mvtec/bottle/train/good --texture_dir dtd/images
    ```
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import IMAGE_EXTENSIONS  # noqa: E402
from training.synthesis import SyntheticAnomalyGenerator, procedural_textures  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--texture_dir", default=None, help="anomaly-source images (e.g. DTD); default: none")
    parser.add_argument("--image_dir", default=None, help="normal images (searched recursively)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--image_size", type=int, default=128, help="side of each tile in pixels")
    parser.add_argument("--colors", type=int, default=0, help="save with an adaptive palette of this many colours")
    return parser.parse_args(argv)


def to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """PIL image -> float tensor (3, size, size) in [0, 1] (centre crop to a square, then resize)."""
    image = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3)
    return pixels.permute(2, 0, 1).float() / 255.0


def load_folder(image_dir: Path, count: int, size: int) -> torch.Tensor:
    """The first ``count`` images (sorted paths) under ``image_dir`` as a tensor (N, 3, size, size)."""
    paths = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"image_dir {str(image_dir)!r} contains no images")
    step = max(1, len(paths) // count)  # spread the picks over the folder (and its sub-folders)
    images = []
    for path in paths[::step][:count]:
        with Image.open(path) as image:
            images.append(to_tensor(image, size))
    return torch.stack(images)


def demo_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Normal training images of the demo dataset, or procedural images if ``training.demo_data`` is missing.

    Returns:
        Float tensor (count, 3, size, size) in [0, 1].
    """
    try:
        from training.demo_data import make_demo_dataset
    except ImportError:
        return procedural_textures(count, size, size, torch.Generator().manual_seed(seed), torch.device("cpu"))
    with tempfile.TemporaryDirectory() as temporary:
        root = make_demo_dataset(Path(temporary) / "demo", num_train=count, image_size=size, seed=seed)
        paths = sorted(Path(root).glob("*/train/good/*.png"))
        # alternate the categories so the grid shows objects and textures
        by_category: dict[str, list[Path]] = {}
        for path in paths:
            by_category.setdefault(path.parts[-4], []).append(path)
        interleaved = [p for group in zip(*by_category.values()) for p in group][:count]
        images = []
        for path in interleaved:
            with Image.open(path) as image:
                images.append(to_tensor(image, size))
    return torch.stack(images)


def make_grid(rows: list[torch.Tensor], padding: int = 2) -> Image.Image:
    """Tiles rows of images (each (N, 3, H, W) in [0, 1]) into one PIL image with white gaps."""
    count, _, height, width = rows[0].shape
    grid = torch.ones(3, len(rows) * (height + padding) + padding, count * (width + padding) + padding)
    for r, row in enumerate(rows):
        for c in range(count):
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[:, top : top + height, left : left + width] = row[c]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.fromarray(pixels.numpy())


def main(argv: list[str] | None = None) -> Path:
    """Writes the grid and returns its path."""
    args = parse_args(argv)
    if args.image_dir:
        images = load_folder(Path(args.image_dir), args.num_samples, args.image_size)
    else:
        images = demo_images(args.num_samples, args.image_size, args.seed)
    synthesizer = SyntheticAnomalyGenerator(args.texture_dir, image_size=args.image_size, anomaly_ratio=1.0)
    augmented, masks = synthesizer(images, torch.Generator().manual_seed(args.seed))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid([images, augmented, masks.expand(-1, 3, -1, -1)])
    if args.colors:  # a palette PNG is a fraction of the size, for docs
        grid = grid.quantize(colors=args.colors, method=Image.Quantize.FASTOCTREE)
    grid.save(output, optimize=True)
    print(f"wrote {output} ({len(images)} samples; rows: original | synthetic | mask)")
    return output


if __name__ == "__main__":
    main()
