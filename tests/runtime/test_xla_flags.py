"""ssd_jax.xla_flags: the XLA flags launch.py and the benchmarks add before JAX starts."""

import os
import subprocess
import sys

import pytest

from ssd_jax import xla_flags

YNN = "--xla_cpu_experimental_ynn_fusion_type="
TRAIN = YNN + "-individual_convolution"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_defaults_are_appended_and_a_users_own_value_is_kept():
    train = xla_flags.PROFILES["train"]
    assert xla_flags.with_defaults("", train) == TRAIN
    assert xla_flags.with_defaults("--xla_force_host_platform_device_count=8", train) == \
        f"--xla_force_host_platform_device_count=8 {TRAIN}"
    mine = YNN + "-individual_dot"
    assert xla_flags.with_defaults(mine, train) == mine  # the user's setting wins
    assert xla_flags.with_defaults(f"{YNN} --a=1", train) == f"{YNN} --a=1"  # nothing doubled


def test_apply_per_profile_unless_opted_out():
    env = {"XLA_FLAGS": "--a=1"}
    assert xla_flags.apply("train", env) == f"--a=1 {TRAIN}" and env["XLA_FLAGS"] == f"--a=1 {TRAIN}"
    assert xla_flags.apply("train", env) == env["XLA_FLAGS"] == f"--a=1 {TRAIN}"  # idempotent
    empty = {}
    xla_flags.apply("inference", empty)
    assert empty == {"XLA_FLAGS": YNN}  # no YNNPACK fusions at all
    off = {"SSD_JAX_XLA_DEFAULTS": "0", "XLA_FLAGS": "--a=1"}
    assert xla_flags.apply("train", off) == "--a=1" and off["XLA_FLAGS"] == "--a=1"
    with pytest.raises(ValueError, match="profile"):
        xla_flags.apply("fast", {})
    assert [xla_flags.profile_for_command(c) for c in ("train", "sweep", "eval", "predict", None)] == \
        ["train", "train", "inference", "inference", "train"]


def test_importing_the_package_changes_no_flags():
    code = "import os, ssd_jax, ssd_jax.models, ssd_jax.train_step; print(repr(os.environ.get('XLA_FLAGS')))"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "None"


@pytest.mark.parametrize("flags", [YNN, TRAIN])
def test_the_flags_are_accepted_and_keep_results(flags):
    # XLA rejects unknown flag values at backend start: both profiles must start, and a conv
    # + reduction computes the same numbers as with XLA's defaults
    code = ("import jax, jax.numpy as jnp, numpy as np\n"
            "x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 8)), jnp.float32)\n"
            "w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 8, 16)), jnp.float32)\n"
            "f = jax.jit(lambda x, w: jnp.sum(jax.nn.relu(jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
            "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))) ** 2, axis=(1, 2)))\n"
            "print(repr(np.asarray(f(x, w)).tolist()))\n")
    outs = []
    for value in (flags, ""):
        env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "XLA_FLAGS": value, "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        outs.append(eval(out.stdout.strip()))
    import numpy as np

    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5)


@pytest.mark.parametrize("flags, takes", [
    ("", True),  # XLA's default fusion kinds include single convolutions
    ("--xla_force_host_platform_device_count=8", True),
    ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution", False),  # the train profile
    ("--xla_cpu_experimental_ynn_fusion_type=", False),  # the inference profile: no YNNPACK
    ("--xla_cpu_experimental_ynn_fusion_type=-dot", True),  # an edit of the defaults
    ("--xla_cpu_experimental_ynn_fusion_type=-dot,-individual_convolution", False),
    ("--xla_cpu_experimental_ynn_fusion_type=individual_convolution,dot", True),
    ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise", False),  # a list without it
    ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_ynn_fusion_type=-dot", True),  # last wins
])
def test_ynn_takes_convolutions(flags, takes):
    assert xla_flags.ynn_takes_convolutions(flags) is takes
