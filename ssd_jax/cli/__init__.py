"""Command dispatch for ``launch.py``: one module per command, each exposing ``main(argv)``.

Commands are imported lazily, so ``inspect`` never pays for the training stack's imports.
"""

from __future__ import annotations

import importlib
import sys

#: command name -> (module under ssd_jax.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("inspect_cmd", "print the prior layout (and receptive fields) of a preset or config"),
    "convert": ("convert_cmd", "convert torchvision weights (.pth) into an ssd_jax checkpoint"),
    "train": ("train_cmd", "train (or resume) an experiment: experiments/<name>.py, --config.x=v overrides"),
    "eval": ("eval_cmd", "evaluate a run's checkpoint on its eval split: table, JSON, PR curves"),
    "sweep": ("sweep_cmd", "run, list or summarise a hyperparameter sweep (experiments/<sweep>.py)"),
    "predict": ("predict_cmd", "detect objects in image files with a run's checkpoint or an exported file: PNGs + JSON"),
    "export": ("export_cmd", "export a run's checkpoint as one servable program: ONNX or StableHLO"),
    "validate": ("validate_cmd", "check an experiment's data: read every annotation, decode every image, report"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: python launch.py <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "python launch.py <command> --help  shows a command's options"]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"ssd_jax.cli.{COMMANDS[command][0]}")
    return int(module.main(rest) or 0)


def add_checkpoint_arguments(parser) -> None:
    """``--workdir`` and one of ``--step N`` / ``--best``: the checkpoint a command reads."""
    parser.add_argument("--workdir", required=True, help="a training run's workdir")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    which.add_argument("--best", action="store_true", help="the kept checkpoint with the best recorded mAP")


def checkpoint_step(args) -> tuple[int | None, str | None]:
    """``(step, note)`` of :func:`add_checkpoint_arguments`: with ``--best`` the kept
    checkpoint with the best complete evaluation of the run's metric and a line saying so."""
    if not args.best:
        return args.step, None
    from ssd_jax import restore

    settings = restore.load_run_settings(args.workdir)
    step, score = restore.best_step(args.workdir, settings.eval.best_key, settings.eval.metric)
    return step, f"best kept checkpoint: step {step} (recorded {settings.eval.best_key} {score:.4f})"
