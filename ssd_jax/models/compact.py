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

``width`` scales every channel count (base 16-32-64-128-128); ``depth`` > 1 adds
``depth - 1`` stride-1 3x3 convolutions at the end of stages s4, s8 and s16 (the demo uses
2); ``top_down`` adds an FPN-style fusion (each of s16, s8, s4 gets the next coarser map
through a 1x1 conv + BN, 2x nearest upsampling, sum, ReLU6: cheap, but it made the demo
worse in the GPU recipe search, so it is off by default; the receptive fields reported for
the source maps are those of the bottom-up path). The prior spec
(:func:`compact_prior_spec`) puts scales log-spaced from 0.06 to 0.9 over the maps, aspect
ratio 2 everywhere (4 boxes per cell), heads are the paper's 3x3 convolutions.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax import anchors
from ssd_jax.models.layers import ConvBNAct, ConvChoices

#: Channels of stem, s4, s8, s16, s32/extras at width 1.
BASE_CHANNELS = (16, 32, 64, 128, 128)


class CompactExtractor(nnx.Module):
    """``[B,S,S,3]`` -> source maps at strides 4, 8, 16, 32, 64, 128 (as far as the input allows
    a map of at least 1x1; S >= 64). ``depth``: stride-1 convolutions per stage s4/s8/s16
    (>= 1); ``top_down``: the FPN-style fusion of s32 -> s16 -> s8 -> s4; ``conv``: how the
    convolutions compute their gradients."""

    def __init__(self, width: float = 1.0, num_extras: int = 2, *, depth: int = 1, top_down: bool = False,
                 layout: str = "NHWC", compute_dtype=jnp.float32, conv: ConvChoices, rngs: nnx.Rngs):
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        c = [max(8, int(round(ch * width))) for ch in BASE_CHANNELS]
        kw = dict(layout=layout, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        self.layout = layout
        self.stem = ConvBNAct(3, c[0], 3, stride=2, **kw)
        self.s4a = ConvBNAct(c[0], c[1], 3, stride=2, **kw)
        self.s4b = ConvBNAct(c[1], c[1], 3, **kw)
        self.s8a = ConvBNAct(c[1], c[2], 3, stride=2, **kw)
        self.s8b = ConvBNAct(c[2], c[2], 3, **kw)
        self.s16a = ConvBNAct(c[2], c[3], 3, stride=2, **kw)
        self.s16b = ConvBNAct(c[3], c[3], 3, **kw)
        self.s32 = ConvBNAct(c[3], c[4], 3, stride=2, **kw)
        self.extras = nnx.List([ConvBNAct(c[4], c[4], 3, stride=2, **kw) for _ in range(num_extras)])
        # depth > 1: more stride-1 3x3 convolutions at the end of stages s4, s8 and s16.
        self.more = nnx.List(
            [nnx.List([ConvBNAct(ch, ch, 3, **kw) for _ in range(depth - 1)]) for ch in c[1:4]]
        ) if depth > 1 else None
        # top_down: each of s16, s8, s4 gets the next coarser (already fused) map added,
        # through a 1x1 conv + BN and a 2x nearest upsampling, then ReLU6 (as an FPN).
        self.lateral = nnx.List(
            [ConvBNAct(c_hi, c_lo, 1, activation=False, **kw) for c_lo, c_hi in zip(c[1:4], c[2:5])]
        ) if top_down else None
        self.out_channels = (c[1], c[2], c[3], c[4]) + (c[4],) * num_extras
        self.source_names = ("s4", "s8", "s16", "s32") + tuple(f"extra{i + 1}" for i in range(num_extras))

    def __call__(self, x, train: bool = False):
        def stage(i, first, second, x):
            x = second(first(x, train), train)
            for layer in self.more[i] if self.more is not None else ():
                x = layer(x, train)
            return x

        x = self.stem(x, train)
        s4 = stage(0, self.s4a, self.s4b, x)
        s8 = stage(1, self.s8a, self.s8b, s4)
        s16 = stage(2, self.s16a, self.s16b, s8)
        y = self.s32(s16, train)
        maps = [s4, s8, s16, y]
        if self.lateral is not None:
            for i in (2, 1, 0):
                maps[i] = jax.nn.relu6(maps[i] + _upsample2x(self.lateral[i](maps[i + 1], train), maps[i], self.layout))
        for layer in self.extras:
            y = layer(y, train)
            maps.append(y)
        return maps

    def layer_stacks(self):
        def more(i, name):
            return [m.layer(f"{name}{chr(ord('c') + j)}") for j, m in enumerate(self.more[i])] if self.more else []

        s4 = [self.stem.layer("stem"), self.s4a.layer("s4a"), self.s4b.layer("s4b")] + more(0, "s4")
        s8 = s4 + [self.s8a.layer("s8a"), self.s8b.layer("s8b")] + more(1, "s8")
        s16 = s8 + [self.s16a.layer("s16a"), self.s16b.layer("s16b")] + more(2, "s16")
        s32 = s16 + [self.s32.layer("s32")]
        stacks = [s4, s8, s16, s32]
        for i, layer in enumerate(self.extras):
            stacks.append(stacks[-1] + [layer.layer(f"extra{i + 1}")])
        return stacks


def _upsample2x(x, like, layout: str):
    """Nearest 2x upsampling of ``x``, cropped to the spatial size of ``like`` (a map of a
    stride-2, padding-1 conv is ``ceil(size / 2)``, so twice it is never smaller)."""
    h_axis = 1 if layout == "NHWC" else 2
    h, w = like.shape[h_axis], like.shape[h_axis + 1]
    x = jnp.repeat(jnp.repeat(x, 2, axis=h_axis), 2, axis=h_axis + 1)
    return jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, 0, h, axis=h_axis), 0, w, axis=h_axis + 1)


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
