#!/usr/bin/env python
"""ssd_jax command line: ``python launch.py <command> [options]``.

A thin dispatcher: each command lives in ``ssd_jax/cli/<command>.py`` as ``main(argv)``.
Run ``python launch.py --help`` for the list and ``python launch.py <command> --help``
for a command's options.
"""

import sys

from ssd_jax import runtime
from ssd_jax.cli import main

if __name__ == "__main__":
    # Allocator restart, XLA flags for the command's kind of work, multi-host start, cache
    # folder: before anything touches JAX (ssd_jax/runtime.py).
    runtime.setup_process(sys.argv[1] if len(sys.argv) > 1 else None)
    sys.exit(main(sys.argv[1:]))
