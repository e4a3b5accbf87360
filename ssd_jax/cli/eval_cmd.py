"""``launch.py eval``: evaluate a training run's checkpoint on its config's eval split.

    python launch.py eval --workdir DIR [--step N | --best] [--metric voc|coco] [--max-images N]

Restores the latest (or ``--step``, or with ``--best`` the kept checkpoint with the best
mAP the run's log or earlier evals recorded) checkpoint onto this process's devices, runs the
network + ``detect`` over the eval split, prints mAP and per-class AP, and writes
``DIR/eval/step_<N>.json`` (metrics, images/s) and ``DIR/eval/step_<N>_pr.png``
(per-class precision/recall curves).

On several hosts (``jax.distributed``, see the README's environment variables) every host
runs this command: each reads and predicts its shard of the split, the detections are
gathered, and process 0 prints the report and writes the files.
"""

from __future__ import annotations

import argparse
import json
import math
import os

from ssd_jax import cli


def format_metrics(metrics: dict[str, float]) -> str:
    """Summary lines first, then one row per class (``AP/<class>`` keys)."""
    summary = {k: v for k, v in metrics.items() if not k.startswith("AP/")}
    per_class = {k[3:]: v for k, v in metrics.items() if k.startswith("AP/")}
    lines = [f"{k:>12s}  {v:.4f}" if isinstance(v, float) and not k.startswith("num") and k != "failed_images" else f"{k:>12s}  {v:g}"
             for k, v in summary.items()]
    if per_class:
        width = max(len(c) for c in per_class)
        lines += ["", f"{'class'.ljust(width)}  AP"]
        lines += [f"{c.ljust(width)}  {'   n/a' if math.isnan(v) else f'{v:.4f}'}" for c, v in per_class.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_checkpoint_arguments(parser)
    parser.add_argument("--metric", choices=("voc", "coco"), default=None,
                        help="default: the run's config.eval.metric")
    parser.add_argument("--max-images", type=int, default=0, help="evaluate only the first N images")
    parser.add_argument("--batch-size", type=int, default=0, help="default: the run's global batch size")
    args = parser.parse_args(argv)

    import jax
    from tqdm import tqdm

    from ssd_jax import builders, restore
    from ssd_jax.evaluation import loop as eval_loop
    from ssd_jax.evaluation import plots

    lead = jax.process_index() == 0  # the host that reports and writes
    step, note = cli.checkpoint_step(args)
    if note and lead:
        print(note)
    run = restore.restore_run(args.workdir, step)
    config, settings, source = run.config, run.settings, run.eval_source
    metric = args.metric or settings.eval.metric
    evaluator = builders.build_evaluator(source, settings.eval, metric)
    predict = builders.build_predict_fn(run.graphdef, run.model.spec, settings)
    devices = run.mesh.devices.size
    batch = args.batch_size or settings.data.batch_size
    batch = -(-batch // devices) * devices  # a multiple of the device count
    pcfg = builders.eval_pipeline_config(settings, run.model.spec.image_size, batch)
    total = min(len(source), args.max_images) if args.max_images else len(source)
    bar = tqdm(total=total, desc=f"eval step {run.step}", unit="img", dynamic_ncols=True, disable=not lead)
    metrics, rate = eval_loop.evaluate(predict, run.params, run.model_state, source, pcfg, run.mesh, evaluator,
                                       max_images=args.max_images, progress=lambda done: bar.update(done - bar.n))
    bar.close()
    if not lead:
        print(f"process {jax.process_index()} of {jax.process_count()}: evaluated its shard; process 0 reports")
        return 0
    print(f"{config.name}: {run.model.name}, checkpoint step {run.step}, {total} images of "
          f"{source.name or 'the eval split'}, {metric} metric, {devices} device(s) on "
          f"{jax.process_count()} process(es), "
          f"{rate:.2f} images/s")
    print(format_metrics(metrics))
    out_dir = os.path.join(os.path.abspath(args.workdir), "eval")
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"step_{run.step}.json")
    with open(json_path, "w") as f:
        json.dump({"step": run.step, "metric": metric, "num_images": total, "complete": bool(metrics["complete"]),
                   "devices": devices, "processes": jax.process_count(),
                   "images_per_sec": rate, "metrics": metrics}, f, indent=1)
    ap = {k[3:]: v for k, v in metrics.items() if k.startswith("AP/")}
    png = plots.plot_precision_recall(evaluator.precision_recall(),
                                      os.path.join(out_dir, f"step_{run.step}_pr.png"), ap=ap,
                                      title=f"{config.name} step {run.step}: precision / recall per class")
    print(f"wrote {json_path} and {png}")
    return 0
