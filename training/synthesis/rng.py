"""Random numbers and per-sample parameters: drawn on the generator's device, moved to the pixels' device."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Decisions (which samples, which augmentation, which source) are kept on the CPU, so that a CUDA batch
# needs no device-to-host synchronisation except the one that checks which masks came out empty.
CPU = torch.device("cpu")


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where ``generator`` draws (torch's default generator, for ``None``, draws on the CPU)."""
    return generator.device if generator is not None else CPU


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Moves a small tensor; host-to-device copies don't wait for the device (a blocking one synchronises).

    Device-to-host copies stay blocking: their values must be ready when this returns.
    """
    return tensor.to(device, non_blocking=tensor.device.type == "cpu")


def rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform ``[0, 1)`` float32 numbers of ``shape``, drawn on the generator's device, returned on ``device``."""
    values = torch.rand(tuple(shape), generator=generator, device=generator_device(generator))
    return to_device(values, device)


def randint(
    low: int, high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers uniform in ``[low, high)`` (int64), drawn on the generator's device, returned on ``device``."""
    values = torch.randint(low, high, tuple(shape), generator=generator, device=generator_device(generator))
    return to_device(values, device)


def uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Maps uniform ``[0, 1)`` numbers (any shape) to ``[low, high)``, same shape."""
    return low + (high - low) * u


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """Reshapes per-sample values (N,) or (N, C) to (N, C, 1, 1), to broadcast against (N, C, H, W)."""
    return values.reshape(values.shape[0], -1, 1, 1)


__all__ = ["CPU", "generator_device", "per_sample", "rand", "randint", "to_device", "uniform"]
