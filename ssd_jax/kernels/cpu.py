"""The CPU kernels as JAX functions, and whether to use them.

The mode is an argument (a model's :class:`ssd_jax.models.layers.ConvChoices` is resolved
from it when the model is built; nothing here reads the environment):

* ``auto``: on the CPU backend, build (or load) the library; if that fails, warn once and
  use the pure-JAX paths. Other backends never use them.
* ``on``: as ``auto``, but a failed build is an error (for benchmarks and tests).
* ``off``: never (the pure-JAX paths, for A/B measurements).

The kernels take and return float32; callers keep other dtypes on their pure-JAX path.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from ssd_jax.kernels import build

#: The modes of :func:`enabled`.
MODES = ("auto", "on", "off")

#: FFI target names -> symbols in the library.
TARGETS = {
    "ssd_jax_depthwise_kernel_grad": "SsdDepthwiseKernelGrad",
    "ssd_jax_depthwise_input_grad": "SsdDepthwiseInputGrad",
}


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ValueError."""
    if mode not in MODES:
        raise ValueError(f"cpu_kernels={mode!r}: expected one of {', '.join(map(repr, MODES))}")
    return mode


@functools.cache
def _load() -> str | None:
    """Build/load the library and register its targets once per process; None if all went
    well, else why not."""
    try:
        path = build.build()
        lib = ctypes.cdll.LoadLibrary(str(path))
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (build.BuildError, OSError, AttributeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def enabled(mode: str, backend: str | None = None) -> bool:
    """Whether code for ``backend`` (default JAX's default backend) should call the CPU
    kernels in ``mode`` (see the module docstring); builds or loads the library if so."""
    check_mode(mode)
    if mode == "off" or (backend or jax.default_backend()) != "cpu":
        return False
    failure = _load()
    if failure is None:
        return True
    if mode == "on":
        raise build.BuildError(f"cpu_kernels='on' but the CPU kernels are unavailable: {failure}")
    _warn_once(failure)
    return False


def require() -> None:
    """Build/load the library and register its targets if not done yet; a BuildError if
    that fails (for callers told to use the kernels)."""
    failure = _load()
    if failure is not None:
        raise build.BuildError(f"the CPU kernels are unavailable: {failure}")


@functools.cache
def _warn_once(failure: str) -> None:
    warnings.warn(
        f"ssd_jax CPU kernels unavailable, using the slower pure-JAX depthwise gradients "
        f"({failure.splitlines()[0]}); choose cpu_kernels='off' to silence this",
        RuntimeWarning, stacklevel=3,
    )


def _conv_out(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check(x_shape, dy_shape, k: int, stride: int, padding: int, dilation: int) -> None:
    b, h, w, c = x_shape
    want = (b, _conv_out(h, k, stride, padding, dilation), _conv_out(w, k, stride, padding, dilation), c)
    if tuple(dy_shape) != want:
        raise ValueError(f"dy has shape {tuple(dy_shape)}; a {k}x{k} depthwise convolution "
                         f"(stride {stride}, padding {padding}, dilation {dilation}) of "
                         f"{tuple(x_shape)} gives {want}")


def _kernel_grad_call(x, dy, k, stride, padding, dilation):
    call = jax.ffi.ffi_call("ssd_jax_depthwise_kernel_grad",
                            jax.ShapeDtypeStruct((k, k, x.shape[-1]), jnp.float32),
                            vmap_method="sequential")
    return call(x.astype(jnp.float32), dy.astype(jnp.float32), stride=np.int64(stride),
                padding=np.int64(padding), dilation=np.int64(dilation))


def _input_grad_call(dy, kernel, x_shape, stride, padding, dilation):
    call = jax.ffi.ffi_call("ssd_jax_depthwise_input_grad",
                            jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32),
                            vmap_method="sequential")
    return call(dy.astype(jnp.float32), kernel.astype(jnp.float32), stride=np.int64(stride),
                padding=np.int64(padding), dilation=np.int64(dilation))


# Sharded inputs (a data-parallel step on several CPU devices): XLA cannot split a custom
# call by itself and would all-gather the batch onto every device. These rules run each
# kernel on the local batch: the kernel gradient is then summed over the batch's mesh
# axes (one all-reduce), the input gradient stays split like the batch.

def _batch_axes(sharding):
    spec = getattr(sharding, "spec", None)
    return spec[0] if spec else None


@functools.partial(custom_partitioning, static_argnums=(2, 3, 4, 5))
def _kernel_grad(x, dy, k, stride, padding, dilation):
    return _kernel_grad_call(x, dy, k, stride, padding, dilation)


def _kernel_grad_partition(k, stride, padding, dilation, mesh, arg_shapes, result_shape):
    axes = _batch_axes(arg_shapes[0].sharding)

    def local(x, dy):
        dw = _kernel_grad_call(x, dy, k, stride, padding, dilation)
        return jax.lax.psum(dw, axes) if axes else dw

    batch = NamedSharding(mesh, P(axes))
    return mesh, local, NamedSharding(mesh, P()), (batch, batch)


_kernel_grad.def_partition(
    _kernel_grad_partition,
    infer_sharding_from_operands=lambda *a: NamedSharding(a[4], P()),
    sharding_rule="b h w c, b i j c -> k l c", reduction_factors=("b",),
    need_replication_factors=("h", "w", "c", "i", "j", "k", "l"),
)


@functools.partial(custom_partitioning, static_argnums=(2, 3, 4, 5))
def _input_grad(dy, kernel, x_shape, stride, padding, dilation):
    return _input_grad_call(dy, kernel, x_shape, stride, padding, dilation)


def _input_grad_partition(x_shape, stride, padding, dilation, mesh, arg_shapes, result_shape):
    axes = _batch_axes(arg_shapes[0].sharding)

    def local(dy, kernel):
        return _input_grad_call(dy, kernel, (dy.shape[0], *x_shape[1:]), stride, padding, dilation)

    batch = NamedSharding(mesh, P(axes))
    return mesh, local, batch, (batch, NamedSharding(mesh, P()))


_input_grad.def_partition(
    _input_grad_partition,
    infer_sharding_from_operands=lambda *a: NamedSharding(a[4], P(_batch_axes(a[5][0].sharding))),
    sharding_rule="b i j c, k l d -> b h w c",
    need_replication_factors=("i", "j", "c", "k", "l", "d", "h", "w"),
)


def depthwise_kernel_grad(x: jax.Array, dy: jax.Array, k: int, *, stride: int = 1,
                          padding: int = 0, dilation: int = 1) -> jax.Array:
    """``dw [k, k, C]`` of a depthwise convolution, NHWC, float32, one pass over the data.

    ``dw[i, j, c] = sum_{b,h,w} x[b, s*h + d*i - p, s*w + d*j - p, c] * dy[b, h, w, c]``
    (zero outside ``x``). ``x [B, H, W, C]``, ``dy [B, Ho, Wo, C]``: the convolution's input
    and output cotangent. Deterministic (fixed summation order whatever the threads).
    """
    _check(x.shape, dy.shape, k, stride, padding, dilation)
    return _kernel_grad(x, dy, k, stride, padding, dilation)


def depthwise_input_grad(dy: jax.Array, kernel: jax.Array, x_shape, *, stride: int = 1,
                         padding: int = 0, dilation: int = 1) -> jax.Array:
    """``dx [B, H, W, C]`` of a depthwise convolution with ``kernel [k, k, C]``, NHWC, float32.

    ``dx[b, y, x, c] = sum over taps (i, j) and outputs (h, w) with y = s*h + d*i - p,
    x = s*w + d*j - p of kernel[i, j, c] * dy[b, h, w, c]``.
    """
    if kernel.ndim != 3 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != x_shape[-1]:
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}; expected [k, k, {x_shape[-1]}]")
    _check(x_shape, dy.shape, kernel.shape[0], stride, padding, dilation)
    return _input_grad(dy, kernel, tuple(x_shape), stride, padding, dilation)
