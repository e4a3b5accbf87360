"""The VGG16 feature extractor of SSD300 / SSD512 (Liu et al. 2016, Fig. 2 and footnote 5).

VGG16's conv1_1..conv5_3 with pool3 in ceil mode (75 -> 38 at 300), pool5 3x3 stride 1
pad 1, fc6 as a 3x3 convolution with dilation 6 (1024 channels), fc7 as a 1x1
convolution (1024), then the extra layers (1x1 reduction + 3x3) conv8_2..conv11_2, and
conv12_2 (4x4, pad 1) for SSD512. conv4_3 goes through an L2 normalisation with a
learnable per-channel scale initialised to 20.

Source maps: conv4_3 (L2-normalised), fc7, conv8_2, conv9_2, conv10_2, conv11_2
(, conv12_2): 38, 19, 10, 5, 3, 1 at 300; 64, 32, 16, 8, 4, 2, 1 at 512.

The SSD300 extras follow the Caffe prototxt / ssd.pytorch / torchvision
(``SSDFeatureExtractorVGG``): conv8_2 and conv9_2 stride 2 pad 1, conv10_2 and conv11_2
3x3 without padding. The SSD512 extras follow the Caffe SSD512 prototxt / ssd.pytorch /
lufficc/SSD: conv8_2..conv11_2 stride 2 pad 1, conv12_2 4x4 pad 1 (torchvision's
``highres=True`` variant differs: it keeps the unpadded conv10_2/conv11_2 and gives maps
8, 6, 4, 1, not the paper's 8, 4, 2, 1).

Parameter names (used by the torchvision import): ``conv1_1`` .. ``conv5_3``, ``fc6``,
``fc7``, ``conv4_3_norm.scale``, ``conv8_1``, ``conv8_2``, .. ``conv12_2``.
Initialisation: VGG convs as torchvision's VGG (Kaiming normal, fan out); fc6, fc7 and
the extras Xavier uniform with zero biases.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssd_jax.models import layers as L
from ssd_jax.receptive_field import Layer

Array = jax.Array

#: VGG16 conv stages: (names, out channels); a 2x2 stride-2 pool follows each stage
#: (pool3 in ceil mode), except stage 5, which is followed by pool5 3x3/1/1.
VGG16_STAGES = (
    (("conv1_1", "conv1_2"), 64),
    (("conv2_1", "conv2_2"), 128),
    (("conv3_1", "conv3_2", "conv3_3"), 256),
    (("conv4_1", "conv4_2", "conv4_3"), 512),
    (("conv5_1", "conv5_2", "conv5_3"), 512),
)

#: extra blocks: (1x1 name, mid channels, 3x3 name, out channels, kernel, stride, padding)
EXTRAS = {
    300: (
        ("conv8_1", 256, "conv8_2", 512, 3, 2, 1),
        ("conv9_1", 128, "conv9_2", 256, 3, 2, 1),
        ("conv10_1", 128, "conv10_2", 256, 3, 1, 0),
        ("conv11_1", 128, "conv11_2", 256, 3, 1, 0),
    ),
    512: (
        ("conv8_1", 256, "conv8_2", 512, 3, 2, 1),
        ("conv9_1", 128, "conv9_2", 256, 3, 2, 1),
        ("conv10_1", 128, "conv10_2", 256, 3, 2, 1),
        ("conv11_1", 128, "conv11_2", 256, 3, 2, 1),
        ("conv12_1", 128, "conv12_2", 256, 4, 1, 1),
    ),
}


class VGG16Extractor(nnx.Module):
    """SSD's VGG16 backbone + extra layers; returns the source feature maps.

    Args:
      variant: 300 (SSD300: 6 source maps) or 512 (SSD512: 7 source maps).
      layout: activation layout inside the network, ``"NHWC"`` or ``"NCHW"``; the
        input and the returned feature maps are always NHWC.
      conv: how the convolutions compute their gradients (:class:`L.ConvChoices`).
    """

    def __init__(self, variant: int = 300, *, layout: str = "NHWC", compute_dtype=jnp.float32,
                 conv: L.ConvChoices, rngs: nnx.Rngs):
        if variant not in EXTRAS:
            raise ValueError(f"VGG16 SSD variant must be one of {sorted(EXTRAS)}, got {variant!r}")
        self.variant = variant
        self.layout = L.check_layout(layout)
        self.compute_dtype = compute_dtype
        kw = dict(layout=layout, compute_dtype=compute_dtype, conv=conv, rngs=rngs)
        in_ch = 3
        for names, ch in VGG16_STAGES:
            for name in names:
                setattr(self, name, L.Conv2d(in_ch, ch, 3, padding=1, kernel_init=L.kaiming_normal_fan_out, **kw))
                in_ch = ch
        self.conv4_3_norm = L.L2Norm(512, 20.0, layout=layout, compute_dtype=compute_dtype)
        self.fc6 = L.Conv2d(512, 1024, 3, padding=6, dilation=6, **kw)
        self.fc7 = L.Conv2d(1024, 1024, 1, **kw)
        in_ch = 1024
        for n1, mid, n2, out, k, s, p in EXTRAS[variant]:
            setattr(self, n1, L.Conv2d(in_ch, mid, 1, **kw))
            setattr(self, n2, L.Conv2d(mid, out, k, stride=s, padding=p, **kw))
            in_ch = out
        self.out_channels = (512, 1024) + tuple(e[3] for e in EXTRAS[variant])
        self.source_names = ("conv4_3", "fc7") + tuple(e[2] for e in EXTRAS[variant])

    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        """``x``: ``[B,H,W,3]`` normalised images -> list of NHWC source maps."""
        del train  # no batch norm or dropout in this network
        lay = self.layout
        if lay == "NCHW":
            x = jnp.transpose(x, (0, 3, 1, 2))
        relu = jax.nn.relu
        sources = []
        for stage, (names, _) in enumerate(VGG16_STAGES, start=1):
            for name in names:
                x = relu(getattr(self, name)(x))
            if stage == 4:
                sources.append(self.conv4_3_norm(x))
            if stage < 5:
                x = L.max_pool(x, 2, 2, 0, ceil_mode=(stage == 3), layout=lay)
        x = L.max_pool(x, 3, 1, 1, layout=lay)  # pool5
        x = relu(self.fc6(x))
        x = relu(self.fc7(x))
        sources.append(x)
        for n1, _, n2, *_ in EXTRAS[self.variant]:
            x = relu(getattr(self, n1)(x))
            x = relu(getattr(self, n2)(x))
            sources.append(x)
        if lay == "NCHW":
            sources = [jnp.transpose(s, (0, 2, 3, 1)) for s in sources]
        return sources

    def layer_stacks(self) -> list[list[Layer]]:
        """Per source map, the spatial layers from the input to it (receptive fields)."""
        stacks, stack = [], []
        for stage, (names, _) in enumerate(VGG16_STAGES, start=1):
            stack += [getattr(self, n).layer(n) for n in names]
            if stage == 4:
                stacks.append(list(stack))
            if stage < 5:
                stack.append(L.pool_layer(f"pool{stage}", 2, 2, 0, ceil_mode=(stage == 3)))
        stack.append(L.pool_layer("pool5", 3, 1, 1))
        stack += [self.fc6.layer("fc6"), self.fc7.layer("fc7")]
        stacks.append(list(stack))
        for n1, _, n2, *_ in EXTRAS[self.variant]:
            stack += [getattr(self, n1).layer(n1), getattr(self, n2).layer(n2)]
            stacks.append(list(stack))
        return stacks
