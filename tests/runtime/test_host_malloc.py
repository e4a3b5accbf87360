"""ssd_jax.host_malloc: the glibc malloc settings launch.py and the benchmarks restart with."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from ssd_jax import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
glibc_only = pytest.mark.skipif(  # CI (Linux, glibc) runs these; elsewhere host_malloc does nothing (tested above)
    not host_malloc.is_glibc_linux(), reason="the settings are glibc malloc variables: Linux with glibc only")


def test_missing_settings_keep_the_users_values_and_honour_the_opt_out():
    assert host_malloc.missing({}, glibc=True) == host_malloc.SETTINGS
    assert set(host_malloc.SETTINGS) == {"MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"}
    mine = {"MALLOC_ARENA_MAX": "4"}
    assert host_malloc.missing(mine, glibc=True) == {k: v for k, v in host_malloc.SETTINGS.items()
                                                     if k != "MALLOC_ARENA_MAX"}
    assert host_malloc.missing(dict(host_malloc.SETTINGS), glibc=True) == {}
    assert host_malloc.missing({"SSD_JAX_MALLOC_DEFAULTS": "0"}, glibc=True) == {}
    assert host_malloc.missing({"SSD_JAX_MALLOC_DEFAULTS": "false"}, glibc=True) == {}
    assert host_malloc.missing({}, glibc=False) == {}  # macOS, musl: nothing to do


def test_reexec_restarts_once_with_the_original_command_line():
    calls = []

    def fake_execve(path, argv, env):
        calls.append((path, argv, env))

    env = {"MALLOC_ARENA_MAX": "2", "PATH": "/bin"}
    host_malloc.reexec_with_settings(env, _execve=fake_execve)
    if not host_malloc.is_glibc_linux():
        assert calls == []
        return
    (path, argv, new_env), = calls
    assert path == sys.executable and argv == list(sys.orig_argv)
    assert new_env["MALLOC_ARENA_MAX"] == "2"  # the user's value stays
    assert new_env["MALLOC_MMAP_MAX_"] == "0" and new_env["MALLOC_TRIM_THRESHOLD_"] == str(2**40)
    assert env == {"MALLOC_ARENA_MAX": "2", "PATH": "/bin"}  # the caller's mapping is not changed
    # in the restarted process: no second restart; a reference program gets the user's environment back
    calls.clear()
    host_malloc.reexec_with_settings(new_env, _execve=fake_execve)
    assert calls == []
    assert host_malloc.without_added(new_env) == env
    assert host_malloc.current(new_env) == {k: new_env[k] for k in host_malloc.SETTINGS}
    # opted out or already complete: nothing happens
    host_malloc.reexec_with_settings({"SSD_JAX_MALLOC_DEFAULTS": "0"}, _execve=fake_execve)
    host_malloc.reexec_with_settings(dict(host_malloc.SETTINGS), _execve=fake_execve)
    assert calls == []


SCRIPT = textwrap.dedent("""
    import json, os, resource, sys
    sys.path.insert(0, {root!r})
    print("start", os.getpid(), sys.argv[1:], flush=True)
    from ssd_jax import host_malloc
    host_malloc.reexec_with_settings()
    import jax, jax.numpy as jnp
    # a computation whose temporary buffers (nine 6 MB window copies) XLA:CPU allocates per call
    x = jnp.ones((16, 22, 22, 192), jnp.float32)
    f = jax.jit(lambda x: jnp.stack([jnp.sum(x[:, i:i + 20, j:j + 20] * x[:, 1:21, 1:21], (0, 1, 2))
                                     for i in range(3) for j in range(3)]))
    faults = []  # per call; the heap settles within a few calls
    for _ in range(16):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(f(x))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    # the fewest over calls 9-16: with glibc's defaults every call maps its buffers afresh; with the
    # settings most calls fault nothing, but not all (heap growth; the dev box's kernel runs DAMON
    # with a pageout scheme, which reclaims idle pages), so the minimum is the robust statistic
    print(json.dumps({{"pid": os.getpid(), "faults_per_call": min(faults[8:]), "env": host_malloc.current()}}),
          flush=True)
""")


@glibc_only
def test_the_restarted_process_reuses_its_buffers(tmp_path):
    # the mechanism itself: same process id and arguments after the restart, the settings in
    # its environment, and far fewer page faults per call than with glibc's defaults
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT.format(root=ROOT))
    base = {k: v for k, v in os.environ.items() if k not in host_malloc.SETTINGS and not k.startswith("SSD_JAX_MALLOC")}
    base["JAX_PLATFORMS"] = "cpu"
    runs = {}
    for name, extra in (("tuned", {}), ("default", {"SSD_JAX_MALLOC_DEFAULTS": "0"})):
        out = subprocess.run([sys.executable, str(script), "--flag", "x y"], env={**base, **extra},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.strip().splitlines()
        runs[name] = (lines[:-1], json.loads(lines[-1]))
    starts, tuned = runs["tuned"]
    pid = tuned["pid"]
    assert starts == [f"start {pid} ['--flag', 'x y']"] * 2  # printed before and after the restart
    assert tuned["env"] == host_malloc.SETTINGS
    starts, default = runs["default"]
    assert len(starts) == 1 and default["env"] == {}
    # fewest over calls 9-16: ~10,800 fresh pages per call with glibc's defaults, 0 with the settings
    assert default["faults_per_call"] > 5000, default
    assert tuned["faults_per_call"] < 0.1 * default["faults_per_call"], (tuned, default)
