"""The exportable graph of a CLIP-ADA checkpoint: normalised pixels in; anomaly maps, scores and decisions out.

`CLIPADAExportGraph` calls the model's own methods for steps 2, 3 and 5 (`compute_stage_logits`,
`anomaly_map_and_score`) and the shared threshold decisions, with everything that does not depend on the image
frozen as buffers: the text embedding (the text tower is not in the graph) and the upsampling+smoothing matrices of
the fixed input size. Nothing on its path reads caches, storage pointers or tensor versions, so `torch.export`
traces it as it is. Thresholds are graph inputs, one per image, so they change after export without exporting again
(the runners read them from the export's JSON; see `inference.deploy.runners`).

Example:
    ```python
    >>> graph = CLIPADAExportGraph(model, image_size=(224, 224), with_thresholds=True)
    >>> program = export_program(graph)                       # dynamic batch, fixed H and W
    >>> write_onnx(program, Path("out/model.onnx"), opset=20, names=graph)
    >>> write_openvino(program, Path("out/model.xml"), names=graph, fp16=False)
    ```
"""

from pathlib import Path

import torch
from torch import nn

from inference.deploy.runners import ANOMALY_OUTPUTS, DECISION_OUTPUTS, THRESHOLD_INPUTS
from modeling_clipada import CLIPADAForAnomalySegmentation
from modeling_clipada.decisions import apply_thresholds


class CLIPADAExportGraph(nn.Module):
    """CLIP-ADA's inference at one input size, with the image-independent tensors frozen as buffers.

    Args:
        model: A CLIP-ADA model (float32, eval mode); its weights are shared, not copied.
        image_size: The fixed input `(H, W)`, multiples of the patch size.
        with_thresholds: Take `image_threshold` and `pixel_threshold` inputs and return `pred_label`, `pred_mask`.
    """

    def __init__(self, model: CLIPADAForAnomalySegmentation, image_size: tuple[int, int], with_thresholds: bool):
        super().__init__()
        self.model = model.eval()
        self.image_size = tuple(image_size)
        self.with_thresholds = with_thresholds
        patch = model.config.vision_config.patch_size
        grid = (self.image_size[0] // patch, self.image_size[1] // patch)
        with torch.no_grad():  # computed once, eagerly: the cache of `text_embedding` never meets the tracer
            self.register_buffer("text_embedding", model.text_embedding().detach().clone())
        # built eagerly here: traced, the matrices' lru_cache would keep the tracer's fake tensors. float32, as the
        # stage logits that `compute_stage_logits` returns.
        rows, columns = model.upsample_and_smooth_matrices(grid, self.image_size, model.device, torch.float32)
        self.register_buffer("upsample_rows", rows.clone())  # (H, h)
        self.register_buffer("upsample_columns", columns.clone())  # (W, w)

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("pixel_values", *THRESHOLD_INPUTS) if self.with_thresholds else ("pixel_values",)

    @property
    def output_names(self) -> tuple[str, ...]:
        return ANOMALY_OUTPUTS + DECISION_OUTPUTS if self.with_thresholds else ANOMALY_OUTPUTS

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_threshold: torch.Tensor | None = None,
        pixel_threshold: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The model's steps 2, 3 and 5 (its own methods), then the decisions.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised, at `image_size`.
            image_threshold: `(batch_size,)`, only with thresholds.
            pixel_threshold: `(batch_size,)`, only with thresholds.

        Returns:
            `anomaly_map` `(batch_size, H, W)`, `pred_score` `(batch_size,)`, and with thresholds `pred_label`
            `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool.
        """
        stage_logits = self.model.compute_stage_logits(pixel_values, self.text_embedding)
        anomaly_map, pred_score = self.model.anomaly_map_and_score(
            torch.sigmoid(stage_logits[-1]), self.image_size, (self.upsample_rows, self.upsample_columns)
        )
        if not self.with_thresholds:
            return anomaly_map, pred_score
        pred_label, pred_mask = apply_thresholds(anomaly_map, pred_score, image_threshold, pixel_threshold)
        return anomaly_map, pred_score, pred_label, pred_mask


def example_inputs(graph: CLIPADAExportGraph, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    """Zeros of the graph's input shapes: pixels `(batch_size, 3, H, W)` and thresholds `(batch_size,)`."""
    pixel_values = torch.zeros(batch_size, 3, *graph.image_size, dtype=graph.model.dtype)
    # distinct tensors with distinct values: the tracer must not take two inputs for one
    thresholds = (torch.full((batch_size,), 0.25), torch.full((batch_size,), 0.75)) if graph.with_thresholds else ()
    return (pixel_values, *thresholds)


def export_program(graph: CLIPADAExportGraph) -> torch.export.ExportedProgram:
    """`torch.export` of the graph with a dynamic batch dimension shared by every input.

    Returns:
        The exported program, from which both the ONNX and the OpenVINO files are written.
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    inputs = example_inputs(graph)
    with torch.no_grad():
        return torch.export.export(graph, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)


def write_onnx(program: torch.export.ExportedProgram, path: Path, opset: int, names: CLIPADAExportGraph) -> None:
    """The ONNX file of `program` (weights inside the file), written by torch's dynamo-based exporter.

    The exporter's constant folding transposes each linear weight once per use, i.e. once per refinement pass;
    identical initializers are merged again before saving (onnx_ir's `DeduplicateInitializersPass`), so the file
    holds every weight once. Node metadata (Python stack traces) is dropped.

    Args:
        program: From [`export_program`].
        path: The `.onnx` file to write.
        opset: The ONNX opset of the default domain.
        names: The graph, for its input and output names.
    """
    from onnx_ir.passes.common import ClearMetadataAndDocStringPass, DeduplicateInitializersPass

    onnx_program = torch.onnx.export(
        program,
        dynamo=True,
        opset_version=opset,
        input_names=list(names.input_names),
        output_names=list(names.output_names),
        external_data=False,
        verbose=False,
    )
    DeduplicateInitializersPass(size_limit=2**62)(onnx_program.model)
    ClearMetadataAndDocStringPass()(onnx_program.model)
    onnx_program.save(str(path), external_data=False)


def write_openvino(program: torch.export.ExportedProgram, path: Path, names: CLIPADAExportGraph, fp16: bool) -> None:
    """The OpenVINO IR of `program` (`path` = `.xml`, the weights beside it as `.bin`), from OpenVINO's converter.

    Converted from the exported program rather than from the ONNX file: OpenVINO 2026.4's CPU plugin rejects the
    ONNX graph's `MatMul` by the 1-D text embedding (its `MatMulMultiplyFusion` pass fails at compile time).

    Args:
        program: From [`export_program`].
        path: The `.xml` file to write.
        names: The graph, for its input and output names and its input size.
        fp16: Store the weights as float16 (computation stays in the runtime's precision).
    """
    import openvino

    ov_model = openvino.convert_model(program)
    for port, name in zip(ov_model.inputs, names.input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, names.output_names):
        port.get_tensor().set_names({name})
    ov_model.reshape({"pixel_values": openvino.PartialShape([-1, 3, *names.image_size])})
    openvino.save_model(ov_model, str(path), compress_to_fp16=fp16)


__all__ = [
    "ANOMALY_OUTPUTS",
    "DECISION_OUTPUTS",
    "THRESHOLD_INPUTS",
    "CLIPADAExportGraph",
    "example_inputs",
    "export_program",
    "write_onnx",
    "write_openvino",
]
