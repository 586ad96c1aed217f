"""Image processor for CLIP-ADA: images and masks in, `pixel_values` and `labels` out; anomaly maps back to image sizes.

Images (PIL, numpy or torch; grayscale, RGB, RGBA or 16-bit) -> RGB -> bicubic resize -> rescale to [0, 1] ->
CLIP mean/std -> `pixel_values` (B, 3, H, W). Masks (`segmentation_maps=`) -> binary {0, 1} -> nearest resize
-> `labels` (B, H, W), never normalised. Plain numpy/torch/PIL, no torchvision.

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

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_EXPECTED = "a PIL image, a numpy array or torch tensor of shape (H, W), (H, W, C) or (C, H, W), or an image path"


class CLIPADAImageProcessor(BaseImageProcessor):
    r"""
    Prepares images (and optional anomaly masks) for [`CLIPADAForAnomalySegmentation`].

    Args:
        size (`int`, `tuple[int, int]` or `dict`, *optional*, defaults to 224):
            Output size; an int gives a square, a dict has `height` and `width`. No crop: MVTec-AD and VisA
            defects can sit at the border, and maps must cover the whole image.
        resample (`int`, *optional*, defaults to `PIL.Image.BICUBIC`):
            Resampling filter for images (bicubic with antialiasing, as CLIP's own processor); masks always use
            nearest neighbour.
        image_mean (`tuple[float]`, *optional*, defaults to CLIP's mean):
            Per-channel mean subtracted after rescaling to [0, 1].
        image_std (`tuple[float]`, *optional*, defaults to CLIP's std):
            Per-channel standard deviation divided after subtracting the mean.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Apply the mean/std normalisation. Training turns it off to synthesise anomalies in [0, 1] pixel space,
            then calls [`normalize`] on the device.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: "int | Sequence[int] | dict[str, int]" = 224,
        resample: int = Image.BICUBIC,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        do_normalize: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.size = _size_dict(size)
        if int(resample) not in (Image.NEAREST, Image.BILINEAR, Image.BICUBIC):
            raise ValueError(f"`resample` must be PIL NEAREST (0), BILINEAR (2) or BICUBIC (3), got {resample}.")
        self.resample = int(resample)
        self.image_mean = _channel_triple(image_mean, "image_mean")
        self.image_std = _channel_triple(image_std, "image_std")
        if any(value <= 0 for value in self.image_std):
            raise ValueError(f"`image_std` must be positive, got {self.image_std}.")
        self.do_normalize = bool(do_normalize)

    def __call__(self, images, segmentation_maps=None, **kwargs) -> BatchFeature:
        return self.preprocess(images, segmentation_maps=segmentation_maps, **kwargs)

    def preprocess(
        self, images, segmentation_maps=None, return_tensors: str | None = "pt", do_normalize: bool | None = None
    ) -> BatchFeature:
        """Turns images (and masks) into model inputs.

        Args:
            images: one image or a list of images: PIL images (modes L, RGB, RGBA, I;16, ...), numpy arrays or torch
                tensors of shape (H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4} (uint8, uint16, bool, or
                float in [0, 1]), or paths to image files.
            segmentation_maps: optional masks, one per image, same kinds as `images`; any value > 0 is anomalous.
                `None` in the list stands for an all-normal image.
            return_tensors: `"pt"` (torch tensors) or `"np"`.
            do_normalize: overrides `self.do_normalize` for this call (`False` returns pixels in [0, 1]).

        Returns:
            `BatchFeature` with `pixel_values` `(B, 3, H, W)` float32 and, with masks, `labels` `(B, H, W)` int64.
        """
        if return_tensors not in ("pt", "np", None):
            raise ValueError(f"`return_tensors` must be 'pt' or 'np', got {return_tensors!r}.")
        image_list = _as_list(images, "images")
        mask_list = None
        if segmentation_maps is not None:
            mask_list = _as_list(segmentation_maps, "segmentation_maps", allow_none_items=True)
            if len(mask_list) != len(image_list):
                raise ValueError(
                    f"Got {len(image_list)} images but {len(mask_list)} segmentation_maps: give one mask per image "
                    "(None for a normal image)."
                )
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        pixel_values, labels = [], []
        for index, image in enumerate(image_list):
            pixels = _to_float_chw(image, f"images[{index}]")
            pixel_values.append(self._prepare_image(pixels, do_normalize))
            if mask_list is not None:
                labels.append(self._prepare_mask(mask_list[index], f"segmentation_maps[{index}]", pixels.shape[-2:]))
        data = {"pixel_values": torch.stack(pixel_values)}
        if mask_list is not None:
            data["labels"] = torch.stack(labels)
        if return_tensors == "np":
            data = {key: value.numpy() for key, value in data.items()}
        return BatchFeature(data=data)

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP mean/std normalisation of `(..., 3, H, W)` pixels in [0, 1], on their own device and dtype."""
        mean = torch.tensor(self.image_mean, device=pixel_values.device, dtype=pixel_values.dtype).view(3, 1, 1)
        std = torch.tensor(self.image_std, device=pixel_values.device, dtype=pixel_values.dtype).view(3, 1, 1)
        return (pixel_values - mean) / std

    def _prepare_image(self, pixels: torch.Tensor, do_normalize: bool) -> torch.Tensor:
        """`(C, h, w)` in [0, 1] -> RGB, resized `(3, H, W)` float32, CLIP-normalised when `do_normalize`."""
        if pixels.shape[0] == 1:
            pixels = pixels.expand(3, -1, -1)
        elif pixels.shape[0] == 4:
            pixels = pixels[:3]  # RGBA: the alpha channel is dropped, as PIL's convert("RGB") does
        mode = {Image.NEAREST: "nearest", Image.BILINEAR: "bilinear", Image.BICUBIC: "bicubic"}[self.resample]
        pixels = self._resize(pixels[None], mode=mode)[0].clamp(0.0, 1.0)
        return self.normalize(pixels) if do_normalize else pixels

    def _prepare_mask(self, mask, name: str, image_size: tuple[int, int]) -> torch.Tensor:
        """One mask (None = normal) -> binary `(H, W)` int64 at `self.size` (nearest neighbour)."""
        if mask is None:
            return torch.zeros(self.size["height"], self.size["width"], dtype=torch.long)
        values = _to_float_chw(mask, name)
        if tuple(values.shape[-2:]) != tuple(image_size):
            raise ValueError(
                f"{name} has size {tuple(values.shape[-2:])} (H, W) but its image has {tuple(image_size)}: a mask "
                "must match its image."
            )
        binary = (values.amax(dim=0) > 0).float()
        return self._resize(binary[None, None], mode="nearest-exact")[0, 0].long()

    def _resize(self, pixels: torch.Tensor, mode: str) -> torch.Tensor:
        size = (self.size["height"], self.size["width"])
        if tuple(pixels.shape[-2:]) == size:
            return pixels
        antialias = mode in ("bilinear", "bicubic")
        return F.interpolate(
            pixels, size=size, mode=mode, antialias=antialias, align_corners=False if antialias else None
        )

    def post_process_anomaly_maps(
        self, outputs, target_sizes: Sequence[Sequence[int]] | None = None
    ) -> list[torch.Tensor]:
        """Model outputs -> one anomaly map per image at its original size.

        Args:
            outputs: a [`CLIPADAOutput`] (or anything with `anomaly_map` of shape `(B, H, W)`).
            target_sizes: `(height, width)` per image (e.g. `pil_image.size[::-1]`); `None` keeps the model size.

        Returns:
            `list[torch.Tensor]` of B maps `(height_i, width_i)`, probabilities in [0, 1] (bilinear resize).
        """
        anomaly_maps = getattr(outputs, "anomaly_map", None)
        if anomaly_maps is None or anomaly_maps.ndim != 3:
            raise ValueError("`outputs` must have an `anomaly_map` of shape (batch, H, W), e.g. a CLIPADAOutput.")
        if target_sizes is None:
            return list(anomaly_maps)
        if len(target_sizes) != anomaly_maps.shape[0]:
            raise ValueError(
                f"Got {len(target_sizes)} target_sizes for a batch of {anomaly_maps.shape[0]} anomaly maps."
            )
        resized = []
        for anomaly_map, target_size in zip(anomaly_maps, target_sizes):
            target = tuple(int(value) for value in target_size)
            if len(target) != 2 or min(target) < 1:
                raise ValueError(f"Each target size must be (height, width) with positive values, got {target_size}.")
            resized.append(
                F.interpolate(anomaly_map[None, None].float(), size=target, mode="bilinear", align_corners=False)[0, 0]
            )
        return resized


def _size_dict(size) -> dict[str, int]:
    if isinstance(size, dict):
        if set(size) != {"height", "width"}:
            raise ValueError(f"`size` as a dict needs exactly the keys 'height' and 'width', got {sorted(size)}.")
        height, width = size["height"], size["width"]
    elif isinstance(size, int):
        height = width = size
    elif isinstance(size, Sequence) and len(size) == 2:
        height, width = size
    else:
        raise ValueError(f"`size` must be an int, (height, width) or {{'height', 'width'}}, got {size!r}.")
    if not all(isinstance(value, int) and value > 0 for value in (height, width)):
        raise ValueError(f"`size` values must be positive integers, got {size!r}.")
    return {"height": height, "width": width}


def _channel_triple(values, name: str) -> list[float]:
    values = [float(value) for value in (values if isinstance(values, Sequence) else [values] * 3)]
    if len(values) != 3:
        raise ValueError(f"`{name}` must have 3 values (R, G, B), got {values}.")
    return values


def _as_list(images, name: str, allow_none_items: bool = False) -> list:
    """One image or a batch -> a non-empty list of single images."""
    if images is None:
        raise ValueError(f"`{name}` is None; expected {_EXPECTED}, or a list of them.")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)  # a batch (B, ...) of arrays
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim > 4:
        raise ValueError(f"`{name}` has {images.ndim} dimensions; expected a single image or a (batch, ...) array.")
    elif not isinstance(images, (list, tuple)):
        images = [images]
    if len(images) == 0:
        raise ValueError(f"`{name}` is an empty list; expected at least one image.")
    for index, image in enumerate(images):
        if image is None and not allow_none_items:
            raise ValueError(f"{name}[{index}] is None; expected {_EXPECTED}.")
    return list(images)


def _to_float_chw(image, name: str) -> torch.Tensor:
    """Any supported image -> float32 `(C, H, W)` in [0, 1], C in {1, 3, 4}."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image, name)
    if isinstance(image, Image.Image):
        return _pil_to_float_chw(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        image = image.float().numpy() if image.is_floating_point() else image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} is a {type(image).__name__}; expected {_EXPECTED}.")
    return _channels_first(torch.from_numpy(_rescale(image, name)), name)


def _open_image(path, name: str) -> Image.Image:
    if not os.path.isfile(path):
        raise ValueError(
            f"{name} is the string {str(path)!r}, which is not an existing image file; expected {_EXPECTED}."
        )
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except Exception as error:  # PIL raises many types for broken files
        raise ValueError(f"{name}: cannot read image file {str(path)!r}: {error}") from error


def _pil_to_float_chw(image: Image.Image) -> torch.Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
        return torch.from_numpy(array)[None]
    if image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if array.max(initial=0) > 255 else 255.0
        return torch.from_numpy(np.clip(array / scale, 0.0, 1.0))[None]
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255.0
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _channels_first(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.ndim == 2:
        return tensor[None]
    if tensor.ndim == 3:
        if tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
            return tensor
        if tensor.shape[-1] in (1, 3, 4):
            return tensor.permute(2, 0, 1)
    raise ValueError(
        f"{name} has shape {tuple(tensor.shape)}; expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4."
    )


def _rescale(array: np.ndarray, name: str) -> np.ndarray:
    """uint8 / 8-bit ints by 255, uint16 / wider ints by 65535, bool as 0/1, floats checked to lie in [0, 1]."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.integer):
        scale = 65535.0 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255.0
        return array.astype(np.float32) / scale
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(
                f"{name} is a float array with values in [{array.min():.3g}, {array.max():.3g}]; float images must "
                "lie in [0, 1] (pass uint8 for 0..255)."
            )
        return array
    raise TypeError(f"{name} has dtype {array.dtype}; expected uint8, uint16, bool or float ({_EXPECTED}).")


__all__ = ["CLIPADAImageProcessor", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD"]
