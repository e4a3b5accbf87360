"""glibc ``malloc`` settings that ``launch.py`` and the benchmarks give their own process.

Why: XLA:CPU allocates each execution's temporary buffer (hundreds of MB to GB for a train
step) from a worker thread and frees it at the end. glibc serves such large requests from
a thread arena with a fresh ``mmap`` and returns them with ``munmap``, so every step
touches its whole working set in new pages (gigabytes of minor page faults per light-network
train step, a large part of the step; measured: benchmarks/README.md). With one arena, no ``mmap`` for large blocks
and no trimming, freed blocks stay in the heap and the next step reuses them.

The settings (:data:`SETTINGS`, the environment variables of ``mallopt(3)``):

* ``MALLOC_ARENA_MAX=1``: every thread allocates from the main (``brk``) heap; a thread
  arena cannot hold a block above 64 MB and falls back to ``mmap`` whatever the other
  settings say;
* ``MALLOC_MMAP_MAX_=0``: no ``mmap`` for large blocks;
* ``MALLOC_TRIM_THRESHOLD_=2**40``: never give the heap's top back to the system.

The cost: the process keeps its peak heap for its lifetime (its resident size no longer
drops between steps), which a training or evaluation process reaches in its first step
anyway.

glibc reads these variables once, when the process starts, and ``mallopt`` called later
from Python does not reach arenas and thresholds already in use (measured: a third of the
faults stayed). So :func:`reexec_with_settings` restarts the interpreter on the same
command line with the variables set (``os.execve``: same process id, so signals such as a
scheduler's SIGTERM still reach it), once, before anything else is imported. A value the
user already set is kept; ``SSD_JAX_MALLOC_DEFAULTS=0`` turns the settings off (for A/B
measurements). Linux with glibc only; elsewhere nothing happens. The library itself never
does this: only the entry points call it (through :func:`ssd_jax.runtime.setup_process`).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, MutableMapping

from ssd_jax import xla_flags

#: The variables and values added to the environment, unless already set there.
SETTINGS: dict[str, str] = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
}

#: ``0`` / ``false``: leave the allocator as it is.
OPT_OUT_ENV = "SSD_JAX_MALLOC_DEFAULTS"

#: Set in the restarted process (to the names it added), so that it does not restart again.
_DONE_ENV = "SSD_JAX_MALLOC_REEXEC"


def is_glibc_linux() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def missing(environ: Mapping[str, str] | None = None, glibc: bool | None = None) -> dict[str, str]:
    """The settings ``environ`` (default ``os.environ``) still lacks; empty when opted out,
    not on glibc, or all set (by us or by the user, whose values win)."""
    environ = os.environ if environ is None else environ
    glibc = is_glibc_linux() if glibc is None else glibc
    if not glibc or xla_flags.opted_out(OPT_OUT_ENV, environ):
        return {}
    return {k: v for k, v in SETTINGS.items() if k not in environ}


def reexec_with_settings(environ: MutableMapping[str, str] | None = None, *, _execve=os.execve) -> None:
    """Restart this Python process with :data:`SETTINGS` in its environment, if they are
    missing; returns only when nothing is to be done (or a restart already happened).

    Call first thing in a script's ``if __name__ == "__main__":`` block, before JAX or
    any thread starts. The command line is the one Python was started with
    (``sys.orig_argv``: interpreter options, ``-m`` and all).
    """
    environ = os.environ if environ is None else environ
    if environ.get(_DONE_ENV):
        return
    add = missing(environ)
    if not add:
        return
    env = {**environ, **add, _DONE_ENV: ",".join(add)}
    sys.stdout.flush()
    sys.stderr.flush()
    _execve(sys.executable, list(sys.orig_argv), env)


def current(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The malloc variables of :data:`SETTINGS` as this process has them (for run records)."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in SETTINGS if k in environ}


def without_added(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` without the variables :func:`reexec_with_settings` added (the
    user's own stay): for a reference program (torch) that should run as its users run it."""
    environ = os.environ if environ is None else environ
    added = set(filter(None, environ.get(_DONE_ENV, "").split(",")))
    return {k: v for k, v in environ.items() if k not in added and k != _DONE_ENV}
