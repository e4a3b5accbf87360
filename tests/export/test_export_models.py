"""Exported programs of the full-size networks (synthetic weights) give the JAX path's
detections: ONNX through onnxruntime and StableHLO through ``jax.export``."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from ssd_jax import export, inference, models, normalization
from ssd_jax.models import ssd


@pytest.mark.slow
def test_ssd300_vgg16_exports_with_the_jax_detections(tmp_path, assert_same_detections, no_compilation_cache_writes):
    model = models.build_model("ssd300_vgg16", 20, rngs=nnx.Rngs(0))  # synthetic (random) weights
    graphdef, params, state = ssd.split(model)
    spec = model.spec
    settings = dict(score_threshold=0.01, nms_iou=0.45, candidates_per_class=400, max_detections=200,
                    variances=(0.1, 0.2))
    meta = export.ExportMeta(format="", model="ssd300_vgg16", image_size=300, normalization="caffe_vgg",
                             class_names=tuple(f"c{i}" for i in range(1, 21)), category_ids=None, **settings)
    detector = export.make_detector(graphdef, params, state, spec, "caffe_vgg", **settings)
    predict = inference.make_predict_fn(graphdef, spec, **settings)
    images = np.random.default_rng(1).integers(0, 256, (3, 300, 300, 3), dtype=np.uint8)
    batches = [images[:1], images]
    # detect works image by image: the batch-1 reference is the first row of batch 3's
    ref3 = jax.device_get(predict(params, state, normalization.CAFFE_VGG(images)))
    want = [jax.tree.map(lambda a: a[:1], ref3), ref3]
    for fmt in export.FORMATS:
        path = str(tmp_path / f"ssd300.{fmt}")
        export.write(path, fmt, detector, dataclasses.replace(meta, format=fmt))
        run = export.ExportedDetector(path)
        for images, ref in zip(batches, want):
            assert_same_detections(run(images), ref)
