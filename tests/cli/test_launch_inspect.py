"""launch.py: the dispatcher and the inspect command, run as a user runs them."""

import pytest


@pytest.fixture
def run(run_python):
    return lambda *args: run_python(["launch.py", *args], timeout=120)


def test_inspect_prints_the_ssd300_table(run):
    out = run("inspect", "--priors", "SSD300_VOC")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "total priors: 8732" in lines
    row = next(line.split() for line in lines if line.split()[:2] == ["1", "19x19"])
    # map, size, step, min, sqrt(min*max), max, ratios, boxes/cell, priors, cumulative
    assert row == ["1", "19x19", "16", "60", "81.61", "111", "2,3", "6", "2166", "7942"]


def test_inspect_all_presets(run):
    out = run("inspect", "--priors", "all")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("total priors: 24564") == 2
    assert out.stdout.count("total priors: 8732") == 2


@pytest.mark.parametrize("args, code, text", [
    (("inspect", "--priors", "nope"), 2, "unknown prior preset"),
    (("frobnicate",), 2, "unknown command"),
    ((), 0, "commands:"),
])
def test_errors_and_help(run, args, code, text):
    out = run(*args)
    assert out.returncode == code
    assert text in out.stdout + out.stderr
