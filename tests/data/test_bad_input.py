"""Bad input: clear errors at source construction, skipped (or strict) failures at load time."""

import json
import logging
import os

import numpy as np
import pytest

from ssd_jax.data.coco import coco_source
from ssd_jax.data.images import ImageLoadError, load_image
from ssd_jax.data.pipeline import PipelineConfig, eval_dataset, train_dataset
from ssd_jax.data.voc import voc_source

HOST = dict(process_index=0, process_count=1)
GOOD = ("dog", (2, 2, 10, 10), 0)


@pytest.fixture
def voc_pair(tmp_path, make_voc):
    """``voc_pair(objects, size=(20, 16))``: a VOC 2007 trainval of a good image and one
    with ``objects``; returns the devkit root."""
    return lambda objects, size=(20, 16): make_voc(
        str(tmp_path), {"2007": {"000001": (*size, [GOOD]), "000002": (*size, objects)}})


def _annotation(root, stem="000002"):
    return os.path.join(root, "VOC2007", "Annotations", f"{stem}.xml")


# ----------------------------------------------------------------------------- VOC, at construction


def test_voc_box_outside_the_image_names_file_record_and_box(voc_pair):
    root = voc_pair([GOOD, ("cat", (5, 5, 30, 10), 0)])
    with pytest.raises(ValueError) as e:
        voc_source(root, [("2007", "trainval")])
    msg = str(e.value)
    assert _annotation(root) in msg and "2007/000002" in msg and "object 1 (cat)" in msg and "outside the 20x16" in msg


def test_voc_inverted_box(voc_pair):
    # VOC coordinates are inclusive pixel indices: xmin == xmax is a valid 1-pixel-wide box
    root = voc_pair([("cat", (8, 5, 8, 10), 0)])
    np.testing.assert_array_equal(voc_source(root, [("2007", "trainval")]).records[1].boxes, [[7, 4, 8, 10]])
    root = voc_pair([("cat", (8, 5, 7, 10), 0)])
    with pytest.raises(ValueError, match=r"000002\.xml \(record '2007/000002'\): object 0 \(cat\).*empty or inverted"):
        voc_source(root, [("2007", "trainval")])


def test_voc_invalid_boxes_can_be_dropped_with_a_warning(voc_pair, caplog):
    root = voc_pair([GOOD, ("cat", (8, 5, 3, 10), 0)])
    with caplog.at_level(logging.WARNING):
        src = voc_source(root, [("2007", "trainval")], invalid_boxes="drop")
    assert src.records[1].num_objects == 1 and "dropping invalid box" in caplog.text


def test_voc_box_one_pixel_out_is_clipped(voc_pair):
    root = voc_pair([("cat", (0, 1, 21, 16), 0)])  # xmin 0 and xmax 21 in a 1-based 20-wide image
    src = voc_source(root, [("2007", "trainval")])
    np.testing.assert_array_equal(src.records[1].boxes, [[0, 0, 20, 16]])


def test_voc_unknown_class(voc_pair):
    root = voc_pair([("unicorn", (2, 2, 5, 5), 0)])
    with pytest.raises(ValueError, match=r"000002\.xml.*class 'unicorn' is not in the class list"):
        voc_source(root, [("2007", "trainval")])


def test_voc_empty_and_broken_annotation_files(voc_pair):
    root = voc_pair([GOOD])
    open(_annotation(root), "w").close()
    with pytest.raises(ValueError, match=r"000002\.xml \(record '2007/000002'\): annotation file is empty"):
        voc_source(root, [("2007", "trainval")])
    with open(_annotation(root), "w") as f:
        f.write("<annotation><size><width>20</width>")
    with pytest.raises(ValueError, match=r"000002\.xml.*not valid XML"):
        voc_source(root, [("2007", "trainval")])


def test_voc_missing_image_at_construction(voc_pair):
    root = voc_pair([GOOD])
    missing = os.path.join(root, "VOC2007", "JPEGImages", "000002.jpg")
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match=r"1 image file\(s\) missing: record '2007/000002'.*000002\.jpg"):
        voc_source(root, [("2007", "trainval")])
    assert len(voc_source(root, [("2007", "trainval")], check_images=False)) == 2


# ----------------------------------------------------------------------------- COCO, at construction


def test_coco_unknown_category(tmp_path, make_coco, tiny_coco_dict):
    data = tiny_coco_dict
    data["annotations"][0]["category_id"] = 99
    with pytest.raises(ValueError, match=r"instances\.json: annotation 1 \(image 10\) has category id 99"):
        coco_source(*make_coco(str(tmp_path), data))


def test_coco_box_outside_and_empty_box(tmp_path, make_coco, tiny_coco_dict):
    data = tiny_coco_dict
    data["annotations"][2]["bbox"] = [30, 6, 20, 10]  # x + w = 50 > 32
    path, images = make_coco(str(tmp_path), data)
    with pytest.raises(ValueError, match=r"instances\.json \(record 20\): object 0 \(annotation 3, cat\).*outside the 32x32"):
        coco_source(path, images)
    data["annotations"][2]["bbox"] = [3, 6, 0, 10]
    path, images = make_coco(str(tmp_path), data, images=False)
    with pytest.raises(ValueError, match="annotation 3, cat.*empty or inverted"):
        coco_source(path, images)


def test_coco_empty_and_malformed_files(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("")
    with pytest.raises(ValueError, match="instances.json: annotation file is empty"):
        coco_source(str(path), str(tmp_path))
    path.write_text('{"images": []}')
    with pytest.raises(ValueError, match="no 'annotations' list"):
        coco_source(str(path), str(tmp_path))


# ----------------------------------------------------------------------------- at load time


@pytest.fixture
def broken(tmp_path, make_coco):
    """A 6-image COCO set: image 3 is garbage bytes, image 5 a truncated JPEG, image 6 missing."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 24, "height": 20} for i in range(1, 7)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0} for i in range(1, 7)],
        "categories": [{"id": 1, "name": "x"}],
    }
    path, images = make_coco(str(tmp_path), data)
    with open(os.path.join(images, "3.jpg"), "wb") as f:
        f.write(b"this is not a jpeg")
    raw = open(os.path.join(images, "5.jpg"), "rb").read()
    with open(os.path.join(images, "5.jpg"), "wb") as f:
        f.write(raw[: len(raw) // 2])
    os.remove(os.path.join(images, "6.jpg"))
    return coco_source(path, images, check_images=False)


def test_load_image_errors_name_the_file_and_record(broken):
    with pytest.raises(ImageLoadError, match=r"record 3 image .*3\.jpg: cannot decode"):
        load_image(broken.records[2])
    with pytest.raises(ImageLoadError, match=r"record 5 image .*5\.jpg: cannot decode"):
        load_image(broken.records[4])
    with pytest.raises(ImageLoadError, match=r"record 6 image .*6\.jpg: file not found"):
        load_image(broken.records[5])
    assert load_image(broken.records[0]).shape == (20, 24, 3)


def test_size_mismatch_with_annotation_is_an_error(broken):
    import dataclasses

    wrong = dataclasses.replace(broken.records[0], width=30)
    with pytest.raises(ImageLoadError, match="decoded size 24x20 differs from the annotation's 30x20"):
        load_image(wrong)


def test_training_gives_a_bad_images_slot_to_the_next_good_one_with_a_counted_warning(broken, caplog):
    """6 records, 3 unreadable, batches of 3, one epoch: 2 full batches of good images;
    each good image keeps its own slot, and every failed load is warned with a count."""
    cfg = PipelineConfig(image_size=16, batch_size=3, max_boxes=2, num_epochs=1, augment=None)
    with caplog.at_level(logging.WARNING):
        batches = list(iter(train_dataset(broken, cfg, **HOST)))
    assert [b["image"].shape for b in batches] == [(3, 16, 16, 3)] * 2
    good = next(iter(eval_dataset(broken, PipelineConfig(image_size=16, batch_size=6, max_boxes=2), **HOST)))
    good_images = good["image"][good["valid"]].reshape(3, -1)
    seen = [int(np.flatnonzero((good_images == im.reshape(-1)).all(axis=1))[0])
            for b in batches for im in b["image"]]  # raises if a slot holds no good image
    assert sorted(set(seen)) == [0, 1, 2]
    msgs = [r.getMessage() for r in caplog.records if "skipping record" in r.getMessage()]
    assert len(msgs) >= 3 and f"({len(msgs)} image(s) skipped so far)" in msgs[-1]
    assert {m.split("#")[1].split()[0] for m in msgs} == {"2", "4", "5"}  # records 3, 5, 6 (0-based 2, 4, 5)
    assert any("6.jpg: file not found" in m for m in msgs)


def test_the_replacement_is_the_same_for_any_worker_count_and_a_shard_with_no_readable_image_raises(broken):
    import dataclasses

    from ssd_jax.data.records import Source

    cfg = PipelineConfig(image_size=16, batch_size=3, max_boxes=2, num_epochs=2)
    ref = list(iter(train_dataset(broken, cfg, **HOST)))
    it = iter(train_dataset(broken, dataclasses.replace(cfg, num_workers=2), **HOST))
    try:
        two = list(it)
    finally:
        it.close()
    assert len(two) == len(ref) == 4
    for a, b in zip(ref, two):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    unreadable = Source(tuple(broken.records[i] for i in (2, 4, 5)), broken.class_names, name="unreadable")
    with pytest.raises(ImageLoadError, match="none of the 3 images of this host's shard loads"):
        next(iter(train_dataset(unreadable, dataclasses.replace(cfg, batch_size=1), **HOST)))


def test_strict_mode_raises(broken):
    cfg = PipelineConfig(image_size=16, batch_size=3, max_boxes=2, num_epochs=1, strict=True)
    with pytest.raises(ImageLoadError, match="cannot decode|file not found"):
        list(iter(train_dataset(broken, cfg, **HOST)))


def test_eval_marks_bad_images_not_valid(broken):
    cfg = PipelineConfig(image_size=16, batch_size=4, max_boxes=2)
    batches = list(iter(eval_dataset(broken, cfg, **HOST)))
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(valid, [1, 1, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 5, -1, -1])


def test_coco_area_that_is_not_a_number(tmp_path, make_coco, tiny_coco_dict):
    tiny_coco_dict["annotations"][2]["area"] = "large"
    with pytest.raises(ValueError, match=r"instances\.json: annotation 3 has area 'large', expected a number >= 0"):
        coco_source(*make_coco(str(tmp_path), tiny_coco_dict))


def test_coco_duplicate_annotation_id_and_non_numeric_bbox(tmp_path, make_coco, tiny_coco_dict):
    data = json.loads(json.dumps(tiny_coco_dict))
    data["annotations"][3]["id"] = 1
    with pytest.raises(ValueError, match=r"instances\.json: duplicate annotation id 1"):
        coco_source(*make_coco(str(tmp_path / "a"), data))
    data = json.loads(json.dumps(tiny_coco_dict))
    data["annotations"][0]["bbox"] = [2, "3", 10, 5]
    with pytest.raises(ValueError, match=r"instances\.json: annotation 1 has bbox \[2, '3', 10, 5\], expected"):
        coco_source(*make_coco(str(tmp_path / "b"), data))


def test_voc_difficult_other_than_0_or_1(voc_pair):
    root = voc_pair([GOOD, ("cat", (2, 2, 9, 9), 2)])
    with pytest.raises(ValueError, match=r"000002\.xml.*object 1 \(cat\): <difficult> is '2', expected 0 or 1"):
        voc_source(root, [("2007", "trainval")])
