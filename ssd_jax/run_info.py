"""What a run's workdir records about itself: the resolved config, versions, devices, commit.

``write_run_info(workdir, config_json)`` writes ``config.json`` (the resolved config) and
``run_info.json`` (package versions, ``XLA_FLAGS``, python, the device list, process count, the git commit
of the code and whether the tree had uncommitted changes, the command line). On a resumed
run both are rewritten and the previous ``run_info.json`` is kept as ``run_info.<n>.json``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time

from ssd_jax import host_malloc

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml_collections", "clu")


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    out = {}
    for p in packages:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def git_commit(path: str | None = None) -> dict[str, str | bool | None]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``path``
    (default: this package's source)."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                                capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The host CPU as ``/proc/cpuinfo`` names it, with its family and model numbers (e.g.
    ``"AMD EPYC (family 26, model 2)"``: the same marketing name covers several
    micro-architectures whose timings differ by 1.5x and more); ``platform.processor()``
    where the file is missing."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine()
    ids = [f"{k.split()[-1]} {fields[k]}" for k in ("cpu family", "model") if fields.get(k)]
    return f"{name} ({', '.join(ids)})" if ids else name


def device_info() -> dict:
    import jax

    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "local_devices": [str(d) for d in jax.local_devices()],
    }


def write_run_info(workdir: str, config_json: str, extra: dict | None = None) -> dict:
    """Write ``config.json`` and ``run_info.json`` (with ``extra`` entries) into ``workdir``;
    returns the info. A restart keeps the previous start's files as ``config.<n>.json`` and
    ``run_info.<n>.json`` (n = 1, 2, ... in start order)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "run_info.json")
    n = 1
    while os.path.exists(os.path.join(workdir, f"run_info.{n}.json")) or os.path.exists(os.path.join(workdir, f"config.{n}.json")):
        n += 1
    for name in ("config", "run_info"):
        if os.path.exists(os.path.join(workdir, f"{name}.json")):
            os.rename(os.path.join(workdir, f"{name}.json"), os.path.join(workdir, f"{name}.{n}.json"))
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_json)
    info = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv,
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "packages": package_versions(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "malloc_env": host_malloc.current(),
        "git": git_commit(),
        **device_info(),
        **(extra or {}),
    }
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
    return info
