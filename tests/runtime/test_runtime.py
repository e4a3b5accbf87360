"""ssd_jax.runtime: the entry points' process setup in one place."""

import os
import subprocess
import sys

from ssd_jax import runtime, xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cache_dir_and_distributed_switch():
    assert runtime.cache_dir({"SSD_JAX_CACHE": "/data/c"}) == "/data/c"
    assert runtime.cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache", "ssd_jax")
    assert not runtime.wants_distributed({})
    assert runtime.wants_distributed({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert runtime.wants_distributed({"SSD_JAX_DISTRIBUTED": "1"}) and runtime.wants_distributed({"SSD_JAX_DISTRIBUTED": "true"})
    assert not runtime.wants_distributed({"SSD_JAX_DISTRIBUTED": "0"})
    assert not runtime.maybe_initialize_distributed({})


def test_distributed_arguments_from_the_environment():
    """JAX reads only the coordinator's address; the process count and index are passed."""
    import pytest

    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert runtime.distributed_arguments(env) == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                                  "process_id": 3}
    assert runtime.distributed_arguments({"SSD_JAX_DISTRIBUTED": "1"}) == {}  # all detected from the cluster
    for bad, message in (({"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES must be an integer, got 'two'"),
                         ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES must be >= 1"),
                         ({"JAX_PROCESS_ID": "4"}, r"JAX_PROCESS_ID must be in \[0, JAX_NUM_PROCESSES\), got 4")):
        with pytest.raises(ValueError, match=message):
            runtime.distributed_arguments({**env, **bad})


_PROBE = """
import os, sys
from ssd_jax import runtime
info = runtime.setup_process(sys.argv[1])
print("FLAGS", os.environ.get("XLA_FLAGS", ""))
print("MALLOC", os.environ.get("MALLOC_ARENA_MAX", "-"))
print("INFO", info["xla_profile"], info["distributed"], info["cache"])
"""


def _probe(command, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", "SSD_JAX_MALLOC_REEXEC", "SSD_JAX_MALLOC_DEFAULTS", "MALLOC_ARENA_MAX",
                         "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")}
    script = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ssd_jax_runtime_probe_{os.getpid()}.py")
    with open(script, "w") as f:  # a file: the allocator restart re-runs the same command line
        f.write(_PROBE)
    try:
        proc = subprocess.run([sys.executable, script, command], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**base, "PYTHONPATH": ROOT, **env})
    finally:
        os.unlink(script)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return out, proc.stderr


def test_setup_process_sets_flags_allocator_and_logs_one_line(tmp_path):
    out, err = _probe("train", SSD_JAX_CACHE=str(tmp_path))
    assert out["FLAGS"].split() == list(xla_flags.PROFILES["train"])
    assert out["MALLOC"] == "1" or not runtime_glibc()
    assert out["INFO"] == f"train single process {tmp_path}"
    lines = [line for line in err.splitlines() if line.startswith("ssd_jax process:")]
    assert len(lines) == 1 and "xla_profile train" in lines[0] and str(tmp_path) in lines[0]

    out, _ = _probe("eval", XLA_FLAGS="--xla_force_host_platform_device_count=2", SSD_JAX_MALLOC_DEFAULTS="0")
    assert out["FLAGS"].split() == ["--xla_force_host_platform_device_count=2", *xla_flags.PROFILES["inference"]]
    assert out["MALLOC"] == "-"  # opted out


def runtime_glibc() -> bool:
    from ssd_jax import host_malloc

    return host_malloc.is_glibc_linux()
