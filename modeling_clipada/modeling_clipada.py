"""CLIP-ADA: anomaly segmentation by adapting a frozen CLIP with learnable prompts and linear projections.

The method, in the paper's order (Cai et al., arXiv 2403.09493); the section banners below and the comments in
`forward` use the same step numbers:
1. text embedding: M learnable prompt vectors are inserted into a fixed template; the frozen text tower turns it
   into ONE text embedding t (computed once per weight update, never per image);
2. coarse map: patch tokens of vision layer `feature_layer` -> linear projection W0 -> cosine similarity with t
   -> learnable scale and bias -> sigmoid;
3. refinement (R times): the previous map, upsampled, is multiplied into the normalised pixels, which are
   encoded again (up to the same layer) and projected by a new W_r;
4. loss: BCE of every stage against the mask resized to the patch grid;
5. post-processing: bilinear upsampling, Gaussian smoothing, top-k mean as the image score.

Example:
    ```python
    >>> from modeling_clipada import CLIPADAForAnomalySegmentation
    >>> model = CLIPADAForAnomalySegmentation.from_clip("openai/clip-vit-base-patch16", num_refinements=1)
    >>> outputs = model(pixel_values)        # pixel_values (B, 3, 224, 224), CLIP-normalised
    >>> outputs.anomaly_map.shape, outputs.pred_score.shape
    (torch.Size([B, 224, 224]), torch.Size([B]))
    ```
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTokenizer
from transformers import initialization as init
from transformers.utils import ModelOutput

from .clip_parts import check_masks, check_pixel_values, encode_prompted_text
from .clip_parts import upsample_and_smooth_matrices as _upsample_and_smooth_matrices
from .configuration_clipada import PROMPT_MARKER, CLIPADAConfig
from .decisions import apply_thresholds, normalize_scores, per_image_thresholds
from .pretrained import AnomalyDetectionPreTrainedModel
from .reference_memory import ReferenceMemory, fuse_maps, memory_patch_map


@dataclass
class CLIPADAOutput(ModelOutput):
    """Output of [`CLIPADAForAnomalySegmentation`]; (h, w) = (H / patch_size, W / patch_size) is the patch grid.

    Attributes:
        loss: `()`, only when `labels` are given: `bce(stage 0) + refinement_loss_weight * sum_r bce(stage r)`,
            each against the mask resized to (h, w).
        logits: `(batch_size, h, w)`, anomaly logits of the final stage, before the sigmoid.
        stage_logits: R + 1 tensors `(batch_size, h, w)`, the logits of every stage, coarse first.
        anomaly_map: `(batch_size, H, W)`, final anomaly probabilities at the input resolution (bilinear
            upsampling, then Gaussian smoothing).
        pred_score: `(batch_size,)`, image anomaly score: mean of the `image_score_top_k` highest values of each
            `anomaly_map`.
        pred_label: `(batch_size,)` bool, only with calibrated thresholds: `pred_score >= image_threshold`.
        pred_mask: `(batch_size, H, W)` bool, only with calibrated thresholds: `anomaly_map >= pixel_threshold`.
        pred_score_normalized: `(batch_size,)`, only with calibrated thresholds: `pred_score` mapped to [0, 1]
            with the image threshold at 0.5 (for dashboards; see `decisions.normalize_scores`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    stage_logits: tuple[torch.FloatTensor, ...] | None = None
    anomaly_map: torch.FloatTensor | None = None
    pred_score: torch.FloatTensor | None = None
    pred_label: torch.BoolTensor | None = None
    pred_mask: torch.BoolTensor | None = None
    pred_score_normalized: torch.FloatTensor | None = None


class CLIPADAPreTrainedModel(AnomalyDetectionPreTrainedModel):
    """Config class and head initialisation of CLIP-ADA; strict loading and saving as every family's."""

    config_class = CLIPADAConfig
    config: CLIPADAConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialises the head's parameters; CLIP's own modules are initialised by `CLIPModel`.

        `transformers.initialization` skips every tensor loaded from a checkpoint (flagged `_is_hf_initialized`),
        so a loaded head is never overwritten, even when this is called after `from_pretrained`.
        """
        if isinstance(module, CLIPADAForAnomalySegmentation):
            config = module.config
            init.normal_(module.prompt_vectors, std=0.02)
            init.constant_(module.similarity_logit_scale, config.similarity_logit_scale_init)
            init.constant_(module.similarity_logit_bias, config.similarity_logit_bias_init)
            for projection in module.patch_projections:
                init.normal_(projection.weight, std=config.vision_config.hidden_size**-0.5)
                init.zeros_(projection.bias)


class CLIPADAForAnomalySegmentation(CLIPADAPreTrainedModel):
    """A frozen CLIP with CLIP-ADA's trainable head: prompt vectors, R + 1 patch projections, similarity scale/bias.

    Build it from a pre-trained CLIP with [`from_clip`]; reload a trained one with `from_pretrained`.
    The normalised pixel tensor is what refinement multiplies by the previous map, so suppressed regions tend
    to the dataset mean colour (zero after CLIP normalisation).

    Args:
        config: The frozen CLIP's and the head's configuration.
    """

    def __init__(self, config: CLIPADAConfig):
        super().__init__(config)
        config.validate_head()
        self.clip = CLIPModel(config)
        self.clip.requires_grad_(False)
        text_width = config.text_config.hidden_size
        self.prompt_vectors = nn.Parameter(torch.empty(config.num_prompt_vectors, text_width))
        self.patch_projections = nn.ModuleList(
            nn.Linear(config.vision_config.hidden_size, config.projection_dim)
            for _ in range(config.num_refinements + 1)
        )
        self.similarity_logit_scale = nn.Parameter(torch.tensor(float(config.similarity_logit_scale_init)))
        self.similarity_logit_bias = nn.Parameter(torch.tensor(float(config.similarity_logit_bias_init)))
        self._text_embedding_cache: tuple[tuple, torch.Tensor] | None = None
        # few-shot memory of the coarse stage's projected patch tokens (empty unless `fit_reference` filled it)
        self.reference_memory = ReferenceMemory(config.reference_memory_sizes, 1, config.projection_dim)
        self.post_init()

    # ------------------------------------------------------------------ construction from a CLIP checkpoint

    @classmethod
    def from_clip(
        cls,
        model_or_path: "str | CLIPModel",
        tokenizer: CLIPTokenizer | None = None,
        **config_overrides,
    ) -> "CLIPADAForAnomalySegmentation":
        """Builds CLIP-ADA around a pre-trained CLIP: copies its weights and tokenises the prompt template.

        Args:
            model_or_path: A Hub id (e.g. `"openai/clip-vit-base-patch16"`), a local folder with a CLIP
                checkpoint, or a `CLIPModel` instance.
            tokenizer: The CLIP tokenizer; loaded from `model_or_path` when it is a path or id. Required
                when `model_or_path` is an instance.
            **config_overrides: [`CLIPADAConfig`] head fields (`num_refinements=2`, `feature_layer=8`, ...).

        Returns:
            The model with CLIP's weights, a freshly initialised head, and `prompt_token_ids` filled.

        Raises:
            ValueError: `model_or_path` is an instance and `tokenizer` is missing, or a head field is invalid.
        """
        if isinstance(model_or_path, CLIPModel):
            clip = model_or_path
            if tokenizer is None:
                raise ValueError("`tokenizer` is required when `from_clip` is given a CLIPModel instance.")
        else:
            clip = CLIPModel.from_pretrained(model_or_path)
            if tokenizer is None:
                tokenizer = CLIPTokenizer.from_pretrained(model_or_path)
        clip_config = clip.config.to_dict()
        for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype"):
            clip_config.pop(key, None)
        template = config_overrides.get("prompt_template", CLIPADAConfig.prompt_template)
        token_ids, insert_position = tokenize_prompt_template(template, tokenizer)
        config = CLIPADAConfig(
            **{**clip_config, **config_overrides},
            prompt_token_ids=token_ids,
            prompt_insert_position=insert_position,
        )
        model = cls(config)
        model.clip.load_state_dict(clip.state_dict())
        return model.to(clip.dtype)

    # ------------------------------------------------------------------ step 1: text embedding with learnable prompts

    def text_embedding(self) -> torch.Tensor:
        """The template's text embedding with the prompt vectors inserted.

        Computed once and cached while the weights do not change (no grad, or prompt vectors frozen);
        recomputed, with grad, once per training forward.

        Returns:
            `(projection_dim,)`, L2-normalised.
        """
        if torch.is_grad_enabled() and self.prompt_vectors.requires_grad:
            return self._compute_text_embedding()
        key = self._weights_version()
        if self._text_embedding_cache is None or self._text_embedding_cache[0] != key:
            with torch.no_grad():
                self._text_embedding_cache = (key, self._compute_text_embedding())
        return self._text_embedding_cache[1]

    def _weights_version(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump `_version`; `.to()` changes the storage.
        tensors = (self.prompt_vectors, self.clip.text_projection.weight, self.clip.text_model.final_layer_norm.weight)
        return tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in tensors)

    def _compute_text_embedding(self) -> torch.Tensor:
        """`CLIPTextModel`'s forward with the prompt vectors inserted into the token embeddings.

        Returns:
            `(projection_dim,)`, L2-normalised.

        Raises:
            ValueError: `config.prompt_token_ids` is not set.
        """
        if self.config.prompt_token_ids is None:
            raise ValueError(
                "`config.prompt_token_ids` is not set: build the model with `CLIPADAForAnomalySegmentation.from_clip` "
                "(which tokenises `prompt_template`), or set `prompt_token_ids` and `prompt_insert_position`."
            )
        text_model = self.clip.text_model
        token_ids = torch.tensor(self.config.prompt_token_ids, device=self.prompt_vectors.device)
        token_embeds = text_model.embeddings.token_embedding(token_ids)
        position = self.config.prompt_insert_position
        prompt = self.prompt_vectors.to(token_embeds.dtype)
        inputs_embeds = torch.cat([token_embeds[:position], prompt, token_embeds[position:]])[None]
        # The end-of-text token is the template's last token; it moved right by the number of prompt vectors.
        end_position = torch.tensor([inputs_embeds.shape[1] - 1], device=inputs_embeds.device)
        pooled = encode_prompted_text(text_model, self.clip.text_projection, inputs_embeds, end_position)[0]
        return F.normalize(pooled, dim=-1)

    # ------------------------------------------------------------------ steps 2 and 3: coarse map and refinement

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch tokens of vision layer `feature_layer`; layers after it are never run.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised images.

        Returns:
            `(batch_size, h * w, vision_hidden_size)`, CLS token dropped.
        """
        vision_model = self.clip.vision_model
        height, width = pixel_values.shape[-2:]
        interpolate = (height, width) != (self.config.vision_config.image_size,) * 2
        hidden_states = vision_model.embeddings(pixel_values, interpolate_pos_encoding=interpolate)
        hidden_states = vision_model.pre_layrnorm(hidden_states)
        for layer in vision_model.encoder.layers[: self.config.feature_layer]:
            hidden_states = layer(hidden_states, None)
        patch_tokens = hidden_states[:, 1:]
        if self.config.use_feature_layernorm:
            patch_tokens = vision_model.post_layernorm(patch_tokens)
        return patch_tokens

    def similarity_logits(self, patch_tokens: torch.Tensor, text_embedding: torch.Tensor, stage: int) -> torch.Tensor:
        """Anomaly logits of one stage: scaled cosine similarity of projected patch tokens with the text.

        Args:
            patch_tokens: `(batch_size, h * w, vision_hidden_size)`.
            text_embedding: `(projection_dim,)`, L2-normalised.
            stage: 0 for the coarse map, r for the r-th refinement (selects the projection W_r).

        Returns:
            `(batch_size, h * w)`.
        """
        projected = F.normalize(self.patch_projections[stage](patch_tokens), dim=-1)
        similarity = projected @ text_embedding.to(projected.dtype)
        return similarity * self.similarity_logit_scale.exp() + self.similarity_logit_bias

    def compute_stage_logits(
        self, pixel_values: torch.Tensor, text_embedding: torch.Tensor, coarse_patch_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Steps 2 and 3: the coarse map's logits, then those of each of the `num_refinements` refinements.

        Refinement r multiplies the sigmoid of stage r - 1, bilinearly upsampled, into the pixels and encodes them
        again. The coarse pass never takes gradients; a refinement pass does only when grad is enabled and
        `config.detach_refinement_input` is False, so a refined stage also trains the projections before it.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised, in the head's dtype (see `_check_pixel_values`).
            text_embedding: `(projection_dim,)`, L2-normalised, from [`text_embedding`].
            coarse_patch_tokens: `(batch_size, h * w, vision_hidden_size)`, [`patch_features`] of `pixel_values`
                when the caller has them already (the reference memory scores them too); computed when omitted.

        Returns:
            R + 1 tensors `(batch_size, h, w)` in float32, coarse first.
        """
        batch_size, _, height, width = pixel_values.shape
        patch = self.config.vision_config.patch_size
        grid = (height // patch, width // patch)
        patch_tokens = coarse_patch_tokens
        if patch_tokens is None:
            with torch.no_grad():
                patch_tokens = self.patch_features(pixel_values)
        logits = self.similarity_logits(patch_tokens, text_embedding, stage=0).view(batch_size, *grid)
        all_logits = [logits]
        for stage in range(1, self.config.num_refinements + 1):
            previous_map = F.interpolate(
                torch.sigmoid(logits)[:, None], size=(height, width), mode="bilinear", align_corners=False
            )
            track_gradient = torch.is_grad_enabled() and not self.config.detach_refinement_input
            with torch.set_grad_enabled(track_gradient):
                patch_tokens = self.patch_features(pixel_values * previous_map)
            logits = self.similarity_logits(patch_tokens, text_embedding, stage=stage).view(batch_size, *grid)
            all_logits.append(logits)
        return tuple(logits.float() for logits in all_logits)

    # ------------------------------------------------------------------ forward: steps 1 to 5

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        categories: list[str | None] | None = None,
        decide: bool = True,
    ) -> CLIPADAOutput:
        """Anomaly maps and image scores of a batch, the loss when masks are given, decisions when calibrated.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised images, e.g. from `CLIPADAImageProcessor`;
                H and W multiples of the patch size.
            labels: `(batch_size, H, W)` or `(batch_size, 1, H, W)`, optional. Ground-truth masks at the input
                resolution with values in [0, 1] (1 = anomalous). When given, `loss` is returned.
            categories: One category name (or None) per image, optional: an image whose category has its own
                calibrated thresholds (`config.category_thresholds`) is decided with those.
            decide: With calibrated thresholds, also return `pred_label`, `pred_mask` and `pred_score_normalized`
                (default). False leaves them None, for callers that decide per image themselves (`clipada predict`
                turns a NaN score into that image's ERROR row instead of an exception for the whole batch).

        Returns:
            [`CLIPADAOutput`], whose `loss` is `None` without `labels`, and whose decisions are `None` without
            calibrated thresholds or with `decide=False`.

        Raises:
            ValueError: `pixel_values` or `labels` of the wrong shape, dtype or value range.
            NonFiniteScoreError: A `ValueError`: with decisions, a score or map value is NaN or infinite (a damaged
                model or input), which decides nothing.
        """
        pixel_values = self._check_pixel_values(pixel_values)
        batch_size, _, height, width = pixel_values.shape

        # step 1: the text embedding with the learnable prompts (cached while the weights do not change)
        text_embedding = self.text_embedding()

        # steps 2 and 3: the coarse map, then the region refinements
        coarse_patch_tokens = None
        if len(self.reference_memory):  # the memory scores the coarse tokens too: encode them once
            with torch.no_grad():
                coarse_patch_tokens = self.patch_features(pixel_values)
        stage_logits = self.compute_stage_logits(pixel_values, text_embedding, coarse_patch_tokens)

        # step 4: the loss of every stage
        loss = None if labels is None else self.compute_loss(stage_logits, labels)

        # step 5: post-processing to a pixel anomaly map and an image score
        anomaly_map, pred_score = self.anomaly_map_and_score(torch.sigmoid(stage_logits[-1]), (height, width))
        if coarse_patch_tokens is not None:  # few-shot: fused with the reference memory's map, scored as before
            features = [F.normalize(self.patch_projections[0](coarse_patch_tokens), dim=-1)]
            grid, scale = stage_logits[0].shape[-2:], self.config.reference_distance_scale
            memory_map = memory_patch_map(self.reference_memory, features, categories, grid, scale)
            memory_map = self.upsample_and_smooth(memory_map.to(anomaly_map.dtype), (height, width))
            anomaly_map = fuse_maps(anomaly_map, memory_map, self.config.reference_fusion)
            pred_score = self.image_score(anomaly_map)
        outputs = CLIPADAOutput(
            loss=loss,
            logits=stage_logits[-1],
            stage_logits=stage_logits,
            anomaly_map=anomaly_map,
            pred_score=pred_score,
        )
        if self.config.has_thresholds and decide:
            image_threshold, pixel_threshold = per_image_thresholds(self.config, categories, batch_size)
            outputs.pred_label, outputs.pred_mask = apply_thresholds(
                anomaly_map, pred_score, image_threshold, pixel_threshold
            )
            outputs.pred_score_normalized = normalize_scores(pred_score, image_threshold)
        return outputs

    def reference_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """What the reference memory stores and compares: the coarse stage's projected patch tokens, L2-normalised
        (as the coarse map compares them with the text).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised.

        Returns:
            One tensor `(batch_size, h * w, projection_dim)` (one feature layer).
        """
        pixel_values = self._check_pixel_values(pixel_values)
        with torch.no_grad():
            return [F.normalize(self.patch_projections[0](self.patch_features(pixel_values)), dim=-1)]

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Checks the images and casts them to the model's dtype.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, floating point, non-empty, H and W multiples of the patch size.

        Returns:
            `pixel_values` in the dtype of the head.

        Raises:
            ValueError: Naming `pixel_values` and its shape.
        """
        return check_pixel_values(pixel_values, self.config.vision_config.patch_size, self.prompt_vectors.dtype)

    # ------------------------------------------------------------------ step 4: loss

    def compute_loss(self, stage_logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        """BCE of every stage: `bce(stage 0) + refinement_loss_weight * sum_{r >= 1} bce(stage r)`.

        The mask is resized to the patch grid by area averaging, so a patch that a defect covers in part gets
        a soft target equal to the covered fraction (nearest resizing would drop small defects or inflate them).

        Args:
            stage_logits: R + 1 tensors `(batch_size, h, w)`.
            labels: `(batch_size, H, W)` or `(batch_size, 1, H, W)` masks at the input resolution, values in [0, 1].

        Returns:
            `()`, the loss.

        Raises:
            ValueError: `labels` of the wrong shape, with NaN, or with values outside [0, 1] (e.g. 0/255 masks).
        """
        labels = check_masks(labels, stage_logits[0].shape[0], stage_logits[0].device)
        targets = F.interpolate(labels[:, None], size=stage_logits[0].shape[-2:], mode="area")[:, 0]
        losses = [F.binary_cross_entropy_with_logits(logits, targets) for logits in stage_logits]
        return losses[0] + self.config.refinement_loss_weight * sum(losses[1:])

    # ------------------------------------------------------------------ step 5: post-processing

    def anomaly_map_and_score(
        self,
        probabilities: torch.Tensor,
        size: tuple[int, int],
        upsample_matrices: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 5: the anomaly map at the input size ([`upsample_and_smooth`]) and its image score ([`image_score`]).

        Args:
            probabilities: `(batch_size, h, w)`, the final stage's probabilities on the patch grid.
            size: The output size `(H, W)`.
            upsample_matrices: `(rows, columns)` from [`upsample_and_smooth_matrices`], optional (see there).

        Returns:
            `(anomaly_map, pred_score)`: `(batch_size, H, W)` and `(batch_size,)`.
        """
        anomaly_map = self.upsample_and_smooth(probabilities, size, upsample_matrices)
        return anomaly_map, self.image_score(anomaly_map)

    def upsample_and_smooth(
        self,
        probabilities: torch.Tensor,
        size: tuple[int, int],
        upsample_matrices: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Bilinear upsampling of patch-grid probabilities, then Gaussian smoothing.

        Both steps are linear and separable, so they are applied as one `(H, h)` matrix on the rows and one
        `(W, w)` matrix on the columns: the same map as upsampling then convolving with the Gaussian, up to float
        rounding, at a small fraction of the cost of convolving the full-resolution map.

        Args:
            probabilities: `(batch_size, h, w)`.
            size: The output size `(H, W)`.
            upsample_matrices: `(rows, columns)` of shapes `(H, h)` and `(W, w)`, optional: built beforehand by
                [`upsample_and_smooth_matrices`] (an exported graph holds them as buffers, because that function's
                cache must never see traced tensors); built here, or taken from the cache, when omitted.

        Returns:
            `(batch_size, H, W)`.
        """
        if upsample_matrices is None:
            grid = tuple(probabilities.shape[-2:])
            upsample_matrices = self.upsample_and_smooth_matrices(grid, size, probabilities.device, probabilities.dtype)
        rows, columns = upsample_matrices
        return rows @ probabilities @ columns.T

    def upsample_and_smooth_matrices(
        self, grid: tuple[int, int], size: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The row and column matrices of [`upsample_and_smooth`]: `smoothing_sigma`, border "reflect" (cached).

        Args:
            grid: The patch grid `(h, w)`.
            size: The output size `(H, W)`.
            device: Where the matrices go.
            dtype: Their dtype, that of the probabilities they multiply.

        Returns:
            `(rows, columns)` of shapes `(H, h)` and `(W, w)`, shared with the cache: clone them before changing them.
        """
        sigma = float(self.config.smoothing_sigma)
        return _upsample_and_smooth_matrices(tuple(grid), tuple(size), sigma, device, dtype, "reflect")

    def image_score(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Mean of the `image_score_top_k` highest pixel scores.

        Args:
            anomaly_map: `(batch_size, H, W)`.

        Returns:
            `(batch_size,)`.
        """
        flat = anomaly_map.flatten(1)
        top_k = min(self.config.image_score_top_k, flat.shape[1])
        return flat.topk(top_k, dim=1).values.mean(dim=1)

    def train(self, mode: bool = True) -> "CLIPADAForAnomalySegmentation":
        """Sets the head's training mode; the frozen CLIP stays in eval mode (a config could give it dropout)."""
        super().train(mode)
        self.clip.eval()
        return self


def tokenize_prompt_template(template: str, tokenizer: CLIPTokenizer) -> tuple[list[int], int]:
    """Tokenises `template` without its `[CLS]` marker.

    Args:
        template: The prompt template, with the marker `[CLS]` exactly once.
        tokenizer: The CLIP tokenizer.

    Returns:
        `(token_ids, insert_position)`: ids with start and end tokens, and the index where the prompt vectors go.

    Raises:
        ValueError: The marker is missing or repeated.
    """
    if template.count(PROMPT_MARKER) != 1:
        raise ValueError(f"`prompt_template` must contain the marker {PROMPT_MARKER} exactly once, got {template!r}.")
    prefix, suffix = (part.strip() for part in template.split(PROMPT_MARKER))
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    token_ids = [tokenizer.bos_token_id, *prefix_ids, *suffix_ids, tokenizer.eos_token_id]
    return token_ids, 1 + len(prefix_ids)


__all__ = ["CLIPADAForAnomalySegmentation", "CLIPADAOutput", "CLIPADAPreTrainedModel"]
