"""Process setup for the entry points (``launch.py``, the benchmarks), in one place.

:func:`setup_process` is the first thing an entry point calls, before anything touches
JAX. In this order it:

1. restarts the process once with the glibc ``malloc`` settings of
   :mod:`ssd_jax.host_malloc` (``SSD_JAX_MALLOC_DEFAULTS=0`` opts out);
2. puts the XLA CPU flags of the command's kind of work into ``XLA_FLAGS``
   (:mod:`ssd_jax.xla_flags`: ``train`` or ``inference``; ``SSD_JAX_XLA_DEFAULTS=0`` opts out);
3. starts ``jax.distributed`` when the environment names a coordinator
   (``JAX_COORDINATOR_ADDRESS``, or ``SSD_JAX_DISTRIBUTED=1`` for JAX's cluster detection);
4. resolves the cache folder (:func:`cache_dir`: the built-in dataset, compiled CPU kernels),

and logs one line saying what it set. The library never changes the process environment:
models, data and training receive their choices as arguments.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

logger = logging.getLogger(__name__)

#: Environment variable naming the cache folder.
CACHE_ENV = "SSD_JAX_CACHE"
#: ``1``: call ``jax.distributed.initialize()`` and let JAX detect the cluster.
DISTRIBUTED_ENV = "SSD_JAX_DISTRIBUTED"


def cache_dir(environ: Mapping[str, str] | None = None) -> str:
    """``$SSD_JAX_CACHE`` if set, else ``~/.cache/ssd_jax``."""
    environ = os.environ if environ is None else environ
    return environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ssd_jax")


def wants_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for ``jax.distributed.initialize()``."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("JAX_COORDINATOR_ADDRESS")) or environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")


def distributed_arguments(environ: Mapping[str, str] | None = None) -> dict[str, int | str]:
    """The arguments of ``jax.distributed.initialize`` that the environment sets:
    ``coordinator_address`` (``JAX_COORDINATOR_ADDRESS``), ``num_processes``
    (``JAX_NUM_PROCESSES``) and ``process_id`` (``JAX_PROCESS_ID``). JAX itself reads only
    the first; the ones left out are detected from the cluster (SLURM, TPU pods)."""
    environ = os.environ if environ is None else environ
    kwargs: dict[str, int | str] = {}
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
    for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = environ.get(name, "")
        if value:
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if "num_processes" in kwargs and kwargs["num_processes"] < 1:
        raise ValueError(f"JAX_NUM_PROCESSES must be >= 1, got {kwargs['num_processes']}")
    if "process_id" in kwargs and not 0 <= kwargs["process_id"] < kwargs.get("num_processes", kwargs["process_id"] + 1):
        raise ValueError(f"JAX_PROCESS_ID must be in [0, JAX_NUM_PROCESSES), got {kwargs['process_id']}")
    return kwargs


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """``jax.distributed.initialize(**distributed_arguments())`` if the environment names a
    coordinator (or asks for cluster detection); True if called."""
    if not wants_distributed(environ):
        return False
    import jax

    jax.distributed.initialize(**distributed_arguments(environ))
    return True


def setup_process(command: str | None, *, reexec: bool = True) -> dict[str, str]:
    """Prepare this process for ``command`` (``train``, ``eval``, ``bench`` ...; see
    :func:`ssd_jax.xla_flags.profile_for_command`) and return what was set.

    ``reexec=False`` skips the allocator restart (for a process that must keep its
    command line, e.g. one reading a program from standard input).
    """
    from ssd_jax import host_malloc, xla_flags

    if reexec:
        host_malloc.reexec_with_settings()
    profile = xla_flags.profile_for_command(command)
    flags = xla_flags.apply(profile)
    distributed = maybe_initialize_distributed()
    info = {
        "malloc": " ".join(f"{k}={v}" for k, v in host_malloc.current().items()) or "glibc defaults",
        "xla_profile": profile,
        "XLA_FLAGS": flags,
        "distributed": "jax.distributed" if distributed else "single process",
        "cache": cache_dir(),
    }
    print("ssd_jax process: " + " | ".join(f"{k} {v}" for k, v in info.items()), file=sys.stderr, flush=True)
    return info
