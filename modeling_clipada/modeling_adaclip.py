"""AdaCLIP: zero-shot anomaly segmentation with hybrid (static + dynamic) learnable prompts in both CLIP encoders.

The method as the official code (github.com/caoyunkang/AdaCLIP) computes it; `forward`'s comments use these steps:
1. dynamic prompts: the image's own CLIP embedding (an unprompted pass of the frozen vision tower) goes through one
   linear layer per encoder, giving `prompt_length` tokens per image for each;
2. vision: static + dynamic tokens are appended after the patch tokens before vision layer 1 and replaced before
   layers 2..depth (then carried along); the patch tokens of `feature_layers` are projected to the text space by
   one linear layer each, the class token (layer-normed and CLIP-projected) by one more;
3. text: each image's class name in every state x template sentence; static + dynamic tokens replace positions
   1..n before text layers 2..depth; per state, the normalised mean of the sentences' normalised embeddings;
4. similarities: `similarity_scale` x cosine similarity per patch of every layer, and for the image, whose
   embedding is first fused with the hybrid semantic fusion (HSF) of its most abnormal patches;
5. loss: focal(image) + per layer focal + dice(abnormal) + dice(normal), the layers' maps upsampled to the masks;
6. post-processing: the layers' logits averaged and upsampled (bilinear, corners aligned), softmax,
   (p_abnormal + 1 - p_normal) / 2, Gaussian smoothing; the image score is the abnormal probability of step 4.

Example:
    ```python
    >>> from modeling_clipada import AdaCLIPForAnomalySegmentation
    >>> model = AdaCLIPForAnomalySegmentation.from_clip("openai/clip-vit-large-patch14-336", class_names=["bottle"])
    >>> outputs = model(pixel_values, categories=["bottle"])   # pixel_values (B, 3, 518, 518), CLIP-normalised
    >>> outputs.anomaly_map.shape, outputs.pred_score.shape
    (torch.Size([B, 518, 518]), torch.Size([B]))
    ```
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel, CLIPTokenizer
from transformers import initialization as init
from transformers.utils import ModelOutput

from .adaclip_fusion import hybrid_semantic_fusion
from .adaclip_loss import adaclip_loss
from .adaclip_prompts import hybrid_prompts, prompt_sentences, state_ensemble_embeddings, tokenize_sentences
from .clip_parts import binary_masks, check_pixel_values, smooth_maps
from .configuration_adaclip import AdaCLIPConfig
from .decisions import apply_thresholds, normalize_scores, per_image_thresholds
from .pretrained import AnomalyDetectionPreTrainedModel
from .reference_memory import ReferenceMemory, fuse_maps, memory_patch_map, score_with_global


@dataclass
class AdaCLIPOutput(ModelOutput):
    """Output of [`AdaCLIPForAnomalySegmentation`]; (h, w) = (H / patch_size, W / patch_size) is the patch grid.

    Attributes:
        loss: `()`, only when `labels` are given: `focal(image) + sum_layers(focal + 2 dice)`.
        logits: `(batch_size, 2)`, (normal, abnormal) logits of the image embedding (fused with HSF when on).
        layer_logits: One `(batch_size, 2, h, w)` tensor per feature layer: (normal, abnormal) patch logits.
        anomaly_map: `(batch_size, H, W)` in [0, 1], the abnormal probability of the layer-averaged logits upsampled
            to the input resolution, smoothed.
        pred_score: `(batch_size,)`, image anomaly score: `logits.softmax(-1)[:, 1]`.
        pred_label: `(batch_size,)` bool, only with calibrated thresholds: `pred_score >= image_threshold`.
        pred_mask: `(batch_size, H, W)` bool, only with calibrated thresholds: `anomaly_map >= pixel_threshold`.
        pred_score_normalized: `(batch_size,)`, only with calibrated thresholds: `pred_score` mapped to [0, 1]
            with the image threshold at 0.5.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    layer_logits: tuple[torch.FloatTensor, ...] | None = None
    anomaly_map: torch.FloatTensor | None = None
    pred_score: torch.FloatTensor | None = None
    pred_label: torch.BoolTensor | None = None
    pred_mask: torch.BoolTensor | None = None
    pred_score_normalized: torch.FloatTensor | None = None


class AdaCLIPPreTrainedModel(AnomalyDetectionPreTrainedModel):
    """Config class and head initialisation of AdaCLIP; strict loading and saving as every family's."""

    config_class = AdaCLIPConfig
    config: AdaCLIPConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        """Initialises the head as the official code does; never overwrites loaded tensors.

        Static prompts: normal, std 0.02; linear layers: PyTorch's default (uniform, bound 1 / sqrt(fan_in)).
        """
        if isinstance(module, AdaCLIPForAnomalySegmentation):
            for prompts in (module.static_text_prompts, module.static_visual_prompts):
                if prompts is not None:
                    init.normal_(prompts, std=0.02)
            for linear in module.head_linear_layers():
                init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                init.uniform_(linear.bias, -(linear.in_features**-0.5), linear.in_features**-0.5)


class AdaCLIPForAnomalySegmentation(AdaCLIPPreTrainedModel):
    """A frozen CLIP with AdaCLIP's trainable head: static prompts, dynamic-prompt generators and projections.

    Build it from a pre-trained CLIP with [`from_clip`]; reload a trained one with `from_pretrained`.

    Args:
        config: The frozen CLIP's and the head's configuration.
    """

    def __init__(self, config: AdaCLIPConfig):
        super().__init__(config)
        config.validate_head()
        self.clip = CLIPModel(config)
        self.clip.requires_grad_(False)
        text_width, vision_width = config.text_config.hidden_size, config.vision_config.hidden_size
        dim, length, depth = config.projection_dim, config.prompt_length, config.prompt_depth
        static, dynamic = config.static_prompts, config.dynamic_prompts
        text, visual = config.text_prompts, config.visual_prompts
        # text layer 1 keeps its words, so the text side has depth - 1 prompted layers
        self.static_text_prompts = nn.Parameter(torch.empty(depth - 1, length, text_width)) if text and static else None
        self.static_visual_prompts = (
            nn.Parameter(torch.empty(depth, length, vision_width)) if visual and static else None
        )
        self.dynamic_text_prompt_generator = nn.Linear(dim, length * text_width) if text and dynamic else None
        self.dynamic_visual_prompt_generator = nn.Linear(dim, length * vision_width) if visual and dynamic else None
        self.patch_projections = nn.ModuleList(nn.Linear(vision_width, dim) for _ in config.feature_layers)
        self.class_projection = nn.Linear(dim, dim)
        # few-shot memory of the projected patch tokens (empty unless `fit_reference` filled it)
        self.reference_memory = ReferenceMemory(config.reference_memory_sizes, len(config.feature_layers), dim)
        self.post_init()

    def head_linear_layers(self) -> list[nn.Linear]:
        """The head's linear layers: the dynamic-prompt generators in use, the patch and class projections."""
        generators = (self.dynamic_text_prompt_generator, self.dynamic_visual_prompt_generator)
        return [g for g in generators if g is not None] + [*self.patch_projections, self.class_projection]

    @classmethod
    def from_clip(
        cls,
        model_or_path: "str | CLIPModel",
        tokenizer: CLIPTokenizer | None = None,
        class_names: list[str] | None = None,
        hidden_act: str | None = "gelu",
        **config_overrides,
    ) -> "AdaCLIPForAnomalySegmentation":
        """Builds AdaCLIP around a pre-trained CLIP: copies its weights and tokenises the class names' sentences.

        Args:
            model_or_path: A Hub id (the published setting: `"openai/clip-vit-large-patch14-336"`), a local folder
                with a CLIP checkpoint, or a `CLIPModel` instance.
            tokenizer: The CLIP tokenizer; loaded from `model_or_path` when it is a path or id. Required when
                `model_or_path` is an instance.
            class_names: Categories to tokenise now (`default_class_name` always is); more with `add_class_names`.
            hidden_act: The towers' activation. The official code runs OpenAI's weights with exact GELU (`"gelu"`,
                its open_clip configs lack `quick_gelu`); `None` keeps the CLIP's own (`"quick_gelu"` for OpenAI).
            **config_overrides: [`AdaCLIPConfig`] head fields (`dynamic_prompts=False`, ...).

        Returns:
            The model with CLIP's weights, a freshly initialised head, and the prompt token ids filled.

        Raises:
            ValueError: `model_or_path` is an instance and `tokenizer` is missing, or a head field is invalid.
        """
        if isinstance(model_or_path, CLIPModel):
            clip = model_or_path
            if tokenizer is None:
                raise ValueError("`tokenizer` is required when `from_clip` is given a CLIPModel instance.")
        else:
            clip = CLIPModel.from_pretrained(model_or_path)
            tokenizer = tokenizer or CLIPTokenizer.from_pretrained(model_or_path)
        clip_config = clip.config.to_dict()
        for key in ("architectures", "model_type", "transformers_version", "auto_map", "dtype"):
            clip_config.pop(key, None)
        if hidden_act is not None:
            clip_config["text_config"]["hidden_act"] = clip_config["vision_config"]["hidden_act"] = hidden_act
        model = cls(AdaCLIPConfig(**{**clip_config, **config_overrides}))
        model.clip.load_state_dict(clip.state_dict())
        model.add_class_names([model.config.default_class_name, *(class_names or [])], tokenizer)
        return model.to(clip.dtype)

    def add_class_names(self, class_names: list[str], tokenizer: CLIPTokenizer) -> None:
        """Tokenises every state x template sentence of each class name into `config.prompt_token_ids`.

        Args:
            class_names: Categories as `forward`'s `categories` will name them, e.g. `["bottle", "metal_nut"]`.
            tokenizer: The CLIP tokenizer.
        """
        config = self.config
        token_ids = dict(config.prompt_token_ids or {})
        for name in class_names:
            sentences = prompt_sentences(name, config.normal_states, config.abnormal_states, config.prompt_templates)
            token_ids[name] = tokenize_sentences(sentences, tokenizer)
        config.prompt_token_ids = token_ids
        config.validate_head()

    # ------------------------------------------------------------------ step 1: dynamic prompts

    def generate_dynamic_prompts(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each image's dynamic prompt tokens, from its unprompted CLIP image embedding.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised.

        Returns:
            `(text_prompts, visual_prompts)`: `(batch_size, prompt_length, width)` for each prompted encoder, or
            None where that encoder has no generator.
        """
        generators = (self.dynamic_text_prompt_generator, self.dynamic_visual_prompt_generator)
        if generators == (None, None):
            return None, None
        with torch.no_grad():
            pooled = self.clip.vision_model(pixel_values, interpolate_pos_encoding=True).pooler_output
            embedding = self.clip.visual_projection(pooled).to(self.class_projection.weight.dtype)
        shape = (pixel_values.shape[0], self.config.prompt_length, -1)
        return tuple(None if g is None else g(embedding).view(shape) for g in generators)

    # ------------------------------------------------------------------ step 2: the prompted vision pass

    def image_features(
        self, pixel_values: torch.Tensor, visual_prompts: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The class token's CLIP embedding and the raw patch tokens of every feature layer, with visual prompts.

        Args:
            pixel_values: `(batch_size, 3, H, W)`.
            visual_prompts: `(depth, n, vision_width)` or `(depth, batch_size, n, vision_width)`: the tokens that
                follow the patch tokens into vision layer k + 1 (k < depth); or None.

        Returns:
            `(class_embedding, patch_tokens)`: `(batch_size, projection_dim)` (post layer norm and CLIP's visual
            projection) and one `(batch_size, h * w, vision_width)` per feature layer (the residual stream).
        """
        vision = self.clip.vision_model
        hidden_states = vision.pre_layrnorm(vision.embeddings(pixel_values, interpolate_pos_encoding=True))
        num_tokens = hidden_states.shape[1]  # class + patches
        patch_tokens = []
        for index, layer in enumerate(vision.encoder.layers):
            if visual_prompts is not None and index < visual_prompts.shape[0]:
                prompts = visual_prompts[index].expand(hidden_states.shape[0], -1, -1)
                if self.config.official_fp16_prompts:  # one copy per image, as the official code casts them
                    prompts = prompts.to(torch.float16)
                prompts = prompts.to(hidden_states.dtype)
                hidden_states = torch.cat([hidden_states[:, :num_tokens], prompts], dim=1)
            hidden_states = layer(hidden_states, None)
            if index + 1 in self.config.feature_layers:
                patch_tokens.append(hidden_states[:, 1:num_tokens])
        class_embedding = self.clip.visual_projection(vision.post_layernorm(hidden_states[:, 0]))
        return class_embedding, patch_tokens

    # ------------------------------------------------------------------ step 3: the text embeddings

    def text_embeddings(self, class_names: list[str], dynamic_prompts: torch.Tensor | None) -> torch.Tensor:
        """Each image's normal and abnormal text embeddings (state x template ensembles of its class name).

        Without dynamic text prompts the embeddings depend on the class name only and are computed once per name.

        Args:
            class_names: One class name per image, each in `config.prompt_token_ids`.
            dynamic_prompts: `(batch_size, n, text_width)` dynamic text tokens, or None.

        Returns:
            `(batch_size, 2, projection_dim)`, L2-normalised: `[:, 0]` normal, `[:, 1]` abnormal.
        """
        config = self.config
        names = class_names if dynamic_prompts is not None else list(dict.fromkeys(class_names))
        sentences = [token_ids for name in names for token_ids in config.prompt_token_ids[name]]
        deep_prompts = None
        if config.text_prompts:
            deep_prompts = hybrid_prompts(self.static_text_prompts, dynamic_prompts, config.prompt_depth - 1)
            if deep_prompts.ndim == 4:  # one set per image: repeat for each of its sentences
                deep_prompts = deep_prompts.repeat_interleave(config.num_sentences, dim=1)
            if config.official_fp16_prompts:  # one copy per sentence, as the official code casts them
                copies = (
                    deep_prompts[:, None].expand(-1, len(sentences), -1, -1) if deep_prompts.ndim == 3 else deep_prompts
                )
                deep_prompts = copies.to(torch.float16).to(deep_prompts.dtype)
        num_normal = len(config.normal_states) * len(config.prompt_templates)
        with torch.set_grad_enabled(torch.is_grad_enabled() and config.text_prompts):
            embeddings = state_ensemble_embeddings(
                self.clip.text_model, self.clip.text_projection, sentences, num_normal, config.num_sentences,
                deep_prompts, min_length=1 + config.prompt_length,
            )  # fmt: skip
        embeddings = embeddings.to(self.class_projection.weight.dtype)
        return embeddings if dynamic_prompts is not None else embeddings[[names.index(n) for n in class_names]]

    # ------------------------------------------------------------------ forward: steps 1 to 6

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        categories: list[str | None] | None = None,
        decide: bool = True,
    ) -> AdaCLIPOutput:
        """Anomaly maps and image scores of a batch, the loss when masks are given, decisions when calibrated.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised images (518 x 518 in the published setting);
                H and W multiples of the patch size.
            labels: `(batch_size, H, W)` or `(batch_size, 1, H, W)`, optional. Ground-truth masks at the input
                resolution with values in [0, 1], binarised at 0.5; an image is anomalous when its mask is.
            categories: One class name (or None for `config.default_class_name`) per image, optional: it fills the
                text prompts, and an image whose category has calibrated thresholds is decided with those.
            decide: With calibrated thresholds, also return `pred_label`, `pred_mask` and `pred_score_normalized`
                (default). False leaves them None, for callers that decide per image themselves (`clipada predict`
                turns a NaN score into that image's ERROR row instead of an exception for the whole batch).

        Returns:
            [`AdaCLIPOutput`], whose `loss` is `None` without `labels`, and whose decisions are `None` without
            calibrated thresholds or with `decide=False`.

        Raises:
            ValueError: `pixel_values`, `labels` or `categories` of the wrong shape or value, or a class name
                without prompt token ids.
            NonFiniteScoreError: A `ValueError`: with decisions, a score or map value is NaN or infinite (a damaged
                model or input), which decides nothing.
        """
        config = self.config
        dtype = self.class_projection.weight.dtype
        pixel_values = check_pixel_values(pixel_values, config.vision_config.patch_size, dtype)
        batch_size, _, height, width = pixel_values.shape
        grid = (height // config.vision_config.patch_size, width // config.vision_config.patch_size)
        class_names = self._class_names(categories, batch_size)

        # step 1: dynamic prompts from each image's own CLIP embedding
        dynamic_text, dynamic_visual = self.generate_dynamic_prompts(pixel_values)

        # step 2: the prompted vision pass, projected to the text space
        visual_prompts = None
        if config.visual_prompts:
            visual_prompts = hybrid_prompts(self.static_visual_prompts, dynamic_visual, config.prompt_depth)
        with torch.set_grad_enabled(torch.is_grad_enabled() and config.visual_prompts):
            class_embedding, patch_tokens = self.image_features(pixel_values, visual_prompts)
        image_embedding = F.normalize(self.class_projection(class_embedding.to(dtype)), dim=-1)
        patch_embeddings = [
            F.normalize(projection(tokens.to(dtype)), dim=-1)
            for projection, tokens in zip(self.patch_projections, patch_tokens)
        ]

        # step 3: the normal and abnormal text embeddings of every image
        text = self.text_embeddings(class_names, dynamic_text).transpose(1, 2)  # (B, projection_dim, 2)

        # step 4: similarities of the patches and of the image (fused with HSF)
        scale = config.similarity_scale
        patch_logits = [scale * patches @ text for patches in patch_embeddings]  # each (B, h * w, 2)
        if config.use_hsf:
            generator = None
            if config.hsf_init == "k-means++" and config.hsf_seed is not None:
                generator = torch.Generator(device=patch_logits[0].device).manual_seed(config.hsf_seed)
            fused = hybrid_semantic_fusion(
                patch_embeddings, patch_logits, config.hsf_num_clusters, config.hsf_num_patches,
                config.hsf_max_iterations, config.hsf_tolerance, config.hsf_init, generator,
            )  # fmt: skip
            image_embedding = F.normalize(config.hsf_weight * fused + (1 - config.hsf_weight) * image_embedding, dim=-1)
        logits = scale * (image_embedding[:, None] @ text)[:, 0]
        layer_logits = tuple(layer.transpose(1, 2).reshape(batch_size, 2, *grid) for layer in patch_logits)

        # step 5: the loss on every layer's map upsampled to the masks
        loss = None
        if labels is not None:
            masks = binary_masks(labels, batch_size, logits.device)
            upsampled = [_upsample(layer, (height, width)).softmax(dim=1) for layer in layer_logits]
            loss = adaclip_loss(logits.softmax(dim=-1), upsampled, masks, config.dice_unit)

        # step 6: the pixel anomaly map and the image score
        probabilities = _upsample(torch.stack(layer_logits).mean(dim=0), (height, width)).softmax(dim=1)
        anomaly_map = smooth_maps(
            (probabilities[:, 1] + 1 - probabilities[:, 0]) / 2, config.smoothing_sigma, "symmetric"
        )
        pred_score = logits.softmax(dim=-1)[:, 1]
        if len(self.reference_memory):  # few-shot: fused with the reference memory's map
            scale = config.reference_distance_scale
            memory_map = memory_patch_map(self.reference_memory, patch_embeddings, categories, grid, scale)
            memory_map = _upsample(memory_map[:, None].to(anomaly_map.dtype), (height, width))[:, 0]
            memory_map = smooth_maps(memory_map, config.smoothing_sigma, "symmetric")
            anomaly_map = fuse_maps(anomaly_map, memory_map, config.reference_fusion)
            pred_score = score_with_global(pred_score, memory_map)
        outputs = AdaCLIPOutput(
            loss=loss, logits=logits, layer_logits=layer_logits, anomaly_map=anomaly_map, pred_score=pred_score
        )
        if config.has_thresholds and decide:
            image_threshold, pixel_threshold = per_image_thresholds(self.config, categories, batch_size)
            outputs.pred_label, outputs.pred_mask = apply_thresholds(
                anomaly_map, pred_score, image_threshold, pixel_threshold
            )
            outputs.pred_score_normalized = normalize_scores(pred_score, image_threshold)
        return outputs

    def reference_features(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """What the reference memory stores and compares: the projected patch tokens of every feature layer of the
        prompted vision pass, L2-normalised (as the patches are compared with the text).

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised.

        Returns:
            One `(batch_size, h * w, projection_dim)` per feature layer.
        """
        config = self.config
        dtype = self.class_projection.weight.dtype
        pixel_values = check_pixel_values(pixel_values, config.vision_config.patch_size, dtype)
        with torch.no_grad():
            _, dynamic_visual = self.generate_dynamic_prompts(pixel_values)
            visual_prompts = None
            if config.visual_prompts:
                visual_prompts = hybrid_prompts(self.static_visual_prompts, dynamic_visual, config.prompt_depth)
            _, patch_tokens = self.image_features(pixel_values, visual_prompts)
            return [
                F.normalize(projection(tokens.to(dtype)), dim=-1)
                for projection, tokens in zip(self.patch_projections, patch_tokens)
            ]

    def _class_names(self, categories: list[str | None] | None, batch_size: int) -> list[str]:
        """Each image's class name: its category, else `config.default_class_name`; each must be tokenised."""
        categories = [None] * batch_size if categories is None else list(categories)
        if len(categories) != batch_size:
            raise ValueError(f"`categories` must hold one entry per image ({batch_size}), got {len(categories)}.")
        names = [self.config.default_class_name if category is None else category for category in categories]
        missing = sorted(set(names) - set(self.config.prompt_token_ids or {}))
        if missing:
            raise ValueError(
                f"No prompt token ids for the class names {missing}: add them with "
                f"`model.add_class_names({missing}, tokenizer)` (`from_clip(..., class_names=...)` does it at build)."
            )
        return names

    def train(self, mode: bool = True) -> "AdaCLIPForAnomalySegmentation":
        """Sets the head's training mode; the frozen CLIP stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self


def _upsample(layer_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling with aligned corners, as the official code resizes its logit maps.

    Args:
        layer_logits: `(batch_size, 2, h, w)`.
        size: `(H, W)`.

    Returns:
        `(batch_size, 2, H, W)`.
    """
    return F.interpolate(layer_logits, size=size, mode="bilinear", align_corners=True)


__all__ = ["AdaCLIPForAnomalySegmentation", "AdaCLIPOutput", "AdaCLIPPreTrainedModel"]
