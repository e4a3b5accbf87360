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


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """``jax.distributed.initialize()`` if the environment names a coordinator (or asks for
    cluster detection); True if called. ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are
    read by JAX itself."""
    if not wants_distributed(environ):
        return False
    import jax

    jax.distributed.initialize()
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
