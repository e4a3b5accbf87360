"""MobileNetV3-Large feature extractor for SSDLite, as torchvision's ``ssdlite320_mobilenet_v3_large``.

MobileNetV3-Large (Howard et al. 2019, Table 1) with torchvision's "reduced tail" (the
last stage's channels halved, which torchvision's SSDLite uses when it trains from
scratch): a 3x3 stride-2 stem (16 channels, hardswish), 15 inverted-residual blocks
(1x1 expand when the width changes, depthwise 3x3 or 5x5, optional squeeze-excitation,
1x1 project; ReLU or hardswish; batch norm everywhere), a final 1x1 conv to 480 channels.
SSDLite's sources (torchvision's ``SSDLiteFeatureExtractorMobileNet``): the expansion
output (1x1 + BN + hardswish, 672 channels) of the last stride-2 block (stride 16), and the
final conv (stride 32); then the four SSDLite extra blocks of
:class:`ssd_jax.models.mobilenet.ExtraBlock` (512, 256, 256, 128 channels). At 320x320 the
source maps are 20, 10, 5, 3, 2, 1; with 21 outputs and 6 priors per cell the whole SSDLite
has 2,469,860 parameters, as torchvision's (tested).

Squeeze-excitation: global average over the map -> 1x1 conv (bias) -> ReLU -> 1x1 conv
(bias) -> hardsigmoid -> channel scale; its global average is not part of the receptive
fields :meth:`layer_stacks` reports (they count the convolutions' windows only).

Batch norm as in :mod:`ssd_jax.models.mobilenet` (momentum 0.97 = torch's 0.03, epsilon
1e-3). Any square input size works, as for the MobileNetV2 extractor.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers as L
from ssd_jax.models.mobilenet import (SSDLITE_EXTRA_CHANNELS, ExtraBlock, InvertedResidual, SSDLiteSources,
                                      make_divisible)

Array = jax.Array


class Bneck(NamedTuple):
    """One MobileNetV3 block: input, kernel, expanded, output channels, SE, activation, stride."""

    inp: int
    kernel: int
    expanded: int
    out: int
    se: bool
    activation: str  # "relu" or "hardswish"
    stride: int


def large_settings(reduced_tail: bool = True) -> tuple[Bneck, ...]:
    """MobileNetV3-Large's blocks (torchvision's ``_mobilenet_v3_conf``, no dilation)."""
    d = 2 if reduced_tail else 1
    re, hs = "relu", "hardswish"
    return (
        Bneck(16, 3, 16, 16, False, re, 1),
        Bneck(16, 3, 64, 24, False, re, 2),
        Bneck(24, 3, 72, 24, False, re, 1),
        Bneck(24, 5, 72, 40, True, re, 2),
        Bneck(40, 5, 120, 40, True, re, 1),
        Bneck(40, 5, 120, 40, True, re, 1),
        Bneck(40, 3, 240, 80, False, hs, 2),
        Bneck(80, 3, 200, 80, False, hs, 1),
        Bneck(80, 3, 184, 80, False, hs, 1),
        Bneck(80, 3, 184, 80, False, hs, 1),
        Bneck(80, 3, 480, 112, True, hs, 1),
        Bneck(112, 3, 672, 112, True, hs, 1),
        Bneck(112, 5, 672, 160 // d, True, hs, 2),
        Bneck(160 // d, 5, 960 // d, 160 // d, True, hs, 1),
        Bneck(160 // d, 5, 960 // d, 160 // d, True, hs, 1),
    )


class SqueezeExcitation(nnx.Module):
    """``x * hardsigmoid(fc2(relu(fc1(mean_hw(x)))))`` with 1x1 convolutions (biases)."""

    def __init__(self, channels: int, squeeze: int, *, compute_dtype, conv, rngs):
        kw = dict(kernel_init=L.kaiming_normal_fan_out, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.fc1 = L.Conv2d(channels, squeeze, 1, **kw)
        self.fc2 = L.Conv2d(squeeze, channels, 1, **kw)

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)  # [B,1,1,C]
        s = jax.nn.hard_sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
        return x * s


class InvertedResidualV3(InvertedResidual):
    """[1x1 expand] -> depthwise kxk (stride) -> [SE] -> 1x1 project (+ skip); the forward
    pass and layer lists are MobileNetV2's block's."""

    def __init__(self, cfg: Bneck, *, compute_dtype, conv, rngs):  # not super().__init__: its layers differ
        kw = dict(compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.expand = (L.ConvBNAct(cfg.inp, cfg.expanded, 1, activation=cfg.activation, **kw)
                       if cfg.expanded != cfg.inp else None)
        self.depthwise = L.ConvBNAct(cfg.expanded, cfg.expanded, cfg.kernel, stride=cfg.stride, groups=cfg.expanded,
                                     activation=cfg.activation, **kw)
        self.se = (SqueezeExcitation(cfg.expanded, make_divisible(cfg.expanded // 4, 8), **kw) if cfg.se else None)
        self.project = L.ConvBNAct(cfg.expanded, cfg.out, 1, activation=False, **kw)
        self.use_residual = cfg.stride == 1 and cfg.inp == cfg.out
        self.hidden = cfg.expanded


class MobileNetV3Extractor(SSDLiteSources, nnx.Module):
    """MobileNetV3-Large (reduced tail) + SSDLite extra blocks; returns 6 NHWC source maps.

    Args:
      width: width multiplier (torchvision's ``width_mult``): the backbone's channels become
        ``make_divisible(c * width)``; the extra blocks keep 512, 256, 256, 128 channels, as
        in torchvision's ``ssdlite320_mobilenet_v3_large(width_mult=...)``.
      reduced_tail: halve the last stage (torchvision's SSDLite default without backbone weights).
      conv: how the convolutions compute their gradients (:class:`L.ConvChoices`).
    """

    def __init__(self, width: float = 1.0, reduced_tail: bool = True, *, layout: str = "NHWC",
                 compute_dtype=jnp.float32, conv: L.ConvChoices, rngs: nnx.Rngs):
        if not width > 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        if L.check_layout(layout) != "NHWC":
            raise ValueError("the MobileNetV3 extractor runs NHWC only")
        self.width, self.layout = float(width), layout
        kw = dict(compute_dtype=compute_dtype, conv=conv, rngs=rngs)

        def ch(c: int) -> int:
            return make_divisible(c * width)

        settings = [cfg._replace(inp=ch(cfg.inp), expanded=ch(cfg.expanded), out=ch(cfg.out))
                    for cfg in large_settings(reduced_tail)]
        self.stem = L.ConvBNAct(3, settings[0].inp, 3, stride=2, activation="hardswish", **kw)
        self.blocks = nnx.List([InvertedResidualV3(cfg, **kw) for cfg in settings])
        self.c4_block = max(i for i, cfg in enumerate(settings) if cfg.stride > 1)  # its expansion is a source
        last = 6 * settings[-1].out
        self.last = L.ConvBNAct(settings[-1].out, last, 1, activation="hardswish", **kw)
        extras, in_ch = [], last
        extra_channels = SSDLITE_EXTRA_CHANNELS  # torchvision's width_mult reaches the backbone only
        for c in extra_channels:
            extras.append(ExtraBlock(in_ch, c, layout=layout, **kw))
            in_ch = c
        self.extras = nnx.List(extras)
        self.out_channels = (self.blocks[self.c4_block].hidden, last) + extra_channels
        self.source_names = (f"block{self.c4_block}.expand", "last_conv") + tuple(
            f"extra{i + 1}" for i in range(len(extras)))
