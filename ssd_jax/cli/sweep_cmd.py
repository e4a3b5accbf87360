"""``launch.py sweep``: run a sweep's points here (all, or ``--index I`` for a job array),
list them, or summarise a sweep folder.

    python launch.py sweep --config experiments/<sweep>.py --workdir DIR [--list] [--index I]
        [--config.<key>=<value> ...]     # overrides applied to the base of every point
    python launch.py sweep --summarize DIR [--target mAP]

Finished points are skipped, an interrupted one resumes from its checkpoint, a failing
one is recorded as failed and the others still run. The summary prints a table sorted by
the best evaluation ``--target`` and writes ``DIR/summary.csv`` and ``DIR/summary.png``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ssd_jax import config as config_lib
from ssd_jax import sweep


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py sweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config", help="a sweep file: experiments/<sweep>.py[:arg] with get_sweep()")
    parser.add_argument("--workdir", help="the sweep folder (one subfolder per point)")
    parser.add_argument("--list", action="store_true", help="print the points with their indices and exit")
    parser.add_argument("--index", type=int, default=None, help="run only point I (0-based)")
    parser.add_argument("--summarize", metavar="DIR", help="summarise the sweep in DIR and exit")
    parser.add_argument("--target", default="mAP", help="evaluation metric that ranks points (default mAP)")
    args, rest = parser.parse_known_args(argv)

    if args.summarize:
        if not os.path.isdir(args.summarize):
            parser.error(f"--summarize: {args.summarize!r} is not a folder")
        rows = sweep.summarize(args.summarize, args.target)
        if not rows:
            print(f"no sweep points in {args.summarize}", file=sys.stderr)
            return 1
        print(sweep.format_table(rows))
        swept = [k for k in rows[0] if "." in k]
        csv_path = sweep.write_csv(rows, os.path.join(args.summarize, "summary.csv"))
        png_path = sweep.plot(rows, swept, os.path.join(args.summarize, "summary.png"), args.target)
        print(f"wrote {csv_path} and {png_path}")
        return 0
    if not args.config:
        parser.error("--config is required (or --summarize DIR)")
    try:
        base, points = sweep.load_sweep(args.config)
        overrides = []
        for arg in rest:
            if not arg.startswith("--config."):
                parser.error(f"unrecognized argument {arg!r}")
            overrides.append(config_lib.parse_override(arg))
        base = config_lib.apply_overrides(base, overrides)
    except (KeyError, ValueError, FileNotFoundError, AttributeError, TypeError) as e:
        print(f"launch.py sweep: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    if args.list:
        for i, p in enumerate(points):
            print(f"{i:3d}  {sweep.point_name(p):40s}  {p}")
        return 0
    if not args.workdir:
        parser.error("--workdir is required to run a sweep")
    if args.index is not None and not 0 <= args.index < len(points):
        parser.error(f"--index {args.index} outside 0..{len(points) - 1} ({len(points)} points)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    chosen = list(enumerate(points)) if args.index is None else [(args.index, points[args.index])]
    statuses = []
    for i, p in chosen:
        print(f"[{i + 1}/{len(points)}] {sweep.point_name(p)}", flush=True)
        statuses.append(sweep.run_point(base, p, os.path.abspath(args.workdir)))
    failed = [s for s in statuses if s["status"] == "failed"]
    print(f"sweep: {len(statuses) - len(failed)} of {len(statuses)} point(s) finished or skipped, {len(failed)} failed")
    return 1 if failed else 0
