"""``launch.py convert``: torchvision weights (.pth) -> our converted checkpoint.

    python launch.py convert --from torchvision-ssd300 --checkpoint ssd300_vgg16_coco.pth --workdir DIR
    python launch.py convert --from torchvision-ssdlite320 --checkpoint ssdlite320_mobilenet_v3_large.pth --workdir DIR
    python launch.py convert --from torchvision-vgg16 --checkpoint vgg16-397923af.pth --workdir DIR
    python launch.py convert --from torchvision-vgg16 --checkpoint vgg16_features-amdegroot-88682ab5.pth \
        --normalization caffe_vgg --workdir DIR

Writes ``DIR/converted/`` (layout: :mod:`ssd_jax.models.params_io`); load it with
``ssd_jax.models.params_io.load_converted(DIR)``. ``torchvision-ssd300`` gives every
parameter of ``ssd300_vgg16`` (num_classes = torchvision's - 1); ``torchvision-ssdlite320``
every parameter and batch-norm statistic of ``ssdlite_mobilenetv3`` from torchvision's
``ssdlite320_mobilenet_v3_large`` (inputs in [-1, 1]: ``symmetric``); ``torchvision-vgg16``
gives the VGG16 backbone only (conv layers + reduced fc6/fc7, ``partial: true``; a
feature-only checkpoint without a valid classifier gives the conv layers alone).

``--normalization`` records the input convention the weights were trained with, which a
run started from them uses: torchvision's ImageNet ``vgg16`` weights (``IMAGENET1K_V1``,
``vgg16-397923af.pth``) take ``torchvision`` (the default), the SSD authors' Caffe VGG16
(``IMAGENET1K_FEATURES``, ``vgg16_features-amdegroot-88682ab5.pth``, and the SSD300
checkpoints) ``caffe_vgg``.
Reading ``.pth`` needs torch: ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

import argparse
import sys

from ssd_jax import normalization

SOURCES = ("torchvision-ssd300", "torchvision-ssdlite320", "torchvision-vgg16")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES, help="what the checkpoint is")
    parser.add_argument("--checkpoint", required=True, help="torch .pth state dict")
    parser.add_argument("--workdir", required=True, help="output: DIR/converted/")
    parser.add_argument("--normalization", choices=tuple(normalization.CONVENTIONS), default=None,
                        help="the input convention of the weights (default: torchvision for torchvision-vgg16, "
                             "caffe_vgg for torchvision-ssd300, symmetric for torchvision-ssdlite320)")
    args = parser.parse_args(argv)

    from ssd_jax.models import params_io, torchvision_import as ti

    try:
        sd = ti.read_pth(args.checkpoint)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except FileNotFoundError:
        print(f"error: no such checkpoint file: {args.checkpoint}", file=sys.stderr)
        return 1
    model_state = None
    try:
        if args.source == "torchvision-ssd300":
            flat, num_classes = ti.from_torchvision_ssd300(sd)
            meta = dict(source=args.source, model="ssd300_vgg16", num_classes=num_classes, partial=False,
                        normalization=args.normalization or "caffe_vgg", checkpoint=args.checkpoint)
        elif args.source == "torchvision-ssdlite320":
            flat, model_state, num_classes = ti.from_torchvision_ssdlite_v3(sd)
            meta = dict(source=args.source, model="ssdlite_mobilenetv3", num_classes=num_classes, partial=False,
                        normalization=args.normalization or "symmetric", checkpoint=args.checkpoint)
        else:
            flat = ti.from_torchvision_vgg16(sd)
            meta = dict(source=args.source, model="ssd300_vgg16|ssd512_vgg16", num_classes=None, partial=True,
                        normalization=args.normalization or "torchvision", checkpoint=args.checkpoint)
            if "extractor/fc6/kernel" not in flat:
                print(f"{args.checkpoint} has no valid classifier (a feature-only VGG16): fc6/fc7 are left to "
                      "their initialisation")
    except (KeyError, ValueError) as e:
        print(f"error: {args.checkpoint} is not a {args.source} state dict: {e}", file=sys.stderr)
        return 1
    try:
        root = params_io.save_converted(args.workdir, flat, meta, model_state)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(v.size for v in flat.values())
    print(f"wrote {root}: {len(flat)} arrays, {n:,} parameters from {args.source} ({args.checkpoint}), "
          f"{meta['normalization']} inputs")
    return 0
