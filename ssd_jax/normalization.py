"""Input normalisation: per-channel ``(pixel - mean) / std`` on RGB images in [0, 255].

A network takes images normalised by the convention its weights were trained with.
This module is the one definition of those conventions, used by the host input
pipeline, evaluation, ``predict`` and anything that runs the network on device.

* :data:`TORCHVISION`: torchvision's ImageNet models (MobileNet, ``vgg16`` ImageNet
  weights): mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225), in units of the
  full pixel range (so pixel 255 * mean normalises to 0).
* :data:`CAFFE_VGG`: the Caffe VGG16 used by the SSD authors (and torchvision's
  ``ssd300_vgg16`` / ``VGG16_Weights.IMAGENET1K_FEATURES``): pixels in [0, 255] minus
  (123, 117, 104) = 255 * (0.48235, 0.45882, 0.40784) (torchvision's ``image_mean`` for
  SSD300), std 1. Caffe stores BGR; these are its means in RGB order, for RGB-ordered
  weights. Every network of the project takes RGB.
* :data:`SYMMETRIC`: pixels mapped to [-1, 1] (mean 0.5, std 0.5), as torchvision's
  ``ssdlite320_mobilenet_v3_large`` takes them (its ``image_mean`` / ``image_std``).

The arithmetic is done in 0-255 units, ``(x - 255 mean) / (255 std)`` in float32, the
same on host (NumPy) and device (``jax.numpy``).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Normalization:
    """One input convention. ``mean`` and ``std`` are RGB, in units of the pixel range
    (0..1): ``normalised = (pixel - 255 mean) / (255 std)``."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def mean_pixel(self) -> tuple[float, float, float]:
        """The mean in 0-255 RGB pixels: the colour that normalises to 0 (zoom-out fill)."""
        return tuple(255.0 * v for v in self.mean)

    @property
    def std_pixel(self) -> tuple[float, float, float]:
        """The std in 0-255 pixel units."""
        return tuple(255.0 * v for v in self.std)

    def __call__(self, images, xp=np):
        """``[..., 3]`` RGB pixels (uint8 or float, 0..255) -> float32 normalised.

        ``xp``: ``numpy`` (default, host pipelines) or ``jax.numpy`` (on device, traceable).
        """
        if images.shape[-1] != 3:
            raise ValueError(f"normalisation expects RGB images [..., 3], got shape {images.shape}")
        x = xp.asarray(images).astype(xp.float32)
        return (x - xp.asarray(self.mean_pixel, xp.float32)) / xp.asarray(self.std_pixel, xp.float32)

    def invert(self, images) -> np.ndarray:
        """The pixels of normalised ``images [..., 3]``, rounded to uint8 (for drawing)."""
        x = np.asarray(images, np.float32) * np.asarray(self.std_pixel, np.float32)
        x = x + np.asarray(self.mean_pixel, np.float32)
        return np.clip(np.round(x), 0, 255).astype(np.uint8)


TORCHVISION = Normalization("torchvision", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAFFE_VGG = Normalization("caffe_vgg", (0.48235, 0.45882, 0.40784), (1 / 255, 1 / 255, 1 / 255))
SYMMETRIC = Normalization("symmetric", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

#: The conventions by name (the values of ``model.normalization`` besides ``auto``).
CONVENTIONS: dict[str, Normalization] = {n.name: n for n in (TORCHVISION, CAFFE_VGG, SYMMETRIC)}


def get(name: str) -> Normalization:
    """The convention called ``name``; a clear error for an unknown one."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(CONVENTIONS)}") from None
