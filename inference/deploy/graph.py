"""The exportable graphs of every family: normalised pixels in; anomaly maps, scores and decisions out.

`CLIPADAExportGraph` calls the model's own methods for steps 2, 3 and 5 (`compute_stage_logits`,
`anomaly_map_and_score`) and the shared threshold decisions, with everything that does not depend on the image
frozen as buffers: the text embedding (the text tower is not in the graph) and the upsampling+smoothing matrices of
the fixed input size. `AnomalyCLIPExportGraph` folds its two text embeddings the same way and runs the model's
`image_features` (the DPAM path). `AdaCLIPExportGraph` keeps what depends on the image in the graph: the dynamic
prompts, the prompted vision pass, the text tower with each image's dynamic text tokens (only when the model has
them; otherwise each class name's text embeddings are a constant table) and the hybrid semantic fusion's k-means
(all `hsf_max_iterations` rounds: the eager model stops early once every image has settled, with the same labels);
each image's class name is the graph input `class_index`, an index into the names tokenised at export. Nothing on
the paths reads caches, storage pointers or tensor versions, so `torch.export` traces them as they are. Thresholds
are graph inputs, one per image, so they change after export without exporting again (the runners read them from
the export's JSON; see `inference.deploy.runners`). A checkpoint with a few-shot reference memory brings every
category's bank into the graph as constants (`inference.deploy.graph_memory`), each image's bank picked by the last
graph input, `memory_index`; the memory's map is fused with the family's as the eager model fuses it.

Example:
    ```python
    >>> graph = export_graph(model, image_size=(224, 224), with_thresholds=True)   # any family
    >>> program = export_program(graph)                       # dynamic batch, fixed H and W
    >>> write_onnx(program, Path("out/model.onnx"), opset=20, names=graph)
    >>> write_openvino(program, Path("out/model.xml"), names=graph, fp16=False)
    ```
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.deploy.graph_memory import ExportedMemory
from inference.deploy.runners import ANOMALY_OUTPUTS, CLASS_INPUT, DECISION_OUTPUTS, MEMORY_INPUT, THRESHOLD_INPUTS
from modeling_clipada import CLIPADAForAnomalySegmentation
from modeling_clipada.adaclip_fusion import hybrid_semantic_fusion
from modeling_clipada.adaclip_prompts import hybrid_prompts
from modeling_clipada.clip_parts import encode_prompted_text, upsample_and_smooth_matrices
from modeling_clipada.decisions import apply_thresholds
from modeling_clipada.reference_memory import fuse_maps, score_with_global


class ExportGraph(nn.Module):
    """What every family's graph shares: the fixed input size, the graph's input and output names, the decisions.

    Args:
        model: A model of this library (float32, eval mode); its weights are shared, not copied.
        image_size: The fixed input `(H, W)`, multiples of the patch size.
        with_thresholds: Take `image_threshold` and `pixel_threshold` inputs and return `pred_label`, `pred_mask`.

    Attributes:
        memory: The model's reference memory as constants ([`ExportedMemory`]), or None when it has none; with one,
            the graph's last input is `memory_index` `(batch_size,)` int64.
    """

    takes_class_index = False

    def __init__(self, model: nn.Module, image_size: tuple[int, int], with_thresholds: bool):
        super().__init__()
        self.model = model.eval()
        self.image_size = tuple(image_size)
        self.with_thresholds = with_thresholds
        patch = model.config.vision_config.patch_size
        self.grid = (self.image_size[0] // patch, self.image_size[1] // patch)
        memory = getattr(model, "reference_memory", None)
        self.memory = (
            ExportedMemory(memory, model.config.reference_distance_scale)
            if memory is not None and len(memory)
            else None
        )

    @property
    def takes_memory_index(self) -> bool:
        return self.memory is not None

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("pixel_values", CLASS_INPUT) if self.takes_class_index else ("pixel_values",)
        names = names + THRESHOLD_INPUTS if self.with_thresholds else names
        return names + (MEMORY_INPUT,) if self.takes_memory_index else names

    @property
    def output_names(self) -> tuple[str, ...]:
        return ANOMALY_OUTPUTS + DECISION_OUTPUTS if self.with_thresholds else ANOMALY_OUTPUTS

    def decide(
        self,
        anomaly_map: torch.Tensor,
        pred_score: torch.Tensor,
        image_threshold: torch.Tensor | None,
        pixel_threshold: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """`(anomaly_map, pred_score)`, and with thresholds `pred_label` `(B,)` and `pred_mask` `(B, H, W)` (bool)."""
        if not self.with_thresholds:
            return anomaly_map, pred_score
        pred_label, pred_mask = apply_thresholds(anomaly_map, pred_score, image_threshold, pixel_threshold)
        return anomaly_map, pred_score, pred_label, pred_mask

    def smoothing_buffers(self, grid: tuple[int, int], sigma: float, border: str) -> None:
        """Registers `upsample_rows` `(H, h)` and `upsample_columns` `(W, w)`: the model's upsampling + smoothing
        matrices (`clip_parts.upsample_and_smooth_matrices`), built eagerly here: traced, that function's cache would
        keep the tracer's fake tensors."""
        rows, columns = upsample_and_smooth_matrices(
            tuple(grid), self.image_size, float(sigma), self.model.device, torch.float32, border
        )
        self.register_buffer("upsample_rows", rows.clone())
        self.register_buffer("upsample_columns", columns.clone())


class CLIPADAExportGraph(ExportGraph):
    """CLIP-ADA's inference at one input size, with the image-independent tensors frozen as buffers.

    Args:
        model: A CLIP-ADA model (float32, eval mode); its weights are shared, not copied.
        image_size: The fixed input `(H, W)`, multiples of the patch size.
        with_thresholds: Take `image_threshold` and `pixel_threshold` inputs and return `pred_label`, `pred_mask`.
    """

    def __init__(self, model: CLIPADAForAnomalySegmentation, image_size: tuple[int, int], with_thresholds: bool):
        super().__init__(model, image_size, with_thresholds)
        with torch.no_grad():  # computed once, eagerly: the cache of `text_embedding` never meets the tracer
            self.register_buffer("text_embedding", model.text_embedding().detach().clone())
        # float32, as the stage logits that `compute_stage_logits` returns; the model's own "reflect" border
        rows, columns = model.upsample_and_smooth_matrices(self.grid, self.image_size, model.device, torch.float32)
        self.register_buffer("upsample_rows", rows.clone())  # (H, h)
        self.register_buffer("upsample_columns", columns.clone())  # (W, w)

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_threshold: torch.Tensor | None = None,
        pixel_threshold: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """The model's steps 2, 3 and 5 (its own methods), fused with the reference memory's map where the model
        has one, then the decisions.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised, at `image_size`.
            image_threshold: `(batch_size,)`, only with thresholds.
            pixel_threshold: `(batch_size,)`, only with thresholds.
            memory_index: `(batch_size,)` int64, each image's memory bank, only with a reference memory.

        Returns:
            `anomaly_map` `(batch_size, H, W)`, `pred_score` `(batch_size,)`, and with thresholds `pred_label`
            `(batch_size,)` bool and `pred_mask` `(batch_size, H, W)` bool.
        """
        model, matrices = self.model, (self.upsample_rows, self.upsample_columns)
        coarse_tokens = model.patch_features(pixel_values) if self.memory is not None else None
        stage_logits = model.compute_stage_logits(pixel_values, self.text_embedding, coarse_tokens)
        anomaly_map, pred_score = model.anomaly_map_and_score(
            torch.sigmoid(stage_logits[-1]), self.image_size, matrices
        )
        if self.memory is not None:  # as the model's forward: the coarse tokens' memory map, scored as before
            features = [F.normalize(model.patch_projections[0](coarse_tokens), dim=-1)]
            memory_map = self.memory.patch_map(features, memory_index, self.grid)
            memory_map = model.upsample_and_smooth(memory_map.to(anomaly_map.dtype), self.image_size, matrices)
            anomaly_map = fuse_maps(anomaly_map, memory_map, model.config.reference_fusion)
            pred_score = model.image_score(anomaly_map)
        return self.decide(anomaly_map, pred_score, image_threshold, pixel_threshold)


class AnomalyCLIPExportGraph(ExportGraph):
    """AnomalyCLIP's inference at one input size: its two text embeddings folded into a `(2, projection_dim)`
    constant (the text tower is not in the graph), the vision tower's original and DPAM paths in it.

    Args:
        model: An AnomalyCLIP model (float32, eval mode).
        image_size: The fixed input `(H, W)`, multiples of the patch size.
        with_thresholds: Take threshold inputs and return decisions.
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int], with_thresholds: bool):
        super().__init__(model, image_size, with_thresholds)
        with torch.no_grad():
            self.register_buffer("text_embeddings", model.text_embeddings().detach().float().clone())  # (2, D)
        self.smoothing_buffers(self.grid, model.config.smoothing_sigma, "symmetric")

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_threshold: torch.Tensor | None = None,
        pixel_threshold: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """AnomalyCLIP's steps 2, 3 and 5 (`AnomalyCLIPForAnomalySegmentation.forward` without the loss).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised, at `image_size`.
            image_threshold, pixel_threshold: `(batch_size,)` each, only with thresholds.
            memory_index: `(batch_size,)` int64, each image's memory bank, only with a reference memory.

        Returns:
            As [`CLIPADAExportGraph.forward`].
        """
        temperature = self.model.config.similarity_temperature
        text = self.text_embeddings
        global_embedding, patch_embeddings = self.model.image_features(pixel_values)
        logits = (F.normalize(global_embedding, dim=-1) @ text.T).float() / temperature
        layer_probabilities = [
            ((F.normalize(patches, dim=-1) @ text.T).float() / temperature)
            .transpose(1, 2)
            .reshape(-1, 2, *self.grid)
            .softmax(dim=1)
            for patches in patch_embeddings
        ]
        patch_map = sum((p[:, 1] + 1 - p[:, 0]) / 2 for p in layer_probabilities) / len(layer_probabilities)
        anomaly_map = self.upsample_rows @ patch_map @ self.upsample_columns.T
        pred_score = logits.softmax(dim=-1)[:, 1]
        if self.memory is not None:  # few-shot: fused with the reference memory's map
            features = [F.normalize(patches, dim=-1) for patches in patch_embeddings]
            memory_map = self.memory.patch_map(features, memory_index, self.grid).to(anomaly_map.dtype)
            memory_map = self.upsample_rows @ memory_map @ self.upsample_columns.T
            anomaly_map = fuse_maps(anomaly_map, memory_map, self.model.config.reference_fusion)
            pred_score = score_with_global(pred_score, memory_map)
        return self.decide(anomaly_map, pred_score, image_threshold, pixel_threshold)


class AdaCLIPExportGraph(ExportGraph):
    """AdaCLIP's inference at one input size, everything that depends on the image inside the graph.

    Each image's class name is an index into `class_names` (graph input `class_index`). With dynamic text prompts
    the text tower runs in the graph on the token embeddings of every class name's state x template sentences
    (a `(names, sentences, length, width)` constant, zero-padded to one length: causal attention never lets the
    padding reach the end token); without them the text embeddings are a `(names, 2, projection_dim)` constant.

    Args:
        model: An AdaCLIP model (float32, eval mode) that has tokenised every name of `class_names`.
        image_size: The fixed input `(H, W)`, multiples of the patch size.
        with_thresholds: Take threshold inputs and return decisions.
        class_names: The names `class_index` indexes, each in `model.config.prompt_token_ids`.
    """

    takes_class_index = True

    def __init__(
        self, model: nn.Module, image_size: tuple[int, int], with_thresholds: bool, class_names: Sequence[str]
    ):
        super().__init__(model, image_size, with_thresholds)
        config = model.config
        self.class_names = list(class_names)
        self.dynamic_text = config.text_prompts and model.dynamic_text_prompt_generator is not None
        with torch.no_grad():
            if self.dynamic_text:
                sentences = [ids for name in self.class_names for ids in config.prompt_token_ids[name]]
                length = max(1 + config.prompt_length, *(len(ids) for ids in sentences))
                padded = torch.tensor([ids + [0] * (length - len(ids)) for ids in sentences], device=model.device)
                embeds = model.clip.text_model.embeddings.token_embedding(padded)
                self.register_buffer("sentence_embeds", embeds.view(len(self.class_names), -1, *embeds.shape[1:]))
                ends = torch.tensor([len(ids) - 1 for ids in sentences], device=model.device)
                self.register_buffer("sentence_ends", ends.view(len(self.class_names), -1))
            else:
                table = model.text_embeddings(self.class_names, None).detach().float().clone()
                self.register_buffer("text_table", table)  # (names, 2, D)
        self.smooths = config.smoothing_sigma > 0
        if self.smooths:
            self.smoothing_buffers(self.image_size, config.smoothing_sigma, "symmetric")

    def text_embeddings(self, class_index: torch.Tensor, dynamic_text: torch.Tensor | None) -> torch.Tensor:
        """Each image's normal and abnormal text embeddings (`AdaCLIPForAnomalySegmentation.text_embeddings`).

        Args:
            class_index: `(batch_size,)` int64 indices into `class_names`.
            dynamic_text: `(batch_size, n, text_width)` dynamic text tokens, or None.

        Returns:
            `(batch_size, 2, projection_dim)`, L2-normalised.
        """
        if not self.dynamic_text:
            return self.text_table[class_index]
        model, config = self.model, self.model.config
        num_sentences = config.num_sentences
        deep_prompts = hybrid_prompts(model.static_text_prompts, dynamic_text, config.prompt_depth - 1)
        deep_prompts = deep_prompts.repeat_interleave(num_sentences, dim=1)  # one set per sentence of each image
        if getattr(config, "official_fp16_prompts", False):  # each copy rounded to float16, as the eager model does
            deep_prompts = round_to_float16(deep_prompts)
        text = encode_prompted_text(
            model.clip.text_model, model.clip.text_projection, self.sentence_embeds[class_index].flatten(0, 1),
            self.sentence_ends[class_index].flatten(), deep_prompts,
        )  # fmt: skip
        text = F.normalize(text, dim=-1).view(-1, num_sentences, text.shape[-1])
        num_normal = len(config.normal_states) * len(config.prompt_templates)
        states = [text[:, :num_normal].mean(dim=1), text[:, num_normal:].mean(dim=1)]
        return F.normalize(torch.stack(states, dim=1), dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        class_index: torch.Tensor,
        image_threshold: torch.Tensor | None = None,
        pixel_threshold: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """AdaCLIP's steps 1 to 4 and 6 (`AdaCLIPForAnomalySegmentation.forward` without the loss).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised, at `image_size`.
            class_index: `(batch_size,)` int64, each image's index into `class_names`.
            image_threshold, pixel_threshold: `(batch_size,)` each, only with thresholds.
            memory_index: `(batch_size,)` int64, each image's memory bank, only with a reference memory.

        Returns:
            As [`CLIPADAExportGraph.forward`].
        """
        model, config = self.model, self.model.config
        # step 1: dynamic prompts; step 2: the prompted vision pass, projected to the text space
        dynamic_text, dynamic_visual = model.generate_dynamic_prompts(pixel_values)
        visual_prompts = None
        if config.visual_prompts:
            visual_prompts = hybrid_prompts(model.static_visual_prompts, dynamic_visual, config.prompt_depth)
            if getattr(config, "official_fp16_prompts", False):  # already float16 values: the model's cast keeps them
                visual_prompts = round_to_float16(visual_prompts)
        class_embedding, patch_tokens = model.image_features(pixel_values, visual_prompts)
        image_embedding = F.normalize(model.class_projection(class_embedding), dim=-1)
        patch_embeddings = [
            F.normalize(projection(tokens), dim=-1) for projection, tokens in zip(model.patch_projections, patch_tokens)
        ]
        # step 3: text; step 4: similarities, the image's fused with HSF
        text = self.text_embeddings(class_index, dynamic_text).transpose(1, 2)  # (B, D, 2)
        scale = config.similarity_scale
        patch_logits = [scale * patches @ text for patches in patch_embeddings]  # each (B, h * w, 2)
        if config.use_hsf:
            fused = hybrid_semantic_fusion(
                patch_embeddings, patch_logits, config.hsf_num_clusters, config.hsf_num_patches,
                config.hsf_max_iterations, config.hsf_tolerance,
            )  # fmt: skip
            image_embedding = F.normalize(config.hsf_weight * fused + (1 - config.hsf_weight) * image_embedding, dim=-1)
        logits = scale * (image_embedding[:, None] @ text)[:, 0]
        # step 6: the layers' logits averaged, upsampled with aligned corners, softmax, smoothed
        layer_logits = torch.stack([layer.transpose(1, 2).reshape(-1, 2, *self.grid) for layer in patch_logits])
        upsampled = F.interpolate(layer_logits.mean(dim=0), size=self.image_size, mode="bilinear", align_corners=True)
        probabilities = upsampled.softmax(dim=1)
        anomaly_map = (probabilities[:, 1] + 1 - probabilities[:, 0]) / 2
        if self.smooths:
            anomaly_map = self.upsample_rows @ anomaly_map @ self.upsample_columns.T
        pred_score = logits.softmax(dim=-1)[:, 1]
        if self.memory is not None:  # few-shot: fused with the reference memory's map
            memory_map = self.memory.patch_map(patch_embeddings, memory_index, self.grid).to(anomaly_map.dtype)
            memory_map = F.interpolate(memory_map[:, None], size=self.image_size, mode="bilinear", align_corners=True)
            memory_map = memory_map[:, 0]
            if self.smooths:
                memory_map = self.upsample_rows @ memory_map @ self.upsample_columns.T
            anomaly_map = fuse_maps(anomaly_map, memory_map, config.reference_fusion)
            pred_score = score_with_global(pred_score, memory_map)
        return self.decide(anomaly_map, pred_score, image_threshold, pixel_threshold)


def round_to_float16(values: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to float16's 11 significant bits in float32 arithmetic (Veltkamp's split).

    The official numerics round AdaCLIP's prompts to float16 and back (`x.half().float()`); OpenVINO's CPU plugin
    removes such a pair of conversions as a no-op, so the graph rounds with arithmetic it keeps: `c = 8193 x`,
    `c - (c - x)`. The same value as the cast, except for exact ties (the last kept bit may differ) and values
    below float16's normal range (6.1e-5, kept to 11 bits where float16 has fewer): differences of one float16 step.

    Args:
        values: float32, any shape, within float16's range.

    Returns:
        The rounded values, float32, same shape.
    """
    scaled = values * 8193.0  # 2**13 + 1: splits 24 significant bits into 11 + 13
    return scaled - (scaled - values)


GRAPHS = {"clipada": CLIPADAExportGraph, "anomalyclip": AnomalyCLIPExportGraph, "adaclip": AdaCLIPExportGraph}


def export_graph(
    model: nn.Module, image_size: tuple[int, int], with_thresholds: bool, class_names: Sequence[str] | None = None
) -> ExportGraph:
    """The export graph of `model`'s family (`config.model_type`).

    Args:
        model: A model of this library, float32, eval mode.
        image_size: The fixed input `(H, W)`.
        with_thresholds: Thresholds as inputs, decisions as outputs.
        class_names: AdaCLIP only: the class names `class_index` indexes (default: every name the model tokenised,
            `config.default_class_name` first).

    Raises:
        ValueError: A model of another type, a class name the model has not tokenised, or AdaCLIP with the random
            k-means start (`hsf_init="k-means++"`).
    """
    model_type = model.config.model_type
    if model_type not in GRAPHS:
        raise ValueError(f"no export graph for model type {model_type!r}; exportable: {', '.join(GRAPHS)}")
    if not GRAPHS[model_type].takes_class_index:
        return GRAPHS[model_type](model, image_size, with_thresholds)
    if getattr(model.config, "hsf_init", "farthest_point") != "farthest_point":
        raise ValueError(
            f"hsf_init={model.config.hsf_init!r} starts k-means from random draws, which an exported graph cannot "
            "repeat; export with the deterministic start (hsf_init='farthest_point')"
        )
    known = list(model.config.prompt_token_ids or {})
    default = model.config.default_class_name
    names = list(class_names) if class_names is not None else [default, *(n for n in known if n != default)]
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"class names {missing} were not tokenised by the model (it knows {known})")
    return GRAPHS[model_type](model, image_size, with_thresholds, names)


def example_inputs(graph: ExportGraph, batch_size: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the graph's shapes, in the order of `graph.input_names`: zero pixels `(batch_size, 3, H, W)`, class
    indices, thresholds and memory indices `(batch_size,)`."""
    pixel_values = torch.zeros(batch_size, 3, *graph.image_size, dtype=graph.model.dtype)
    # distinct tensors with distinct values: the tracer must not take two inputs for one
    thresholds = (torch.full((batch_size,), 0.25), torch.full((batch_size,), 0.75)) if graph.with_thresholds else ()
    classes = (torch.arange(batch_size, dtype=torch.int64) % len(graph.class_names),) if graph.takes_class_index else ()
    memory = (torch.arange(batch_size, dtype=torch.int64) % len(graph.memory.categories),) if graph.memory else ()
    return (pixel_values, *classes, *thresholds, *memory)


def export_program(graph: ExportGraph) -> torch.export.ExportedProgram:
    """`torch.export` of the graph with a dynamic batch dimension shared by every input.

    A graph with a reference memory takes its inputs by name (`memory_index` comes last, after inputs that may be
    absent); the others by position.

    Returns:
        The exported program, from which both the ONNX and the OpenVINO files are written.
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    inputs = example_inputs(graph)
    with torch.no_grad():
        if graph.takes_memory_index:
            named = dict(zip(graph.input_names, inputs))
            shapes = {name: {0: batch} for name in named}
            return torch.export.export(graph, (), kwargs=named, dynamic_shapes=shapes, strict=False)
        return torch.export.export(graph, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs), strict=False)


def write_onnx(program: torch.export.ExportedProgram, path: Path, opset: int, names: ExportGraph) -> None:
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


def write_openvino(program: torch.export.ExportedProgram, path: Path, names: ExportGraph, fp16: bool) -> None:
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
    "CLASS_INPUT",
    "DECISION_OUTPUTS",
    "GRAPHS",
    "THRESHOLD_INPUTS",
    "AdaCLIPExportGraph",
    "AnomalyCLIPExportGraph",
    "CLIPADAExportGraph",
    "ExportGraph",
    "example_inputs",
    "export_graph",
    "round_to_float16",
    "export_program",
    "write_onnx",
    "write_openvino",
]
