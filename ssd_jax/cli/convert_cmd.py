"""``launch.py convert``: torchvision weights (.pth) -> our converted checkpoint.

    python launch.py convert --from torchvision-ssd300 --checkpoint ssd300_vgg16_coco.pth --workdir DIR
    python launch.py convert --from torchvision-vgg16 --checkpoint vgg16-397923af.pth --workdir DIR

Writes ``DIR/converted/`` (layout: :mod:`ssd_jax.models.params_io`); load it with
``ssd_jax.models.params_io.load_converted(DIR)``. ``torchvision-ssd300`` gives every
parameter of ``ssd300_vgg16`` (num_classes = torchvision's - 1); ``torchvision-vgg16``
gives the VGG16 backbone only (conv layers + reduced fc6/fc7, ``partial: true``).
Reading ``.pth`` needs torch: ``pip install -e '.[torch]'``.
"""

from __future__ import annotations

import argparse
import sys

SOURCES = ("torchvision-ssd300", "torchvision-vgg16")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES, help="what the checkpoint is")
    parser.add_argument("--checkpoint", required=True, help="torch .pth state dict")
    parser.add_argument("--workdir", required=True, help="output: DIR/converted/")
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
    try:
        if args.source == "torchvision-ssd300":
            flat, num_classes = ti.from_torchvision_ssd300(sd)
            meta = dict(source=args.source, model="ssd300_vgg16", num_classes=num_classes, partial=False,
                        normalization="caffe_vgg", checkpoint=args.checkpoint)
        else:
            flat = ti.from_torchvision_vgg16(sd)
            meta = dict(source=args.source, model="ssd300_vgg16|ssd512_vgg16", num_classes=None, partial=True,
                        normalization="torchvision", checkpoint=args.checkpoint)
    except (KeyError, ValueError) as e:
        print(f"error: {args.checkpoint} is not a {args.source} state dict: {e}", file=sys.stderr)
        return 1
    try:
        root = params_io.save_converted(args.workdir, flat, meta)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n = sum(v.size for v in flat.values())
    print(f"wrote {root}: {len(flat)} arrays, {n:,} parameters from {args.source} ({args.checkpoint})")
    return 0
