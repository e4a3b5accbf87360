"""The ``model`` section of an experiment: which network, at what size, in what precision."""

from __future__ import annotations

import dataclasses

from ssd_jax import normalization
from ssd_jax.schema import Section

#: The test network of :mod:`ssd_jax.models.tiny` (smoke tests, CI).
TINY_NAME = "tiny_cnn"

#: The values of ``model.normalization`` (``auto`` and the conventions of :mod:`ssd_jax.normalization`).
NORMALIZATIONS = ("auto", *normalization.CONVENTIONS)

_ALL_NAMES = ("ssd300_vgg16", "ssd512_vgg16", "ssdlite_mobilenetv2", "ssdlite_mobilenetv3", "ssd_compact", TINY_NAME)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """Network settings.

    Attributes:
      name: ``ssdlite_mobilenetv2``, ``ssdlite_mobilenetv3``, ``ssd300_vgg16``,
        ``ssd512_vgg16``, ``ssd_compact`` or ``tiny_cnn`` (smoke tests).
      image_size: side of the square network input, pixels.
      width: width multiplier (the SSDLite models and ``ssd_compact``; ignored by the others,
        so a config made for one family can switch ``name`` alone).
      compute_dtype: ``float32`` or ``bfloat16`` (parameters and the loss stay float32).
      layout: ``NHWC`` or ``NCHW`` activations.
      depth: ``ssd_compact``: stride-1 3x3 convolutions per stage (s4, s8, s16).
      top_down: ``ssd_compact``: FPN-style top-down fusion of the source maps.
      conv_wgrad: how NHWC convolutions compute kernel gradients: ``auto`` (matmuls on the
        CPU while XLA hands single convolutions to YNNPACK, else XLA's own), ``shifted``
        (matmuls everywhere) or ``xla``.
      cpu_kernels: the C++ depthwise-gradient kernels on the CPU: ``auto`` (used when they
        build, else a warning and pure JAX), ``on`` (a failed build is an error) or ``off``.
      normalization: the input convention of :mod:`ssd_jax.normalization`
        (``torchvision``, ``caffe_vgg`` or ``symmetric``), or ``auto``: the one a converted checkpoint
        given as ``init_from`` records, else the network's own
        (:func:`ssd_jax.models.default_normalization`). A run records the convention it
        trained with, so evaluation and prediction use the same.
      init: how the weights start: ``default`` (each layer's own initialiser, as the
        papers), or ``normal``: every convolution kernel drawn from N(0, ``init_std``) and
        every convolution bias 0, batch norm left at (1, 0) (torchvision's SSDLite trained
        from scratch, ``std=0.03``). ``init_from`` overrides what it loads.
      init_std: the standard deviation of ``init="normal"``.
    """

    name: str = "ssdlite_mobilenetv2"
    image_size: int = 320
    width: float = 1.0
    compute_dtype: str = "float32"
    layout: str = "NHWC"
    depth: int = 1
    top_down: bool = False
    conv_wgrad: str = "auto"
    cpu_kernels: str = "auto"
    normalization: str = "auto"
    init: str = "default"
    init_std: float = 0.03

    def __post_init__(self):
        if self.name not in _ALL_NAMES:
            raise ValueError(f"model.name must be one of {_ALL_NAMES}, got {self.name!r}")
        if self.image_size < 8:
            raise ValueError(f"model.image_size must be at least 8, got {self.image_size}")
        if self.width <= 0:
            raise ValueError(f"model.width must be positive, got {self.width}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"model.compute_dtype must be 'float32' or 'bfloat16', got {self.compute_dtype!r}")
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"model.layout must be 'NHWC' or 'NCHW', got {self.layout!r}")
        if self.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {self.depth}")
        if self.conv_wgrad not in ("auto", "shifted", "xla"):
            raise ValueError(f"model.conv_wgrad must be 'auto', 'shifted' or 'xla', got {self.conv_wgrad!r}")
        if self.cpu_kernels not in ("auto", "on", "off"):
            raise ValueError(f"model.cpu_kernels must be 'auto', 'on' or 'off', got {self.cpu_kernels!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"model.normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.init not in ("default", "normal"):
            raise ValueError(f"model.init must be 'default' or 'normal', got {self.init!r}")
        if not self.init_std > 0:
            raise ValueError(f"model.init_std must be positive, got {self.init_std}")
