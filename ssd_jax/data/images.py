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


def load_canvas(record: Record, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``record``'s image into a fixed uint8 canvas, for augmentation on the device.

    The image keeps its aspect ratio and is downscaled only when larger than the canvas. A
    JPEG much larger than the canvas is first decoded at 1/2, 1/4 or 1/8 scale in the DCT
    domain (Pillow's ``draft``, never below the size it is resized to), which skips most
    of the decoding work. The image sits at the top left; the rest of the canvas repeats
    its last row and column, so filtering near the image's edge never reads black.

    Returns:
      ``(canvas [height, width, 3] uint8, size [2] int32)``: the image's ``(h, w)`` in the
      canvas. Boxes normalised to the record's size stay valid.

    Raises:
      ImageLoadError: as :func:`load_image`.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"record {record.image_id!r} image {record.image_path}"
    try:
        with Image.open(record.image_path) as im:
            w0, h0 = im.size
            if (h0, w0) != (record.height, record.width):
                raise ImageLoadError(
                    f"{where}: decoded size {w0}x{h0} differs from the annotation's "
                    f"{record.width}x{record.height} ({record.annotation})"
                )
            scale = min(1.0, height / h0, width / w0)
            out_w, out_h = max(1, min(width, round(w0 * scale))), max(1, min(height, round(h0 * scale)))
            if scale < 1.0 and im.format == "JPEG":
                im.draft("RGB", (out_w, out_h))
            im.load()
            im = im.convert("RGB")
            if im.size != (out_w, out_h):
                im = im.resize((out_w, out_h), Image.BILINEAR)
            image = np.asarray(im)
    except FileNotFoundError:
        raise ImageLoadError(f"{where}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{where}: cannot decode ({type(e).__name__}: {e})") from None
    canvas = np.pad(image, ((0, height - out_h), (0, width - out_w), (0, 0)), mode="edge")
    return canvas, np.asarray([out_h, out_w], np.int32)
