"""``launch.py train``: run or resume an experiment.

    python launch.py train [--config=experiments/<name>.py[:arg]] [--workdir=DIR] [--config.<key>=<value> ...]

With no ``--config`` the built-in dataset demo (``experiments/demo.py``) runs. ``--config``
takes a file (``experiments/<name>.py``, or any file defining ``get_config``) or a module
of the ``experiments`` package (``experiments.demo``), with ``:arg`` for ``get_config(arg)``. Overrides are
typed by the field they replace; an unknown key is an error. ``--config.runlocal=True``
rebuilds the config with ``get_config("runlocal")`` (a small smoke-test run) before the
other overrides apply. The default workdir is ``runs/<config.name>``; a workdir holding
checkpoints is resumed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ssd_jax import config as config_lib

DEFAULT_CONFIG = "experiments.demo"


def parse_args(argv: list[str]):
    """``(config ConfigDict, workdir, args)`` from the command line."""
    parser = argparse.ArgumentParser(prog="launch.py train", description=__doc__.split("\n\n")[0],
                                     epilog="overrides: --config.<key>=<value>, e.g. --config.optim.lr=0.002")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="experiment file[:arg] (default: the built-in demo)")
    parser.add_argument("--workdir", default=None, help="run folder (default runs/<config.name>)")
    parser.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="resume a workdir even when the model, data or loss settings differ from its config.json")
    overrides_text = [a for a in argv if a.startswith(config_lib.PREFIX)]
    rest = [a for a in argv if not a.startswith(config_lib.PREFIX)]
    args = parser.parse_args(rest)
    overrides = [config_lib.parse_override(a) for a in overrides_text]
    config_spec = args.config
    runlocal = [v for k, v in overrides if k == "runlocal"]
    if runlocal and config_lib.parse_value(runlocal[-1], False):
        path, _, arg = config_spec.partition(":")
        if arg and arg != "runlocal":
            raise ValueError(f"--config.runlocal=True conflicts with the config argument {arg!r}")
        config_spec = f"{path}:runlocal"
    config = config_lib.load_config(config_spec)
    config_lib.apply_overrides(config, [(k, v) for k, v in overrides if k != "runlocal"])
    workdir = args.workdir or os.path.join("runs", config.name)
    return config, workdir, args


def main(argv: list[str]) -> int:
    try:
        config, workdir, args = parse_args(argv)
    except (KeyError, ValueError, FileNotFoundError, AttributeError, TypeError) as e:
        print(f"launch.py train: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(config)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from ssd_jax import training_loop

    try:
        config_lib.Settings.from_config(config).check_paths()
    except ValueError as e:
        print(f"launch.py train: {e}", file=sys.stderr)
        return 2
    try:
        result = training_loop.train_and_evaluate(config, workdir, allow_config_change=args.allow_config_change)
    except config_lib.ConfigChangeError as e:
        print(f"launch.py train: {e}", file=sys.stderr)
        return 2
    except training_loop.NonFiniteLossError as e:
        print(f"launch.py train: {e}", file=sys.stderr)
        return 3
    if result["eval"]:
        # the scores first, then the bookkeeping (images, failed images); per-class APs in the log
        shown = {k: v for k, v in result["eval"].items() if not k.startswith("AP/") and k != "complete"}
        order = sorted(shown, key=lambda k: (k in ("num_images", "failed_images"), k))
        print("eval: " + " ".join(f"{k}={shown[k]:.4f}" for k in order))
    return 0
