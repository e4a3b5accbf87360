"""Build an SSD network by name, with its matching prior spec.

Names: ``ssd300_vgg16``, ``ssd512_vgg16`` (the paper's networks; default priors
``SSD300_VOC`` / ``SSD512_VOC``), ``ssdlite_mobilenetv2`` and ``ssdlite_mobilenetv3``
(MobileNetV2 / MobileNetV3-Large + SSDLite heads, any input size; default priors from
:func:`ssdlite_prior_spec`; the V3 one is torchvision's ``ssdlite320_mobilenet_v3_large``) and ``ssd_compact`` (a
small VGG-style network with a stride-4 source map, for CPU-sized runs; priors from
:func:`ssd_jax.models.compact.compact_prior_spec`).

How the convolutions compute their gradients is a :class:`~ssd_jax.models.layers.ConvChoices`
given to :func:`build_model` (default: :func:`~ssd_jax.models.layers.resolve_conv_choices`
with its ``auto`` modes, resolved when the model is built).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax.numpy as jnp
from flax import nnx

from ssd_jax import anchors
from ssd_jax.models import compact, heads, mobilenet, mobilenet_v3, ssd, vgg
from ssd_jax.models.layers import ConvChoices, resolve_conv_choices

#: torchvision's SSDLite prior scales: linear from 0.2 to 0.95 over the maps, then 1.0
#: (``DefaultBoxGenerator(min_ratio=0.2, max_ratio=0.95)``), ratios 2 and 3 everywhere.
SSDLITE_MIN_RATIO, SSDLITE_MAX_RATIO = 0.2, 0.95


def _extractor_factory(name: str, width: float, layout: str, depth: int = 1, top_down: bool = False) -> Callable:
    if name != "ssd_compact" and (depth != 1 or top_down):
        raise ValueError(f"depth and top_down apply only to ssd_compact, not {name}")
    if name == "ssd300_vgg16":
        return lambda dtype, conv, rngs: vgg.VGG16Extractor(300, layout=layout, compute_dtype=dtype, conv=conv,
                                                            rngs=rngs)
    if name == "ssd512_vgg16":
        return lambda dtype, conv, rngs: vgg.VGG16Extractor(512, layout=layout, compute_dtype=dtype, conv=conv,
                                                            rngs=rngs)
    if name == "ssdlite_mobilenetv2":
        return lambda dtype, conv, rngs: mobilenet.MobileNetV2Extractor(width, layout=layout, compute_dtype=dtype,
                                                                        conv=conv, rngs=rngs)
    if name == "ssdlite_mobilenetv3":
        return lambda dtype, conv, rngs: mobilenet_v3.MobileNetV3Extractor(width, layout=layout, compute_dtype=dtype,
                                                                           conv=conv, rngs=rngs)
    if name == "ssd_compact":
        return lambda dtype, conv, rngs: compact.CompactExtractor(width, depth=depth, top_down=top_down, layout=layout,
                                                                  compute_dtype=dtype, conv=conv, rngs=rngs)
    raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")


MODEL_NAMES = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite_mobilenetv2", "ssdlite_mobilenetv3", "ssd_compact")
#: Models with a width multiplier.
WIDTH_MODELS = ("ssdlite_mobilenetv2", "ssdlite_mobilenetv3", "ssd_compact")
SSDLITE_MODELS = ("ssdlite_mobilenetv2", "ssdlite_mobilenetv3")
_HEADS = {"ssd300_vgg16": heads.SSDHead, "ssd512_vgg16": heads.SSDHead, "ssdlite_mobilenetv2": heads.SSDLiteHead,
          "ssdlite_mobilenetv3": heads.SSDLiteHead, "ssd_compact": heads.SSDHead}
_DEFAULT_NORMALIZATION = {"ssd300_vgg16": "caffe_vgg", "ssd512_vgg16": "caffe_vgg", "ssdlite_mobilenetv2": "torchvision",
                          "ssdlite_mobilenetv3": "torchvision", "ssd_compact": "torchvision"}


def default_normalization(name: str) -> str:
    """The input normalisation convention (see :mod:`ssd_jax.normalization`) a model's weights expect."""
    _extractor_factory(name, 1.0, "NHWC")  # validates the name
    return _DEFAULT_NORMALIZATION[name]


@functools.cache
def _layer_stacks(name: str, width: float):
    """The layer stacks (kernel, stride, padding per layer) of extractor ``name``, from an
    abstract construction (no parameters allocated). Cached: the construction traces every
    initialiser (2-3 s for an SSDLite), and every build of a model with its default priors
    asks for them; they do not depend on the input size."""
    make = _extractor_factory(name, width, "NHWC")
    stacks = nnx.eval_shape(lambda: make(jnp.float32, ConvChoices(), nnx.Rngs(0))).layer_stacks()
    return tuple(tuple(stack) for stack in stacks)


def network_feature_sizes(name: str, image_size: int, width: float = 1.0) -> tuple[int, ...]:
    """Source-map sizes of model ``name`` at a square input (no parameters allocated)."""
    return ssd.feature_sizes(_layer_stacks(name, float(width)), image_size)


def ssdlite_prior_spec(image_size: int = 320, width: float = 1.0, name: str = "ssdlite_mobilenetv2") -> anchors.PriorSpec:
    """SSDLite priors for ``image_size``, from the network's (``name``) actual feature sizes.

    torchvision's SSDLite layout: scales linear from 0.2 to 0.95 (then 1.0), ratios 2 and
    3 on every map (6 boxes per cell), centres ``(j + 0.5) / f``.
    """
    sizes = network_feature_sizes(name, image_size, width)
    m = len(sizes)
    scales = [SSDLITE_MIN_RATIO + (SSDLITE_MAX_RATIO - SSDLITE_MIN_RATIO) * k / (m - 1) for k in range(m)] + [1.0]
    return anchors.PriorSpec.from_scales(
        image_size, sizes, scales, [(2.0, 3.0)] * m, steps=None, clip="size", name=f"SSDLITE{image_size}",
    )


def default_prior_spec(name: str, image_size: int | None = None, width: float = 1.0) -> anchors.PriorSpec:
    """The priors a model gets when none are given."""
    if name in SSDLITE_MODELS:
        return ssdlite_prior_spec(image_size or 320, width, name)
    if name == "ssd_compact":
        size = image_size or 160
        return compact.compact_prior_spec(size, network_feature_sizes(name, size, width))
    preset = {"ssd300_vgg16": anchors.SSD300_VOC, "ssd512_vgg16": anchors.SSD512_VOC}.get(name)
    if preset is None:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    if image_size is not None and image_size != preset.image_size:
        raise ValueError(
            f"{name} is defined at {preset.image_size}x{preset.image_size} (paper layout); got "
            f"image_size={image_size}. Pass a matching PriorSpec to use another size."
        )
    return preset


def build_model(
    name: str,
    num_classes: int,
    priors: anchors.PriorSpec | None = None,
    *,
    image_size: int | None = None,
    compute_dtype=jnp.float32,
    width: float = 1.0,
    layout: str = "NHWC",
    depth: int = 1,
    top_down: bool = False,
    conv: ConvChoices | None = None,
    rngs: nnx.Rngs | None = None,
) -> ssd.SSD:
    """An SSD network by name.

    Args:
      name: one of :data:`MODEL_NAMES`.
      num_classes: object classes C, background excluded (VOC: 20; logits get C + 1).
      priors: the prior spec; default :func:`default_prior_spec` (``image_size``).
      compute_dtype: ``jnp.float32`` (default) or ``jnp.bfloat16``; parameters stay float32.
      width: width multiplier of the SSDLite models and ``ssd_compact``.
      layout: activations inside the network, ``"NHWC"`` (default) or ``"NCHW"``.
      depth, top_down: ``ssd_compact`` only: stride-1 convolutions per stage, and the
        FPN-style top-down fusion of its source maps (see :class:`compact.CompactExtractor`).
      conv: how the convolutions compute their gradients; default ``resolve_conv_choices()``
        (``auto`` for the kernel gradient and the CPU kernels, judged on JAX's default
        backend and ``os.environ["XLA_FLAGS"]`` now, at build time).
      rngs: parameter initialisation keys (default ``nnx.Rngs(0)``).
    """
    make = _extractor_factory(name, width, layout, depth, top_down)
    if priors is None:
        priors = default_prior_spec(name, image_size, width)
    elif image_size is not None and image_size != priors.image_size:
        raise ValueError(f"image_size={image_size} but the prior spec {priors.name!r} is for {priors.image_size}")
    if name not in WIDTH_MODELS and width != 1.0:
        raise ValueError(f"width multiplier applies only to {' and '.join(WIDTH_MODELS)}, not {name}")
    compute_dtype = jnp.dtype(compute_dtype)
    if compute_dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"compute_dtype must be float32 or bfloat16, got {compute_dtype}")
    conv = conv if conv is not None else resolve_conv_choices()
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    extractor = make(compute_dtype, conv, rngs)
    return ssd.SSD(extractor, _HEADS[name], priors, num_classes, name=name, compute_dtype=compute_dtype, conv=conv,
                   rngs=rngs)
