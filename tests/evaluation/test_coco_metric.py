"""COCO metrics: a hand case, results format, and identity with pycocotools' COCOeval."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from ssd_jax.evaluation import coco
from ssd_jax.evaluation.types import GroundTruth, ImageDetections

G1 = [10.0, 10.0, 110.0, 110.0]
G2 = [200.0, 150.0, 300.0, 260.0]
FAR = [400.0, 10.0, 450.0, 60.0]


def _pycocotools(truths, dets, category_ids):
    """pycocotools' COCOeval on the same records: (stats, precision, per-class AP).
    pycocotools is a test requirement (``.[test]``): without it these tests fail."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = coco.to_coco_dataset(truths, category_ids)
    image_ids = coco._coco_image_ids(truths)
    id_map = {t.image_id: i for t, i in zip(truths, image_ids)}
    results = coco.to_coco_results(dets, category_ids, id_map)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(dataset))
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]
    per_class = []
    for k in range(len(ev.params.catIds)):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class.append(p.mean() if p.size else np.nan)
    order = np.argsort(np.argsort(category_ids))  # our class order -> sorted catIds order
    return ev.stats, precision, np.asarray(per_class)[order]


def _assert_same(res, stats, per_class, precision=None):
    # Equal up to float rounding: pycocotools divides by tp + fp + np.spacing(1), the
    # engine by tp + fp, so a precision of 1 may read 0.9999999999999998 there (1 ulp).
    tol = dict(rtol=0, atol=1e-12)
    np.testing.assert_allclose([res.stats[n] for n in coco.STAT_NAMES], stats, **tol)
    np.testing.assert_allclose(res.per_class_ap, per_class, **tol)
    if precision is not None:
        np.testing.assert_allclose(res.precision, precision, **tol)


def test_hand_case():
    # Large boxes, exact matches: at every IoU threshold TP, FP, TP over 2 truths.
    # 101-point interpolation: recall <= .5 -> precision 1 (51 points), above -> 2/3 (50).
    truths = [GroundTruth(1, 500, 400, [G1, G2], [1, 1])]
    dets = [ImageDetections(1, [G1, FAR, G2], [0.9, 0.8, 0.7], [1, 1, 1])]
    res = coco.evaluate_coco(truths, dets, category_ids=[1])
    expected = (51 + 50 * 2 / 3) / 101
    for name in ("AP", "AP50", "AP75"):
        assert res.stats[name] == pytest.approx(expected)
    # The FP (50x50 px) is a medium box: unmatched detections outside a size range are
    # ignored for that range, so the large-object AP is perfect.
    assert res.stats["APl"] == pytest.approx(1.0)
    assert res.stats["APs"] == -1 and res.stats["APm"] == -1  # no small/medium truth
    assert res.stats["AR1"] == pytest.approx(0.5)
    assert res.stats["AR10"] == pytest.approx(1.0) and res.stats["AR100"] == pytest.approx(1.0)
    np.testing.assert_allclose(res.per_class_ap, [expected])


def test_results_format_pixels_xywh_and_category_mapping():
    dets = [ImageDetections(7, [[10.0, 20.0, 40.0, 60.0]], [0.75], [2])]
    out = coco.to_coco_results(dets, category_ids=[5, 18])
    assert out == [{"image_id": 7, "category_id": 18, "bbox": [10.0, 20.0, 30.0, 40.0],
                    "score": 0.75}]
    json.dumps(out)
    ds = coco.to_coco_dataset([GroundTruth(7, 64, 80, [[1.0, 2.0, 5.0, 10.0]], [1])], [5, 18],
                              ["cat", "dog"])
    assert ds["annotations"][0]["bbox"] == [1.0, 2.0, 4.0, 8.0]
    assert ds["annotations"][0]["category_id"] == 5 and ds["annotations"][0]["id"] == 1
    assert ds["annotations"][0]["area"] == 32.0
    assert ds["categories"] == [{"id": 5, "name": "cat"}, {"id": 18, "name": "dog"}]


def test_write_results(tmp_path):
    dets = [ImageDetections(3, [[10.0, 20.0, 40.0, 60.0]], [0.5], [1])]
    path = tmp_path / "dets.json"
    coco.write_coco_results(path, coco.to_coco_results(dets, [1]))
    assert json.loads(path.read_text())[0]["bbox"] == [10.0, 20.0, 30.0, 40.0]


@pytest.mark.parametrize(
    "seed,category_ids,dets_per_image",
    [(0, [1, 2, 3, 4], 15), (1, [3, 9, 4, 90], 15), (2, [1, 2, 3, 4], 600)],
)
def test_identical_to_pycocotools(seed, category_ids, dets_per_image, random_set):
    # small and large objects, crowds, ties, an explicit area on some records; with 600
    # detections per image some image/class pairs pass the 100-detection cap
    truths, dets = random_set(seed, num_images=60 if dets_per_image < 100 else 12,
                              crowd_rate=0.1, size=400.0, dets_per_image=dets_per_image)
    truths[0] = GroundTruth(truths[0].image_id, 400, 400, truths[0].boxes, truths[0].labels,
                            area=np.full(len(truths[0]), 2000.0))
    res = coco.evaluate_coco(truths, dets, category_ids)
    stats, precision, per_class = _pycocotools(truths, dets, category_ids)
    _assert_same(res, stats, per_class, precision)


def test_string_image_ids_and_missing_class(random_set):
    truths, dets = random_set(2, num_images=20, string_ids=True, num_classes=3)
    # 4 categories, class 4 never appears in the truth: its AP is NaN
    res = coco.evaluate_coco(truths, dets, category_ids=[1, 2, 3, 4])
    assert np.isnan(res.per_class_ap[3])
    stats, _, per_class = _pycocotools(truths, dets, [1, 2, 3, 4])
    _assert_same(res, stats, per_class)


def test_no_detections_at_all():
    truths = [GroundTruth(1, 500, 400, [G1], [1])]
    res = coco.evaluate_coco(truths, [], category_ids=[1])
    assert res.stats["AP"] == 0.0 and res.stats["AR100"] == 0.0


def test_bad_categories():
    truths = [GroundTruth(1, 500, 400, [G1], [2])]
    with pytest.raises(ValueError, match="unique"):
        coco.evaluate_coco(truths, [], category_ids=[1, 1])
    with pytest.raises(ValueError, match="label 2 but only 1 categories"):
        coco.evaluate_coco(truths, [], category_ids=[1])


def test_areas_come_from_the_annotations(tmp_path, make_coco):
    """Objects whose annotation area (the segment's) differs from their box area: APs, APm,
    APl (and ARs/m/l) follow the annotation, as pycocotools does on the same JSON file."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from ssd_jax.data.coco import coco_source
    from ssd_jax.evaluation import from_source

    rng = np.random.default_rng(0)
    images, annotations, results = [], [], []
    for i in range(1, 13):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 160})
        for j in range(3):
            x, y, w, h = (float(v) for v in (rng.uniform(0, 100), rng.uniform(0, 80), rng.uniform(20, 90),
                                             rng.uniform(20, 70)))
            # a box area of 400-6300 px; the segment fills 15-100% of it (small, medium, large differ)
            area = w * h * float(rng.uniform(0.15, 1.0))
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": 1 + (i + j) % 2,
                                "bbox": [x, y, w, h], "area": area, "iscrowd": 0})
            if rng.random() < 0.8:
                jitter = rng.normal(0, 4, 4)
                results.append({"image_id": i, "category_id": annotations[-1]["category_id"],
                                "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 2), max(h + jitter[3], 2)],
                                "score": float(rng.random())})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    json_path, image_dir = make_coco(str(tmp_path), data, images=False)
    boxes = np.array([a["bbox"] for a in annotations])
    box_area = boxes[:, 2] * boxes[:, 3]
    areas = np.array([a["area"] for a in annotations])
    assert ((box_area < 32 ** 2) != (areas < 32 ** 2)).sum() >= 5  # the split differs for many objects

    source = coco_source(json_path, image_dir, check_images=False)
    evaluator = from_source.make_evaluator(source, "coco")
    evaluator.reset()
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    for image_id in range(1, 13):
        rs = by_image.get(image_id, [])
        xywh = np.array([r["bbox"] for r in rs]).reshape(-1, 4)
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        evaluator.add_image(ImageDetections(image_id, xyxy, np.array([r["score"] for r in rs]),
                                            np.array([r["category_id"] for r in rs], np.int64)))
    ours = evaluator.compute()

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(json_path)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    np.testing.assert_allclose([ours[n] for n in coco.STAT_NAMES], ev.stats, rtol=0, atol=1e-12)
