"""Receptive-field arithmetic for a stack of convolution / pooling layers.

For each layer (kernel k, stride s, padding p, dilation d; effective kernel
``k_eff = d * (k - 1) + 1``) the standard recurrences (Dang Ha The Hien, "A guide to
receptive field arithmetic for convolutional neural networks", the seed document's
reference) give, from the input's values (size n_0, jump 1, receptive field 1,
first centre 0.5 in pixel units):

* output size  ``n_out = floor((n_in + 2p - k_eff) / s) + 1`` (``ceil`` in ceil mode,
  with PyTorch's rule that the last window must start inside the input or left padding);
* jump         ``j_out = j_in * s``  (distance in input pixels between neighbouring features);
* receptive field ``r_out = r_in + (k_eff - 1) * j_in``;
* first centre ``start_out = start_in + ((k_eff - 1) / 2 - p) * j_in``.

Pure Python: these are static properties of an architecture, used by ``launch.py
inspect`` and by the network to say which map sees which object size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class Layer:
    """One spatial layer: a convolution or a pooling window (square, same on both axes)."""

    name: str
    kernel: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    ceil_mode: bool = False

    def __post_init__(self):
        if self.kernel < 1 or self.stride < 1 or self.dilation < 1 or self.padding < 0:
            raise ValueError(
                f"layer {self.name!r}: kernel, stride and dilation must be >= 1 and "
                f"padding >= 0, got k={self.kernel} s={self.stride} p={self.padding} "
                f"d={self.dilation}"
            )

    @property
    def effective_kernel(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    def output_size(self, n_in: int) -> int:
        span = n_in + 2 * self.padding - self.effective_kernel
        if span < 0:
            raise ValueError(
                f"layer {self.name!r}: input of size {n_in} is smaller than its effective "
                f"kernel {self.effective_kernel} (padding {self.padding})"
            )
        if not self.ceil_mode:
            return span // self.stride + 1
        n_out = math.ceil(span / self.stride) + 1
        # PyTorch: the last window must start inside the input or the left padding.
        if (n_out - 1) * self.stride >= n_in + self.padding:
            n_out -= 1
        return n_out


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """Receptive-field facts of one layer's output (all lengths in input pixels)."""

    name: str
    size: int  # feature-map side
    jump: float  # distance between neighbouring features
    receptive_field: float  # side of the input window one feature sees
    start: float  # centre of the first feature's window (first pixel's centre = 0.5)

    def centre(self, index: int) -> float:
        """Centre, in input pixels, of feature ``index`` along one axis."""
        return self.start + index * self.jump


def receptive_fields(layers: Iterable[Layer], input_size: int) -> list[FieldInfo]:
    """Size, jump, receptive field and first centre after each layer of a stack."""
    n, jump, rf, start = int(input_size), 1.0, 1.0, 0.5
    out = []
    for layer in layers:
        k_eff = layer.effective_kernel
        n = layer.output_size(n)
        rf = rf + (k_eff - 1) * jump
        start = start + ((k_eff - 1) / 2 - layer.padding) * jump
        jump = jump * layer.stride
        out.append(FieldInfo(layer.name, n, jump, rf, start))
    return out


def final_field(layers: Sequence[Layer], input_size: int) -> FieldInfo:
    """The :class:`FieldInfo` after the last layer of a (non-empty) stack."""
    infos = receptive_fields(layers, input_size)
    if not infos:
        raise ValueError("empty layer stack")
    return infos[-1]
