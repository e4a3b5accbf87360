"""XLA flags that ``launch.py`` and the benchmarks set before JAX starts its backends.

The library itself changes no flags (importing ``ssd_jax`` leaves ``XLA_FLAGS`` alone):
:func:`apply` is called by the entry points, before anything touches a JAX device, with
the profile of the work the process does (:data:`PROFILES`):

* ``train`` (``launch.py train`` / ``sweep``, the training benchmarks):
  ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``: XLA:CPU stops
  handing single convolutions to YNNPACK (its dot, element-wise and reduction fusions
  stay): faster train steps for the light networks, the same for SSD300.
* ``inference`` (``launch.py eval`` / ``predict``, the inference benchmarks):
  ``--xla_cpu_experimental_ynn_fusion_type=`` (no YNNPACK fusions at all): faster SSD300
  inference, but slower SSDLite training (its reductions), hence two profiles.
  (Measured: benchmarks/README.md.)

CPU-only flags: GPU and TPU compilations ignore them. A flag the user already put in
``XLA_FLAGS`` (same name, any value) is kept as given; ``SSD_JAX_XLA_DEFAULTS=0`` turns the
defaults off (for A/B measurements).
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping, MutableMapping

#: Flags added to ``XLA_FLAGS`` per profile, unless the user set the same flag (or opted out).
PROFILES: dict[str, tuple[str, ...]] = {
    "train": ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",),
    "inference": ("--xla_cpu_experimental_ynn_fusion_type=",),
}

#: ``0`` / ``false``: leave ``XLA_FLAGS`` as it is.
OPT_OUT_ENV = "SSD_JAX_XLA_DEFAULTS"


def opted_out(variable: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default ``os.environ``) sets ``variable`` to ``0``/``false``/``no``:
    the opt-out rule of the entry points' defaults (these flags, ``ssd_jax.host_malloc``)."""
    environ = os.environ if environ is None else environ
    return environ.get(variable, "1").lower() in ("0", "false", "no")


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def with_defaults(xla_flags: str, defaults: tuple[str, ...]) -> str:
    """``xla_flags`` with each default appended whose name it does not already set."""
    present = {_name(f) for f in xla_flags.split()}
    extra = [f for f in defaults if _name(f) not in present]
    return " ".join([*xla_flags.split(), *extra])


def apply(profile: str = "train", environ: MutableMapping[str, str] | None = None) -> str:
    """Put ``profile``'s flags into ``environ["XLA_FLAGS"]`` (default ``os.environ``) and
    return the value. Call before the first JAX computation: XLA reads the flags when a
    backend starts, so a warning says when that has already happened."""
    if profile not in PROFILES:
        raise ValueError(f"unknown XLA flag profile {profile!r}; choose one of {sorted(PROFILES)}")
    environ = os.environ if environ is None else environ
    current = environ.get("XLA_FLAGS", "")
    if opted_out(OPT_OUT_ENV, environ):
        return current
    value = with_defaults(current, PROFILES[profile])
    if value != current:
        try:
            from jax._src import xla_bridge

            started = xla_bridge.backends_are_initialized()
        except Exception:  # noqa: BLE001 (a private API: if it moved, assume not started)
            started = False
        if started and environ is os.environ:
            warnings.warn("ssd_jax.xla_flags.apply() after JAX started its backends: "
                          f"{value!r} takes effect in new processes only", stacklevel=2)
        environ["XLA_FLAGS"] = value
    return value


def profile_for_command(command: str | None) -> str:
    """The profile of a ``launch.py`` command: ``inference`` for eval and predict."""
    return "inference" if command in ("eval", "predict") else "train"


YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"


def ynn_takes_convolutions(xla_flags: str | None = None) -> bool:
    """Whether XLA:CPU hands single convolutions to YNNPACK under these ``XLA_FLAGS``
    (default ``os.environ``'s): XLA's default fusion kinds include them, a
    ``-individual_convolution`` entry or an explicit list without it (``''``: none) does not.

    It decides the ``auto`` kernel-gradient choice of the models
    (:func:`ssd_jax.models.layers.resolve_conv_choices`): YNNPACK's convolution kernel
    gradients are slower than matmuls on the CPU, XLA's others are faster.
    """
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    value = None
    for flag in flags.split():  # the last occurrence wins, as in XLA's parser
        if _name(flag) == YNN_FUSION_FLAG:
            value = flag.split("=", 1)[1] if "=" in flag else ""
    if value is None:
        return True
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    if "-individual_convolution" in kinds:
        return False
    if any(k.lstrip("+") == "individual_convolution" for k in kinds):
        return True
    return bool(kinds) and all(k.startswith(("-", "+")) for k in kinds)  # edits of the defaults
