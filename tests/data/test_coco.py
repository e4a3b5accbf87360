"""COCO reader on a tiny JSON: category mapping, crowd handling, xywh conversion."""

import numpy as np
import pytest

from ssd_jax.data.coco import coco_source


@pytest.fixture
def coco(tmp_path, make_coco, tiny_coco_dict):
    return make_coco(str(tmp_path), tiny_coco_dict)


def test_categories_map_to_contiguous_labels_and_back(coco):
    src = coco_source(*coco)
    assert src.class_names == ("cat", "dog", "zebra")  # by increasing category id 3, 7, 12
    assert src.category_ids == (3, 7, 12)
    labels = np.array([1, 2, 3, 2])
    np.testing.assert_array_equal(src.label_to_category_id(labels), [3, 7, 12, 7])
    np.testing.assert_array_equal(src.category_id_to_label(src.label_to_category_id(labels)), labels)
    with pytest.raises(ValueError, match="unknown category id 5"):
        src.category_id_to_label([5])


def test_xywh_to_xyxy_and_crowd_excluded(coco):
    src = coco_source(*coco)
    assert [r.image_id for r in src.records] == [10, 20, 30]
    a, b, c = src.records
    np.testing.assert_allclose(a.boxes, [[2, 3, 12, 8]])  # the crowd box is gone
    np.testing.assert_array_equal(a.labels, [2])
    np.testing.assert_allclose(b.boxes, [[5.5, 6.5, 25.5, 16.5], [1, 1, 5, 5]])
    np.testing.assert_array_equal(b.labels, [1, 3])
    assert c.num_objects == 0 and c.boxes.shape == (0, 4)
    assert (a.width, a.height) == (40, 30)


def test_crowd_as_difficult(coco):
    src = coco_source(*coco, crowd="difficult")
    a = src.records[0]
    np.testing.assert_array_equal(a.labels, [2, 3])
    np.testing.assert_array_equal(a.difficult, [False, True])


def test_drop_images_without_objects(coco):
    src = coco_source(*coco, keep_images_without_objects=False)
    assert [r.image_id for r in src.records] == [10, 20]
