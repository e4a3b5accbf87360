"""``launch.py export`` (ONNX through onnxruntime, StableHLO through ``jax.export``) and
``predict --exported``: the exported detector gives the JAX path's detections. onnx,
onnxruntime and jax2onnx are test requirements (``.[test]`` includes ``.[export]``)."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ssd_jax import builders, export, restore
from ssd_jax.cli import main


def _jax_detections(run, images):
    """The JAX path: the eval normalisation on the host, ``inference`` + ``detect``."""
    predict = builders.build_predict_fn(run.graphdef, run.model.spec, run.settings)
    x = builders.input_normalization(run.settings.model)(images)
    return jax.device_get(predict(run.params, run.model_state, x))


@pytest.mark.xdist_group("launched_run")
def test_export_onnx_and_stablehlo_give_the_jax_detections(launched_run, tmp_path, capsys, assert_same_detections):
    workdir = str(launched_run[0])
    run = restore.restore_run(workdir, with_eval_source=False)
    s = run.model.spec.image_size
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8) for n in (1, 3)]
    paths = {}
    for fmt in export.FORMATS:
        paths[fmt] = str(tmp_path / f"tiny.{fmt}")
        assert main(["export", f"--workdir={workdir}", f"--format={fmt}", f"--output={paths[fmt]}"]) == 0
        assert f"as {fmt}" in capsys.readouterr().out
        detector = export.ExportedDetector(paths[fmt])
        meta = json.loads(open(paths[fmt] + ".json").read())
        assert meta["format"] == fmt and meta["image_size"] == s and meta["step"] == run.step
        assert tuple(meta["class_names"]) == run.class_names and meta["normalization"] == "torchvision"
        assert meta["max_detections"] == run.settings.eval.max_detections
        for images in batches:
            out = detector(images)
            assert out["boxes"].shape == (len(images), meta["max_detections"], 4)
            assert_same_detections(out, _jax_detections(run, images))
        with pytest.raises(ValueError, match=rf"takes uint8 images \[N, {s}, {s}, 3\] .* got float32 \[1, {s}, {s}, 3\]"):
            detector(batches[0].astype(np.float32))
        with pytest.raises(ValueError, match=rf"got uint8 \[1, {s - 1}, {s}, 3\]"):
            detector(batches[0][:, 1:])

    import onnx

    model = onnx.load(paths["onnx"])
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["class_names"] == list(run.class_names) and props["image_size"] == s
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == list(export.OUTPUT_NAMES)
    assert model.opset_import[0].version == export.ONNX_OPSET
    os.remove(paths["onnx"] + ".json")  # an ONNX file carries its metadata inside too
    assert export.ExportedDetector(paths["onnx"]).meta == dataclasses.replace(export.read_meta(paths["stablehlo"]),
                                                                              format="onnx")

    # The StableHLO program runs in a fresh process with jax alone (no project code).
    np.save(tmp_path / "images.npy", batches[1])
    script = ("import sys, jax, numpy as np\n"
              "exported = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
              "boxes, scores, labels, n = exported.call(np.load(sys.argv[2]))\n"
              "assert not any(m.startswith('ssd_jax') for m in sys.modules)\n"
              "np.save(sys.argv[3], np.asarray(n))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script, paths["stablehlo"], str(tmp_path / "images.npy"),
                           str(tmp_path / "n.npy")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "n.npy"), np.asarray(_jax_detections(run, batches[1]).num_detections))

    # predict --exported: the same drawings and detections.json as predict --workdir.
    images = sorted(glob.glob(str(launched_run[1] / "**" / "*.jpg"), recursive=True))[:2]
    outs = {}
    for name, source in (("workdir", f"--workdir={workdir}"), ("onnx", f"--exported={paths['onnx']}"),
                         ("stablehlo", f"--exported={paths['stablehlo']}")):
        out = tmp_path / f"pred_{name}"
        assert main(["predict", source, "--images", *images, f"--output={out}", "--score-threshold=0.0"]) == 0
        assert sorted(os.listdir(out)) == sorted([os.path.splitext(os.path.basename(p))[0] + ".png" for p in images]
                                                 + ["detections.json"])
        outs[name] = json.loads((out / "detections.json").read_text())
    assert len(outs["workdir"]) > 0
    for name in export.FORMATS:
        assert [(d["image_id"], d["category_id"]) for d in outs[name]] == \
            [(d["image_id"], d["category_id"]) for d in outs["workdir"]]
        np.testing.assert_allclose([d["score"] for d in outs[name]], [d["score"] for d in outs["workdir"]], atol=2e-5)
        np.testing.assert_allclose([d["bbox"] for d in outs[name]], [d["bbox"] for d in outs["workdir"]], atol=0.02)


@pytest.mark.xdist_group("launched_run")
def test_export_errors_name_the_problem(launched_run, tmp_path, capsys, monkeypatch):
    workdir = str(launched_run[0])
    with pytest.raises(SystemExit):
        main(["export", f"--workdir={workdir}", "--format=onnx", f"--output={tmp_path / 'm.onnx'}", "--nms-iou=2"])
    assert "eval.nms_iou in (0, 1]" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no exported detector at"):
        export.ExportedDetector(str(tmp_path / "nope.onnx"))
    (tmp_path / "bare.stablehlo").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no metadata file .*bare.stablehlo.json beside it"):
        export.ExportedDetector(str(tmp_path / "bare.stablehlo"))

    # Without the export extra: an error naming it, before any work.
    monkeypatch.setitem(sys.modules, "jax2onnx", None)
    assert main(["export", f"--workdir={workdir}", "--format=onnx", f"--output={tmp_path / 'm.onnx'}"]) == 1
    assert "pip install -e '.[export]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ImportError, match=r"jax2onnx is missing.*pip install -e '\.\[export\]'"):
        export.export_onnx(lambda x: x, 32, None)
