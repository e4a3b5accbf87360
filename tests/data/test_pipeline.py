"""The grain pipeline: shapes, determinism across worker counts, exact resume, max_boxes, eval."""

import logging

import grain
import numpy as np
import pytest

from ssd_jax.data.builtin import BuiltinSpec, builtin_source
from ssd_jax.data.coco import coco_source
from ssd_jax.data.pipeline import PipelineConfig, eval_dataset, pad_objects, train_dataset

SPEC = BuiltinSpec(num_train=20, num_val=5, min_side=48, max_side=64)
CFG = PipelineConfig(image_size=32, batch_size=4, max_boxes=6, seed=7)
HOST = dict(process_index=0, process_count=1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def train_src(cache_dir):
    return builtin_source("train", SPEC, cache_dir, workers=0, progress=False)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_format(train_src):
    batch = next(iter(train_dataset(train_src, CFG, **HOST)))
    assert set(batch) == {"image", "boxes", "labels"}
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["boxes"].shape == (4, 6, 4) and batch["boxes"].dtype == np.float32
    assert batch["labels"].shape == (4, 6) and batch["labels"].dtype == np.int32
    assert batch["labels"].min() >= 0 and batch["labels"].max() <= 10
    real = batch["labels"] > 0
    b = batch["boxes"][real]
    assert (b >= 0).all() and (b <= 1).all() and (b[:, 2:] > b[:, :2]).all()
    assert (batch["boxes"][~real] == 0).all()
    assert abs(float(batch["image"].mean())) < 2  # normalised


def test_canvas_batches_for_the_device(train_src):
    """``canvas``: uint8 images at the top left of a fixed canvas, edges repeated, their
    sizes, and the records' own boxes normalised to them; no augmentation on the host."""
    import dataclasses

    cfg = dataclasses.replace(CFG, canvas=72)
    batch = next(iter(train_dataset(train_src, cfg, **HOST)))
    assert set(batch) == {"image", "size", "boxes", "labels"}
    assert batch["image"].shape == (4, 72, 72, 3) and batch["image"].dtype == np.uint8
    order = next(iter(train_dataset(train_src, dataclasses.replace(cfg, augment=None), **HOST)))
    np.testing.assert_array_equal(order["image"], batch["image"])  # augment is left to the device
    for image, size, boxes, labels in zip(batch["image"], batch["size"], batch["boxes"], batch["labels"]):
        rec = next(r for r in train_src.records if (r.height, r.width) == tuple(size)
                   and np.allclose(r.boxes[:1] / np.array([r.width, r.height] * 2), boxes[:len(r.boxes[:1])], atol=1e-6))
        h, w = size
        np.testing.assert_array_equal(image[h:], np.broadcast_to(image[h - 1:h], image[h:].shape))
        np.testing.assert_array_equal(image[:, w:], np.broadcast_to(image[:, w - 1:w], image[:, w:].shape))
        n = rec.num_objects
        np.testing.assert_allclose(boxes[:n], rec.boxes / np.array([w, h, w, h]), atol=1e-6)
        np.testing.assert_array_equal(labels[:n], rec.labels)
    with pytest.raises(ValueError, match="multiple of 8"):
        PipelineConfig(canvas=100)


def test_load_canvas_downscales_large_jpegs_with_a_reduced_decode(tmp_path):
    """A 1000x800 JPEG into a 256 canvas: decoded at a reduced scale, then resized to
    256x205 (aspect kept): close to a full decode resized; a size that disagrees with the
    annotation is a clear error."""
    from PIL import Image

    from ssd_jax.data.images import ImageLoadError, load_canvas
    from ssd_jax.data.records import Record

    y, x = np.mgrid[0:800, 0:1000]
    pixels = np.stack([128 + 100 * np.sin(x / 40), 128 + 100 * np.cos(y / 50), (x + y) % 256], -1).astype(np.uint8)
    path = str(tmp_path / "big.jpg")
    Image.fromarray(pixels).save(path, quality=95)
    rec = Record(image_id="big", image_path=path, width=1000, height=800, boxes=np.zeros((0, 4), np.float32),
                 labels=np.zeros((0,), np.int32), difficult=np.zeros((0,), bool))
    canvas, size = load_canvas(rec, 256, 256)
    assert canvas.shape == (256, 256, 3) and tuple(size) == (205, 256)
    full = np.asarray(Image.open(path).convert("RGB").resize((256, 205), Image.BILINEAR), np.float32)
    assert np.abs(canvas[:205].astype(np.float32) - full).mean() < 3
    small, size = load_canvas(rec, 1024, 1024)  # no downscale: the whole image
    assert tuple(size) == (800, 1000)
    bad = Record(image_id="big", image_path=path, width=999, height=800, boxes=rec.boxes, labels=rec.labels,
                 difficult=rec.difficult)
    with pytest.raises(ImageLoadError, match="differs from the annotation"):
        load_canvas(bad, 256, 256)


def test_same_batches_for_0_and_2_workers_and_exact_resume(train_src):
    """One uninterrupted run at 0 workers is the reference; a 2-worker run and runs
    resumed from saved states (0 and 2 workers) must see exactly its batches."""
    n_before, n_after = 3, 4  # 7 batches of 4 cross the 20-record epoch boundary
    ref = take(iter(train_dataset(train_src, CFG, **HOST)), n_before + n_after)

    it0 = iter(train_dataset(train_src, CFG, **HOST))
    take(it0, n_before)
    state0 = it0.get_state()
    resumed0 = iter(train_dataset(train_src, CFG, **HOST))
    resumed0.set_state(state0)
    assert_same(take(resumed0, n_after), ref[n_before:])

    cfg2 = PipelineConfig(**{**CFG.__dict__, "num_workers": 2})
    it2 = iter(train_dataset(train_src, cfg2, **HOST))
    try:
        first = take(it2, n_before)
        state2 = it2.get_state()
        rest = take(it2, n_after)
    finally:
        it2.close()
    assert_same(first + rest, ref)
    resumed2 = iter(train_dataset(train_src, cfg2, **HOST))
    try:
        resumed2.set_state(state2)
        assert_same(take(resumed2, n_after), ref[n_before:])
    finally:
        resumed2.close()


def test_orbax_checkpoint_of_the_iterator(train_src, tmp_path):
    import orbax.checkpoint as ocp

    ref = take(iter(train_dataset(train_src, CFG, **HOST)), 5)
    it = iter(train_dataset(train_src, CFG, **HOST))
    take(it, 2)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        mngr.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    fresh = iter(train_dataset(train_src, CFG, **HOST))
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
        restored = mngr.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same(take(restored["data"], 3), ref[2:])


def test_seed_and_epoch_change_the_stream(train_src):
    a = take(iter(train_dataset(train_src, CFG, **HOST)), 10)  # two epochs of 5 batches
    b = take(iter(train_dataset(train_src, PipelineConfig(**{**CFG.__dict__, "seed": 8}), **HOST)), 1)
    assert not np.array_equal(a[0]["image"], b[0]["image"])
    assert not np.array_equal(a[0]["image"], a[5]["image"])  # new permutation and new RNG


def test_each_epoch_visits_every_record_once(train_src):
    cfg = PipelineConfig(**{**CFG.__dict__, "augment": None, "batch_size": 5, "num_epochs": 2})
    batches = list(iter(train_dataset(train_src, cfg, **HOST)))
    assert len(batches) == 8
    ev = eval_dataset(train_src, PipelineConfig(**{**cfg.__dict__, "batch_size": 20}), **HOST)
    reference = next(iter(ev))["image"].reshape(20, -1)
    for epoch in range(2):
        images = np.concatenate([b["image"] for b in batches[4 * epoch : 4 * epoch + 4]]).reshape(20, -1)
        order = [int(np.flatnonzero((reference == row).all(axis=1))[0]) for row in images]
        assert sorted(order) == list(range(20))
        if epoch == 0:
            first_order = order
    assert order != first_order


def test_hosts_get_disjoint_shards(train_src):
    cfg = PipelineConfig(**{**CFG.__dict__, "augment": None, "batch_size": 10, "num_epochs": 1})
    seen = []
    for pi in range(2):
        (batch,) = list(iter(train_dataset(train_src, cfg, process_index=pi, process_count=2)))
        seen.append({arr.tobytes() for arr in batch["image"]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 20


def test_pad_objects():
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    labels = np.arange(1, 6, dtype=np.int32)
    b, l, d, dropped = pad_objects(boxes, labels, 3, np.array([0, 1, 0, 1, 0], bool))
    np.testing.assert_array_equal(b, boxes[:3]) ; np.testing.assert_array_equal(l, [1, 2, 3])
    np.testing.assert_array_equal(d, [False, True, False]) ; assert dropped == 2
    b, l, dropped = pad_objects(boxes[:1], labels[:1], 3)
    np.testing.assert_array_equal(l, [1, 0, 0]) ; assert (b[1:] == 0).all() and dropped == 0


def _crowded_coco(tmp_path, make_coco):
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "bbox": [k * 4, 0, 4, 4], "iscrowd": 0} for k in range(5)]
    anns.append({"id": 9, "image_id": 2, "category_id": 2, "bbox": [2, 2, 10, 10], "iscrowd": 0})
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 20},
                   {"id": 2, "file_name": "b.jpg", "width": 16, "height": 16}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
    }
    return coco_source(*make_coco(str(tmp_path), data))


def test_max_boxes_pads_and_drops_with_a_counted_warning(tmp_path, caplog, make_coco):
    src = _crowded_coco(tmp_path, make_coco)
    cfg = PipelineConfig(image_size=20, batch_size=2, max_boxes=3, augment=None, num_epochs=1)
    with caplog.at_level(logging.WARNING):
        (batch,) = list(iter(train_dataset(src, cfg, **HOST)))
    counts = sorted((batch["labels"] > 0).sum(axis=1).tolist())
    assert counts == [1, 3]
    full = int(np.argmax((batch["labels"] > 0).sum(axis=1)))
    np.testing.assert_allclose(batch["boxes"][full], [[0, 0, .2, .2], [.2, 0, .4, .2], [.4, 0, .6, .2]], atol=1e-6)
    msgs = [r.getMessage() for r in caplog.records if "max_boxes" in r.getMessage()]
    assert len(msgs) == 1 and "dropped 2" in msgs[0] and "(2 object(s) dropped so far)" in msgs[0]


def test_difficult_objects_dropped_unless_asked(tmp_path, make_coco):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 5, 5], "iscrowd": 0}],
        "categories": [{"id": 1, "name": "x"}],
    }
    src = coco_source(*make_coco(str(tmp_path), data), crowd="difficult")
    base = dict(image_size=20, batch_size=1, max_boxes=4, augment=None, num_epochs=1)
    (b,) = list(iter(train_dataset(src, PipelineConfig(**base), **HOST)))
    assert (b["labels"][0] > 0).sum() == 1
    (b,) = list(iter(train_dataset(src, PipelineConfig(**base, use_difficult=True), **HOST)))
    assert (b["labels"][0] > 0).sum() == 2


def test_eval_one_pass_padded_with_valid_mask_and_indices(cache_dir):
    src = builtin_source("val", SPEC, cache_dir, workers=0, progress=False)
    cfg = PipelineConfig(image_size=32, batch_size=2, max_boxes=6)
    batches = list(iter(eval_dataset(src, cfg, **HOST)))
    assert len(batches) == 3
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(valid, [1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, -1])
    r = src.records[3]
    b = batches[1]
    n = r.num_objects
    np.testing.assert_allclose(b["boxes"][1, :n], r.boxes / [r.width, r.height, r.width, r.height], rtol=1e-6)
    np.testing.assert_array_equal(b["labels"][1, :n], r.labels)
    np.testing.assert_array_equal(b["image_size"][1], [r.height, r.width])
    assert b["difficult"].shape == (2, 6)
    # two hosts: the same number of batches each, together every record once
    per_host = [list(iter(eval_dataset(src, cfg, process_index=p, process_count=2))) for p in range(2)]
    assert len(per_host[0]) == len(per_host[1]) == 2
    idx = np.concatenate([b["index"][b["valid"]] for h in per_host for b in h])
    assert sorted(idx.tolist()) == [0, 1, 2, 3, 4]
    # no augmentation: two runs agree
    again = list(iter(eval_dataset(src, cfg, **HOST)))
    assert_same(batches, again)


def test_a_position_counted_in_images_is_refused(train_src):
    """The pipeline before whole batches were built in the workers saved
    ``{"next_index": images}``; read as batches it would start elsewhere, silently."""
    it = iter(train_dataset(train_src, CFG, **HOST))
    take(it, 2)
    assert set(it.get_state()) == {"batch_stream"}
    fresh = iter(train_dataset(train_src, CFG, **HOST))
    with pytest.raises(ValueError, match="count images, not batches"):
        fresh.set_state({"next_index": 8})


def test_a_short_dev_shm_is_warned_of(tmp_path, monkeypatch, caplog):
    """16 workers at batch 32 with 512 px canvases may hold 16 x 3 x 24 MiB in /dev/shm."""
    import collections
    import shutil

    from ssd_jax.data import pipeline

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(64 * 2**20, 0, 64 * 2**20))
    cfg = PipelineConfig(batch_size=32, num_workers=16, canvas=512)
    with caplog.at_level(logging.WARNING):
        pipeline._warn_if_shared_memory_is_short(cfg)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "64 MB free" in msgs[0] and "up to 1152 MB" in msgs[0] and "--shm-size" in msgs[0]
    caplog.clear()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        pipeline._warn_if_shared_memory_is_short(PipelineConfig(batch_size=4, num_workers=2, image_size=64))
        pipeline._warn_if_shared_memory_is_short(cfg, shm_dir=str(tmp_path / "absent"))
    assert not caplog.records  # 0.4 MB fits; a missing folder is not checked
