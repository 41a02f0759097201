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


# The first bytes of every format PIL decodes under IMG_EXTENSIONS (JPEG, PNG, GIF, BMP, TIFF both byte
# orders, WebP's RIFF container, PPM/PGM/PBM); anything else is asked of PIL itself.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF",
         *(b"P%d" % k for k in range(1, 8)))


def check_header(path: str | os.PathLike) -> None:
    """An empty file or one whose first bytes are no image header is a DataError naming it; the
    image itself is decoded later (a truncated one still fails then, by name, in load_rgb)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except FileNotFoundError:
        raise DataError(f"image file {path} has disappeared: restore it and rerun") from None
    except OSError as e:
        raise DataError(f"image file {path} cannot be read ({e.strerror}): fix its permissions, or delete it") from None
    if not head:
        raise DataError(f"image file {path} is empty (0 bytes): replace or delete the file, then rerun")
    if head.startswith(MAGIC):
        return
    try:
        with Image.open(path):  # reads the header only
            pass
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise DataError(f"corrupt or truncated image {path} (no image header): replace or delete the file, "
                        f"then rerun") from None
