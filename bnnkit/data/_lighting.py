"""BiPer's Lighting: AlexNet-style PCA colour noise, as its torch loader applies it (spec section 6, Q21)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ._info import IMAGENET_PCA_EIGVAL, IMAGENET_PCA_EIGVEC


def lighting_offset(alphastd: float = 0.1) -> np.ndarray:
    """The per-image RGB offset, drawn from np.random (the authors' generator): eigvec @ (alpha * eigval)."""
    alpha = (np.random.randn(3) * alphastd).astype(np.float32)
    return np.asarray(IMAGENET_PCA_EIGVEC, np.float32) @ (alpha * np.asarray(IMAGENET_PCA_EIGVAL, np.float32))


class Lighting:
    """Add the PCA offset to a uint8 PIL image in 0-255 units, clip to [0, 255] and truncate to uint8.

    The offsets are about 0.01 in 0-255 units, so after truncation this is in effect a 0/-1 pixel
    jitter; that is what BiPer trained with, so it is reproduced, not "fixed" to 0-1 units.
    """

    def __init__(self, alphastd: float = 0.1):
        self.alphastd = alphastd

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.alphastd == 0:
            return img
        out = np.asarray(img, dtype=np.uint8) + lighting_offset(self.alphastd)  # float32 HWC
        return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd})"
