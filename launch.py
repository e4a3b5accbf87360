#!/usr/bin/env python
"""ssd_jax command line: ``python launch.py <command> [options]``.

A thin dispatcher: each command lives in ``ssd_jax/cli/<command>.py`` as ``main(argv)``.
Run ``python launch.py --help`` for the list and ``python launch.py <command> --help``
for a command's options.
"""

import os
import sys

from ssd_jax import host_malloc, xla_flags
from ssd_jax.cli import main

if __name__ == "__main__":
    # glibc malloc settings (ssd_jax/host_malloc.py): restarts this process once with them set,
    # so each XLA:CPU step reuses its buffers instead of page-faulting fresh mmap'd memory
    host_malloc.reexec_with_settings()
    # CPU flags for the command's kind of work, before any JAX computation (ssd_jax/xla_flags.py)
    xla_flags.apply(xla_flags.profile_for_command(sys.argv[1] if len(sys.argv) > 1 else None))
    # Multi-host: only when the environment names a coordinator (JAX_COORDINATOR_ADDRESS, with
    # JAX_NUM_PROCESSES and JAX_PROCESS_ID; or SSD_JAX_DISTRIBUTED=1 for JAX's cluster
    # auto-detection, e.g. SLURM or TPU pods). Must run before anything else touches JAX.
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("SSD_JAX_DISTRIBUTED") in ("1", "true", "True"):
        from ssd_jax import parallel

        parallel.maybe_initialize_distributed()
    sys.exit(main(sys.argv[1:]))
