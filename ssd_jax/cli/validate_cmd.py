"""``launch.py validate``: check an experiment's data before training on it.

    python launch.py validate [--config=experiments/<name>.py[:arg]] [--config.<key>=<value> ...]

Reads the train and eval sources the config names with the readers training uses, decodes
every image, and prints a report per split: images, objects, objects per class, difficult
or crowd objects, images without objects, boxes clipped or dropped, and every problem with
its file. Exits 0 when the data can be trained on, 1 when a problem was found, 2 on a bad
command line or config.
"""

from __future__ import annotations

import argparse
import sys

from ssd_jax import config as config_lib
from ssd_jax.cli import train_cmd


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        argparse.ArgumentParser(prog="launch.py validate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter).print_help()
        return 0
    try:
        config, _, _ = train_cmd.parse_args(argv)
        settings = config_lib.Settings.from_config(config)
        settings.check_paths()
    except (KeyError, ValueError, FileNotFoundError, AttributeError, TypeError) as e:
        print(f"launch.py validate: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from ssd_jax.data import validate

    bars: dict[str, tqdm] = {}

    def progress(split: str, done: int, total: int) -> None:
        bar = bars.get(split) or bars.setdefault(split, tqdm(total=total, desc=f"decode {split}", unit="img",
                                                             dynamic_ncols=True, file=sys.stderr))
        bar.update(done - bar.n)

    reports = validate.validate_data(settings.data, progress=progress)
    for bar in bars.values():
        bar.close()
    print(f"{config.name}: data.dataset={settings.data.dataset}")
    for report in reports:
        print(report.format())
    problems = sum(len(r.problems) for r in reports)
    if problems:
        print(f"{problems} problem(s): fix them (or remove the files from the split) before training")
        return 1
    print("ok: the data can be trained on")
    return 0
