"""Detection data: sources (VOC, COCO, built-in), augmentation, the grain input pipeline.

Import the submodules directly (``from ssd_jax.data import voc``); this package imports
nothing heavy on its own.
"""
