"""``launch.py inspect``: the table of source feature maps and priors of a prior preset."""

from __future__ import annotations

import argparse

from ssd_jax import anchors


def format_table(spec: anchors.PriorSpec) -> str:
    """A fixed-width table: one row per source map, then the total prior count."""
    header = ["map", "size", "step", "min", "sqrt(min*max)", "max", "ratios", "boxes/cell", "priors", "cumulative"]
    rows = []
    for r in anchors.describe(spec):
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        rows.append([
            str(r["map"]), f"{r['feature_size']}x{r['feature_size']}", f"{r['step']:g}",
            fmt(r["min_size"]), fmt(None if r["mid_size"] is None else round(r["mid_size"], 2)),
            fmt(r["max_size"]), ",".join(f"{a:g}" for a in r["aspect_ratios"]) or "-",
            str(r["boxes_per_cell"]), str(r["priors"]), str(r["cumulative"]),
        ])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    title = f"priors {spec.name or '(custom)'}: input {spec.image_size}x{spec.image_size}, sizes in pixels, clip={spec.clip}"
    out = [title, line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    out.append(f"total priors: {spec.num_priors}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py inspect", description=__doc__)
    parser.add_argument(
        "--priors", default="SSD300_VOC",
        help=f"prior preset, one of {sorted(anchors.PRESETS)} or 'all' (default SSD300_VOC)",
    )
    args = parser.parse_args(argv)
    try:
        specs = list(anchors.PRESETS.values()) if args.priors == "all" else [anchors.get_preset(args.priors)]
    except ValueError as e:
        parser.error(str(e))
    print("\n\n".join(format_table(s) for s in specs))
    return 0
