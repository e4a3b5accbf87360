"""Fixtures shared by every area of the tests.

The areas are folders: ``ssd_math`` (priors, box coding, matching, loss, detection),
``models``, ``data``, ``evaluation``, ``train``, ``cli`` (``launch.py`` commands) and
``runtime`` (process setup, run records). Helpers are fixtures that return a function
(``tiny_config(**changes)``, ``make_voc(root, images)``), so tests ask for them by name.

What is costly is made once per test run: the generated built-in dataset
(:func:`builtin_cache`), and every XLA compilation that takes longer than
:data:`COMPILE_CACHE_MIN_SECS` (a persistent compilation cache in a temporary folder, which
the subprocesses the tests start inherit through the environment). A program compiled
again (each ``train_and_evaluate`` call jits its own step) is then read back instead.

Compilation itself is most of the run's time, and at the tests' sizes XLA's backend
optimisations cost more than they save: the run compiles with
``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` (backend optimisation level 0; the same programs, only
less machine-code work, about a third less compile time), inherited by the subprocesses too.
Comparisons whose tolerances were measured on optimised code keep the optimisations: those
against numbers recorded from torchvision and the CPU kernels' element-wise checks ask for
:func:`optimized_xla`, and the 8-device SSDLite step sets the variable to 0 for its
subprocess (batch norm on its 1x1 maps amplifies rounding: at level 0 its 8-device update
lay 8.3% from one device's on one CPU kind, against 2% optimised and 5% allowed).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

#: The repository root (``launch.py`` lives here).
ROOT = Path(__file__).resolve().parent.parent
#: Compilations shorter than this are not written to the test run's compilation cache.
COMPILE_CACHE_MIN_SECS = 0.3

_compile_cache: str | None = None


#: JAX's switch for compiling with (almost) no backend optimisation.
OPTIMIZATIONS_ENV = "JAX_DISABLE_MOST_OPTIMIZATIONS"

_set_env: list[str] = []


def pytest_configure(config):
    """Set in the environment before any test imports JAX: compilation without backend
    optimisations, unless the environment already says; a fresh persistent compilation
    cache for this test run (a user's own cache folder is left alone)."""
    global _compile_cache
    if OPTIMIZATIONS_ENV not in os.environ:
        os.environ[OPTIMIZATIONS_ENV] = "1"
        _set_env.append(OPTIMIZATIONS_ENV)
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    _compile_cache = tempfile.mkdtemp(prefix="ssd_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _compile_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(COMPILE_CACHE_MIN_SECS)
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    _set_env.extend(["JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"])


def pytest_unconfigure(config):
    if _compile_cache:
        shutil.rmtree(_compile_cache, ignore_errors=True)
    for key in _set_env:
        os.environ.pop(key, None)


def _jax_config(name, value):
    """JAX setting ``name`` at ``value`` until the generator resumes, then as before."""
    import jax

    before = jax.config.values[name]
    jax.config.update(name, value)
    try:
        yield
    finally:
        jax.config.update(name, before)


@pytest.fixture
def optimized_xla():
    """XLA's usual backend optimisations for this test's compilations (the run compiles
    without them): for comparisons whose tolerances were measured on optimised code.
    Programs this process compiled before under the same key are not recompiled, so such
    tests build their own."""
    yield from _jax_config("jax_disable_most_optimizations", False)


@pytest.fixture
def no_compilation_cache_writes():
    """Nothing this test compiles is written to the run's compilation cache: for programs
    compiled once whose executables are large (an exported network carries its weights as
    constants: about 100 MB to compress and write per program, for nothing)."""
    yield from _jax_config("jax_persistent_cache_min_compile_time_secs", float("inf"))


# ----------------------------------------------------------------------------- processes


@pytest.fixture(scope="session")
def run_python():
    """``run_python(args, env_extra=None, timeout=300)``: ``python *args`` in the repository
    root with the repository importable; the ``CompletedProcess`` (text output)."""

    def run(args, env_extra=None, timeout=300):
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
        return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    return run


# ------------------------------------------------------------------- tiny training runs


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    """One cache folder for the whole run: each size of the built-in dataset is generated
    once and shared by every test that trains on it."""
    return tmp_path_factory.mktemp("builtin_cache")


def _tiny_config(cache_dir, **changes):
    from experiments.demo import get_config

    c = get_config("runlocal")
    c.model.name = "tiny_cnn"
    c.model.image_size = 32
    c.data.cache_dir = str(cache_dir)
    c.data.builtin_num_train = 16
    c.data.builtin_num_val = 4
    c.data.builtin_min_side = 48
    c.data.builtin_max_side = 64
    c.eval_at_end = False
    c.log_every = 1
    # A learning rate that does not depend on num_steps (warmup, then constant): runs of
    # any length then compile to one program, read back from the compilation cache.
    c.optim.schedule = "step"
    c.optim.decay_steps = ()
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture
def tiny_config(builtin_cache):
    """``tiny_config(**changes)``: the demo's runlocal config on the 3-conv ``tiny_cnn``
    network at 32 px (compiles in seconds), 16 + 4 generated images in the shared cache,
    a step schedule without decays, no final evaluation, a log line every step. ``changes`` are dotted keys
    (``**{"optim.lr": 0.1}``)."""
    return lambda **changes: _tiny_config(builtin_cache, **changes)


@pytest.fixture
def tiny_config_file(tiny_config, tmp_path):
    """``tiny_config_file(**changes)``: :func:`tiny_config` written as JSON, for a script
    in a subprocess (``ml_collections.ConfigDict(json.load(f))``); returns the path."""
    count = itertools.count()

    def write(**changes):
        path = tmp_path / f"tiny_config_{next(count)}.json"
        path.write_text(tiny_config(**changes).to_json())
        return path

    return write


def _fixed_batch(batch_size=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.zeros((batch_size, 3, 4), np.float32)
    labels = np.zeros((batch_size, 3), np.int32)
    for i in range(batch_size):
        n = 1 + i % 3
        for j in range(n):
            xy = rng.uniform(0.0, 0.5, 2)
            wh = rng.uniform(0.2, 0.5, 2)
            boxes[i, j] = [xy[0], xy[1], xy[0] + wh[0], xy[1] + wh[1]]
            labels[i, j] = 1 + (i + j) % 3
    return {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32), "boxes": boxes, "labels": labels}


@pytest.fixture(scope="session")
def fixed_batch():
    """``fixed_batch(batch_size=4, size=32, seed=0)``: a training batch of normal-noise
    images with 1-3 boxes each (labels 1-3, padded to 3 with label 0)."""
    return _fixed_batch


@pytest.fixture
def fixed_batches_file(tmp_path):
    """``fixed_batches_file(count, batch_size, size)``: ``count`` :func:`fixed_batch` batches
    (seeds 0, 1, ...) in an ``.npz`` (keys ``image_0``, ``boxes_0`` ...) for a subprocess."""

    def write(count, batch_size, size=32):
        path = tmp_path / f"batches_{count}_{batch_size}_{size}.npz"
        arrays = {f"{k}_{i}": v for i in range(count) for k, v in _fixed_batch(batch_size, size, seed=i).items()}
        np.savez(path, **arrays)
        return path

    return write


# ------------------------------------------------------------------------ event files


def _read_events(logdir):
    from tensorboardX.proto import event_pb2

    scalars, images = {}, {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                if v.HasField("image"):
                    images[v.tag] = images.get(v.tag, 0) + 1
                elif v.HasField("simple_value") or v.HasField("tensor"):
                    value = v.simple_value if v.HasField("simple_value") else None
                    scalars.setdefault(v.tag, []).append((event.step, value))
    return scalars, images


@pytest.fixture(scope="session")
def read_events():
    """``read_events(logdir)``: ``({tag: [(step, value), ...]}, {tag: image count})`` over
    every TensorBoard event file in ``logdir`` (tensorboardX's protobufs; no TensorFlow)."""
    return _read_events


# ------------------------------------------------------------ datasets on disk (VOC, COCO)


def _write_jpeg(path, width, height, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)


def _voc_xml(width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (
        f"<annotation><folder>VOC</folder><filename>x.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>"
    )


def _make_voc(root, images, split="trainval"):
    for year, stems in images.items():
        base = os.path.join(root, f"VOC{year}")
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        with open(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("".join(f"{s}\n" for s in stems))
        for k, (stem, (w, h, objects)) in enumerate(stems.items()):
            with open(os.path.join(base, "Annotations", f"{stem}.xml"), "w") as f:
                f.write(_voc_xml(w, h, objects))
            _write_jpeg(os.path.join(base, "JPEGImages", f"{stem}.jpg"), w, h, seed=k)
    return root


@pytest.fixture(scope="session")
def make_voc():
    """``make_voc(root, {year: {stem: (width, height, objects)}}, split="trainval")``: a
    VOCdevkit tree under ``root`` (random JPEGs, one XML each); returns ``root``. An object
    is ``(name, (xmin, ymin, xmax, ymax) 1-based, difficult)``."""
    return _make_voc


def _make_coco(root, data, images=True):
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    if images:
        for k, img in enumerate(data["images"]):
            _write_jpeg(os.path.join(image_dir, img["file_name"]), img["width"], img["height"], seed=k)
    path = os.path.join(root, "instances.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, image_dir


@pytest.fixture(scope="session")
def make_coco():
    """``make_coco(root, data, images=True)``: ``data`` written as ``root/instances.json``
    and a random JPEG per image entry in ``root/images``; returns (json path, image dir)."""
    return _make_coco


@pytest.fixture
def tiny_coco_dict():
    """A COCO instances dict: 3 images, non-contiguous category ids (3, 7, 12), one crowd
    box, one image without objects. A fresh copy per test (tests edit it)."""
    return {
        "images": [
            {"id": 10, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.jpg", "width": 32, "height": 32},
            {"id": 30, "file_name": "c.jpg", "width": 24, "height": 36},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0, "area": 50},
            {"id": 2, "image_id": 10, "category_id": 12, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1200},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [5.5, 6.5, 20, 10], "iscrowd": 0, "area": 200},
            {"id": 4, "image_id": 20, "category_id": 12, "bbox": [1, 1, 4, 4], "iscrowd": 0, "area": 16},
        ],
        "categories": [
            {"id": 12, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"},
        ],
    }


# ------------------------------------------------------------------- detections


def _assert_same_detections(got, want, atol=1e-4):
    """``got`` (a dict of ``boxes``, ``scores``, ``labels``, ``num_detections`` arrays, as an
    exported detector returns) holds ``want``'s detections (:class:`Detections`): per image
    the same count, and one-to-one the same label with box and score within ``atol``.
    Detections whose scores differ by float rounding may swap places, so they are matched
    by label and box rather than by slot."""
    n = np.asarray(want.num_detections)
    np.testing.assert_array_equal(got["num_detections"], n)
    assert got["num_detections"].dtype == np.int32 and got["labels"].dtype == np.int32
    assert got["boxes"].dtype == np.float32 and got["scores"].dtype == np.float32
    labels, boxes, scores = (np.asarray(want.classes), np.asarray(want.boxes), np.asarray(want.scores))
    for i, count in enumerate(n):
        assert not got["labels"][i, count:].any() and not got["scores"][i, count:].any()  # empty slots
        unused = set(range(count))
        for k in range(count):
            match = [j for j in unused if labels[i, j] == got["labels"][i, k]
                     and np.abs(boxes[i, j] - got["boxes"][i, k]).max() <= atol
                     and abs(scores[i, j] - got["scores"][i, k]) <= atol]
            assert match, f"image {i} slot {k}: no detection like label {got['labels'][i, k]} " \
                          f"box {got['boxes'][i, k]} score {got['scores'][i, k]}"
            unused.discard(min(match, key=lambda j: abs(j - k)))
    assert n.sum() > 0  # there is something to compare


@pytest.fixture(scope="session")
def assert_same_detections():
    """``assert_same_detections(got, want, atol=1e-4)``: an exported detector's outputs hold
    the JAX path's detections (same counts, labels; boxes and scores to ``atol``)."""
    return _assert_same_detections
