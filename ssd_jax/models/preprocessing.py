"""Input normalisation: per-channel ``(pixel - mean) / std`` on NHWC RGB images.

The network takes images already normalised by one of these conventions (the one its
weights were trained with); the input pipeline applies it, on host or on device.

* :data:`TORCHVISION`: torchvision's ImageNet models (MobileNet, ``vgg16`` ImageNet
  weights): pixels scaled to [0, 1], mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
* :data:`CAFFE_VGG`: the Caffe VGG16 used by the SSD authors (and torchvision's
  ``ssd300_vgg16`` / ``VGG16_Weights.IMAGENET1K_FEATURES``): pixels in [0, 255] minus
  (123, 117, 104) = 255 * (0.48235, 0.45882, 0.40784) (torchvision's ``image_mean`` for
  SSD300), std 1, RGB order. (Caffe stores BGR; these are its means reordered to RGB,
  matching RGB-ordered weights.)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
    """``normalised = (pixel_0_255 / 255 - mean) / std``, per RGB channel (0..1 units)."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


TORCHVISION = Normalization("torchvision", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_VGG = Normalization("caffe_vgg", (0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255))
CONVENTIONS = {n.name: n for n in (TORCHVISION, CAFFE_VGG)}


def get_normalization(name: str) -> Normalization:
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(CONVENTIONS)}") from None


def normalize(images, convention: Normalization | str, xp=jnp):
    """``images [..., H, W, 3]`` RGB pixels in [0, 255] (uint8 or float) -> float32 normalised.

    ``xp``: ``jax.numpy`` (default, on device) or ``numpy`` (in host input pipelines).
    """
    conv = get_normalization(convention) if isinstance(convention, str) else convention
    if images.shape[-1] != 3:
        raise ValueError(f"normalize expects RGB images [..., H, W, 3], got shape {images.shape}")
    x = xp.asarray(images).astype(xp.float32) / 255.0
    mean = xp.asarray(conv.mean, dtype=xp.float32)
    std = xp.asarray(conv.std, dtype=xp.float32)
    return (x - mean) / std


def denormalize(images, convention: Normalization | str) -> np.ndarray:
    """Inverse of :func:`normalize`, to uint8 pixels (for drawing)."""
    conv = get_normalization(convention) if isinstance(convention, str) else convention
    x = np.asarray(images, np.float32) * np.asarray(conv.std, np.float32) + np.asarray(conv.mean, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
