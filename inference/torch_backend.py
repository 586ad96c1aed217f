"""The PyTorch backend: a checkpoint of any family (or a model already in memory), in eval mode without gradients.

Example:
    ```python
    >>> backend = TorchBackend.from_pretrained("outputs/run", device="cuda", dtype="bfloat16")
    >>> backend = TorchBackend(model, device="cpu")            # evaluation and calibration: the model at hand
    >>> result = backend(pixel_values, categories=["bottle"] * len(pixel_values))
    ```
"""

from collections.abc import Sequence

import numpy as np
import torch

from inference.backends import BackendOutput
from inference.devices import resolve_device
from inference.loading import add_class_names, load_clipada_model


class TorchBackend:
    """Runs a model of this library on a device.

    Args:
        model: A model of any family (it is moved to `device` and put in eval mode).
        device: A torch device or its name; None: cuda when available.
        tokenizer_source: Where to find a CLIP tokenizer when a family that names categories meets a new one (the
            checkpoint's folder or Hub id); None: new names are an error.
    """

    name = "torch"

    def __init__(self, model, device: torch.device | str | None = None, tokenizer_source: str | None = None):
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer_source = tokenizer_source
        self.decision_config = model.config

    @classmethod
    def from_pretrained(cls, model_name_or_path: str, device: str | None = None, dtype: str = "float32"):
        """Loads a checkpoint (`float32` or `bfloat16` weights and computation; outputs are float32)."""
        device = resolve_device(device)
        return cls(load_clipada_model(model_name_or_path, dtype=dtype), device, tokenizer_source=model_name_or_path)

    # no_grad, not inference_mode: the model's caches (text embedding, upsampling matrices) outlive the call, and
    # evaluation and calibration run between training steps, where inference tensors could not enter autograd
    @torch.no_grad()
    def __call__(self, pixel_values, categories: Sequence[str | None] | None = None) -> BackendOutput:
        """Runs the model.

        Args:
            pixel_values: `(batch_size, 3, H, W)`, CLIP-normalised (numpy or torch, on any device).
            categories: One category (or None) per input: AdaCLIP names it in its prompts, every family picks its
                per-category thresholds for `pred_label` with it.

        Returns:
            [`BackendOutput`] with `anomaly_map` `(batch_size, H, W)` and `pred_score` `(batch_size,)`.
        """
        pixel_values = torch.as_tensor(np.asarray(pixel_values) if not torch.is_tensor(pixel_values) else pixel_values)
        pixel_values = pixel_values.to(self.device)
        names = sorted({category for category in categories or () if category is not None})
        if names:
            add_class_names(self.model, names, self.tokenizer_source)
        # decide=False: the callers decide per image (`modeling_clipada.decisions`), so that a NaN score is that
        # image's error, not an exception of the model's for the whole batch
        categories = None if categories is None else list(categories)
        outputs = self.model(pixel_values, categories=categories, decide=False)
        return BackendOutput(
            anomaly_map=outputs.anomaly_map.float().cpu().numpy(),
            pred_score=outputs.pred_score.float().cpu().numpy(),
        )


__all__ = ["TorchBackend"]
