"""The three stages of `clipada predict`, one image (or one batch) at a time: read, forward, finish.

- [`load_image`] (loader workers): reads and checks one file, resizes it into its model inputs, and keeps the
  picture an overlay needs (uint8, a quarter of the float image's bytes);
- [`forward`] (the process that holds the model): runs the backend on a batch of loaded images and gives each image
  its own slice of the output, or the error the backend raised on that image alone;
- [`finish_image`] (writer pool): the row (`inference.predict.rows.image_row`), then the overlay and the map file.

Each stage is a plain function of picklable values, so any engine (`inference.predict.pipeline`, a Ray task) runs
the same steps and writes the same rows.

Example:
    ```python
    >>> loaded = [load_image(i, path, None, processor, keep_picture=True) for i, path in enumerate(paths)]
    >>> outcomes = forward(backend, loaded)
    >>> row = finish_image(loaded[0], outcomes[0], settings, output_dir / "x", "000")
    ```
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference.output_folder import inside, safe_name
from inference.overlays import as_rgb, display_name, draw_overlay
from inference.predict.inputs import input_problem
from inference.predict.rows import Thresholds, error_row, image_row
from inference.predict.writers import save_map
from processing.tiling import DEFAULT_IMAGE_SCORE_TOP_K

OVERLAY_MODES = ("all", "ng", "none")


@dataclass
class LoadedImage:
    """One input after reading and preprocessing.

    Attributes:
        index: Its position in the paths given.
        path: The input path as given.
        category: Its category, or None.
        pixel_values: `(N_i, 3, h, w)` float32 model inputs (1, or its tiles), None for an `error`.
        layout: Its `image_layouts` entry (letterbox, tiles), or None.
        size: `(H, W)` of the image.
        picture: `(H, W, 3)` uint8, the image as overlays show it; None unless every image gets an overlay
            (`--overlays ng` reads the NG ones again: fewer bytes through the queues for the images that need none).
        error: Why it has an `ERROR` row instead (the message of that row), else None.
    """

    index: int
    path: str
    category: str | None
    pixel_values: np.ndarray | None = None
    layout: object = None
    size: tuple[int, int] = (0, 0)
    picture: np.ndarray | None = None
    error: str | None = None


@dataclass
class FinishSettings:
    """What the finish stage needs besides the image: the same for every image of a run.

    Attributes:
        processor: Maps the model's maps back to each image (`post_process_anomaly_detection`).
        image_score_top_k: The backend's `decision_config.image_score_top_k`.
        thresholds: The thresholds of images without their own category's.
        category_thresholds: The thresholds of the images of these categories.
        overlays: `all`, `ng` (only NG images get an overlay) or `none`.
        map_format: `png16` or `npz` to write maps, None for none.
        draw: The overlay function (`inference.overlays.draw_overlay`'s signature).
    """

    processor: object
    image_score_top_k: int
    thresholds: Thresholds
    category_thresholds: dict = field(default_factory=dict)
    overlays: str = "all"
    map_format: str | None = None
    draw: Callable = draw_overlay

    @classmethod
    def for_run(
        cls,
        processor,
        image_score_top_k: int | None,
        thresholds: Thresholds,
        category_thresholds: dict | None = None,
        overlays: str = "all",
        map_format: str | None = None,
        draw: Callable = draw_overlay,
    ) -> "FinishSettings":
        """The settings of a run of any engine; `image_score_top_k` None (a backend without a decision config) is the
        library's default."""
        top_k = image_score_top_k or DEFAULT_IMAGE_SCORE_TOP_K
        return cls(processor, top_k, thresholds, dict(category_thresholds or {}), overlays, map_format, draw)


def load_image(index: int, path: Path, category: str | None, processor, keep_picture: bool) -> LoadedImage:
    """Reads one input (`processor.process_image`: bit depth, EXIF orientation, pixel limit) and makes its model
    inputs; a file that cannot be read, or whose inputs cannot be made, comes back with its `error`.

    Args:
        index: Its position in the paths given.
        path: The file.
        category: Its category, or None.
        processor: The run's `CLIPADAImageProcessor` (its resize mode, tiles and size).
        keep_picture: Keep the `(H, W, 3)` uint8 picture for an overlay.
    """
    loaded = LoadedImage(index, str(path), category)
    try:
        problem = input_problem(Path(path))
        if problem is not None:
            loaded.error = problem
            return loaded
        pixels = processor.process_image(str(path), name="image")  # (3, H, W) in [0, 1]
    except Exception as error:  # noqa: BLE001 - a reader raises many types for odd files: that file's row
        loaded.error = message(error)
        return loaded
    try:
        inputs = processor.model_inputs([pixels], names=[str(path)], return_tensors="np")
    except Exception as error:  # noqa: BLE001 - e.g. too many tiles: that image's row
        loaded.error = f"could not be scored: {message(error)}"
        return loaded
    layouts = inputs.get("image_layouts")
    loaded.pixel_values = np.asarray(inputs["pixel_values"], dtype=np.float32)
    loaded.layout = None if layouts is None else layouts[0]
    loaded.size = tuple(int(side) for side in pixels.shape[-2:])
    loaded.picture = as_rgb(pixels) if keep_picture else None
    return loaded


def forward(backend, batch: Sequence[LoadedImage]) -> list[tuple[np.ndarray, float] | Exception | None]:
    """Runs the backend once on the inputs of every readable image of `batch`.

    Args:
        backend: Any backend (`inference.backends`): `backend(pixel_values, categories) -> BackendOutput`.
        batch: Loaded images; those with an `error` are skipped.

    Returns:
        Per image of `batch`: `(model_map (N_i, h, w), model_score)`, the exception the backend raised on that image
        alone (the batch is then run image by image to find it), or None for an image with an `error`.
    """
    readable = [loaded for loaded in batch if loaded.error is None]
    outcomes = dict(zip((loaded.index for loaded in readable), _run(backend, readable)))
    return [outcomes.get(loaded.index) for loaded in batch]


def _run(backend, images: list[LoadedImage]) -> list[tuple[np.ndarray, float] | Exception]:
    if not images:
        return []
    counts = [len(loaded.pixel_values) for loaded in images]
    per_input = [loaded.category for loaded, count in zip(images, counts) for _ in range(count)]
    try:
        output = backend(np.concatenate([loaded.pixel_values for loaded in images]), per_input)
        maps, scores = np.asarray(output.anomaly_map), np.asarray(output.pred_score).reshape(-1)
        ends = np.cumsum(counts)
        return [(maps[end - count : end], float(scores[end - count])) for end, count in zip(ends, counts)]
    except Exception as error:  # noqa: BLE001 - find the image it failed on: the others still get their rows
        if len(images) == 1:
            return [error]
        return [_run(backend, [loaded])[0] for loaded in images]


def decided_row(
    loaded: LoadedImage, outcome, settings: FinishSettings
) -> tuple[dict, np.ndarray | None, np.ndarray | None]:
    """The row of one image after its forward: `(row, anomaly_map (H, W) or None, pred_mask (H, W) or None)`."""
    if loaded.error is not None:
        return error_row(loaded.path, loaded.category, loaded.error), None, None
    if isinstance(outcome, Exception):
        return error_row(loaded.path, loaded.category, f"could not be scored: {message(outcome)}"), None, None
    model_map, model_score = outcome
    thresholds = settings.category_thresholds.get(loaded.category, settings.thresholds)
    row, anomaly_map, pred_mask = image_row(
        loaded.path, loaded.category, model_map, model_score, loaded.size, loaded.layout, settings.processor,
        settings.image_score_top_k, thresholds,
    )  # fmt: skip
    if row["decision"] == "ERROR":  # the model produced NaN or inf
        return row, None, None
    return row, anomaly_map, pred_mask


def finish_image(loaded: LoadedImage, outcome, settings: FinishSettings, output_dir: Path, name: str) -> dict:
    """The final row of one image: decided ([`decided_row`]), with its overlay (all, or NG only) and map written.

    Args:
        loaded: The image ([`load_image`]).
        outcome: Its entry of [`forward`].
        settings: The run's [`FinishSettings`].
        output_dir: The output folder (`overlays/`, `maps/` exist when wanted).
        name: The image's unique output stem (`inference.predict.inputs.output_names`).

    Returns:
        The row (keys `inference.predict.rows.COLUMNS`); an `ERROR` row naming the problem when its overlay or map
        cannot be written.
    """
    try:
        row, anomaly_map, pred_mask = decided_row(loaded, outcome, settings)
    except Exception as error:  # noqa: BLE001 - its map could not be brought back to its size: that image's row
        return error_row(loaded.path, loaded.category, f"could not be scored: {message(error)}")
    if anomaly_map is None:
        return row
    try:
        if settings.overlays == "all" or (settings.overlays == "ng" and row["decision"] == "NG"):
            overlay = inside(output_dir, output_dir / "overlays" / f"{safe_name(name, 'overlay name')}.png")
            shown = loaded.picture
            if shown is None:  # --overlays ng: only the few NG images are read again, for their overlays
                shown = as_rgb(settings.processor.process_image(loaded.path, name="image"))
            picture = settings.draw(
                shown, anomaly_map, pred_mask, row["score"], row["decision"], row["image_threshold"],
                title=display_name(Path(loaded.path)), pixel_threshold=row["pixel_threshold"],
            )  # fmt: skip
            picture.save(overlay, compress_level=1)
            row["overlay"] = overlay.relative_to(output_dir).as_posix()
        if settings.map_format is not None:
            stem = inside(output_dir, output_dir / "maps" / safe_name(name, "map name"))
            row["map"] = save_map(stem, anomaly_map, settings.map_format).relative_to(output_dir).as_posix()
    except Exception as error:  # noqa: BLE001 - one picture that cannot be drawn or written: that image's row
        return error_row(loaded.path, loaded.category, f"could not write its overlay or map: {message(error)}")
    return row


def message(error: BaseException) -> str:
    """An exception in words for an `ERROR` row: its message, else its type's name."""
    return str(error) or type(error).__name__


__all__ = [
    "OVERLAY_MODES",
    "FinishSettings",
    "LoadedImage",
    "decided_row",
    "finish_image",
    "forward",
    "load_image",
    "message",
]
