"""Reading one image file as RGB, turning every way it can fail into a DataError that names the file."""
from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from ._errors import DataError

# torchvision's ImageFolder extensions, compared case-insensitively.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and return it as RGB.

    Grayscale, CMYK, palette and RGBA images (and PNGs under a .JPEG name: PIL goes by content) are
    converted, as ImageFolder's loader does. Decoding happens here, not lazily, so that a corrupt or
    truncated file fails at this call with its path instead of somewhere inside a transform.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file {path} has disappeared: restore it, or delete the cache and rerun") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"corrupt or truncated image {path} ({e}): replace or delete the file, then rerun") from None
