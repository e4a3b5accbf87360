"""ssd_jax.inference + evaluation.from_source + visualize: the eval loop end to end."""

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import inference, postprocess, visualize
from ssd_jax.data import builtin, pipeline
from ssd_jax.evaluation import from_source, voc
from ssd_jax.evaluation import loop as eval_loop
from ssd_jax.evaluation.types import GroundTruth, ImageDetections


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    spec = builtin.BuiltinSpec(seed=3, num_train=4, num_val=5)
    return builtin.builtin_source("val", spec, cache_dir=tmp_path_factory.mktemp("builtin"), workers=0,
                                  progress=False)


def _oracle(batch_boxes, batch_labels):
    """A 'predict' that returns the batch's truths as detections (score 1)."""
    def predict(params, model_state, images):
        b, g = batch_labels.shape
        return postprocess.Detections(jnp.asarray(batch_boxes), jnp.ones((b, g)),
                                      jnp.asarray(batch_labels), jnp.asarray(batch_labels > 0))
    return predict


def test_oracle_detections_score_map_1_through_padding_and_ids(tiny_source):
    cfg = pipeline.PipelineConfig(image_size=64, batch_size=2, max_boxes=8, augment=None)
    batches = list(pipeline.eval_dataset(tiny_source, cfg))
    assert len(batches) == 3 and not batches[-1]["valid"][1]  # 5 images: the tail is padded
    evaluator = from_source.make_evaluator(tiny_source, "voc")
    evaluator.reset()
    for batch in batches:
        predict = _oracle(batch["boxes"], batch["labels"])
        ids = [tiny_source.records[i].image_id if ok else None for i, ok in zip(batch["index"], batch["valid"])]
        evaluator.add(ids, predict(None, None, batch["image"]))
    metrics = evaluator.compute()
    assert metrics["num_images"] == 5
    assert metrics["mAP"] == pytest.approx(1.0)


def test_evaluate_loop_counts_images_and_reports_rate(tiny_source):
    cfg = pipeline.PipelineConfig(image_size=64, batch_size=2, max_boxes=8, augment=None)
    batches = list(pipeline.eval_dataset(tiny_source, cfg))
    seen = []

    def predict(params, model_state, images):  # the same truths, looked up per call
        batch = next(b for b in batches if b["image"] is images)
        return _oracle(batch["boxes"], batch["labels"])(params, model_state, images)

    metrics, rate = eval_loop.evaluate_batches(predict, None, None, batches,
                                       from_source.make_evaluator(tiny_source, "coco"), tiny_source,
                                       progress=seen.append)
    assert seen == [2, 4, 5]
    assert metrics["AP50"] == pytest.approx(1.0) and rate > 0


def test_voc_on_continuous_boxes_equals_devkit_on_inclusive_boxes():
    rng = np.random.default_rng(0)
    truths, dets_cont, truths_incl, dets_incl = [], [], [], []
    for i in range(20):
        corner = rng.integers(1, 50, (3, 2))
        t = np.concatenate([corner, corner + rng.integers(0, 30, (3, 2))], 1).astype(float)  # inclusive
        d = t[rng.integers(0, 3, 6)] + rng.integers(-3, 4, (6, 4))
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2])
        labels, scores = rng.integers(1, 3, 3), rng.uniform(size=6)
        det_labels = rng.integers(1, 3, 6)
        # Inclusive devkit corners (as in the XML) and our continuous version (x0 - 1).
        truths_incl.append(GroundTruth(i, 100, 100, t, labels))
        dets_incl.append(ImageDetections(i, d, scores, det_labels))
        shift = np.array([1.0, 1.0, 0.0, 0.0])
        truths.append(GroundTruth(i, 100, 100, t - shift, labels))
        dets_cont.append(ImageDetections(i, d - shift, scores, det_labels))
    ours = voc.evaluate_voc(truths, dets_cont, 2, pixel_offset=0.0)
    devkit = voc.evaluate_voc(truths_incl, dets_incl, 2, pixel_offset=1.0)
    for a, b in zip(ours, devkit):
        assert a.ap_area == pytest.approx(b.ap_area) and a.ap_11pt == pytest.approx(b.ap_11pt)


def test_make_evaluator_rejects_unknown_metric(tiny_source):
    with pytest.raises(ValueError, match="metric"):
        from_source.make_evaluator(tiny_source, "f1")


def test_draw_detections_marks_only_confident_boxes():
    image = np.zeros((40, 60, 3), np.uint8)
    boxes = np.array([[5, 5, 30, 30], [35, 10, 55, 35]], float)
    out = np.asarray(visualize.draw_detections(image, boxes, np.array([1, 2]), np.array([0.9, 0.1]),
                                               ["a", "b"], score_threshold=0.5))
    assert out[5, 15].any() and out[30, 15].any()  # first box's edges drawn
    assert not out[20, 55].any()  # the low-score box is not
    with pytest.raises(ValueError, match="class 3"):
        visualize.draw_detections(image, boxes, np.array([3, 1]), np.array([0.9, 0.9]), ["a", "b"])


def test_image_detections_keeps_valid_and_scales_to_pixels():
    det = postprocess.Detections(
        boxes=np.array([[[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0]]], np.float32).repeat(2, 0),
        scores=np.array([[0.9, 0.4, 0.0], [0.8, 0.0, 0.0]], np.float32),
        classes=np.array([[3, 1, 0], [2, 0, 0]], np.int32),
        valid=np.array([[True, True, False], [True, False, False]]),
    )
    boxes, classes, scores = inference.image_detections(det, 0, width=200, height=100)
    np.testing.assert_allclose(boxes, [[20, 20, 100, 100], [0, 0, 200, 100]])
    assert classes.tolist() == [3, 1] and scores.tolist() == pytest.approx([0.9, 0.4])
    boxes, classes, _ = inference.image_detections(det, 1, width=10, height=10)
    assert boxes.shape == (1, 4) and classes.tolist() == [2]


def test_network_input_is_the_eval_loader(tmp_path, make_coco):
    """``predict`` reads a file and calls ``network_input``: the network sees exactly the
    image the eval pipeline gives it for the same file."""
    from PIL import Image

    from ssd_jax import normalization
    from ssd_jax.data import transforms
    from ssd_jax.data.coco import coco_source
    from ssd_jax.data.pipeline import PipelineConfig, eval_dataset

    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 53, "height": 37}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 4, 20, 10], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "x"}]}
    source = coco_source(*make_coco(str(tmp_path), data))
    for norm in (normalization.TORCHVISION, normalization.CAFFE_VGG):
        cfg = PipelineConfig(image_size=32, batch_size=1, normalization=norm, augment=None)
        (batch,) = list(eval_dataset(source, cfg, process_index=0, process_count=1))
        image = np.asarray(Image.open(source.records[0].image_path).convert("RGB"))  # as predict reads it
        x = transforms.network_input(image, 32, norm)
        assert x.shape == (32, 32, 3) and x.dtype == np.float32
        np.testing.assert_array_equal(x, batch["image"][0])


def test_predict_decodes_with_the_runs_loss_variances(tiny_config, fixed_batch):
    """Training encodes with ``loss.variances``; the predict function that eval and
    predict build from the same settings decodes with them, not with the defaults."""
    from flax import nnx

    from ssd_jax import anchors, builders
    from ssd_jax.config import Settings
    from ssd_jax.models import ssd

    settings = Settings.from_config(tiny_config(**{"loss.variances": (0.05, 0.3)}))
    model = builders.build_model(settings.model, 3, nnx.Rngs(0))
    graphdef, params, state = ssd.split(model)
    spec = model.spec
    x = fixed_batch(batch_size=2)["image"]
    got = builders.build_predict_fn(graphdef, spec, settings)(params, state, x)
    (logits, offsets), _ = ssd.apply(graphdef, params, state, x, train=False)
    priors = jnp.asarray(anchors.generate(spec))
    kw = dict(score_threshold=settings.eval.score_threshold, nms_iou=settings.eval.nms_iou,
              candidates_per_class=settings.eval.candidates_per_class, max_detections=settings.eval.max_detections)
    want = postprocess.detect(logits, offsets, priors, variances=(0.05, 0.3), **kw)
    default = postprocess.detect(logits, offsets, priors, **kw)
    np.testing.assert_array_equal(np.asarray(got.valid), np.asarray(want.valid))
    np.testing.assert_allclose(np.asarray(got.boxes), np.asarray(want.boxes), atol=1e-6)
    assert np.asarray(want.valid).any()
    assert not np.allclose(np.asarray(got.boxes), np.asarray(default.boxes), atol=1e-3)
