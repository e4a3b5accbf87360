"""Export a trained detector for serving, and run an exported one.

The exported program is the whole detector: input normalisation, network, box decoding
and per-class NMS (:func:`ssd_jax.postprocess.detect`), with the parameters inside.

* **Input** ``images``: uint8 ``[N, S, S, 3]`` RGB, already resized to the model's input
  side ``S``; ``N`` is symbolic (any batch).
* **Outputs**: ``boxes`` float32 ``[N, K, 4]`` normalised xyxy; ``scores`` float32
  ``[N, K]``; ``labels`` int32 ``[N, K]``, 1..C with 0 for an empty slot;
  ``num_detections`` int32 ``[N]`` (the valid slots are a prefix of each row).

Two formats:

* ``stablehlo``: serialised StableHLO from :mod:`jax.export`; runs wherever XLA/PJRT
  does, and loads in a fresh process with ``jax.export.deserialize(data).call(images)``,
  without the project's model code.
* ``onnx``: converted by jax2onnx, NMS included, at opset :data:`ONNX_OPSET` (which
  onnxruntime's CPU provider runs). The NMS is the same fixed-length loop of vector ops
  as on device (an ONNX ``Loop``), so the exported model gives the same detections as the
  JAX path. ONNX's own ``NonMaxSuppression`` op is not used: it returns a variable number
  of boxes per class in its own order and would need a different top-K and tie order.

The metadata (class names, COCO category ids, ``S``, the normalisation, the detection
settings, the run and step it came from) is written beside the file as
``<file>.json`` and, for ONNX, into the model's ``metadata_props``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

FORMATS = ("onnx", "stablehlo")
#: The ONNX opset of exported models (onnxruntime >= 1.18 runs it on CPU).
ONNX_OPSET = 21
#: The outputs, in order.
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
INPUT_NAME = "images"
#: The extra that holds the ONNX dependencies.
EXTRA_HINT = "pip install -e '.[export]'"


@dataclasses.dataclass(frozen=True)
class ExportMeta:
    """What a server needs besides the program: written as ``<file>.json``."""

    format: str
    model: str
    image_size: int
    normalization: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...] | None
    max_detections: int
    score_threshold: float
    nms_iou: float
    candidates_per_class: int
    variances: tuple[float, float]
    step: int | None = None
    workdir: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = {INPUT_NAME: f"uint8 [N, {self.image_size}, {self.image_size}, 3] RGB"}
        d["outputs"] = {"boxes": "float32 [N, K, 4] normalised xyxy", "scores": "float32 [N, K]",
                        "labels": "int32 [N, K], 1..C, 0 = empty slot", "num_detections": "int32 [N]"}
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ExportMeta":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["class_names"] = tuple(kw["class_names"])
        kw["category_ids"] = None if kw.get("category_ids") is None else tuple(kw["category_ids"])
        kw["variances"] = tuple(kw["variances"])
        return cls(**kw)


def make_detector(graphdef, params, model_state, spec, normalization: str, *, score_threshold: float,
                  nms_iou: float, candidates_per_class: int, max_detections: int,
                  variances: Sequence[float]) -> Callable:
    """``detector(images uint8 [N, S, S, 3]) -> (boxes, scores, labels, num_detections)``,
    a pure function of the images with the parameters as constants (see the module)."""
    import jax.numpy as jnp

    from ssd_jax import anchors, postprocess
    from ssd_jax import normalization as norms
    from ssd_jax.models import ssd

    norm = norms.get(normalization)
    priors = jnp.asarray(anchors.generate(spec))
    variances = (float(variances[0]), float(variances[1]))

    def detector(images):
        x = norm(images, xp=jnp)
        (logits, offsets), _ = ssd.apply(graphdef, params, model_state, x, train=False)
        det = postprocess.detect(logits, offsets, priors, score_threshold=score_threshold, nms_iou=nms_iou,
                                 candidates_per_class=candidates_per_class, max_detections=max_detections,
                                 variances=variances)
        return det.boxes, det.scores, det.classes, det.num_detections

    return detector


def onnx_graphdef(build: Callable[..., Any]):
    """The graph of the network in the form ONNX export takes: ``build(conv)`` builds the
    network with the given :class:`~ssd_jax.models.layers.ConvChoices` (no parameters are
    allocated). Depthwise convolutions become one grouped convolution (one ONNX ``Conv``,
    which onnxruntime runs several times faster than the shifted products that XLA is
    given); the parameter tree is the same, so a run's parameters apply unchanged.
    StableHLO export keeps the run's own graph (XLA:CPU runs grouped depthwise
    convolutions about ten times slower)."""
    from flax import nnx

    from ssd_jax.models import layers, ssd

    return ssd.split(nnx.eval_shape(lambda: build(layers.ConvChoices(grouped_depthwise=True))))[0]


def _input_spec(image_size: int):
    import jax
    import jax.numpy as jnp

    shape = jax.export.symbolic_shape(f"N, {image_size}, {image_size}, 3")
    return jax.ShapeDtypeStruct(shape, jnp.uint8)


def export_stablehlo(detector: Callable, image_size: int) -> bytes:
    """The serialised StableHLO of ``detector`` for any batch ``N`` (CPU, CUDA and TPU)."""
    import jax

    exported = jax.export.export(jax.jit(detector), platforms=("cpu", "cuda", "tpu"))(_input_spec(image_size))
    return bytes(exported.serialize())


def require_onnx() -> None:
    """An ImportError naming the ``export`` extra when the ONNX packages are missing."""
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export and runs need onnx, onnxruntime and jax2onnx ({e.name} is missing): "
                          f"{EXTRA_HINT}") from None


def export_onnx(detector: Callable, image_size: int, meta: ExportMeta):
    """The ONNX ``ModelProto`` of ``detector`` (checked with ``onnx.checker``), with
    ``meta`` in its ``metadata_props``."""
    require_onnx()
    import contextlib
    import io
    import logging
    import warnings

    import onnx
    from jax2onnx import to_onnx

    # The converter reports on itself at length (plugins for libraries this project does
    # not use, untyped shape constants, debug prints): kept out of the command's output.
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            model = to_onnx(detector, [_input_spec(image_size)], model_name=f"ssd_jax_{meta.model}",
                            opset=ONNX_OPSET, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES))
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
    for key, value in meta.to_json().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.checker.check_model(model, full_check=False)
    return model


def write(path: str, fmt: str, detector: Callable, meta: ExportMeta) -> tuple[str, str]:
    """Export ``detector`` as ``fmt`` to ``path`` and its metadata to ``path + '.json'``
    (both written to temporary names first, so a failed export leaves nothing half
    written); returns the two paths."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "onnx":
        payload = export_onnx(detector, meta.image_size, meta).SerializeToString()
    else:
        payload = export_stablehlo(detector, meta.image_size)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta_path = path + ".json"
    for target, data in ((path, payload), (meta_path, json.dumps(meta.to_json(), indent=1).encode())):
        with open(target + ".tmp", "wb") as f:
            f.write(data)
        os.replace(target + ".tmp", target)
    return path, meta_path


def read_meta(path: str) -> ExportMeta:
    """The metadata written beside an exported file, or for an ONNX file without it, the
    copy in the model's ``metadata_props``."""
    meta_path = path + ".json"
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            return ExportMeta.from_json(json.load(f))
    try:
        import onnx

        props = {p.key: json.loads(p.value) for p in onnx.load(path, load_external_data=False).metadata_props}
        if props.get("format") == "onnx":
            return ExportMeta.from_json(props)
    except Exception:  # noqa: BLE001 - not an ONNX file, or no onnx: the error below says what is missing
        pass
    raise FileNotFoundError(f"{path}: no metadata file {meta_path} beside it (written by launch.py export)")


class ExportedDetector:
    """An exported file, ready to run: ``detector(images uint8 [N, S, S, 3]) -> dict``
    of numpy arrays named as :data:`OUTPUT_NAMES`."""

    def __init__(self, path: str, providers: Sequence[str] = ("CPUExecutionProvider",)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no exported detector at {path}")
        self.path = path
        self.meta = read_meta(path)
        if self.meta.format == "onnx":
            require_onnx()
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # errors only: the converter's shape hints warn
            self._session = ort.InferenceSession(path, options, providers=list(providers))
            self._run = lambda x: self._session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        elif self.meta.format == "stablehlo":
            import jax

            with open(path, "rb") as f:
                exported = jax.export.deserialize(bytearray(f.read()))
            self._run = lambda x: [np.asarray(a) for a in exported.call(x)]
        else:
            raise ValueError(f"{path}: unknown format {self.meta.format!r} in its metadata")

    def check_images(self, images) -> np.ndarray:
        """``images`` as the program takes them, or a ValueError saying what it takes."""
        s = self.meta.image_size
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"{os.path.basename(self.path)} takes uint8 images [N, {s}, {s}, 3] (RGB, resized to "
                             f"{s}x{s}), got {images.dtype} {list(images.shape)}")
        return images

    def __call__(self, images) -> dict[str, np.ndarray]:
        outputs = self._run(self.check_images(images))
        return dict(zip(OUTPUT_NAMES, outputs))
