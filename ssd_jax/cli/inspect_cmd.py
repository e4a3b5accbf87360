"""``launch.py inspect``: the source feature maps and priors of a preset, model or config.

    python launch.py inspect --priors all                   # prior tables of the presets
    python launch.py inspect --model ssd300_vgg16           # + receptive fields per source map
    python launch.py inspect --model ssdlite_mobilenetv2 --image-size 256 --draw rf.png [--image photo.jpg]
    python launch.py inspect --config experiments/foo.py    # model/priors named by a config

With a model, each source map's row gives its size, jump (input pixels between
neighbouring cells), theoretical receptive field, prior sizes, boxes per cell and priors;
``--draw`` writes a PNG (needs matplotlib) with, per map, the priors of the centre cell
and that cell's receptive field, on a blank canvas or on ``--image`` resized to the input.
"""

from __future__ import annotations

import argparse
import math

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
    return _render(header, rows, f"priors {spec.name or '(custom)'}: input {spec.image_size}x{spec.image_size}, sizes in pixels, clip={spec.clip}", f"total priors: {spec.num_priors}")


def _render(header, rows, title, footer) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([title, line(header), line(["-" * w for w in widths])] + [line(r) for r in rows] + [footer])


def source_map_rows(model) -> list[dict]:
    """Per source map of an SSD model: name, size, jump, receptive field, priors."""
    from ssd_jax.receptive_field import receptive_fields

    spec = model.spec
    rows = []
    for k, (name, stack) in enumerate(zip(model.source_names, model.layer_stacks())):
        info = receptive_fields(stack, spec.image_size)[-1]
        rows.append(dict(
            map=k, name=name, field=info, feature_size=info.size, jump=info.jump,
            receptive_field=info.receptive_field, step=spec.steps[k],
            box_sizes=spec.cell_box_sizes(k), boxes_per_cell=spec.boxes_per_cell[k], priors=spec.priors_per_map[k],
        ))
    return rows


def format_model_table(model) -> str:
    spec = model.spec
    header = ["map", "source", "size", "jump", "RF", "step", "prior sizes (w x h)", "boxes/cell", "priors"]
    rows = []
    for r in source_map_rows(model):
        sizes = " ".join(f"{w:.0f}x{h:.0f}" for w, h in r["box_sizes"])
        rows.append([str(r["map"]), r["name"], f"{r['feature_size']}x{r['feature_size']}", f"{r['jump']:g}",
                     f"{r['receptive_field']:g}", f"{r['step']:g}", sizes, str(r["boxes_per_cell"]), str(r["priors"])])
    title = (f"{model.name}: input {spec.image_size}x{spec.image_size}, priors {spec.name or '(custom)'}, "
             f"{model.num_classes} classes + background; pixels; RF = theoretical receptive field")
    return _render(header, rows, title, f"total priors: {spec.num_priors} (= predictions)")


def draw(model, path: str, image_path: str | None = None) -> None:
    """PNG: per source map, the priors of the centre cell and its receptive field."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        raise SystemExit("--draw needs matplotlib: pip install 'matplotlib>=3.11.2,<3.12'") from None
    import numpy as np

    s = model.spec.image_size
    if image_path:
        img = plt.imread(image_path)
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        ys = (np.arange(s) * img.shape[0] / s).astype(int)
        xs = (np.arange(s) * img.shape[1] / s).astype(int)
        canvas = img[ys][:, xs, :3]
    else:
        canvas = np.full((s, s, 3), 255, np.uint8)
    rows = source_map_rows(model)
    n = len(rows)
    cols = min(n, 4)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 4 * math.ceil(n / cols)), squeeze=False)
    colours = plt.cm.tab10.colors
    for ax in axes.ravel():
        ax.axis("off")
    for r, ax in zip(rows, axes.ravel()):
        k, f, info = r["map"], r["feature_size"], r["field"]
        c = f // 2
        ax.imshow(canvas, extent=(0, s, s, 0))
        # receptive field of cell (c, c): centre from the layer arithmetic, side = RF
        rc = info.centre(c)
        half = info.receptive_field / 2
        ax.add_patch(Rectangle((rc - half, rc - half), 2 * half, 2 * half, fill=False, ls="--", lw=1.5, ec="k"))
        pc = (c + 0.5) * model.spec.steps[k]
        for i, (w, h) in enumerate(r["box_sizes"]):
            ax.add_patch(Rectangle((pc - w / 2, pc - h / 2), w, h, fill=False, lw=1.2, ec=colours[i % 10]))
        ax.plot([pc], [pc], "r+")
        pad = max(half, max(max(w, h) for w, h in r["box_sizes"]) / 2) * 1.05
        lo, hi = min(0, pc - pad, rc - pad), max(s, pc + pad, rc + pad)
        ax.set_xlim(lo, hi)
        ax.set_ylim(hi, lo)
        ax.plot([0, s, s, 0, 0], [0, 0, s, s, 0], "b-", lw=0.8)
        ax.axis("on")
        ax.set_title(f"map {k} {r['name']} {f}x{f}\ncell ({c},{c}): {r['boxes_per_cell']} priors, RF {r['receptive_field']:g}px (dashed)", fontsize=8)
    fig.suptitle(f"{model.name} {s}x{s}: priors of the centre cell and its receptive field (blue: image)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--priors", default=None,
        help=f"prior preset, one of {sorted(anchors.PRESETS)} or 'all' (default SSD300_VOC; with --model: its priors)",
    )
    parser.add_argument("--model", default=None, help="model name (ssd300_vgg16, ssd512_vgg16, ssdlite_mobilenetv2, ssdlite_mobilenetv3, ssd_compact)")
    parser.add_argument("--config", default=None, help="an experiment (file[:arg] or module): its model section (name, image_size, width, depth, top_down)")
    parser.add_argument("--image-size", type=int, default=None, help="input size (SSDLite models: default 320; ssd_compact: 160)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (SSDLite models, ssd_compact)")
    parser.add_argument("--num-classes", type=int, default=20, help="object classes (background excluded)")
    parser.add_argument("--draw", default=None, metavar="PATH", help="write a PNG of one cell's priors and receptive field per map")
    parser.add_argument("--image", default=None, help="image to draw on (default: blank)")
    args = parser.parse_args(argv)

    model_name, image_size, width, num_classes, priors = args.model, args.image_size, args.width, args.num_classes, args.priors
    depth, top_down = 1, False
    if args.config:
        from ssd_jax import config as config_lib

        try:
            model_cfg = config_lib.Settings.from_config(config_lib.load_config(args.config)).model
        except (ValueError, FileNotFoundError, AttributeError, TypeError) as e:
            parser.error(f"config {args.config}: {e}")
        model_name = model_name or model_cfg.name
        image_size = image_size or model_cfg.image_size
        width, depth, top_down = model_cfg.width, model_cfg.depth, model_cfg.top_down

    if model_name is None:
        if args.draw:
            parser.error("--draw needs --model or --config")
        try:
            specs = list(anchors.PRESETS.values()) if priors == "all" else [anchors.get_preset(priors or "SSD300_VOC")]
        except ValueError as e:
            parser.error(str(e))
        print("\n\n".join(format_table(s) for s in specs))
        return 0

    from flax import nnx

    from ssd_jax import models

    try:
        spec = None
        if priors is not None:
            spec = priors if isinstance(priors, anchors.PriorSpec) else anchors.get_preset(priors)
        model = nnx.eval_shape(lambda: models.build_model(model_name, int(num_classes), spec, image_size=image_size, width=float(width),
                                                         depth=int(depth), top_down=bool(top_down)))
    except ValueError as e:
        parser.error(str(e))
    print(format_table(model.spec))
    print()
    print(format_model_table(model))
    if args.draw:
        draw(model, args.draw, args.image)
        print(f"\nwrote {args.draw}")
    return 0
