"""Image file decoding with errors that name the record and what is wrong."""

from __future__ import annotations

import numpy as np

from ssd_jax.data.records import Record


class ImageLoadError(RuntimeError):
    """An image could not be read, or does not match its annotation."""


def load_image(record: Record) -> np.ndarray:
    """Decode ``record.image_path`` to ``[H, W, 3]`` uint8 RGB.

    Raises:
      ImageLoadError: the file is missing, unreadable or corrupt, or its size differs
        from the annotation's (then the boxes would be wrong), naming file and record.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"record {record.image_id!r} image {record.image_path}"
    try:
        with Image.open(record.image_path) as im:
            im.load()  # decode now: truncated/corrupt data fails here, not later
            image = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageLoadError(f"{where}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
    h, w = image.shape[:2]
    if (h, w) != (record.height, record.width):
        raise ImageLoadError(
            f"{where}: decoded size {w}x{h} differs from the annotation's "
            f"{record.width}x{record.height} ({record.annotation})"
        )
    return image
