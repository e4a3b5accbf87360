"""Compile ``cpu_kernels.cc`` into a shared library, once per source, jaxlib, compiler and CPU.

The library goes to ``<cache>/kernels/libssd_jax_cpu_<key>.so`` (``<cache>`` is
``$SSD_JAX_CACHE`` or ``~/.cache/ssd_jax``, as the built-in dataset's). The key hashes
everything the binary depends on: the source, the jaxlib version (its FFI headers), the
compiler's version and flags, and the CPU's feature flags (the build uses
``-march=native``), so a cache shared between machines never hands one a binary built for
another. Compiling takes ~2 s; it writes a temporary file and renames it into place, so
processes building at once (several hosts, a test run) never see half a library.
Nothing is downloaded: the headers ship inside jaxlib.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernels.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
#: ``$CXX`` if set, else the first of these on ``PATH``.
COMPILERS = ("c++", "g++", "clang++")


class BuildError(RuntimeError):
    """The kernels could not be compiled here (no compiler, or it failed)."""


def compiler() -> str:
    """The C++ compiler to use: ``$CXX`` or the first of :data:`COMPILERS` on ``PATH``."""
    name = os.environ.get("CXX")
    found = shutil.which(name) if name else next(filter(None, map(shutil.which, COMPILERS)), None)
    if not found:
        raise BuildError(f"no C++ compiler found (tried {'$CXX=' + name if name else ', '.join(COMPILERS)})")
    return found


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    from ssd_jax import runtime

    return Path(runtime.cache_dir()) / "kernels"


def library_path(cxx: str | None = None) -> Path:
    """Where the library for this source, jaxlib, compiler and CPU lives (built or not)."""
    import jaxlib

    cxx = cxx or compiler()
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{cxx} --version failed: {e}") from e
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), version.encode(),
                 " ".join(FLAGS).encode(), platform.machine().encode(), _cpu_flags().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"libssd_jax_cpu_{key.hexdigest()[:16]}.so"


def build() -> Path:
    """The path of the compiled library, compiling it first if the cache lacks it.

    Raises :class:`BuildError` with the compiler's message if it cannot be built.
    """
    import jax.ffi

    cxx = compiler()
    target = library_path(cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise BuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"compiling {SOURCE.name} failed: {e}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
