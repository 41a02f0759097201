"""uint8 -> normalised float32, with the same float ops as ToTensor + Normalize, for bit-exact batches."""
from __future__ import annotations

import torch


def normalize_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW -> float32 NCHW: x / 255, then (x - mean) / std per channel.

    ToTensor divides by 255 and Normalize subtracts then divides, each in float32; doing the same three
    elementwise ops in the same order gives identical bits on any device.
    """
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.float().div_(255).sub_(m).div_(s)
