"""Custom CPU kernels (XLA FFI) for the work XLA:CPU does slowly: depthwise-convolution
gradients.

:mod:`ssd_jax.kernels.build` compiles ``cpu_kernels.cc`` on first use (a C++17 compiler and
jaxlib's FFI headers; cached under ``$SSD_JAX_CACHE/kernels``), :mod:`ssd_jax.kernels.cpu`
registers the handlers and wraps them as JAX functions. Everything has a pure-JAX path:
the mode ``off`` selects it, and ``auto`` (the default of
:func:`ssd_jax.models.layers.resolve_conv_choices`) falls back to it with one warning
where the library cannot be built.
"""
