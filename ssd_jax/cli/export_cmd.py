"""``launch.py export``: a training run's checkpoint as one servable program.

    python launch.py export --workdir DIR [--step N | --best] --format onnx|stablehlo --output PATH
        [--max-detections K] [--score-threshold T] [--nms-iou U]

The program is the whole detector (normalisation, network, box decoding, per-class NMS):
uint8 images ``[N, S, S, 3]`` in, ``boxes``, ``scores``, ``labels`` and ``num_detections``
out (see :mod:`ssd_jax.export`). K, the score threshold and the NMS IoU default to the
run's eval settings. ``PATH.json`` beside it holds the class names, category ids, S, the
normalisation and those settings. Run it with ``launch.py predict --exported PATH``.
ONNX needs the ``export`` extra: ``pip install -e '.[export]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def main(argv: list[str]) -> int:
    from ssd_jax import cli, export

    parser = argparse.ArgumentParser(prog="launch.py export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_checkpoint_arguments(parser)
    parser.add_argument("--format", required=True, choices=export.FORMATS)
    parser.add_argument("--output", required=True, help="the exported file (metadata: OUTPUT.json)")
    parser.add_argument("--max-detections", type=int, default=None, help="K (default: the run's eval.max_detections)")
    parser.add_argument("--score-threshold", type=float, default=None, help="default: the run's eval.score_threshold")
    parser.add_argument("--nms-iou", type=float, default=None, help="default: the run's eval.nms_iou")
    args = parser.parse_args(argv)

    if args.format == "onnx":
        try:
            export.require_onnx()
        except ImportError as e:
            print(f"launch.py export: {e}", file=sys.stderr)
            return 1

    import jax

    from ssd_jax import builders, restore

    step, note = cli.checkpoint_step(args)
    if note:
        print(note)
    run = restore.restore_run(args.workdir, step, with_eval_source=False)
    overrides = {k: v for k, v in (("max_detections", args.max_detections), ("score_threshold", args.score_threshold),
                                   ("nms_iou", args.nms_iou)) if v is not None}
    try:
        eval_cfg = dataclasses.replace(run.settings.eval, **overrides)  # validated as in a config
    except ValueError as e:
        parser.error(str(e))
    spec = run.model.spec
    meta = export.ExportMeta(
        format=args.format, model=run.settings.model.name,
        image_size=spec.image_size, normalization=builders.normalization_name(run.settings.model),
        class_names=tuple(run.class_names), category_ids=run.category_ids,
        max_detections=eval_cfg.max_detections, score_threshold=eval_cfg.score_threshold, nms_iou=eval_cfg.nms_iou,
        candidates_per_class=eval_cfg.candidates_per_class, variances=tuple(run.settings.loss.variances),
        step=run.step, workdir=os.path.abspath(args.workdir))
    graphdef = run.graphdef
    if args.format == "onnx":
        from flax import nnx

        graphdef = export.onnx_graphdef(lambda conv: builders.build_model(
            run.settings.model, len(run.class_names), nnx.Rngs(0), conv=conv))
    detector = export.make_detector(
        graphdef, jax.device_get(run.params), jax.device_get(run.model_state), spec, meta.normalization,
        score_threshold=meta.score_threshold, nms_iou=meta.nms_iou, candidates_per_class=meta.candidates_per_class,
        max_detections=meta.max_detections, variances=meta.variances)
    start = time.perf_counter()
    path, meta_path = export.write(args.output, args.format, detector, meta)
    size = os.path.getsize(path) / 2**20
    print(f"exported {meta.model} (step {run.step}, {len(meta.class_names)} classes, {spec.image_size} px, "
          f"K={meta.max_detections}) as {args.format}: {path} ({size:.1f} MiB) and {meta_path} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
