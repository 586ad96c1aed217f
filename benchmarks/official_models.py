"""The official AnomalyCLIP and AdaCLIP forwards, run from local copies on our model's weights, for the benchmarks.

Neither official repository is a dependency: each is a local copy given by path, loaded the way its parity-fixture
script (`tests/fixtures/make_*_reference.py`) loads it, with that script's conversion of our CLIP to the official
layout and its stand-ins for imports the forward never uses. Each loader gives an [`OfficialModel`]: the official
per-image path of the repository's `test.py` (maps, image score, scipy's Gaussian), timed as it is, and the same
path made deterministic for the parity check.

Example:
    ```python
    >>> official = official_adaclip(ours, Path("/tmp/AdaCLIP"), None, Path("bpe_simple_vocab_16e6.txt.gz"), 518)
    >>> anomaly_map, pred_score = official.parity_call(pixel_values)  # (1, H, W), (1,)
    ```
"""

import dataclasses
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
REPOSITORIES = {
    "anomalyclip": "https://github.com/zqhang/AnomalyCLIP",
    "adaclip": "https://github.com/caoyunkang/AdaCLIP",
}


@dataclasses.dataclass
class OfficialModel:
    """An official implementation's forward on our model's weights.

    Attributes:
        repository: Its GitHub address.
        commit: The commit of the local copy.
        call: `call(pixel_values (1, 3, H, W))` gives `(anomaly_map (1, H, W), pred_score (1,))` as its `test.py`
            computes them; this is what is timed.
        parity_call: The same, deterministic where the official code draws at random (AdaCLIP's k-means start).
    """

    repository: str
    commit: str
    call: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    parity_call: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def load_fixture_script(name: str):
    """`tests/fixtures/<name>.py` as a module: the conversion to the official layout and the stand-in imports."""
    spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_anomalyclip(ours, official_dir: Path, commit: str | None) -> OfficialModel:
    """The official AnomalyCLIP with our model's weights and prompts, running its `test.py` path.

    Our prompts are rounded to float16 values first (the official text layers cast the deep tokens to float16).
    """
    fixture = load_fixture_script("make_anomalyclip_reference")
    commit = fixture._commit(official_dir, commit)
    fixture._stand_in_modules()
    sys.path.insert(0, str(official_dir))
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP
    from prompt_ensemble import AnomalyCLIP_PromptLearner, tokenize
    from scipy.ndimage import gaussian_filter

    config, clip = ours.config, ours.clip
    vision, text = config.vision_config, config.text_config
    n = config.num_prompt_vectors
    official_ids = tokenize([" ".join(["X"] * n) + " object.", " ".join(["X"] * n) + " damaged object."]).tolist()
    kept = [row[:1] + row[1 + n : row.index(49407) + 1] for row in official_ids]
    if kept != [config.normal_prompt_token_ids, config.abnormal_prompt_token_ids]:
        ours_ids = [config.normal_prompt_token_ids, config.abnormal_prompt_token_ids]
        raise SystemExit(f"error: prompt token ids differ: official {kept}, ours {ours_ids} (check --clip_bpe)")
    design = {"Prompt_length": n, "learnabel_text_embedding_depth": config.deep_prompt_depth,
              "learnabel_text_embedding_length": config.deep_prompt_length}  # fmt: skip
    model = AnomalyCLIP(
        config.projection_dim, vision.image_size, vision.num_hidden_layers, vision.hidden_size, vision.patch_size,
        text.max_position_embeddings, text.vocab_size, text.hidden_size, text.num_attention_heads,
        text.num_hidden_layers, design_details=design,
    )  # fmt: skip
    model.load_state_dict(fixture._openai_layout(clip, clip.text_model.embeddings.token_embedding.weight))
    model.eval().float()
    learner = AnomalyCLIP_PromptLearner(model, design)
    with torch.no_grad():
        for parameter in (ours.normal_prompt_vectors, ours.abnormal_prompt_vectors, ours.deep_prompts):
            parameter.copy_(parameter.half().float())
        learner.ctx_pos.copy_(ours.normal_prompt_vectors[None, None])
        learner.ctx_neg.copy_(ours.abnormal_prompt_vectors[None, None])
        for index, parameter in enumerate(learner.compound_prompts_text):
            parameter.copy_(ours.deep_prompts[index])
        model.visual.DAPM_replace(DPAM_layer=vision.num_hidden_layers - config.dpam_start_layer + 2)
        prompts, tokenized_prompts, compound_prompts = learner(cls_id=None)
        text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts).float()
        text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)

    def call(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # test.py, per batch; the text features computed once before, as test.py does
            image_features, patch_features = model.encode_image(pixel_values, config.feature_layers, DPAM_layer=20)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            pred_score = ((image_features @ text_features.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
            maps = []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], pixel_values.shape[-1])
                maps.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
            anomaly_map = torch.stack(maps).sum(dim=0)
            smoothed = [torch.from_numpy(gaussian_filter(m, sigma=config.smoothing_sigma)) for m in anomaly_map]
            return torch.stack(smoothed), pred_score

    return OfficialModel(REPOSITORIES["anomalyclip"], commit, call, call)


def official_adaclip(ours, official_dir: Path, commit: str | None, clip_bpe: Path, image_size: int) -> OfficialModel:
    """The official AdaCLIP with our model's CLIP and head, running its `test.py` path on `config.default_class_name`.

    As in its parity fixture: our CLIP converted to the open_clip layout (exact GELU, positions resized to the input
    by the official `resize_pos_embed`), the official BPE vocabulary read from `clip_bpe` (the copy's own is a Git LFS
    pointer), and the official prompt layers' float16 casts (`.half()`, a no-op under its CUDA autocast) disabled so
    that fp32 compares with fp32. The fixture's other change, `norm` of a copy, is for autograd and not needed without
    grad. `call` clusters with the official k-means (scikit-learn, k-means++ start); `parity_call` starts it from the
    farthest-point centres ours uses, so that both reach the same clusters and image score.

    Args:
        ours: Our `AdaCLIPForAnomalySegmentation` in fp32.
        official_dir: The local copy of github.com/caoyunkang/AdaCLIP.
        commit: Its commit, when it is no git checkout.
        clip_bpe: CLIP's `bpe_simple_vocab_16e6.txt.gz`.
        image_size: The input side in pixels (the official model is built for one size).

    Raises:
        SystemExit: `ours` is not the published hybrid setting (static and dynamic prompts in both towers, HSF), or
            the two tokenizers give different sentences' ids.
    """
    config, clip = ours.config, ours.clip
    published = (config.static_prompts, config.dynamic_prompts, config.text_prompts, config.visual_prompts)
    if not all(published) or not config.use_hsf:
        raise SystemExit("error: the official AdaCLIP comparison needs static + dynamic prompts in both towers and HSF")
    if "torchvision" in sys.modules and "torchvision.ops.misc" not in sys.modules:
        del sys.modules["torchvision"]  # the AnomalyCLIP stand-in; the AdaCLIP fixture puts in the one it needs
    fixture = load_fixture_script("make_adaclip_reference")
    commit = fixture._commit(official_dir, commit)
    adaclip, clip_model, simple_tokenizer, _ = fixture._import_official(official_dir)
    from scipy.ndimage import gaussian_filter

    tokenizer = simple_tokenizer.SimpleTokenizer(str(clip_bpe))
    adaclip._Tokenizer = lambda: tokenizer
    vision, text = config.vision_config, config.text_config
    vision_cfg = {"image_size": image_size, "layers": vision.num_hidden_layers, "width": vision.hidden_size}
    vision_cfg |= {"patch_size": vision.patch_size, "mlp_ratio": vision.intermediate_size / vision.hidden_size}
    text_cfg = {"context_length": text.max_position_embeddings, "vocab_size": text.vocab_size}
    text_cfg |= {"width": text.hidden_size, "heads": text.num_attention_heads, "layers": text.num_hidden_layers}
    freeze_clip = clip_model.CLIP(embed_dim=config.projection_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    state = fixture._open_clip_layout(clip, clip.text_model.embeddings.token_embedding.weight)
    clip_model.resize_pos_embed(state, freeze_clip)
    freeze_clip.load_state_dict(state)
    model = adaclip.AdaCLIP(
        freeze_clip=freeze_clip, text_channel=config.projection_dim, visual_channel=vision.hidden_size,
        prompting_length=config.prompt_length, prompting_depth=config.prompt_depth, prompting_branch="VL",
        prompting_type="SD", use_hsf=True, k_clusters=config.hsf_num_clusters,
        output_layers=list(config.feature_layers), device="cpu", image_size=image_size,
    ).eval()  # fmt: skip
    _copy_head(ours, model)
    class_name = config.default_class_name
    layer = model.text_embedding_layer
    states = [s.format(class_name.replace("-", " ")) for group in layer.prompt_state for s in group]
    sentences = [template.format(state) for state in states for template in layer.prompt_templates]
    official_ids = [[i for i in row if i] for row in layer.tokenize(sentences).tolist()]
    if official_ids != config.prompt_token_ids[class_name]:
        raise SystemExit(f"error: the official and our token ids of the {class_name!r} sentences differ (--clip_bpe)")

    def call(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), fixture._without_half_casts():  # test.py, one image
            anomaly_map, pred_score = model(pixel_values, [class_name] * len(pixel_values), aggregation=True)
        smoothed = [torch.from_numpy(gaussian_filter(m.numpy(), sigma=config.smoothing_sigma)) for m in anomaly_map]
        return torch.stack(smoothed), pred_score

    def parity_call(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        official_kmeans = model.HSF.cluster_performer
        model.HSF.cluster_performer = fixture.SeededKMeans(config.hsf_num_clusters)
        try:
            return call(pixel_values)
        finally:
            model.HSF.cluster_performer = official_kmeans

    return OfficialModel(REPOSITORIES["adaclip"], commit, call, parity_call)


def _copy_head(ours, model) -> None:
    """Copies our AdaCLIP head into the official modules (their text layer-1 static prompt, never used, stays)."""
    length = ours.config.prompt_length
    with torch.no_grad():
        for index, prompts in enumerate(ours.static_text_prompts, start=1):
            model.text_prompter.static_prompts[index].copy_(prompts)
        for index, prompts in enumerate(ours.static_visual_prompts):
            model.visual_prompter.static_prompts[index].copy_(prompts)
        for kind in ("text", "visual"):  # one official Linear per prompt token = a slice of our single Linear
            generator = getattr(ours, f"dynamic_{kind}_prompt_generator")
            for index, linear in enumerate(getattr(model, f"dynamic_{kind}_prompt_generator").head):
                linear.weight.copy_(generator.weight.chunk(length)[index])
                linear.bias.copy_(generator.bias.chunk(length)[index])
        for linear, projection in zip(model.patch_token_layer.head, ours.patch_projections, strict=True):
            linear.weight.copy_(projection.weight)
            linear.bias.copy_(projection.bias)
        model.cls_token_layer.head[0].weight.copy_(ours.class_projection.weight)
        model.cls_token_layer.head[0].bias.copy_(ours.class_projection.bias)


__all__ = ["REPOSITORIES", "OfficialModel", "load_fixture_script", "official_adaclip", "official_anomalyclip"]
