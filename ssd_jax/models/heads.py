"""Prediction heads: per source map, class scores and box offsets for every prior.

A head's output for map k, ``[B, H, W, A_k * K]`` (A_k boxes per cell, K values per box),
is reshaped to ``[B, H*W*A_k, K]``: cell-major in row-major order, box-minor, exactly the
order of :func:`ssd_jax.anchors.generate` and of torchvision's ``SSDScoringHead``
(``view(N, A, K, H, W).permute(0, 3, 4, 1, 2)``), then the maps are concatenated.

* :class:`SSDHead`: one 3x3 convolution (pad 1) per map for the scores and one for the
  offsets (the paper's heads); Xavier-uniform weights, zero biases. The two convolutions
  of a map run as one (their kernels concatenated on the output axis).
* :class:`SSDLiteHead`: per map and per output, a depthwise 3x3 + batch norm + ReLU6,
  then a 1x1 convolution with bias (MobileNetV2 paper's SSDLite, torchvision's
  ``SSDLiteHead``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers as L

Array = jax.Array


def _flatten(y: Array, values_per_box: int) -> Array:
    """``[B,H,W,A*K]`` -> ``[B,H*W*A,K]`` (cell-major, box-minor)."""
    return y.reshape(y.shape[0], -1, values_per_box)


def _check(in_channels: Sequence[int], boxes_per_cell: Sequence[int]):
    if len(in_channels) != len(boxes_per_cell):
        raise ValueError(
            f"the head has {len(in_channels)} source maps but the prior spec has "
            f"{len(boxes_per_cell)} ({tuple(boxes_per_cell)} boxes per cell)"
        )


class SSDHead(nnx.Module):
    """3x3 class and box convolutions on each source map.

    Args:
      in_channels: channels of each source map.
      boxes_per_cell: priors per cell of each map (from the prior spec).
      num_outputs: class scores per box, background included (C + 1).
      conv: how the convolutions compute their gradients (:class:`L.ConvChoices`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_cell: Sequence[int],
        num_outputs: int,
        *,
        compute_dtype=jnp.float32,
        conv: L.ConvChoices,
        rngs: nnx.Rngs,
    ):
        _check(in_channels, boxes_per_cell)
        self.num_outputs = num_outputs
        self.boxes_per_cell = tuple(boxes_per_cell)
        self.compute_dtype = compute_dtype
        self.conv_choices = conv
        kw = dict(padding=1, kernel_init=L.xavier_uniform, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.cls = nnx.List([L.Conv2d(c, a * num_outputs, 3, **kw) for c, a in zip(in_channels, boxes_per_cell)])
        self.box = nnx.List([L.Conv2d(c, a * 4, 3, **kw) for c, a in zip(in_channels, boxes_per_cell)])

    def __call__(self, features: Sequence[Array], train: bool = False) -> tuple[Array, Array]:
        """NHWC source maps -> (class logits ``[B,P,C+1]``, box offsets ``[B,P,4]``)."""
        del train
        logits, offsets = [], []
        for x, cls, box, a in zip(features, self.cls, self.box, self.boxes_per_cell):
            kernel = jnp.concatenate([cls.kernel[...], box.kernel[...]], axis=-1)
            bias = jnp.concatenate([cls.bias[...], box.bias[...]], axis=-1)
            y = L.conv2d(x, kernel, bias, padding=1, compute_dtype=self.compute_dtype, conv=self.conv_choices)
            split = a * self.num_outputs
            logits.append(_flatten(y[..., :split], self.num_outputs))
            offsets.append(_flatten(y[..., split:], 4))
        return jnp.concatenate(logits, axis=1), jnp.concatenate(offsets, axis=1)


class _LitePredictor(nnx.Module):
    """Depthwise 3x3 + BN + ReLU6, then 1x1 conv with bias."""

    def __init__(self, channels: int, outputs: int, *, compute_dtype, conv, rngs):
        self.depthwise = L.ConvBNAct(
            channels, channels, 3, groups=channels, kernel_init=L.xavier_uniform,
            compute_dtype=compute_dtype, conv=conv, rngs=rngs,
        )
        self.pointwise = L.Conv2d(channels, outputs, 1, kernel_init=L.xavier_uniform, compute_dtype=compute_dtype,
                                  conv=conv, rngs=rngs)

    def __call__(self, x: Array, train: bool) -> Array:
        return self.pointwise(self.depthwise(x, train))


class SSDLiteHead(nnx.Module):
    """Depthwise-separable class and box predictors on each source map (SSDLite)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_cell: Sequence[int],
        num_outputs: int,
        *,
        compute_dtype=jnp.float32,
        conv: L.ConvChoices,
        rngs: nnx.Rngs,
    ):
        _check(in_channels, boxes_per_cell)
        self.num_outputs = num_outputs
        self.boxes_per_cell = tuple(boxes_per_cell)
        kw = dict(compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.cls = nnx.List([_LitePredictor(c, a * num_outputs, **kw) for c, a in zip(in_channels, boxes_per_cell)])
        self.box = nnx.List([_LitePredictor(c, a * 4, **kw) for c, a in zip(in_channels, boxes_per_cell)])

    def __call__(self, features: Sequence[Array], train: bool = False) -> tuple[Array, Array]:
        """NHWC source maps -> (class logits ``[B,P,C+1]``, box offsets ``[B,P,4]``)."""
        logits = [_flatten(cls(x, train), self.num_outputs) for x, cls in zip(features, self.cls)]
        offsets = [_flatten(box(x, train), 4) for x, box in zip(features, self.box)]
        return jnp.concatenate(logits, axis=1), jnp.concatenate(offsets, axis=1)
