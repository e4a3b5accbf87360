"""The built-in dataset: determinism, statistics, atomic caching, read back through COCO."""

import filecmp
import json
import os

import numpy as np
import pytest

from ssd_jax.data import builtin
from ssd_jax.data.builtin import BUILTIN_CLASSES, BuiltinSpec, builtin_dataset_dir, builtin_source, generate_image
from ssd_jax.data.transforms import boxes_valid

TINY = BuiltinSpec(num_train=12, num_val=4, min_side=48, max_side=64)


def test_default_spec_is_the_full_dataset():
    spec = BuiltinSpec()
    assert spec.num_train >= 5000 and spec.num_val >= 500 and len(BUILTIN_CLASSES) >= 8
    assert (spec.min_objects, spec.max_objects) == (1, 6) and (spec.min_frac, spec.max_frac) == (0.05, 0.9)


def test_same_seed_same_files_whatever_the_process_count(tmp_path):
    a = builtin_dataset_dir(TINY, str(tmp_path / "a"), workers=0, progress=False)
    b = builtin_dataset_dir(TINY, str(tmp_path / "b"), workers=2, progress=False)
    for split in ("train", "val"):
        names = sorted(os.listdir(os.path.join(a, split)))
        assert len(names) == TINY.num_images(split)
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(a, split), os.path.join(b, split), names, shallow=False)
        assert not mismatch and not errors
    for f in ("instances_train.json", "instances_val.json"):
        assert filecmp.cmp(os.path.join(a, "annotations", f), os.path.join(b, "annotations", f), shallow=False)
    other = generate_image(BuiltinSpec(seed=1), "train", 0)[0]
    assert not np.array_equal(other, generate_image(BuiltinSpec(seed=0), "train", 0)[0])
    # nothing but the finished folder is left in the cache dir
    assert os.listdir(tmp_path / "a") == [TINY.dirname]


def test_statistics_of_the_default_spec():
    spec = BuiltinSpec()
    counts, fracs, labels, sizes = [], [], [], []
    for i in range(150):
        image, boxes, lab = generate_image(spec, "train", i)
        h, w = image.shape[:2]
        sizes.append((h, w))
        assert boxes_valid(boxes, h, w).all()
        counts.append(len(lab))
        labels.extend(lab.tolist())
        fracs.extend((np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / min(h, w)).tolist())
    assert min(counts) >= 1 and max(counts) <= 6 and 2.0 < np.mean(counts) < 4.5 and max(counts) >= 5
    assert set(labels) == set(range(1, len(BUILTIN_CLASSES) + 1))
    assert min(fracs) < 0.08 and max(fracs) > 0.75 and max(fracs) <= 1.0  # ~5% .. 90% of the short side
    assert all(160 <= s <= 320 for hw in sizes for s in hw)


def test_some_objects_are_partly_hidden():
    spec = BuiltinSpec()
    overlaps = 0
    for i in range(40):
        _, boxes, _ = generate_image(spec, "train", i)
        for j in range(len(boxes)):
            for k in range(j + 1, len(boxes)):
                lt = np.maximum(boxes[j, :2], boxes[k, :2])
                rb = np.minimum(boxes[j, 2:], boxes[k, 2:])
                overlaps += bool(np.all(rb > lt))
    assert overlaps > 5


def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = builtin._write_images
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-generation
        return real(*args)

    monkeypatch.setattr(builtin, "_write_images", flaky)
    with pytest.raises(KeyboardInterrupt):
        builtin_dataset_dir(TINY, str(tmp_path), workers=0, progress=False)
    assert os.listdir(tmp_path) == []
    path = builtin_dataset_dir(TINY, str(tmp_path), workers=0, progress=False)
    assert os.listdir(tmp_path) == [TINY.dirname] and os.path.isdir(os.path.join(path, "train"))


def test_read_back_through_the_coco_source(tmp_path):
    src = builtin_source("val", TINY, str(tmp_path), workers=0, progress=False)
    assert len(src) == TINY.num_val and src.class_names == BUILTIN_CLASSES
    assert src.category_ids == tuple(range(1, 11))
    image, boxes, labels = generate_image(TINY, "val", 2)
    r = src.records[2]
    assert (r.height, r.width) == image.shape[:2]
    np.testing.assert_array_equal(r.boxes, boxes)
    np.testing.assert_array_equal(r.labels, labels)
    spec_file = json.load(open(os.path.join(os.path.dirname(os.path.dirname(r.image_path)), "SPEC.json")))
    assert spec_file["num_val"] == TINY.num_val
