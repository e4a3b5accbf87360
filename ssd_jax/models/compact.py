"""A compact VGG-style SSD for CPU-sized runs (the built-in dataset demo).

Plain 3x3 convolutions with batch norm and ReLU6 (:class:`~ssd_jax.models.layers.ConvBNAct`;
dense convolutions train faster from scratch than depthwise ones and run well on a CPU),
doubling channels at each stride-2 step. Source maps at strides 4, 8, 16, 32, then extra
stride-2 layers down to a 1x1 map, so the smallest priors can be ~5% of the image (the
built-in dataset's objects go down to 5% of the short side; SSD300's first map is
stride 8 and SSDLite's stride 16):

=========  ======  ========  =============================
 stage      stride  at 160    layers
=========  ======  ========  =============================
 stem       2       80x80     conv 3x3/2
 s4         4       40x40     conv 3x3/2, conv 3x3      -> source
 s8         8       20x20     conv 3x3/2, conv 3x3      -> source
 s16        16      10x10     conv 3x3/2, conv 3x3      -> source
 s32        32      5x5       conv 3x3/2                -> source
 extras     ...     3x3, 2x2  conv 3x3/2 each           -> sources
=========  ======  ========  =============================

``width`` scales every channel count (base 16-32-64-128-128). The prior spec
(:func:`compact_prior_spec`) puts scales log-spaced from 0.06 to 0.9 over the maps, aspect
ratio 2 everywhere (4 boxes per cell), heads are the paper's 3x3 convolutions.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from ssd_jax import anchors
from ssd_jax.models.layers import ConvBNAct

#: Channels of stem, s4, s8, s16, s32/extras at width 1.
BASE_CHANNELS = (16, 32, 64, 128, 128)


class CompactExtractor(nnx.Module):
    """``[B,S,S,3]`` -> source maps at strides 4, 8, 16, 32, 64, 128 (as far as the input allows
    a map of at least 1x1; S >= 64)."""

    def __init__(self, width: float = 1.0, num_extras: int = 2, *, layout: str = "NHWC", compute_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        c = [max(8, int(round(ch * width))) for ch in BASE_CHANNELS]
        kw = dict(layout=layout, compute_dtype=compute_dtype, rngs=rngs)
        self.stem = ConvBNAct(3, c[0], 3, stride=2, **kw)
        self.s4a = ConvBNAct(c[0], c[1], 3, stride=2, **kw)
        self.s4b = ConvBNAct(c[1], c[1], 3, **kw)
        self.s8a = ConvBNAct(c[1], c[2], 3, stride=2, **kw)
        self.s8b = ConvBNAct(c[2], c[2], 3, **kw)
        self.s16a = ConvBNAct(c[2], c[3], 3, stride=2, **kw)
        self.s16b = ConvBNAct(c[3], c[3], 3, **kw)
        self.s32 = ConvBNAct(c[3], c[4], 3, stride=2, **kw)
        self.extras = nnx.List([ConvBNAct(c[4], c[4], 3, stride=2, **kw) for _ in range(num_extras)])
        self.out_channels = (c[1], c[2], c[3], c[4]) + (c[4],) * num_extras
        self.source_names = ("s4", "s8", "s16", "s32") + tuple(f"extra{i + 1}" for i in range(num_extras))

    def __call__(self, x, train: bool = False):
        x = self.stem(x, train)
        s4 = self.s4b(self.s4a(x, train), train)
        s8 = self.s8b(self.s8a(s4, train), train)
        s16 = self.s16b(self.s16a(s8, train), train)
        y = self.s32(s16, train)
        out = [s4, s8, s16, y]
        for layer in self.extras:
            y = layer(y, train)
            out.append(y)
        return out

    def layer_stacks(self):
        s4 = [self.stem.layer("stem"), self.s4a.layer("s4a"), self.s4b.layer("s4b")]
        s8 = s4 + [self.s8a.layer("s8a"), self.s8b.layer("s8b")]
        s16 = s8 + [self.s16a.layer("s16a"), self.s16b.layer("s16b")]
        s32 = s16 + [self.s32.layer("s32")]
        stacks = [s4, s8, s16, s32]
        for i, layer in enumerate(self.extras):
            stacks.append(stacks[-1] + [layer.layer(f"extra{i + 1}")])
        return stacks


def compact_prior_spec(image_size: int, feature_sizes: tuple[int, ...], min_scale: float = 0.06,
                       max_scale: float = 0.9) -> anchors.PriorSpec:
    """Scales log-spaced from ``min_scale`` to ``max_scale`` over the maps (the extra box of
    each cell at the geometric mean with the next scale), aspect ratio 2 on every map."""
    m = len(feature_sizes)
    if not 0 < min_scale < max_scale <= 1:
        raise ValueError(f"need 0 < min_scale < max_scale <= 1, got {min_scale}, {max_scale}")
    scales = [math.exp(math.log(min_scale) + (math.log(max_scale) - math.log(min_scale)) * k / (m - 1)) for k in range(m)]
    scales.append(1.0)
    return anchors.PriorSpec.from_scales(image_size, feature_sizes, scales, [(2.0,)] * m, steps=None, clip="size",
                                         name=f"COMPACT{image_size}")
