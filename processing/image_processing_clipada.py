"""Image processor for CLIP-ADA: images and masks in, `pixel_values` and `labels` out; anomaly maps back to image sizes.

Built on transformers' `PilBackend` (as Segformer's PIL processor): the backend stores and validates the settings,
runs resize -> normalise and saves `preprocessor_config.json`. This file adds what is CLIP-ADA's own: images read by
the rules of `image_inputs.py` (PIL images and files always `(H, W, C)`, pixels scaled to [0, 1] by bit depth, one
frame, at most `max_image_pixels` checked before decoding), settings with bounds, resizing in float precision,
masks (`segmentation_maps=`) -> binary `labels` (B, H, W) resized with nearest neighbour and never normalised,
`normalize()` for tensors already on the device, and `post_process_anomaly_maps`. `resize_mode` and `tile_size`
choose letterboxed or tiled inputs (`tiling.py`); `post_process_anomaly_detection` merges them back.

Example:
    ```python
    >>> from processing import CLIPADAImageProcessor
    >>> processor = CLIPADAImageProcessor(size=224)
    >>> inputs = processor(images=[image], segmentation_maps=[mask], return_tensors="pt")
    >>> inputs["pixel_values"].shape, inputs["labels"].shape
    (torch.Size([1, 3, 224, 224]), torch.Size([1, 224, 224]))
    >>> maps = processor.post_process_anomaly_maps(model(inputs["pixel_values"]), target_sizes=[image.size[::-1]])
    ```
"""

from __future__ import annotations  # annotations name torch.Tensor, which the numpy-only path never imports

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from huggingface_hub.dataclasses import validate_typed_dict
from PIL import Image
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .image_inputs import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageLike,
    as_list,
    check_finite,
    item_name,
    to_channels_first,
    to_unit_range,
    with_file_name,
)
from .tiling import (
    DEFAULT_IMAGE_SCORE_TOP_K,
    MAX_TILE_OVERLAP,
    MAX_TILE_SIZE,
    MIN_TILE_SIZE,
    RESIZE_MODES,
    cut_inputs,
    image_layouts,
    reassemble,
)

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the numpy path (return_tensors="np") serves the torch-free runners of exported models
    torch = F = None

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_SIZE_DICT = "{'height': int, 'width': int}"
_RESAMPLES = (PILImageResampling.NEAREST, PILImageResampling.BILINEAR, PILImageResampling.BICUBIC)
# CLIP vision towers take 224-448 px (some 1024); a side above 4096 px (200 MB of float32 per input) is a typo, and
# `--image_size 20000` would otherwise allocate gigabytes per image before the model even runs.
MAX_SIZE = 4096


class CLIPADAImageProcessorKwargs(ImagesKwargs, total=False):
    """The settings of the backend plus how an image becomes model inputs (see `CLIPADAImageProcessor`)."""

    resize_mode: str | None
    tile_size: int | None
    tile_overlap: float | None
    max_image_pixels: int | None


class CLIPADAImageProcessor(PilBackend):
    r"""
    Prepares images (and optional anomaly masks) for [`CLIPADAForAnomalySegmentation`].

    Args:
        size (`int`, `tuple[int, int]` or `dict`, *optional*, defaults to 224):
            Output size, 1 to 4096 px a side; an int gives a square, a dict has `height` and `width`. No crop:
            MVTec-AD and VisA defects can sit at the border, and maps must cover the whole image.
        resample (`int`, *optional*, defaults to `PIL.Image.BICUBIC`):
            Resampling filter for images (PIL's bicubic or bilinear, antialiased, as CLIP's own processor, computed
            in float precision); masks always use nearest neighbour.
        image_mean (`tuple[float]`, *optional*, defaults to CLIP's mean):
            Per-channel mean subtracted from pixels in [0, 1]: one finite value, or 3 (R, G, B).
        image_std (`tuple[float]`, *optional*, defaults to CLIP's std):
            Per-channel standard deviation divided after subtracting the mean: one, or 3, finite and positive.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Apply the mean/std normalisation. Training turns it off to synthesise anomalies in [0, 1] pixel space,
            then calls [`normalize`] on the device.
        resize_mode (`str`, *optional*, defaults to `"squash"`):
            `"squash"` resizes the whole image to `size`; `"letterbox"` keeps its proportions and pads with the mean
            colour (0 after normalisation); the padding is cropped off the map again and never scored.
        tile_size (`int`, *optional*):
            When set, each image is cut into square tiles of this many image pixels, 16 to 4096 (each resized to
            `size`, which must be square) instead; an image whose short side is smaller is enlarged to hold one
            tile. Outputs then carry `image_layouts`, and [`post_process_anomaly_detection`] blends the tile maps
            into one. The tiles of one image are bounded (`tiling.MAX_TILE_INPUT_PIXELS`).
        tile_overlap (`float`, *optional*, defaults to 0.25):
            Fraction of a tile that neighbouring tiles share at least, in [0, 0.75].
        max_image_pixels (`int`, *optional*, defaults to 50,000,000):
            Images above this many pixels (width x height) are refused with an error naming them; for files,
            before they are decoded.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = OPENAI_CLIP_MEAN
    image_std = OPENAI_CLIP_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = False  # pixels are scaled to [0, 1] by their bit depth when read, in `process_image`
    do_normalize = True
    resize_mode = "squash"
    tile_size = None
    tile_overlap = 0.25
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
    valid_kwargs = CLIPADAImageProcessorKwargs

    def __init__(self, **kwargs: Unpack[ImagesKwargs]) -> None:
        super().__init__(**kwargs)
        self._validate_preprocess_kwargs(
            size=self.size, resample=self.resample, image_mean=self.image_mean, image_std=self.image_std,
            resize_mode=self.resize_mode, tile_size=self.tile_size, tile_overlap=self.tile_overlap,
            max_image_pixels=self.max_image_pixels,
        )  # fmt: skip

    def preprocess(
        self,
        images: ImageLike | Sequence[ImageLike],
        segmentation_maps: ImageLike | Sequence[ImageLike | None] | None = None,
        **kwargs: Unpack[ImagesKwargs],
    ) -> BatchFeature:
        """Turns images (and masks) into model inputs.

        Args:
            images: one image or a list of images: PIL images (modes L, RGB, RGBA, I;16, I, F, ...) and paths to
                image files, always read as (H, W, C); numpy arrays or torch tensors of shape (H, W), (H, W, C) or
                (C, H, W) with C in {1, 3, 4} (uint8, uint16, bool, or float in [0, 1]), or a (B, ...) batch array.
                A 3-D array is (H, W, C) when its last axis can be channels; pass
                `input_data_format="channels_first"` for a (C, H, W) array whose width is 1, 3 or 4.
            segmentation_maps: optional masks, one per image, same kinds as `images`; any value > 0 is anomalous.
                `None` in the list stands for an all-normal image.
            **kwargs: per-call overrides of the settings (`size`, `do_normalize`, ...); `return_tensors` is `"pt"`
                (the default) or `"np"`. `do_normalize=False` returns pixels in [0, 1].

        Returns:
            `BatchFeature` with `pixel_values` `(B, 3, H, W)` float32 and, with masks, `labels` `(B, H, W)` int64.
            Letterbox and tiles add `image_layouts` (one per image); B is then the number of inputs (tiles).
        """
        kwargs["return_tensors"] = kwargs.get("return_tensors") or "pt"
        return super().preprocess(images, segmentation_maps, **kwargs)

    def model_inputs(
        self, pixels: Sequence[np.ndarray], names: Sequence[str] | None = None, **kwargs: Unpack[ImagesKwargs]
    ) -> BatchFeature:
        """Images already read by [`process_image`] -> model inputs, without reading them again.

        Args:
            pixels: float32 `(3, H, W)` arrays in [0, 1], one per image.
            names: How errors name each image (an image cut into too many tiles); default `images[i]`.
            **kwargs: As in [`preprocess`]; `return_tensors` defaults to `"np"` here.

        Returns:
            `BatchFeature` with `pixel_values` `(N, 3, H, W)` float32 and, for letterbox and tiles, `image_layouts`.
        """
        kwargs["return_tensors"] = kwargs.get("return_tensors") or "np"
        validate_typed_dict(self.valid_kwargs, kwargs)
        kwargs = self._merge_and_standardize_kwargs(**kwargs)
        self._validate_preprocess_kwargs(**kwargs)
        return_tensors = kwargs.pop("return_tensors")
        data, _ = self._pixel_inputs(list(pixels), kwargs, names)
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["image_layouts"])

    def _preprocess_image_like_inputs(
        self,
        images: ImageLike | Sequence[ImageLike],
        segmentation_maps: ImageLike | Sequence[ImageLike | None] | None,
        return_tensors: str,
        **kwargs: Any,
    ) -> BatchFeature:
        """Reads every image (and mask) under its own name, then resizes and normalises them with the backend.

        Letterbox and tiles cut the inputs here (`tiling.py`), with the same geometry for masks (padded with 0), and
        the backend only normalises them."""
        reading = {key: kwargs.get(key) for key in ("max_image_pixels", "input_data_format")}
        image_list = as_list(images, "images")
        names = [item_name("images", index, image) for index, image in enumerate(image_list)]
        pixels = [self.process_image(image, name, **reading) for image, name in zip(image_list, names)]
        data, kwargs = self._pixel_inputs(pixels, kwargs, names)
        layouts = data.get("image_layouts")
        if segmentation_maps is not None:
            mask_list = as_list(segmentation_maps, "segmentation_maps", allow_none_items=True)
            if len(mask_list) != len(image_list):
                raise ValueError(
                    f"Got {len(image_list)} images but {len(mask_list)} segmentation_maps: give one mask per image "
                    "(None for a normal image)."
                )
            masks = [
                self.process_mask(
                    mask, item_name("segmentation_maps", index, mask), image_name, image.shape[-2:], **reading
                )
                for index, (mask, image_name, image) in enumerate(zip(mask_list, names, pixels))
            ]
            if layouts is not None:
                masks = self._cut(masks, layouts, PILImageResampling.NEAREST, (0.0,))
            mask_kwargs = {**kwargs, "do_normalize": False, "resample": PILImageResampling.NEAREST}
            labels = self._preprocess(masks, return_tensors=None, **mask_kwargs)["pixel_values"]
            data["labels"] = [label[0].astype(np.int64) for label in labels]
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["image_layouts"])

    def _pixel_inputs(
        self, pixels: list[np.ndarray], kwargs: dict[str, Any], names: Sequence[str] | None = None
    ) -> tuple[dict, dict[str, Any]]:
        """Read images `(3, H, W)` -> `{"pixel_values": [...], "image_layouts": [...] (letterbox, tiles)}`, and the
        settings the masks are then processed with (the layout fields taken out; no resize where inputs were cut).
        `names` name the images in errors (too many tiles); default `images[i]`."""
        kwargs = dict(kwargs)
        modes = {key: kwargs.pop(key) for key in ("resize_mode", "tile_size", "tile_overlap")}
        input_size = (kwargs["size"].height, kwargs["size"].width)
        names = names or [f"images[{index}]" for index in range(len(pixels))]
        layouts = image_layouts([image.shape[-2:] for image in pixels], input_size, **modes, names=names)
        fill = np.broadcast_to(np.asarray(kwargs["image_mean"], dtype=np.float32), (3,))  # 0 once normalised
        inputs = pixels
        if layouts is not None:
            inputs, kwargs["do_resize"] = self._cut(pixels, layouts, kwargs["resample"], fill), False
        data = {"pixel_values": self._preprocess(inputs, return_tensors=None, **kwargs)["pixel_values"]}
        if layouts is not None:
            data["image_layouts"] = layouts
        return data, kwargs

    def _cut(self, arrays: list[np.ndarray], layouts: list, resample: int, fill: Sequence[float]) -> list[np.ndarray]:
        """Every `(C, H, W)` array -> its layout's model inputs at `size` (the backend then skips resizing)."""

        def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
            return self.resize(array, SizeDict(height=size[0], width=size[1]), resample)

        return [cut for array, layout in zip(arrays, layouts) for cut in cut_inputs(array, layout, resize, fill)]

    def process_image(
        self,
        image: ImageLike,
        name: str = "image",
        max_image_pixels: int | None = None,
        input_data_format: str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """One image -> float32 `(3, H, W)` in [0, 1], scaled by its bit depth; grey is repeated, alpha dropped.

        Files and PIL images are `(H, W, C)`; `input_data_format` settles the layout of an ambiguous raw array;
        `max_image_pixels` defaults to the processor's. Errors name `name` (and the file name of a path)."""
        name = with_file_name(name, image)
        array = self._channels_first(image, name, max_image_pixels, input_data_format)
        pixels = to_unit_range(array, name)
        if pixels.shape[0] == 1:
            return np.repeat(pixels, 3, axis=0)
        return pixels[:3]  # RGBA: the alpha channel is dropped, as PIL's convert("RGB") does

    def process_mask(
        self,
        mask: ImageLike | None,
        name: str,
        image_name: str,
        image_size: tuple[int, int],
        max_image_pixels: int | None = None,
        input_data_format: str | None = None,
    ) -> np.ndarray:
        """One mask (None = normal) -> float32 `(1, H, W)` in {0, 1} at its image's size: any value > 0 is anomalous."""
        if mask is None:
            return np.zeros((1, *image_size), dtype=np.float32)
        array = self._channels_first(mask, with_file_name(name, mask), max_image_pixels, input_data_format)
        if tuple(array.shape[-2:]) != tuple(image_size):
            raise ValueError(
                f"{name} has size {tuple(array.shape[-2:])} (H, W) but its image {image_name} has "
                f"{tuple(image_size)}: a mask must match its image."
            )
        if np.issubdtype(array.dtype, np.floating):
            check_finite(array, name)
        if array.dtype != bool and array.min() < 0:
            raise ValueError(
                f"{name} has negative values (min {array.min()}); a mask marks anomalous pixels with values > 0 and "
                "normal pixels with 0."
            )
        return (array > 0).any(axis=0, keepdims=True).astype(np.float32)

    def _channels_first(
        self, image: ImageLike, name: str, max_image_pixels: int | None, input_data_format: str | None
    ) -> np.ndarray:
        """Any supported input -> a numpy array `(C, H, W)` in its own dtype (`image_inputs.to_channels_first`)."""
        max_pixels = self.max_image_pixels if max_image_pixels is None else max_image_pixels
        array = to_channels_first(image, name, max_pixels, input_data_format)
        if min(array.shape[-2:]) == 0:
            raise ValueError(f"{name} is empty: {array.shape[-1]}x{array.shape[-2]} pixels (W x H).")
        return array

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | int | None = None, **kwargs: Any
    ) -> np.ndarray:
        """Resizes float32 `(C, H, W)` in [0, 1] channel by channel in PIL's 32-bit float mode.

        The backend's resize goes through uint8 PIL images; this keeps float precision (16-bit images keep their
        depth) with the same PIL filters. Bicubic overshoot is clipped back to [0, 1].
        """
        resample = self.resample if resample is None else resample
        channels = [
            Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32)).resize((size.width, size.height), resample)
            for channel in image
        ]
        return np.clip(np.stack([np.asarray(channel) for channel in channels]), 0.0, 1.0)

    def normalize(
        self,
        image: np.ndarray | torch.Tensor,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        **kwargs: Any,
    ) -> np.ndarray | torch.Tensor:
        """Mean/std normalisation of `(..., 3, H, W)` pixels in [0, 1] (defaults: the processor's `image_mean` and
        `image_std`). A torch tensor stays on its own device and dtype, so training can normalise on the GPU."""
        mean = self.image_mean if mean is None else mean
        std = self.image_std if std is None else std
        if isinstance(image, np.ndarray):
            return super().normalize(image, mean, std)
        mean = torch.tensor(mean, device=image.device, dtype=image.dtype).reshape(-1, 1, 1)
        std = torch.tensor(std, device=image.device, dtype=image.dtype).reshape(-1, 1, 1)
        return (image - mean) / std

    def _standardize_kwargs(self, size: Any = None, **kwargs: Any) -> dict[str, Any]:
        """The backend's standardisation (`size` -> `SizeDict`), with an error naming `size` when it cannot be read."""
        try:
            return super()._standardize_kwargs(size=size, **kwargs)
        except ValueError as error:
            raise ValueError(
                f"`size` must be a positive int, (height, width) or {_SIZE_DICT}, got {size!r}."
            ) from error

    def _validate_preprocess_kwargs(
        self,
        size: SizeDict | None = None,
        resample: PILImageResampling | int | None = None,
        image_mean: float | Sequence[float] | None = None,
        image_std: float | Sequence[float] | None = None,
        resize_mode: str | None = None,
        tile_size: int | None = None,
        tile_overlap: float | None = None,
        max_image_pixels: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Checks the settings, at construction (so also when a saved config loads) and on every call, naming the
        faulty field."""
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"`resize_mode` must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}.")
        _check_tile_settings(tile_size, tile_overlap)
        if tile_size is not None and size is not None and size.height != size.width:
            raise ValueError(f"`tile_size` needs a square `size` (tiles are square), got {dict(size)}.")
        if size is None or dict(size).keys() != {"height", "width"} or min(size.height, size.width) < 1:
            raise ValueError(f"`size` must be a positive int, (height, width) or {_SIZE_DICT}, got {size}.")
        if max(size.height, size.width) > MAX_SIZE:
            raise ValueError(
                f"`size` must be at most {MAX_SIZE} px a side (CLIP inputs are 224-448 px), got {dict(size)}."
            )
        if resample not in _RESAMPLES:
            raise ValueError(f"`resample` must be PIL NEAREST (0), BILINEAR (2) or BICUBIC (3), got {resample}.")
        _channel_values(image_mean, "image_mean")
        if np.min(_channel_values(image_std, "image_std")) <= 0:
            raise ValueError(f"`image_std` must be positive, got {image_std}.")
        if max_image_pixels is not None and (not _is_int(max_image_pixels) or max_image_pixels < 1):
            raise ValueError(f"`max_image_pixels` must be a positive int (width x height), got {max_image_pixels!r}.")
        super()._validate_preprocess_kwargs(
            size=size, resample=resample, image_mean=image_mean, image_std=image_std, **kwargs
        )

    def post_process_anomaly_detection(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | None = None,
        image_layouts: Sequence | None = None,
        image_score_top_k: int = DEFAULT_IMAGE_SCORE_TOP_K,
    ) -> tuple[list[np.ndarray | torch.Tensor], np.ndarray | torch.Tensor | None]:
        """Model outputs -> one anomaly map per image at its original size, and one image score per image.

        Args:
            outputs: model outputs, a backend's output or a dict, with `anomaly_map` `(N, H, W)` and `pred_score`
                `(N,)` (torch tensors or numpy arrays), N inputs (tiles) of B images.
            target_sizes: squash only: `(height, width)` per image (e.g. `pil_image.size[::-1]`); `None` keeps the
                model's input size.
            image_layouts: the preprocessing's `image_layouts` (letterbox, tiles); `None` for squash.
            image_score_top_k: letterbox and tiles: pixels averaged at the input size (the model's
                `config.image_score_top_k` where it has one), scaled to the area of the content or of the tiled map.

        Returns:
            `(maps, scores)`: B maps `(height_i, width_i)` and `(B,)` scores, torch tensors for torch outputs and
            numpy arrays otherwise. Squash: the model's own `pred_score` (None where `outputs` has none) and bilinear
            maps (`align_corners=False`, as `F.interpolate`). Letterbox and tiles: the top-k mean of the content crop
            or the blended map (`tiling.reassemble`), whatever the family's own score rule, so thresholds
            calibrated in squash mode do not carry over (`config.calibration_mode` records the mode).
        """
        anomaly_maps = _output_field(outputs, "anomaly_map")
        if anomaly_maps is None or anomaly_maps.ndim != 3:
            raise ValueError("`outputs` must have an `anomaly_map` of shape (batch, H, W), e.g. a CLIPADAOutput.")
        as_torch = torch is not None and isinstance(anomaly_maps, torch.Tensor)
        if image_layouts is not None:
            image_score_top_k = _check_top_k(image_score_top_k)
            if as_torch:
                anomaly_maps = anomaly_maps.detach().float().cpu().numpy()
            maps, scores = reassemble(np.asarray(anomaly_maps, dtype=np.float32), image_layouts, image_score_top_k)
            if as_torch:
                return [torch.from_numpy(anomaly_map) for anomaly_map in maps], torch.from_numpy(scores)
            return maps, scores
        scores = _output_field(outputs, "pred_score")
        if target_sizes is None:
            return list(anomaly_maps), scores
        if len(target_sizes) != anomaly_maps.shape[0]:
            raise ValueError(
                f"Got {len(target_sizes)} target_sizes for a batch of {anomaly_maps.shape[0]} anomaly maps."
            )
        resized = []
        for anomaly_map, target_size in zip(anomaly_maps, target_sizes):
            target = tuple(int(value) for value in target_size)
            if len(target) != 2 or min(target) < 1:
                raise ValueError(f"Each target size must be (height, width) with positive values, got {target_size}.")
            if as_torch:
                resized.append(
                    F.interpolate(anomaly_map[None, None].float(), size=target, mode="bilinear", align_corners=False)[
                        0, 0
                    ]
                )
            else:
                resized.append(resize_bilinear(np.asarray(anomaly_map, dtype=np.float32), target))
        return resized, scores

    def post_process_anomaly_maps(
        self,
        outputs: Any,
        target_sizes: Sequence[Sequence[int]] | None = None,
        image_layouts: Sequence | None = None,
    ) -> list[np.ndarray | torch.Tensor]:
        """Model outputs -> one anomaly map per image at its original size: the maps of
        [`post_process_anomaly_detection`].

        Args:
            outputs: a [`CLIPADAOutput`] (or anything with `anomaly_map` of shape `(B, H, W)`).
            target_sizes: `(height, width)` per image (e.g. `pil_image.size[::-1]`); `None` keeps the model size.
            image_layouts: letterbox and tiles: the preprocessing's `image_layouts`; the maps come back at the
                images' own sizes.

        Returns:
            B maps `(height_i, width_i)`, probabilities in [0, 1]; torch tensors for torch outputs.
        """
        return self.post_process_anomaly_detection(outputs, target_sizes, image_layouts)[0]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_tile_settings(tile_size: Any, tile_overlap: Any) -> None:
    """`tile_size`: None or an int in [MIN_TILE_SIZE, MAX_TILE_SIZE]; `tile_overlap`: a fraction in
    [0, MAX_TILE_OVERLAP]."""
    if tile_size is not None and (not _is_int(tile_size) or not MIN_TILE_SIZE <= tile_size <= MAX_TILE_SIZE):
        raise ValueError(
            f"`tile_size` must be None (no tiles) or an int from {MIN_TILE_SIZE} to {MAX_TILE_SIZE} image pixels, "
            f"got {tile_size!r}."
        )
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, (int, float, np.floating)):
        raise ValueError(
            f"`tile_overlap` must be a fraction of a tile in [0, {MAX_TILE_OVERLAP}], got {tile_overlap!r}."
        )
    if not 0.0 <= tile_overlap <= MAX_TILE_OVERLAP:  # False for NaN too
        raise ValueError(
            f"`tile_overlap` must be a fraction of a tile in [0, {MAX_TILE_OVERLAP}] (more overlap multiplies the "
            f"tiles by 1 / (1 - overlap)^2), got {tile_overlap!r}."
        )


def _channel_values(values: Any, field: str) -> np.ndarray:
    """`image_mean` / `image_std`: one finite number or three (R, G, B) -> a float64 array; else an error naming
    `field`."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is None or array.shape not in ((), (3,)):
        raise ValueError(f"`{field}` must be one number or 3 values (R, G, B), got {values!r}.")
    if not np.isfinite(array).all():
        raise ValueError(f"`{field}` must be finite (no NaN or inf), got {values!r}.")
    return array


def _check_top_k(image_score_top_k: Any) -> int:
    """`image_score_top_k` as a positive int (an integral float from a JSON config is accepted)."""
    if isinstance(image_score_top_k, float) and image_score_top_k.is_integer():
        image_score_top_k = int(image_score_top_k)
    if not _is_int(image_score_top_k) or image_score_top_k < 1:
        raise ValueError(f"`image_score_top_k` must be a positive int (pixels), got {image_score_top_k!r}.")
    return int(image_score_top_k)


def _output_field(outputs: Any, name: str) -> Any:
    """`outputs[name]` of a dict (a `ModelOutput` is one), else the attribute; None when missing."""
    return outputs.get(name) if isinstance(outputs, Mapping) else getattr(outputs, name, None)


def _source_indices(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second, computed in float32 exactly as
    torch's CPU kernel of `F.interpolate(mode="bilinear", align_corners=False)` computes them."""
    scale = np.float64(np.float32(in_size) / np.float32(out_size))
    # one rounding of scale * (i + 0.5) - 0.5, as the kernel's fused multiply-add
    source = np.maximum(scale * (np.arange(out_size) + 0.5) - 0.5, 0).astype(np.float32)
    low = source.astype(np.int64)  # truncation, as the kernel's int cast
    high = np.where(low < in_size - 1, low + 1, low)
    return low, high, (source - low).astype(np.float32)


def resize_bilinear(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`(h, w)` -> `(height, width)` float32 by bilinear interpolation with `align_corners=False`, without torch:
    the source indices and weights of torch's CPU kernel of `F.interpolate` exactly, the blend in float32 (results
    agree with torch's to 1 float32 ulp, about 1.2e-7 on probabilities)."""
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    top, bottom, row_weight = _source_indices(anomaly_map.shape[0], size[0])
    left, right, column_weight = _source_indices(anomaly_map.shape[1], size[1])
    column_weight, row_weight = column_weight[None, :], row_weight[:, None]
    upper = (1 - column_weight) * anomaly_map[top][:, left] + column_weight * anomaly_map[top][:, right]
    lower = (1 - column_weight) * anomaly_map[bottom][:, left] + column_weight * anomaly_map[bottom][:, right]
    return ((1 - row_weight) * upper + row_weight * lower).astype(np.float32)


__all__ = ["CLIPADAImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "resize_bilinear"]
