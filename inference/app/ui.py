"""The inspection app's page (Gradio): upload, decision, overlay, raw map, threshold sliders, results table and CSV.

The model runs once per upload; the session keeps the maps, so the sliders and the category selector redraw masks,
boxes and decisions without running it again. Every handler turns a failure into a message in the page.

Example:
    ```python
    >>> demo = build_demo(load_served_model("outputs/run"), examples=checkpoint_examples("outputs/run"))
    >>> demo.launch(server_name="127.0.0.1", server_port=7860, **launch_options())
    ```
"""

import contextlib
import html
import logging
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from inference.app.model import EXAMPLES_FOLDER, ServedModel, copy_examples
from inference.app.results import (
    MAX_IMAGE_PIXELS,
    SLIDER_STEP,
    ScoredImage,
    calibrated_thresholds,
    render_results,
    score_uploads,
    slider_start,
    slider_thresholds,
    write_predictions_csv,
)
from inference.predict.rows import COLUMNS

GLOBAL_CATEGORY = "(all categories: global thresholds)"
# the page's table: predict's columns that say something here (the CSV has them all)
TABLE_COLUMNS = [column for column in COLUMNS if column not in ("category", "overlay", "map", "width", "height")]
IMAGE_HEIGHT = 430
MAX_FILE_SIZE = "100mb"
INSPECTIONS_FOLDER = "inspections"  # in the app's temporary folder: one sub-folder per session's inspection
# Gradio's copies of uploads, overlays and CSVs: removed an hour after they were made, and all when the app stops
DELETE_CACHE = (3600, 3600)
CONCURRENCY_ID = "inspection"  # scoring and redrawing run one at a time: a CSV is never rewritten while it is copied
CSS = """
.gradio-container {max-width: 1440px !important; margin: auto;}
#app-header h1 {font-size: 1.6rem; margin: 0 0 0.2rem 0;}
#app-header p {color: var(--body-text-color-subdued); margin: 0;}
.verdict {display: flex; align-items: center; gap: 1.2rem; padding: 0.9rem 1.1rem; border-radius: 10px;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary);}
.verdict .badge {font-size: 1.9rem; font-weight: 700; color: white; padding: 0.3rem 1.1rem; border-radius: 8px;}
.verdict .name {font-weight: 600; font-size: 1.05rem;}
.verdict .facts, .verdict .boxes {color: var(--body-text-color-subdued); font-size: 0.92rem;}
.message {padding: 0.6rem 0.9rem; border-radius: 8px; font-size: 0.95rem;}
.message.error {background: #fdecea; color: #8c1d18; border: 1px solid #f5c2bd;}
.message.info {background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary);}
#overlay img, #anomaly-map img {width: 100%; height: 100%; object-fit: contain;}
.caption p {margin: 0 0 0.2rem 0; font-size: 0.92rem;}
.placeholder {color: var(--body-text-color-subdued); padding: 1.2rem; text-align: center;}
"""
BADGE_COLOURS = {"OK": "#2e7d32", "NG": "#c62828"}
logger = logging.getLogger(__name__)


@dataclass
class Inspection:
    """One session's inspected uploads, kept in the page's state.

    Attributes:
        results: The uploads scored by `score_uploads`.
        folder: Where this inspection's `predictions.csv` is written, replaced at every redraw.
    """

    results: list[ScoredImage]
    folder: Path


def forget_inspection(inspection: Inspection | None) -> None:
    """Removes an inspection's CSV folder (a session's earlier inspection, or a closed session's)."""
    if isinstance(inspection, Inspection):
        shutil.rmtree(inspection.folder, ignore_errors=True)


def build_demo(served: ServedModel, examples: list[Path] = (), max_pixels: int = MAX_IMAGE_PIXELS) -> gr.Blocks:
    """The page for one loaded checkpoint.

    The app's own temporary folder (`demo.workspace`, removed by [`serve`] when the app stops) holds copies of the
    examples, the only files Gradio may serve besides its own cache, and one CSV folder per session's inspection.

    Args:
        served: The checkpoint (backend, processor, config).
        examples: Images offered as clickable examples.
        max_pixels: Larger uploads are refused with a message.

    Returns:
        The Gradio app; serve it with [`serve`] (or `demo.launch(**launch_options(demo))`).

    Raises:
        inference.predict.inputs.InputError: An example that is not an image file, naming it.
    """
    config = served.config
    workspace = tempfile.TemporaryDirectory(prefix="clipada-app-")
    try:
        examples = [str(path) for path in copy_examples(list(examples), Path(workspace.name) / EXAMPLES_FOLDER)]
    except BaseException:
        workspace.cleanup()
        raise
    inspections = Path(workspace.name) / INSPECTIONS_FOLDER
    image_start, pixel_start = slider_start(config, None)

    def view(inspection, selected, category, image_value, pixel_value):
        """Everything the page shows for the session's results at the sliders' thresholds."""
        category = _category(category)
        thresholds = slider_thresholds(config, category, image_value, pixel_value)
        rendered = render_results(inspection.results if inspection else [], thresholds, category)
        if not rendered:
            return _message(""), _placeholder(), None, None, gr.Gallery(value=None, visible=False), [], None
        selected = min(selected or 0, len(rendered) - 1)
        shown = rendered[selected]
        gallery = [(item.overlay, item.row["path"]) for item in rendered if item.overlay is not None]
        csv_path = write_predictions_csv([item.row for item in rendered], inspection.folder)
        table = [[_cell(item.row[column]) for column in TABLE_COLUMNS] for item in rendered]
        return (
            _summary_message(rendered, thresholds.image),
            _verdict(shown.row),
            shown.overlay,
            shown.anomaly_map,
            gr.Gallery(value=gallery or None, visible=len(rendered) > 1, selected_index=None),
            table,
            gr.DownloadButton(value=str(csv_path), interactive=True),
        )

    def inspect(earlier, files, category, image_value, pixel_value):
        forget_inspection(earlier)
        if not files:
            return None, 0, _message("Upload one or more images first.", "error"), *_empty_view()
        try:
            results = score_uploads(
                files,
                served.backend,
                served.processor,
                max_pixels=max_pixels,
                category=_category(category),
            )
            inspection = Inspection(results, inspections / uuid.uuid4().hex)
            return inspection, 0, *view(inspection, 0, category, image_value, pixel_value)
        except Exception as error:  # the page shows a message and the app keeps serving
            logger.exception("inspection failed")
            return None, 0, _message(f"The inspection failed: {html.escape(str(error))}", "error"), *_empty_view()

    def redraw(inspection, selected, category, image_value, pixel_value):
        try:
            return view(inspection, selected, category, image_value, pixel_value)
        except Exception as error:
            logger.exception("redrawing failed")
            return _message(f"Redrawing failed: {html.escape(str(error))}", "error"), *_empty_view()

    def choose_category(inspection, selected, category):
        image_value, pixel_value = slider_start(config, _category(category))
        return (
            image_value,
            pixel_value,
            _threshold_note(served, category),
            *redraw(inspection, selected, category, image_value, pixel_value),
        )

    def inspect_example(earlier, category, image_value, pixel_value, event: gr.SelectData):
        return inspect(earlier, [examples[event.index]], category, image_value, pixel_value)

    def choose_image(inspection, category, image_value, pixel_value, event: gr.SelectData):
        return event.index, *redraw(inspection, event.index, category, image_value, pixel_value)

    def clear(earlier):
        forget_inspection(earlier)
        return None, 0, "", *_empty_view()

    with gr.Blocks(title=f"{served.title} inspection", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        inspection_state, selected_state = gr.State(None, delete_callback=forget_inspection), gr.State(0)
        gr.HTML(_header(served), elem_id="app-header")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=320):
                files = gr.File(label="Images to inspect", file_count="multiple", type="filepath", elem_id="upload")
                inspect_button = gr.Button("Inspect", variant="primary", elem_id="inspect")
                examples_gallery = gr.Gallery(
                    value=examples or None, label="Examples: click one to inspect it", columns=3, height=170,
                    object_fit="contain", allow_preview=False, visible=bool(examples), elem_id="examples",
                )  # fmt: skip
                category = gr.Dropdown(
                    [GLOBAL_CATEGORY, *served.categories], value=GLOBAL_CATEGORY, label="Category",
                    info="Categories calibrated with their own thresholds", visible=bool(served.categories),
                    elem_id="category",
                )  # fmt: skip
                image_slider = gr.Slider(
                    0, 1, value=image_start, step=SLIDER_STEP, label="Image threshold: OK/NG decision",
                    elem_id="image-threshold",
                )  # fmt: skip
                pixel_slider = gr.Slider(
                    0, 1, value=pixel_start, step=SLIDER_STEP, label="Pixel threshold: anomalous regions and boxes",
                    elem_id="pixel-threshold",
                )  # fmt: skip
                note = gr.Markdown(_threshold_note(served, GLOBAL_CATEGORY), elem_id="threshold-note")
                reset_button = gr.Button("Reset thresholds to calibrated", size="sm")
            with gr.Column(scale=9):
                message = gr.HTML(elem_id="message")
                verdict = gr.HTML(_placeholder(), elem_id="verdict")
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("**Overlay**: contour at the pixel threshold", elem_classes="caption")
                        overlay = gr.Image(
                            type="pil", format="png", interactive=False, show_label=False, height=IMAGE_HEIGHT,
                            elem_id="overlay",
                        )  # fmt: skip
                    with gr.Column():
                        gr.Markdown("**Anomaly map**: fixed scale, black 0 to yellow 1", elem_classes="caption")
                        raw_map = gr.Image(
                            type="pil", format="png", interactive=False, show_label=False, height=IMAGE_HEIGHT,
                            elem_id="anomaly-map",
                        )  # fmt: skip
                gallery = gr.Gallery(
                    label="All images: click one for details", columns=6, height=200, allow_preview=False,
                    visible=False, elem_id="gallery",
                )  # fmt: skip
                table = gr.Dataframe(
                    headers=TABLE_COLUMNS, label="Results (the CSV holds every column of clipada-predict)",
                    interactive=False, wrap=False, max_height=320, elem_id="results",
                )  # fmt: skip
                download = gr.DownloadButton("Download CSV", interactive=False, elem_id="download-csv")

        sliders = [image_slider, pixel_slider]
        view_outputs = [message, verdict, overlay, raw_map, gallery, table, download]
        inspected = [inspection_state, selected_state, *view_outputs]
        one_at_a_time = {"concurrency_id": CONCURRENCY_ID, "concurrency_limit": 1}
        for event in (files.upload, inspect_button.click):
            event(inspect, [inspection_state, files, category, *sliders], inspected, **one_at_a_time)
        files.clear(clear, [inspection_state], inspected, **one_at_a_time)
        examples_gallery.select(inspect_example, [inspection_state, category, *sliders], inspected, **one_at_a_time)
        for slider in sliders:
            slider.change(redraw, [inspection_state, selected_state, category, *sliders], view_outputs, **one_at_a_time)
        category.change(
            choose_category, [inspection_state, selected_state, category], [*sliders, note, *view_outputs],
            **one_at_a_time,
        )  # fmt: skip
        reset_button.click(lambda category: slider_start(config, _category(category)), [category], sliders)
        gallery.select(
            choose_image, [inspection_state, category, *sliders], [selected_state, *view_outputs], **one_at_a_time
        )
    demo.workspace = workspace  # removed by serve() when the app stops (and at the latest when Python exits)
    demo.examples_folder = Path(workspace.name) / EXAMPLES_FOLDER
    return demo


def launch_options(demo: gr.Blocks) -> dict:
    """Keyword arguments of `demo.launch` that every deployment shares: look, upload limit, and the one folder
    Gradio may serve files from besides its own cache (the copies of the examples)."""
    return {"theme": gr.themes.Soft(primary_hue="blue", neutral_hue="slate"), "css": CSS, "ssr_mode": False,
            "max_file_size": MAX_FILE_SIZE, "allowed_paths": [str(demo.examples_folder)]}  # fmt: skip


def serve(demo: gr.Blocks, host: str | None = None, port: int | None = None) -> None:
    """Serves the page until Ctrl-C or SIGTERM, then removes the app's temporary folder (uploads' names, CSVs).

    Args:
        demo: From [`build_demo`].
        host, port: Where to serve; None: Gradio's defaults (and a Space's `GRADIO_SERVER_NAME`/`_PORT`).

    Raises:
        KeyboardInterrupt: After Ctrl-C, once the server stopped and the folder is gone.
        SystemExit: 143 after SIGTERM, likewise.
        OSError: The port is taken or the address is not this machine's.
    """
    stopped_by = []

    def stop(signum, frame):
        stopped_by.append(signum)
        raise KeyboardInterrupt  # Gradio's launch closes the server on it and returns

    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {number: signal.signal(number, stop) for number in handled}  # signals reach the main thread only
    try:
        demo.launch(server_name=host, server_port=port, **launch_options(demo))
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        demo.workspace.cleanup()
        remove_cached_files(demo)
    if signal.SIGTERM in stopped_by:
        print("clipada app: stopped (SIGTERM); its temporary files are removed", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM)
    if stopped_by:
        raise KeyboardInterrupt


def remove_cached_files(demo: gr.Blocks) -> None:
    """Removes the files Gradio copied into its cache for this app (uploads under their own names, overlays, CSVs),
    and their folders once empty: Gradio's `delete_cache` does not run when the server is stopped by a signal."""
    for files in demo.temp_file_sets:
        for file in list(files):
            path = Path(file)
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # the folder still holds another app's file
                path.parent.rmdir()
            files.discard(file)


def _category(category: str | None) -> str | None:
    return None if category in (None, GLOBAL_CATEGORY) else category


def _header(served: ServedModel) -> str:
    size = served.processor.size
    facts = [f"model <code>{html.escape(served.name)}</code>", f"input {size['width']}x{size['height']} px"]
    if served.categories:
        facts.append(f"own thresholds for {html.escape(', '.join(served.categories))}")
    return f"<h1>{html.escape(served.title)} anomaly inspection</h1><p>{' · '.join(facts)}</p>"


def _threshold_note(served: ServedModel, category: str | None) -> str:
    """What the sliders start from: the calibrated thresholds, or why there are none (none calibrated, or calibrated
    in another mode than the app's: `served.thresholds_note`)."""
    if served.thresholds_note:
        return f"**Calibrated thresholds not applied**: {html.escape(served.thresholds_note)}."
    thresholds = calibrated_thresholds(served.config, _category(category))
    if thresholds.image is None:
        return "This checkpoint has **no calibrated thresholds**: decisions use the sliders' values."
    pixel = "none" if thresholds.pixel is None else f"{thresholds.pixel:.4f}"
    return f"Calibrated ({thresholds.source}): image {thresholds.image:.4f} · pixel {pixel}"


def _verdict(row: dict) -> str:
    """The selected image's decision badge, score, thresholds, area and boxes."""
    name = html.escape(row["path"])
    if row["decision"] == "ERROR":
        return _message(f"{name}: {html.escape(row['error'])}", "error")
    facts = [f"score {row['score']:.3f}"]
    if row["image_threshold"] is not None:
        facts.append(f"image threshold {row['image_threshold']:.4f} ({_image_source(row['threshold_source'])})")
    boxes = ""
    if row["anomalous_area"] is not None:
        facts.append(f"{row['num_regions']} region(s), {row['anomalous_area'] * 100:.2f} % of the image")
        listed = ", ".join(str(box) for box in row["boxes"]) or "none"
        boxes = f"<div class='boxes'>boxes [x_min, y_min, x_max, y_max]: {html.escape(listed)}</div>"
    colour = BADGE_COLOURS.get(row["decision"], "#616161")
    return (
        f"<div class='verdict'><span class='badge' style='background:{colour}'>{row['decision']}</span>"
        f"<div><div class='name'>{name}</div><div class='facts'>{' · '.join(facts)}</div>{boxes}</div></div>"
    )


def _image_source(threshold_source: str) -> str:
    """Where the image threshold came from, in words (`image:override,pixel:global` -> `set by the slider`)."""
    sources = dict(part.split(":", 1) for part in threshold_source.split(",")) if ":" in threshold_source else {}
    source = sources.get("image", threshold_source)
    return {"override": "set by the slider", "category": "calibrated for the category"}.get(source, "calibrated")


def _summary_message(rendered, image_threshold) -> str:
    counts = Counter(item.row["decision"] for item in rendered)
    errors = [f"{html.escape(item.row['error'])}" for item in rendered if item.row["decision"] == "ERROR"]
    summary = ", ".join(f"{counts[key]} {key}" for key in ("NG", "OK", "UNCALIBRATED", "ERROR") if counts[key])
    text = f"{len(rendered)} image(s): {summary}"
    if errors:
        return _message(text + "<br>" + "<br>".join(errors), "error")
    return _message(text, "info")


def _message(text: str, kind: str = "info") -> str:
    return f"<div class='message {kind}'>{text}</div>" if text else ""


def _placeholder() -> str:
    return "<div class='placeholder'>Upload images or pick an example: the decision and the overlay appear here.</div>"


def _empty_view() -> tuple:
    return _placeholder(), None, None, gr.Gallery(value=None, visible=False), [], gr.DownloadButton(interactive=False)


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return round(value, 4)
    return str(value) if isinstance(value, list) else value


__all__ = ["CSS", "GLOBAL_CATEGORY", "Inspection", "build_demo", "forget_inspection", "launch_options", "serve"]
