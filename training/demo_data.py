"""Generate a small synthetic anomaly-detection dataset in the MVTec-AD layout (numpy + PIL only).

Two categories are available: ``disc`` (an object: a shaded pill/disc on a plain background, with
slight position, size and colour jitter) and ``weave`` (a texture: a basket-weave pattern with phase
and colour jitter). Test images carry drawn defects (``disc``: scratch, spot, stain; ``weave``: cut,
hole, stain) and ``ground_truth/<defect>/NNN_mask.png`` holds exactly the pixels each defect changed
(0/255). Every image is derived from ``(seed, category, folder, index)`` only, so a dataset is
reproducible and a category does not depend on which others are generated. A ``readme.txt`` sits at
the root, like the stray files of the real download.

Example:
    $ python -m training.demo_data --output_dir /tmp/clipada_demo --overwrite_output_dir
    >>> from training.data import load_anomaly_dataset
    >>> from training.demo_data import make_demo_dataset
    >>> dataset = load_anomaly_dataset(str(make_demo_dataset("/tmp/clipada_demo")))
"""

from __future__ import annotations

import argparse
import sys
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from inference.atomic import atomic_dir

CATEGORY_KINDS = {"disc": "object", "weave": "texture"}
DEFECT_TYPES = {"disc": ("scratch", "spot", "stain"), "weave": ("cut", "hole", "stain")}
README_MARKER = "CLIP-ADA demo dataset"
MIN_IMAGE_SIZE = 32
# A defect must change at least this fraction of the image's pixels (redrawn otherwise).
_MIN_DEFECT_FRACTION = 0.002


def make_demo_dataset(
    root: str | Path,
    categories: Sequence[str] = ("disc", "weave"),
    num_train: int = 24,
    num_test_good: int = 6,
    num_test_defect: int = 6,
    image_size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the demo dataset in the MVTec-AD layout.

    The tree is written beside ``root`` and moved into place when complete (`inference.atomic.atomic_dir`).
    A non-empty ``root`` is replaced only when it is an earlier demo dataset (its ``readme.txt`` says so)
    and ``overwrite`` is set.

    Args:
        root: Folder to create.
        categories: Categories to generate, from ``disc`` and ``weave``.
        num_train: Normal training images per category (``train/good``).
        num_test_good: Normal test images per category (``test/good``).
        num_test_defect: Test images (and masks) per defect type and category.
        image_size: Side of the square images in pixels.
        seed: Seed of all the randomness.
        overwrite: Replace an earlier demo dataset at ``root``.

    Returns:
        The dataset root.

    Raises:
        ValueError: An unknown category or a count/size out of range.
        FileExistsError: ``root`` is a file, a non-empty folder that is not a demo dataset, or a demo
            dataset while ``overwrite`` is false.
    """
    _check_arguments(categories, num_train, num_test_good, num_test_defect, image_size)
    root = Path(root).expanduser().absolute()
    _check_replaceable(root, overwrite)
    with atomic_dir(root) as staging:
        _write_readme(staging, categories, image_size, seed)
        for category in dict.fromkeys(categories):
            _write_category(staging / category, category, num_train, num_test_good, num_test_defect, image_size, seed)
    return root


# ----------------------------------------------------------------------------------------------------
# Normal images
# ----------------------------------------------------------------------------------------------------


def render_disc(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a shaded disc (a pill seen from above) on a plain background.

    Args:
        rng: Source of the position, size and colour jitter.
        size: Image side in pixels.

    Returns:
        The ``(size, size, 3)`` uint8 image and the boolean mask of the disc.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cx, cy = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    rx = 0.30 * size * rng.uniform(0.95, 1.05)
    ry = rx * rng.uniform(0.88, 1.0)
    radius2 = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    disc = radius2 <= 1.0
    background = np.array([62.0, 66.0, 74.0]) + rng.uniform(-6, 6, 3)
    colour = np.array([206.0, 172.0, 96.0]) + rng.uniform(-12, 12, 3)
    shade = (1.08 - 0.28 * np.clip(radius2, 0, 1))[..., None]
    image = np.where(disc[..., None], colour * shade, background)
    return _finish(image, rng), disc


def render_weave(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a regular basket-weave texture: cells of horizontal and vertical threads in a checkerboard.

    Args:
        rng: Source of the phase and colour jitter.
        size: Image side in pixels.

    Returns:
        The ``(size, size, 3)`` uint8 image and an all-true mask (the texture covers the image).
    """
    period = max(6, size // 8)
    yy, xx = np.mgrid[0:size, 0:size]
    ox, oy = rng.integers(0, period, 2)
    checker = ((xx + ox) // period + (yy + oy) // period) % 2 == 1
    across = np.where(checker, (xx + ox) % period, (yy + oy) % period) / period  # position across a cell
    threads = 0.78 + 0.22 * np.sin(np.pi * ((3 * across) % 1.0))  # three threads per cell
    colour = np.array([154.0, 124.0, 92.0]) + rng.uniform(-10, 10, 3)
    tint = np.where(checker[..., None], 1.0, 0.93)
    image = colour * (threads[..., None] * tint)
    return _finish(image, rng), np.ones((size, size), dtype=bool)


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add slight sensor noise and convert to uint8."""
    return np.clip(image + rng.normal(0.0, 2.0, image.shape), 0, 255).astype(np.uint8)


RENDERERS: dict[str, Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]] = {
    "disc": render_disc,
    "weave": render_weave,
}


# ----------------------------------------------------------------------------------------------------
# Defects
# ----------------------------------------------------------------------------------------------------


def add_defect(
    image: np.ndarray, region: np.ndarray, defect: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect inside ``region`` and return the changed image and the exact defect mask.

    Args:
        image: The ``(H, W, 3)`` uint8 normal image.
        region: Boolean mask of where a defect may go (the object, or the whole texture).
        defect: ``scratch``/``cut`` (thin line), ``spot``/``hole`` (dark blob) or ``stain`` (colour blob).
        rng: Source of the defect's shape, place and colour.

    Returns:
        The defective image and its mask (uint8, 255 where the defect changed pixels, else 0).
    """
    size = image.shape[0]
    for _ in range(100):
        shape = _draw_defect_shape(defect, size, _pick_point(region, rng), rng) & region
        if shape.sum() >= _MIN_DEFECT_FRACTION * size * size:
            break
    result = image.astype(np.float64)
    result[shape] = _defect_pixels(result[shape], defect, rng)
    return result.astype(np.uint8), shape.astype(np.uint8) * 255


def _draw_defect_shape(defect: str, size: int, centre: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Rasterise the shape of a defect (without anti-aliasing, so the mask is exact)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if defect in ("scratch", "cut"):
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.45) * size
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        width = 1 if defect == "scratch" else max(2, size // 48)
        draw.line([(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)], fill=255, width=width)
    elif defect in ("spot", "hole", "stain"):
        scale = (0.06, 0.11) if defect == "stain" else (0.035, 0.07)
        for _ in range(int(rng.integers(2, 5))):
            r = rng.uniform(*scale) * size
            x, y = centre[0] + rng.uniform(-r, r), centre[1] + rng.uniform(-r, r)
            ratio = rng.uniform(0.6, 1.0)
            draw.ellipse([x - r, y - r * ratio, x + r, y + r * ratio], fill=255)
    else:
        raise ValueError(f"unknown defect {defect!r}")
    return np.asarray(canvas) > 0


def _defect_pixels(pixels: np.ndarray, defect: str, rng: np.random.Generator) -> np.ndarray:
    """New colours of the pixels covered by a defect."""
    if defect in ("scratch", "cut"):
        return pixels * rng.uniform(0.35, 0.5)
    if defect == "spot":
        return np.array([70.0, 42.0, 28.0]) + rng.uniform(-8, 8, 3)
    if defect == "hole":
        return np.full(3, 18.0) + rng.uniform(0, 8, 3)
    stain = np.array([56.0, 112.0, 196.0]) + rng.uniform(-15, 15, 3)  # "stain": a bluish blot
    return 0.4 * pixels + 0.6 * stain


def _pick_point(region: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A random (x, y) point inside ``region``, away from its border where possible."""
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    inner = (np.abs(ys - cy) < 0.35 * np.ptp(ys) + 1) & (np.abs(xs - cx) < 0.35 * np.ptp(xs) + 1)
    index = rng.choice(np.flatnonzero(inner))
    return float(xs[index]), float(ys[index])


# ----------------------------------------------------------------------------------------------------
# Writing the tree
# ----------------------------------------------------------------------------------------------------


def image_rng(seed: int, category: str, folder: str, index: int) -> np.random.Generator:
    """The random generator of one image: it depends only on the seed, category, folder and index.

    Args:
        seed: Dataset seed.
        category: Category name.
        folder: Folder inside the category, e.g. ``"train/good"`` or ``"test/scratch"``.
        index: Image index within the folder.

    Returns:
        A fresh generator; rendering the image then drawing its defect consume it in that order.
    """
    return np.random.default_rng([seed, zlib.crc32(category.encode()), zlib.crc32(folder.encode()), index])


def _write_category(
    folder: Path, category: str, num_train: int, num_test_good: int, num_test_defect: int, size: int, seed: int
) -> None:
    """Write ``train/good``, ``test/*`` and ``ground_truth/*`` of one category."""
    render = RENDERERS[category]
    for split, count in (("train", num_train), ("test", num_test_good)):
        for index in range(count):
            image, _ = render(image_rng(seed, category, f"{split}/good", index), size)
            _save(folder / split / "good" / f"{index:03d}.png", image)
    for defect in DEFECT_TYPES[category]:
        for index in range(num_test_defect):
            rng = image_rng(seed, category, f"test/{defect}", index)
            image, region = render(rng, size)
            image, mask = add_defect(image, region, defect, rng)
            _save(folder / "test" / defect / f"{index:03d}.png", image)
            _save(folder / "ground_truth" / defect / f"{index:03d}_mask.png", mask)


def _save(path: Path, array: np.ndarray) -> None:
    """Save a uint8 array as PNG, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _write_readme(folder: Path, categories: Sequence[str], size: int, seed: int) -> None:
    """Write the root ``readme.txt`` (a stray file the loader must ignore; it also marks a demo root)."""
    lines = [
        f"{README_MARKER} (synthetic, generated by training/demo_data.py; free to use).",
        f"categories: {', '.join(categories)}; image size {size}px; seed {seed}.",
        "Layout as MVTec-AD: <category>/train/good, <category>/test/<defect>, "
        "<category>/ground_truth/<defect>/NNN_mask.png (0/255).",
    ]
    (folder / "readme.txt").write_text("\n".join(lines) + "\n")


def _check_arguments(
    categories: Sequence[str], num_train: int, num_test_good: int, num_test_defect: int, image_size: int
) -> None:
    """Raise `ValueError` for an unknown category or a count/size out of range."""
    if isinstance(categories, str) or not categories:
        raise ValueError(f"categories must be a non-empty sequence of names, got {categories!r}")
    unknown = [c for c in categories if c not in CATEGORY_KINDS]
    if unknown:
        raise ValueError(f"unknown demo categories {unknown}; available: {', '.join(CATEGORY_KINDS)}")
    counts = {"num_train": num_train, "num_test_good": num_test_good, "num_test_defect": num_test_defect}
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")


def _check_replaceable(root: Path, overwrite: bool) -> None:
    """Raise unless ``root`` is absent, an empty folder, or (with ``overwrite``) an earlier demo dataset."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return
    readme = root / "readme.txt"
    if not (readme.is_file() and readme.read_text(errors="replace").startswith(README_MARKER)):
        raise FileExistsError(f"{root}: exists and is not an empty folder or an earlier demo dataset")
    if not overwrite:
        raise FileExistsError(
            f"{root}: holds an earlier demo dataset; pass overwrite=True (CLI: --overwrite_output_dir) to replace it"
        )


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The parsed arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python -m training.demo_data", description="Write a small synthetic dataset in the MVTec-AD layout."
    )
    parser.add_argument("--output_dir", type=Path, required=True, help="Folder to create.")
    parser.add_argument("--categories", nargs="+", default=["disc", "weave"], choices=sorted(CATEGORY_KINDS))
    parser.add_argument("--num_train", type=int, default=24, help="Normal training images per category.")
    parser.add_argument("--num_test_good", type=int, default=6, help="Normal test images per category.")
    parser.add_argument("--num_test_defect", type=int, default=6, help="Test images per defect type.")
    parser.add_argument("--image_size", type=int, default=96, help="Image side in pixels.")
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="Replace an earlier demo dataset in --output_dir."
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        0 on success, 2 on bad arguments (after printing ``error: ...`` to stderr).
    """
    args = parse_args(argv)
    try:
        root = make_demo_dataset(
            args.output_dir,
            args.categories,
            num_train=args.num_train,
            num_test_good=args.num_test_good,
            num_test_defect=args.num_test_defect,
            image_size=args.image_size,
            seed=args.seed,
            overwrite=args.overwrite_output_dir,
        )
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote the demo dataset to {root}")
    return 0


__all__ = [
    "CATEGORY_KINDS",
    "DEFECT_TYPES",
    "RENDERERS",
    "add_defect",
    "image_rng",
    "main",
    "make_demo_dataset",
    "parse_args",
    "render_disc",
    "render_weave",
]


if __name__ == "__main__":
    sys.exit(main())
