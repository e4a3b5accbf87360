"""Building blocks shared by the SSD networks: convolution, pooling, L2 normalisation.

All blocks keep float32 parameters and compute in ``compute_dtype`` (float32 or
bfloat16). Activations are laid out ``NHWC`` (the default, what the network takes and
what XLA prefers on GPU/TPU) or ``NCHW`` (an option measured by the CPU benchmark); the
kernels are stored ``HWIO`` either way, so parameters do not depend on the layout.

Every spatial block can describe itself as a :class:`ssd_jax.receptive_field.Layer`, so
the networks derive their feature-map sizes and receptive fields from the same numbers
that build their convolutions.

How convolutions compute their gradients (XLA's, a matmul kernel gradient, the FFI CPU
kernels for depthwise ones) is a :class:`ConvChoices` that every module receives when it
is built (:func:`resolve_conv_choices` turns user-facing modes into one); nothing is read
from the environment while a function is traced.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn import normalization as _bn_lib  # BatchNorm's own statistics and normalisation

from ssd_jax import xla_flags as xla_flags_lib
from ssd_jax.kernels import cpu as kernels_cpu
from ssd_jax.receptive_field import Layer

Array = jax.Array
Initializer = Callable[..., Array]

LAYOUTS = ("NHWC", "NCHW")

def _fans(shape) -> tuple[int, int]:
    """fan_in, fan_out of a ``HWIO`` kernel (torch's rule on the ``OIHW`` transpose)."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return shape[-2] * receptive, shape[-1] * receptive


def _host_init(kind: str, jax_init: Initializer) -> Initializer:
    """An initializer that draws on the host with numpy, seeded from the jax key.

    Why: XLA:CPU compiles one RNG program per distinct parameter shape, which made the
    first construction of a network take 12-20 s; numpy needs no compilation. The numbers
    are a deterministic function of the key. Under tracing (``nnx.eval_shape``, ``jit``),
    where the key has no value, the equivalent ``jax.nn.initializers`` one is used.
    """

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return jax_init(key, shape, dtype)
        seed = np.asarray(jax.random.key_data(key)).ravel().astype(np.uint64)
        rng = np.random.default_rng(seed)
        fan_in, fan_out = _fans(shape)
        if kind == "xavier_uniform":
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            x = rng.uniform(-limit, limit, size=shape)
        elif kind == "kaiming_normal_fan_out":
            x = rng.standard_normal(size=shape, dtype=np.float32) * np.sqrt(2.0 / fan_out)
        else:
            raise ValueError(f"unknown initializer {kind!r}")
        return jnp.asarray(x, dtype=dtype)

    return init


#: Xavier-uniform (Glorot), the SSD paper's / torchvision's init for the new layers:
#: for a ``HWIO`` kernel fan_in = k*k*in, fan_out = k*k*out, as torch's
#: ``xavier_uniform_`` on ``OIHW``.
xavier_uniform: Initializer = _host_init("xavier_uniform", nnx.initializers.xavier_uniform())
#: torchvision's VGG / MobileNet conv init: ``kaiming_normal_(mode="fan_out", relu)``.
kaiming_normal_fan_out: Initializer = _host_init(
    "kaiming_normal_fan_out", nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
)


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def channel_axis(layout: str) -> int:
    return -1 if layout == "NHWC" else 1


@dataclasses.dataclass(frozen=True)
class ConvChoices:
    """How convolutions compute their gradients on this backend (resolved: no ``auto``).

    Attributes:
      matmul_wgrad: NHWC convolutions may take :func:`_conv_nhwc`'s matmul kernel
        gradient, each by the per-layer rule of :func:`_matmul_wgrad_for`.
      matmul_wgrad_all: every NHWC convolution takes it (needs ``matmul_wgrad``).
      cpu_kernels: depthwise gradients use the FFI CPU kernels (:mod:`ssd_jax.kernels`;
        the library must be loadable: :func:`resolve_conv_choices` checks that).
      grouped_depthwise: a depthwise convolution is one grouped convolution instead of
        the sum of shifted products: the form exported programs take (one ONNX ``Conv``
        with ``group = C``, which onnxruntime runs several times faster than the products).

    The default, all ``False``, is XLA's own gradients everywhere, right on any backend.
    Hashable, so modules keep it as static graph data.
    """

    matmul_wgrad: bool = False
    matmul_wgrad_all: bool = False
    cpu_kernels: bool = False
    grouped_depthwise: bool = False

    def __post_init__(self):
        if self.matmul_wgrad_all and not self.matmul_wgrad:
            raise ValueError("ConvChoices: matmul_wgrad_all=True needs matmul_wgrad=True")


#: The ``wgrad`` modes of :func:`resolve_conv_choices`.
WGRAD_MODES = ("auto", "shifted", "xla")


def resolve_conv_choices(wgrad: str = "auto", cpu_kernels: str = "auto", *, backend: str | None = None,
                         xla_flags: str | None = None) -> ConvChoices:
    """The :class:`ConvChoices` for these modes on ``backend`` (default JAX's default backend).

    ``wgrad``: ``auto`` takes the matmul kernel gradient on the CPU backend only, and only
    while XLA hands single convolutions to YNNPACK
    (:func:`ssd_jax.xla_flags.ynn_takes_convolutions` of ``xla_flags``), whose kernel
    gradients are slower than the matmuls; under the ``train`` flag profile XLA's own is
    the faster one, and GPUs/TPUs keep theirs (cuDNN's) (measured: benchmarks/README.md).
    ``shifted`` forces the matmuls for every NHWC convolution, ``xla`` never takes them (both
    for A/B measurements).

    ``cpu_kernels``: as :func:`ssd_jax.kernels.cpu.enabled` (``auto``, ``on``, ``off``); the
    library is built or loaded here, when ``auto``/``on`` on the CPU backend.

    ``xla_flags``: the ``XLA_FLAGS`` string that ``auto`` judges; ``None`` reads
    ``os.environ["XLA_FLAGS"]`` now, so resolve after the process's flags are set (a model
    is built after that) and before the first compilation.
    """
    if wgrad not in WGRAD_MODES:
        raise ValueError(f"wgrad={wgrad!r}: expected one of {', '.join(map(repr, WGRAD_MODES))}")
    kernels_cpu.check_mode(cpu_kernels)
    backend = backend or jax.default_backend()
    if wgrad == "auto":
        matmul = backend == "cpu" and xla_flags_lib.ynn_takes_convolutions(xla_flags)
    else:
        matmul = wgrad == "shifted"
    return ConvChoices(matmul_wgrad=matmul, matmul_wgrad_all=wgrad == "shifted",
                       cpu_kernels=kernels_cpu.enabled(cpu_kernels, backend))


def conv2d(
    x: Array,
    kernel: Array,
    bias: Array | None,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    layout: str = "NHWC",
    compute_dtype=jnp.float32,
    conv: ConvChoices = ConvChoices(),
) -> Array:
    """2-D convolution of ``x`` (``[B,H,W,C]`` or ``[B,C,H,W]``) with a ``HWIO`` kernel.

    Symmetric integer ``padding`` as PyTorch's ``Conv2d``; output in ``compute_dtype``.
    ``conv`` decides the kernel gradient (default: XLA's).
    """
    x = x.astype(compute_dtype)
    if layout == "NHWC" and groups == 1 and _matmul_wgrad_for(conv, kernel.shape, stride):
        y = _conv_nhwc(x, kernel.astype(compute_dtype), stride, padding, dilation)
    else:
        y = jax.lax.conv_general_dilated(
            x,
            kernel.astype(compute_dtype),
            window_strides=(stride, stride),
            padding=((padding, padding), (padding, padding)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=(layout, "HWIO", layout),
            feature_group_count=groups,
        )
    if bias is not None:
        shape = (1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)
        y = y + bias.astype(compute_dtype).reshape(shape)
    return y


#: Under ``matmul_wgrad`` (not ``matmul_wgrad_all``), stride-1 convolutions (not 1x1) with
#: fewer input channels keep XLA's kernel gradient: contracting over so few channels, the
#: row matmuls lose to it (VGG's conv1_1, the narrow ``ssd_compact`` layers). 1x1 and
#: strided convolutions keep the matmuls whatever their width: with XLA's for all narrow
#: ones the SSDLite-MobileNetV2 step (1x1 convolutions from 16-32 channels on large maps,
#: a strided stem) was slower (measured: benchmarks/README.md).
_MATMUL_WGRAD_MIN_IN_CHANNELS = 64


def _matmul_wgrad_for(conv: ConvChoices, kernel_shape, stride: int = 1) -> bool:
    """Whether a convolution with this ``HWIO`` kernel and stride takes :func:`_conv_nhwc`."""
    if not conv.matmul_wgrad:
        return False
    if conv.matmul_wgrad_all:
        return True
    return (kernel_shape[0] == kernel_shape[1] == 1 or stride > 1
            or kernel_shape[2] >= _MATMUL_WGRAD_MIN_IN_CHANNELS)


def _xla_conv_nhwc(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)), rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_nhwc(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    """NHWC x HWIO convolution whose kernel gradient is a sum of shifted matmuls.

    Forward and input gradient are XLA's own convolutions. The kernel gradient
    ``dW[i, j] = sum_{b,h,w} x_pad[b, s*h + d*i, s*w + d*j, :]^T dy[b, h, w, :]`` is
    computed with matmuls (one per kernel row for stride 1, one per tap otherwise) for
    output maps of at least 32x32, where XLA:CPU's (YNNPACK's) convolution weight gradient
    is slower for VGG's layers (measured: benchmarks/README.md).
    """
    return _xla_conv_nhwc(x, kernel, stride, padding, dilation)


def _conv_nhwc_fwd(x, kernel, stride, padding, dilation):
    return _xla_conv_nhwc(x, kernel, stride, padding, dilation), (x, kernel)


#: Output maps smaller than this (pixels) keep XLA's own kernel gradient: on small maps
#: (19x19) it is the faster one, from 38x38 up the matmuls win (measured:
#: benchmarks/README.md).
_SHIFTED_WGRAD_MIN_PIXELS = 32 * 32


def _conv_nhwc_bwd(stride, padding, dilation, residuals, dy):
    x, kernel = residuals
    b, h_out, w_out, c_out = dy.shape
    if h_out * w_out < _SHIFTED_WGRAD_MIN_PIXELS:
        _, vjp = jax.vjp(lambda xx, kk: _xla_conv_nhwc(xx, kk, stride, padding, dilation), x, kernel)
        return vjp(dy)
    _, input_vjp = jax.vjp(lambda xx: _xla_conv_nhwc(xx, kernel, stride, padding, dilation), x)
    (dx,) = input_vjp(dy)
    x_pad = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if stride == 1:
        dkernel = _kernel_grad_by_rows(x_pad, dy, kernel.shape, dilation)
    else:
        dkernel = _kernel_grad_by_taps(x_pad, dy, kernel.shape, stride, dilation)
    return dx, dkernel.astype(kernel.dtype)


def _kernel_grad_by_taps(x_pad: Array, dy: Array, kernel_shape, stride: int, dilation: int) -> Array:
    """One ``[C_in, N] x [N, C_out]`` matmul per tap, on the strided input window it saw."""
    k_h, k_w = kernel_shape[:2]
    b, h_out, w_out, c_out = dy.shape
    dy_rows = dy.reshape(b * h_out * w_out, c_out)
    taps = []
    for i in range(k_h):
        for j in range(k_w):
            top, left = i * dilation, j * dilation
            window = jax.lax.slice(
                x_pad,
                (0, top, left, 0),
                (b, top + stride * (h_out - 1) + 1, left + stride * (w_out - 1) + 1, x_pad.shape[-1]),
                (1, stride, stride, 1),
            )  # [B, H_out, W_out, C_in]: the inputs tap (i, j) saw
            taps.append(jnp.einsum("nc,nd->cd", window.reshape(b * h_out * w_out, -1), dy_rows,
                                   preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(kernel_shape)


def _kernel_grad_by_rows(x_pad: Array, dy: Array, kernel_shape, dilation: int) -> Array:
    """Stride 1: one matmul per kernel row ``i`` instead of per tap.

    The input rows ``i*d .. i*d + H_out`` are taken at the full padded width ``W_p`` (a
    cheap slice of whole rows), and ``dy`` is laid at each column offset ``j*d`` in a
    zero ``W_p``-wide canvas, the ``k_w`` copies side by side on the channel axis; then
    ``dW[i, j] = rows_i^T dy_j`` for all ``j`` is one ``[C_in, N] x [N, k_w*C_out]`` matmul.
    The zeros make the wrapped-around columns contribute nothing. Fewer, larger matmuls
    than the per-tap windows, so faster (measured: benchmarks/README.md).
    """
    k_h, k_w = kernel_shape[:2]
    b, h_out, w_out, c_out = dy.shape
    w_pad, c_in = x_pad.shape[2], x_pad.shape[3]
    shifted = jnp.stack(
        [jnp.pad(dy, ((0, 0), (0, 0), (j * dilation, w_pad - w_out - j * dilation), (0, 0)))
         for j in range(k_w)], axis=3,
    ).reshape(b * h_out * w_pad, k_w * c_out)
    rows = []
    for i in range(k_h):
        block = x_pad[:, i * dilation:i * dilation + h_out].reshape(b * h_out * w_pad, c_in)
        rows.append(jnp.einsum("nc,nd->cd", block, shifted, preferred_element_type=jnp.float32)
                    .reshape(c_in, k_w, c_out))
    return jnp.transpose(jnp.stack(rows), (0, 2, 1, 3))  # [k_h, k_w, C_in, C_out]


_conv_nhwc.defvjp(_conv_nhwc_fwd, _conv_nhwc_bwd)


def depthwise_conv2d(
    x: Array, kernel: Array, bias: Array | None, *, stride: int = 1, padding: int = 0,
    dilation: int = 1, layout: str = "NHWC", compute_dtype=jnp.float32,
    conv: ConvChoices = ConvChoices(),
) -> Array:
    """Depthwise convolution (``kernel [k, k, 1, C]``) as a sum of k*k shifted products.

    Same result as ``conv2d(..., groups=C)``, but XLA:CPU runs (and differentiates) this
    as fused elementwise work: its grouped-convolution gradients made the SSDLite train
    step many times slower than torchvision's (measured: benchmarks/README.md). With
    ``conv.cpu_kernels``, in float32 NHWC, the gradients come from :mod:`ssd_jax.kernels`
    (:func:`_depthwise_nhwc`); the forward pass is the same either way.
    """
    x = x.astype(compute_dtype)
    w = kernel.astype(compute_dtype)[:, :, 0, :]  # [k, k, C]
    if conv.grouped_depthwise:
        y = _depthwise_grouped(x, w, stride, padding, dilation, layout)
    elif conv.cpu_kernels and layout == "NHWC" and jnp.dtype(compute_dtype) == jnp.float32:
        kernels_cpu.require()  # the FFI targets registered in this process, also for hand-made ConvChoices
        y = _depthwise_nhwc(x, w, stride, padding, dilation)
    else:
        y = _depthwise_shifted(x, w, stride, padding, dilation, layout)
    if bias is not None:
        cshape = (1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)
        y = y + bias.astype(compute_dtype).reshape(cshape)
    return y


def _depthwise_grouped(x: Array, w: Array, stride: int, padding: int, dilation: int, layout: str) -> Array:
    """``x`` convolved with ``w [k, k, C]`` per channel as one grouped convolution."""
    return jax.lax.conv_general_dilated(
        x, w[:, :, None, :], (stride, stride), ((padding, padding), (padding, padding)),
        rhs_dilation=(dilation, dilation), dimension_numbers=(layout, "HWIO", layout),
        feature_group_count=w.shape[-1],
    )


def _depthwise_shifted(x: Array, w: Array, stride: int, padding: int, dilation: int, layout: str) -> Array:
    """``x`` convolved with ``w [k, k, C]`` per channel: the sum over taps of strided slices
    of the padded input times the tap's weights."""
    k = w.shape[0]
    sp = (1, 2) if layout == "NHWC" else (2, 3)
    pads = [(0, 0)] * 4
    for ax in sp:
        pads[ax] = (padding, padding)
    xp = jnp.pad(x, pads)
    h_out = (x.shape[sp[0]] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    w_out = (x.shape[sp[1]] + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    cshape = (1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)
    y = None
    for dy in range(k):
        for dx in range(k):
            start = [0, 0, 0, 0]
            limit = list(xp.shape)
            strides = [1, 1, 1, 1]
            start[sp[0]], start[sp[1]] = dy * dilation, dx * dilation
            limit[sp[0]] = dy * dilation + (h_out - 1) * stride + 1
            limit[sp[1]] = dx * dilation + (w_out - 1) * stride + 1
            strides[sp[0]] = strides[sp[1]] = stride
            term = jax.lax.slice(xp, start, limit, strides) * w[dy, dx].reshape(cshape)
            y = term if y is None else y + term
    return y


#: Kernels at least this wide take the FFI input gradient; 3x3 keeps autodiff's, which XLA
#: fuses into one pass that is faster there (measured: benchmarks/README.md).
_FFI_INPUT_GRAD_MIN_KERNEL = 5


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise_nhwc(x: Array, w: Array, stride: int, padding: int, dilation: int) -> Array:
    """NHWC float32 depthwise convolution whose gradients are :mod:`ssd_jax.kernels`' one-pass
    CPU kernels: XLA:CPU differentiates the shifted products into k*k window copies, each
    reduced against the cotangent, which is much slower (measured: benchmarks/README.md).
    Differentiable once (the kernels have no derivatives of their own): for second-order
    work build the model with ``ConvChoices(cpu_kernels=False)``."""
    return _depthwise_shifted(x, w, stride, padding, dilation, "NHWC")


def _depthwise_nhwc_fwd(x, w, stride, padding, dilation):
    return _depthwise_shifted(x, w, stride, padding, dilation, "NHWC"), (x, w)


def _depthwise_nhwc_bwd(stride, padding, dilation, residuals, dy):
    x, w = residuals
    k = w.shape[0]
    dw = kernels_cpu.depthwise_kernel_grad(x, dy, k, stride=stride, padding=padding, dilation=dilation)
    if k >= _FFI_INPUT_GRAD_MIN_KERNEL:
        dx = kernels_cpu.depthwise_input_grad(dy, w, x.shape, stride=stride, padding=padding, dilation=dilation)
    else:
        _, vjp = jax.vjp(lambda xx: _depthwise_shifted(xx, w, stride, padding, dilation, "NHWC"), x)
        (dx,) = vjp(dy)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_depthwise_nhwc.defvjp(_depthwise_nhwc_fwd, _depthwise_nhwc_bwd)


class Conv2d(nnx.Module):
    """A convolution with PyTorch-style symmetric padding and a ``HWIO`` float32 kernel.

    ``conv`` (static, not a parameter) decides how its gradients are computed.

    Attributes:
      kernel: ``[k, k, in/groups, out]`` float32 parameter.
      bias: ``[out]`` float32 parameter, or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        use_bias: bool = True,
        kernel_init: Initializer = xavier_uniform,
        layout: str = "NHWC",
        compute_dtype=jnp.float32,
        conv: ConvChoices,
        rngs: nnx.Rngs,
    ):
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"channels {in_channels}->{out_channels} not divisible by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.groups = dilation, groups
        self.layout = check_layout(layout)
        self.compute_dtype = compute_dtype
        self.conv_choices = conv
        shape = (kernel_size, kernel_size, in_channels // groups, out_channels)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if use_bias else None

    def __call__(self, x: Array) -> Array:
        if self.groups > 1 and self.groups == self.in_channels == self.out_channels and self.kernel_size > 1:
            return depthwise_conv2d(
                x, self.kernel[...], None if self.bias is None else self.bias[...], stride=self.stride,
                padding=self.padding, dilation=self.dilation, layout=self.layout, compute_dtype=self.compute_dtype,
                conv=self.conv_choices,
            )
        return conv2d(
            x,
            self.kernel[...],
            None if self.bias is None else self.bias[...],
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            layout=self.layout,
            compute_dtype=self.compute_dtype,
            conv=self.conv_choices,
        )

    def layer(self, name: str) -> Layer:
        """This convolution as a receptive-field :class:`Layer`."""
        return Layer(name, self.kernel_size, self.stride, self.padding, self.dilation)


def max_pool(
    x: Array, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False, layout: str = "NHWC"
) -> Array:
    """Max pooling with PyTorch's semantics (``-inf`` padding, optional ceil mode).

    Non-overlapping windows (``kernel == stride``, VGG's 2x2 pools) are a reshape and a
    ``max`` over the window axes: its gradient is one fused element-wise pass, where
    ``reduce_window``'s autodiff tracks each window's argmax through four int32 index
    arrays of the input's size and a scatter, which made the SSD300 train step slower on
    the CPU (measured: benchmarks/README.md). Overlapping windows are maxima of strided
    slices (:func:`_window_max_pool`). The values are ``reduce_window``'s; the gradient
    differs only on exact ties inside a window, which these paths share out equally
    (``jnp.max``'s rule) where ``reduce_window`` gives it to one element (as PyTorch) —
    after a ReLU the only ties are zeros, whose gradient the ReLU stops anyway.
    """
    spatial = (1, 2) if layout == "NHWC" else (2, 3)
    pads = [(0, 0)] * 4
    for ax in spatial:
        n = x.shape[ax]
        n_out = Layer("pool", kernel, stride, padding, 1, ceil_mode).output_size(n)
        hi = (n_out - 1) * stride + kernel - n - padding  # >= padding in ceil mode
        pads[ax] = (padding, hi)
    if kernel == stride:
        return _block_max_pool(x, kernel, pads, spatial)
    return _window_max_pool(x, kernel, stride, [(lo, max(hi, 0)) for lo, hi in pads], spatial)


def _pad_neg_inf(x: Array, pads, spatial) -> Array:
    """``x`` padded with ``(lo, hi)`` rows of ``-inf`` along each spatial axis (``hi < 0``
    crops). A concatenation of ``-inf`` rows shaped after slices of ``x``, not ``lax.pad``:
    the same values and gradients, and a program that ONNX converters express with a
    symbolic batch size."""
    for ax in spatial:
        lo, hi = pads[ax]
        if hi < 0:
            x = jax.lax.slice_in_dim(x, 0, x.shape[ax] + hi, axis=ax)
        edge = lambda n: jnp.full_like(jax.lax.slice_in_dim(x, 0, n, axis=ax), -jnp.inf)  # noqa: E731
        parts = ([edge(lo)] if lo > 0 else []) + [x] + ([edge(hi)] if hi > 0 else [])
        if len(parts) > 1:
            x = jnp.concatenate(parts, axis=ax)
    return x


def _block_max_pool(x: Array, k: int, pads, spatial) -> Array:
    """Max over non-overlapping ``k x k`` blocks: pad with ``-inf`` (or crop the rows a
    floor-mode pool never reads) to a multiple of ``k``, split each spatial axis into
    ``(n / k, k)`` and reduce the ``k`` axes."""
    x = _pad_neg_inf(x, pads, spatial)
    shape, axes = [], []
    for ax, n in enumerate(x.shape):
        if ax in spatial:
            shape += [n // k, k]
            axes.append(len(shape) - 1)
        else:
            shape.append(n)
    return jnp.max(x.reshape(shape), axis=tuple(axes))


def _window_max_pool(x: Array, k: int, stride: int, pads, spatial) -> Array:
    """Max over overlapping ``k x k`` windows (VGG's pool5: 3x3, stride 1), separably: per
    spatial axis, the element-wise max of the ``k`` strided slices that start at offsets
    ``0 .. k-1``. The same values as ``lax.reduce_window``; on exact ties the gradient is
    shared (``jnp.maximum``'s rule) where ``reduce_window`` gives it to one element. Slices
    and maxima, unlike a windowed reduction over a rank-4 window, convert to ONNX."""
    x = _pad_neg_inf(x, pads, spatial)
    for ax in spatial:
        n_out = (x.shape[ax] - k) // stride + 1
        span = stride * (n_out - 1) + 1
        views = [jax.lax.slice_in_dim(x, i, i + span, stride=stride, axis=ax) for i in range(k)]
        x = functools.reduce(jnp.maximum, views)
    return x


def pool_layer(name: str, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> Layer:
    return Layer(name, kernel, stride, padding, 1, ceil_mode)


class L2Norm(nnx.Module):
    """Per-position L2 normalisation over channels with a learnable per-channel scale.

    ``y = scale * x / max(||x||_2, eps)`` (torchvision's ``scale_weight * F.normalize(x)``;
    ParseNet / SSD conv4_3_norm). The norm is computed in float32 whatever the
    compute dtype. ``scale`` is a ``[C]`` float32 parameter initialised to ``init``.
    """

    def __init__(self, channels: int, init: float = 20.0, eps: float = 1e-12, *, layout: str = "NHWC", compute_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.full((channels,), init, jnp.float32))
        self.eps = eps
        self.layout = check_layout(layout)
        self.compute_dtype = compute_dtype

    def __call__(self, x: Array) -> Array:
        axis = channel_axis(self.layout)
        x32 = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(x32 * x32, axis=axis, keepdims=True))
        shape = (1, 1, 1, -1) if self.layout == "NHWC" else (1, -1, 1, 1)
        y = x32 / jnp.maximum(norm, self.eps) * self.scale[...].reshape(shape)
        return y.astype(self.compute_dtype)


#: Activations of :class:`ConvBNAct` by name (``True`` means ``"relu6"``, ``False`` none).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu6": jax.nn.relu6,
    "relu": jax.nn.relu,
    "hardswish": jax.nn.hard_swish,  # x * relu6(x + 3) / 6, torch's Hardswish
}


def batch_norm(bn: nnx.BatchNorm, x: Array, train: bool) -> Array:
    """``bn(x, use_running_average=not train)``: flax's ``nnx.BatchNorm.__call__`` step for
    step (its own statistics and normalisation functions, so the values are the same bits),
    with two differences in how it is called.

    * The running averages are replaced whole (``variable.set_value(new)``). flax's
      ``variable[...] = new`` asks the new value for its ``sharding``; on a tracer jax
      answers with an ``AttributeError`` whose message walks the whole jaxpr traced so far,
      so tracing a network's train step took time quadratic in its depth (SSDLite-MobileNetV3:
      10 of 29 s of tracing).
    * It is a function, not the method: tools that trace the model with their own stand-in
      for ``nnx.BatchNorm.__call__`` see these primitives instead (jax2onnx's stand-in left
      channels-last outputs transposed, which broke the ONNX export).

    Args:
      bn: the module (its ``axis``, ``momentum``, ``epsilon``, ``dtype`` and variables).
      x: the input, channels on ``bn.axis``.
      train: normalise with the batch's statistics and update the running averages
        (``True``), or with the running averages (``False``).
    """
    feature_axes = _bn_lib._canonicalize_axes(x.ndim, bn.axis)
    reduction_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
    scale = bn.scale[...] if bn.scale is not None else None
    bias = bn.bias[...] if bn.bias is not None else None
    x, mean, var, scale, bias = bn.promote_dtype((x, bn.mean[...], bn.var[...], scale, bias), dtype=bn.dtype)
    if train:
        mean, var = _bn_lib._compute_stats(
            x, reduction_axes, dtype=bn.dtype, axis_name=bn.axis_name,
            axis_index_groups=bn.axis_index_groups, use_fast_variance=bn.use_fast_variance)
        bn.mean.set_value(jax.lax.stop_gradient(bn.momentum * bn.mean[...] + (1 - bn.momentum) * mean))
        bn.var.set_value(jax.lax.stop_gradient(bn.momentum * bn.var[...] + (1 - bn.momentum) * var))
    return _bn_lib._normalize(x, mean, var, scale, bias, reduction_axes, feature_axes, bn.dtype, bn.epsilon)


class ConvBNAct(nnx.Module):
    """Convolution (no bias) + batch norm + optional activation, as torchvision's
    ``Conv2dNormActivation`` in MobileNetV2/V3 and SSDLite.

    ``activation``: ``True`` (ReLU6, MobileNetV2's), ``False`` (none) or a name of
    :data:`ACTIVATIONS`. Batch norm uses the batch statistics and updates its running
    averages when called with ``train=True``, and the running averages otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        groups: int = 1,
        activation: bool | str = True,
        kernel_init: Initializer = kaiming_normal_fan_out,
        bn_momentum: float = 0.97,
        bn_epsilon: float = 1e-3,
        layout: str = "NHWC",
        compute_dtype=jnp.float32,
        conv: ConvChoices,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2,
            groups=groups, use_bias=False, kernel_init=kernel_init, layout=layout,
            compute_dtype=compute_dtype, conv=conv, rngs=rngs,
        )
        self.bn = nnx.BatchNorm(
            out_channels, axis=channel_axis(layout), momentum=bn_momentum, epsilon=bn_epsilon,
            dtype=compute_dtype, param_dtype=jnp.float32, rngs=rngs,
        )
        if activation is True:
            activation = "relu6"
        if activation not in (False, None) and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}, True or False")
        self.activation = activation or None

    def __call__(self, x: Array, train: bool) -> Array:
        y = batch_norm(self.bn, self.conv(x), train)
        return ACTIVATIONS[self.activation](y) if self.activation else y

    def layer(self, name: str) -> Layer:
        return self.conv.layer(name)
