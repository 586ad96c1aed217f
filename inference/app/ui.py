"""The inspection app's page (Gradio): upload, decision, overlay, raw map, threshold sliders, results table and CSV.

The model runs once per upload; the session keeps the maps, so the sliders and the category selector redraw masks,
boxes and decisions without running it again. Every handler turns a failure into a message in the page.

Example:
    ```python
    >>> demo = build_demo(load_served_model("outputs/run"), examples=checkpoint_examples("outputs/run"))
    >>> demo.launch(server_name="127.0.0.1", server_port=7860, **launch_options())
    ```
"""

import html
import logging
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import gradio as gr

from inference.app.model import ServedModel
from inference.app.results import (
    MAX_IMAGE_PIXELS,
    SLIDER_STEP,
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


def build_demo(served: ServedModel, examples: list[Path] = (), max_pixels: int = MAX_IMAGE_PIXELS) -> gr.Blocks:
    """The page for one loaded checkpoint.

    Args:
        served: The checkpoint (backend, processor, config).
        examples: Images offered as clickable examples.
        max_pixels: Larger uploads are refused with a message.

    Returns:
        The Gradio app; launch it with `launch_options()`.
    """
    config, examples = served.config, [str(path) for path in examples]
    csv_folder = tempfile.TemporaryDirectory(prefix="clipada-app-")
    image_start, pixel_start = slider_start(config, None)

    def view(results, selected, category, image_value, pixel_value):
        """Everything the page shows for the session's results at the sliders' thresholds."""
        category = None if category in (None, GLOBAL_CATEGORY) else category
        thresholds = slider_thresholds(config, category, image_value, pixel_value)
        rendered = render_results(results or [], thresholds, category)
        if not rendered:
            return _message(""), _placeholder(), None, None, gr.Gallery(value=None, visible=False), [], None
        selected = min(selected or 0, len(rendered) - 1)
        shown = rendered[selected]
        gallery = [(item.overlay, item.row["path"]) for item in rendered if item.overlay is not None]
        csv_path = write_predictions_csv([item.row for item in rendered], Path(csv_folder.name) / uuid.uuid4().hex)
        table = [[_cell(item.row[column]) for column in TABLE_COLUMNS] for item in rendered]
        return (
            _summary_message(rendered, thresholds.image),
            _verdict(shown.row),
            shown.overlay,
            shown.anomaly_map,
            gr.Gallery(value=gallery, visible=len(rendered) > 1, selected_index=None),
            table,
            gr.DownloadButton(value=str(csv_path), interactive=True),
        )

    def inspect(files, category, image_value, pixel_value):
        if not files:
            return None, 0, _message("Upload one or more images first.", "error"), *_empty_view()
        try:
            results = score_uploads(
                files,
                served.backend,
                served.processor,
                max_pixels=max_pixels,
                category=category or None,
            )
            return results, 0, *view(results, 0, category, image_value, pixel_value)
        except Exception as error:  # the page shows a message and the app keeps serving
            logger.exception("inspection failed")
            return None, 0, _message(f"The inspection failed: {html.escape(str(error))}", "error"), *_empty_view()

    def redraw(results, selected, category, image_value, pixel_value):
        try:
            return view(results, selected, category, image_value, pixel_value)
        except Exception as error:
            logger.exception("redrawing failed")
            return _message(f"Redrawing failed: {html.escape(str(error))}", "error"), *_empty_view()

    def choose_category(results, selected, category):
        image_value, pixel_value = slider_start(config, None if category == GLOBAL_CATEGORY else category)
        return (
            image_value,
            pixel_value,
            _threshold_note(served, category),
            *redraw(results, selected, category, image_value, pixel_value),
        )

    def inspect_example(category, image_value, pixel_value, event: gr.SelectData):
        return inspect([examples[event.index]], category, image_value, pixel_value)

    def choose_image(results, category, image_value, pixel_value, event: gr.SelectData):
        return event.index, *redraw(results, event.index, category, image_value, pixel_value)

    with gr.Blocks(title=f"{served.title} inspection", analytics_enabled=False) as demo:
        results_state, selected_state = gr.State(None), gr.State(0)
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
        inspected = [results_state, selected_state, *view_outputs]
        for event in (files.upload, inspect_button.click):
            event(inspect, [files, category, *sliders], inspected)
        files.clear(lambda: (None, 0, "", *_empty_view()), None, inspected)
        examples_gallery.select(inspect_example, [category, *sliders], inspected)
        for slider in sliders:
            slider.change(redraw, [results_state, selected_state, category, *sliders], view_outputs)
        category.change(choose_category, [results_state, selected_state, category], [*sliders, note, *view_outputs])
        reset_button.click(lambda category: slider_start(config, _category(category)), [category], sliders)
        gallery.select(choose_image, [results_state, category, *sliders], [selected_state, *view_outputs])
    demo.csv_folder = csv_folder  # kept alive (and deleted) with the app
    return demo


def launch_options() -> dict:
    """Keyword arguments of `demo.launch` that every deployment shares: look, upload limit, no telemetry."""
    return {"theme": gr.themes.Soft(primary_hue="blue", neutral_hue="slate"), "css": CSS, "ssr_mode": False,
            "max_file_size": MAX_FILE_SIZE}  # fmt: skip


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


__all__ = ["CSS", "GLOBAL_CATEGORY", "build_demo", "launch_options"]
