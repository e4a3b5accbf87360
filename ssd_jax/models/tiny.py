"""A three-convolution SSD that compiles in seconds: for smoke tests and CI, not for accuracy.

``build_tiny(num_classes, image_size=32)``: conv-BN-ReLU6 stride 2 three times (so it has
batch-norm state like the real light model), source maps at 1/4 and 1/8 of the input,
the paper's 3x3 heads, priors from :meth:`~ssd_jax.anchors.PriorSpec.from_scales`.
Training code treats it like any network from :func:`ssd_jax.models.build_model`.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ssd_jax import anchors
from ssd_jax.models import heads, ssd
from ssd_jax.models.layers import ConvBNAct, ConvChoices, resolve_conv_choices

NAME = "tiny_cnn"


class TinyExtractor(nnx.Module):
    """``[B,S,S,3]`` -> maps ``[B,S/4,S/4,16]`` and ``[B,S/8,S/8,16]`` (S a multiple of 8)."""

    source_names = ("conv2", "conv3")

    def __init__(self, *, compute_dtype=jnp.float32, conv: ConvChoices, rngs: nnx.Rngs):
        kw = dict(stride=2, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.conv1 = ConvBNAct(3, 8, 3, **kw)
        self.conv2 = ConvBNAct(8, 16, 3, **kw)
        self.conv3 = ConvBNAct(16, 16, 3, **kw)
        self.out_channels = (16, 16)

    def __call__(self, x, train: bool = False):
        x = self.conv1(x, train)
        a = self.conv2(x, train)
        b = self.conv3(a, train)
        return [a, b]

    def layer_stacks(self):
        s1 = [self.conv1.layer("conv1"), self.conv2.layer("conv2")]
        return [s1, s1 + [self.conv3.layer("conv3")]]


def tiny_prior_spec(image_size: int = 32) -> anchors.PriorSpec:
    if image_size % 8:
        raise ValueError(f"{NAME}: image_size must be a multiple of 8, got {image_size}")
    sizes = (image_size // 4, image_size // 8)
    return anchors.PriorSpec.from_scales(image_size, sizes, (0.2, 0.5, 0.9), ((2.0,), (2.0,)), name=f"TINY{image_size}")


def build_tiny(num_classes: int, image_size: int = 32, *, compute_dtype=jnp.float32, conv: ConvChoices | None = None,
               rngs: nnx.Rngs | None = None) -> ssd.SSD:
    """The tiny SSD; ``conv`` as in :func:`ssd_jax.models.build_model` (default
    ``resolve_conv_choices()``, at build time)."""
    conv = conv if conv is not None else resolve_conv_choices()
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    extractor = TinyExtractor(compute_dtype=compute_dtype, conv=conv, rngs=rngs)
    return ssd.SSD(extractor, heads.SSDHead, tiny_prior_spec(image_size), num_classes, name=NAME,
                   compute_dtype=compute_dtype, conv=conv, rngs=rngs)
