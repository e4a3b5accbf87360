"""The evaluation loop (ssd_jax.evaluation.loop): images that fail to load are counted."""

import logging
import os

import numpy as np
import pytest

from ssd_jax import builders
from ssd_jax.data.coco import coco_source
from ssd_jax.data.pipeline import PipelineConfig, eval_dataset
from ssd_jax.evaluation import loop as eval_loop
from ssd_jax.evaluation.loop import EvalConfig
from ssd_jax.postprocess import Detections


def _whole_image_detector(params, model_state, images):
    """One detection per image: class 1, score 0.9, the whole image (every truth below)."""
    b = images.shape[0]
    boxes = np.zeros((b, 2, 4), np.float32)
    boxes[:, 0] = [0.0, 0.0, 1.0, 1.0]
    return Detections(boxes, np.array([[0.9, 0.0]] * b, np.float32), np.array([[1, 0]] * b, np.int32),
                      np.array([[True, False]] * b))


@pytest.fixture
def four_images_one_corrupt(tmp_path, make_coco):
    """4 images, each with one object covering it; image 3's file is not a JPEG."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 24, "height": 20} for i in range(1, 5)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 24, 20], "iscrowd": 0,
                         "area": 480} for i in range(1, 5)],
        "categories": [{"id": 1, "name": "thing"}],
    }
    path, images = make_coco(str(tmp_path), data)
    with open(os.path.join(images, "3.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    return coco_source(path, images, check_images=False)


@pytest.mark.parametrize("metric", ["voc", "coco"])
def test_failed_images_count_as_images_without_detections(four_images_one_corrupt, metric, caplog):
    """The detector finds every object of the 3 images that load. By hand: VOC07 11-point AP
    with 3 of 4 objects found at precision 1 is 8/11 (recall 0, 0.1, ..., 0.7); COCO AP
    (101 recall points, precision 1 up to recall 0.75) is 76/101 at every IoU threshold.
    Dropping the failed image, or keeping the detection made on its blank stand-in, would
    give 1.0."""
    source = four_images_one_corrupt
    evaluator = builders.build_evaluator(source, EvalConfig(metric=metric))
    batches = eval_dataset(source, PipelineConfig(image_size=16, batch_size=2, max_boxes=2),
                           process_index=0, process_count=1)
    with caplog.at_level(logging.WARNING):
        metrics, _ = eval_loop.evaluate_batches(_whole_image_detector, None, None, batches, evaluator, source)
    assert metrics["failed_images"] == 1.0 and metrics["num_images"] == 4.0
    if metric == "voc":
        assert metrics["mAP"] == pytest.approx(8 / 11)
    else:
        assert metrics["AP"] == pytest.approx(76 / 101) and metrics["AP50"] == pytest.approx(76 / 101)
    assert "1 image(s) failed to load" in caplog.text and ": 3" in caplog.text


def test_strict_pipeline_stops_at_a_failed_image(four_images_one_corrupt):
    source = four_images_one_corrupt
    evaluator = builders.build_evaluator(source, EvalConfig())
    batches = eval_dataset(source, PipelineConfig(image_size=16, batch_size=2, max_boxes=2, strict=True),
                           process_index=0, process_count=1)
    with pytest.raises(Exception, match="3.jpg"):
        eval_loop.evaluate_batches(_whole_image_detector, None, None, batches, evaluator, source)
