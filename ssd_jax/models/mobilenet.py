"""MobileNetV2 feature extractor for SSDLite (Sandler et al. 2018, section 6.2).

MobileNetV2 (torchvision's layout and channel rounding, with a width multiplier): a 3x3
stride-2 stem, 17 inverted-residual blocks (expand 1x1, depthwise 3x3, project 1x1,
batch norm everywhere, ReLU6 except after the projection), a final 1x1 conv to 1280
channels. SSDLite's sources: the expansion output (1x1 + BN + ReLU6) of the first
stride-2 block of the 160-channel stage (stride 16; 576 channels at width 1) and the
final 1x1 conv (stride 32), then four extra blocks (1x1 to half, depthwise 3x3 stride 2,
1x1 up) with 512, 256, 256, 128 channels (times the width multiplier, at least 16).
At 320x320 the source maps are 20, 10, 5, 3, 2, 1.

Any square input size works; the feature sizes follow from :meth:`layer_stacks`
(``receptive_field.receptive_fields``), which is what the matching prior spec uses.

Batch norm: ``train=True`` normalises with the batch statistics and updates the running
averages (``nnx.BatchStat`` variables, part of the model *state*, not the parameters);
``train=False`` uses the running averages and changes nothing. Momentum 0.97 and
epsilon 1e-3 are torchvision's SSDLite values (its momentum 0.03 is flax's 1 - 0.03).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers as L
from ssd_jax.receptive_field import Layer

Array = jax.Array

#: (expansion t, channels c, repeats n, first stride s), MobileNetV2 Table 2.
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
SSDLITE_EXTRA_CHANNELS = (512, 256, 256, 128)


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, not below 90%."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nnx.Module):
    """MobileNetV2 block: [1x1 expand] -> depthwise 3x3 (stride) -> 1x1 project (+ skip)."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int, *, layout, compute_dtype, conv, rngs):
        hidden = int(round(inp * expand))
        kw = dict(layout=layout, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.expand = L.ConvBNAct(inp, hidden, 1, **kw) if expand != 1 else None
        self.depthwise = L.ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, **kw)
        self.project = L.ConvBNAct(hidden, oup, 1, activation=False, **kw)
        self.se = None  # squeeze-excitation after the depthwise conv: MobileNetV3's blocks set one
        self.use_residual = stride == 1 and inp == oup
        self.hidden = hidden

    def expansion(self, x: Array, train: bool) -> Array:
        return x if self.expand is None else self.expand(x, train)

    def rest(self, h: Array, x: Array, train: bool) -> Array:
        y = self.depthwise(h, train)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y, train)
        return x + y if self.use_residual else y

    def __call__(self, x: Array, train: bool) -> Array:
        return self.rest(self.expansion(x, train), x, train)

    def layers(self, name: str) -> tuple[list[Layer], list[Layer]]:
        """(layers up to the expansion output, the remaining layers)."""
        first = [self.expand.layer(f"{name}.expand")] if self.expand is not None else []
        return first, [self.depthwise.layer(f"{name}.dw"), self.project.layer(f"{name}.project")]


class ExtraBlock(nnx.Module):
    """SSDLite extra block: 1x1 (out/2) -> depthwise 3x3 stride 2 -> 1x1 (out), BN + ReLU6."""

    def __init__(self, inp: int, oup: int, *, layout, compute_dtype, conv, rngs):
        mid = oup // 2
        kw = dict(layout=layout, compute_dtype=compute_dtype, kernel_init=L.xavier_uniform, conv=conv, rngs=rngs)
        self.reduce = L.ConvBNAct(inp, mid, 1, **kw)
        self.depthwise = L.ConvBNAct(mid, mid, 3, stride=2, groups=mid, **kw)
        self.expand = L.ConvBNAct(mid, oup, 1, **kw)

    def __call__(self, x: Array, train: bool) -> Array:
        return self.expand(self.depthwise(self.reduce(x, train), train), train)

    def layers(self, name: str) -> list[Layer]:
        return [self.reduce.layer(f"{name}.reduce"), self.depthwise.layer(f"{name}.dw"), self.expand.layer(f"{name}.expand")]


class SSDLiteSources:
    """The forward pass and receptive-field stacks shared by the SSDLite extractors.

    Expects ``stem``, ``blocks`` (each with ``expansion``/``rest``/``layers``), ``c4_block``
    (the block whose expansion output is the first source), ``last``, ``extras`` and ``layout``.
    """

    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        """``x``: ``[B,H,W,3]`` normalised images -> list of 6 NHWC source maps."""
        if self.layout == "NCHW":
            x = jnp.transpose(x, (0, 3, 1, 2))
        x = self.stem(x, train)
        sources = []
        for i, block in enumerate(self.blocks):
            if i == self.c4_block:
                h = block.expansion(x, train)
                sources.append(h)
                x = block.rest(h, x, train)
            else:
                x = block(x, train)
        x = self.last(x, train)
        sources.append(x)
        for extra in self.extras:
            x = extra(x, train)
            sources.append(x)
        if self.layout == "NCHW":
            sources = [jnp.transpose(s, (0, 2, 3, 1)) for s in sources]
        return sources

    def layer_stacks(self) -> list[list[Layer]]:
        """Per source map, the spatial layers from the input to it (receptive fields)."""
        stack = [self.stem.layer("stem")]
        stacks = []
        for i, block in enumerate(self.blocks):
            first, rest = block.layers(f"block{i}")
            stack += first
            if i == self.c4_block:
                stacks.append(list(stack))
            stack += rest
        stack.append(self.last.layer("last_conv"))
        stacks.append(list(stack))
        for i, extra in enumerate(self.extras):
            stack += extra.layers(f"extra{i + 1}")
            stacks.append(list(stack))
        return stacks


class MobileNetV2Extractor(SSDLiteSources, nnx.Module):
    """MobileNetV2 + SSDLite extra blocks; returns 6 NHWC source maps.

    Args:
      width: the width multiplier (1.0 = MobileNetV2-1.0; 0.5, 0.75, 1.4 ...).
      conv: how the convolutions compute their gradients (:class:`L.ConvChoices`).
    """

    def __init__(self, width: float = 1.0, *, layout: str = "NHWC", compute_dtype=jnp.float32,
                 conv: L.ConvChoices, rngs: nnx.Rngs):
        if not width > 0:
            raise ValueError(f"width multiplier must be positive, got {width}")
        self.width = float(width)
        self.layout = L.check_layout(layout)
        kw = dict(layout=layout, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        in_ch = make_divisible(32 * width)
        self.stem = L.ConvBNAct(3, in_ch, 3, stride=2, **kw)
        blocks = []
        self.c4_block = -1
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            out = make_divisible(c * width)
            for i in range(n):
                if c == 160 and i == 0:
                    self.c4_block = len(blocks)  # its expansion output is the first source
                blocks.append(InvertedResidual(in_ch, out, s if i == 0 else 1, t, **kw))
                in_ch = out
        self.blocks = nnx.List(blocks)
        last = make_divisible(1280 * max(1.0, width))
        self.last = L.ConvBNAct(in_ch, last, 1, **kw)
        extras, in_ch = [], last
        extra_channels = tuple(max(16, int(c * width)) for c in SSDLITE_EXTRA_CHANNELS)
        for c in extra_channels:
            extras.append(ExtraBlock(in_ch, c, **kw))
            in_ch = c
        self.extras = nnx.List(extras)
        self.out_channels = (blocks[self.c4_block].hidden, last) + extra_channels
        self.source_names = ("block13.expand", "last_conv") + tuple(f"extra{i + 1}" for i in range(len(extras)))
