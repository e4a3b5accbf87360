"""``launch.py eval`` and ``launch.py predict`` on a tiny training run (subprocesses),
including a checkpoint saved on 1 device evaluated on 8 simulated CPU devices."""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env_extra or {})}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_eval_on_1_and_8_devices_and_predict(tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "cache"
    proc = _run(["train", "--config.runlocal=True", "--config.model.name=tiny_cnn", "--config.model.image_size=32",
                 f"--config.data.cache_dir={cache}", f"--workdir={workdir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = _run(["eval", f"--workdir={workdir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint step 4" in proc.stdout and "images/s" in proc.stdout and "mAP" in proc.stdout
    one = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert one["devices"] == 1 and 0.0 <= one["metrics"]["mAP"] <= 1.0
    assert (workdir / "eval" / "step_4_pr.png").stat().st_size > 1000

    proc = _run(["eval", f"--workdir={workdir}", "--step=2"],
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(["eval", f"--workdir={workdir}"], env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert eight["devices"] == 8
    for key, value in one["metrics"].items():
        assert abs(eight["metrics"][key] - value) < 1e-6 or (value != value and eight["metrics"][key] != eight["metrics"][key]), key
    assert (workdir / "eval" / "step_2.json").exists()

    # --best: the training log evaluated step 4; the eval at step 2 above was recorded too.
    best = json.loads((workdir / "eval" / "step_2.json").read_text())["metrics"]["mAP"]
    proc = _run(["eval", f"--workdir={workdir}", "--best"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = 2 if best > one["metrics"]["mAP"] else 4
    assert f"best kept checkpoint: step {expected}" in proc.stdout

    proc = _run(["eval", f"--workdir={workdir}", "--step=3"])
    assert proc.returncode != 0 and "no checkpoint for step 3" in proc.stderr

    images = sorted(glob.glob(str(cache / "**" / "*.jpg"), recursive=True))[:2]
    out = tmp_path / "pred"
    proc = _run(["predict", f"--workdir={workdir}", "--images", *images, f"--output={out}", "--score-threshold=0.0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    drawn = sorted(os.listdir(out))
    assert len([f for f in drawn if f.endswith(".png")]) == 2 and "detections.json" in drawn
    dets = json.loads((out / "detections.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "score", "bbox"} for d in dets)
    assert {d["image_id"] for d in dets} <= {os.path.basename(p) for p in images}

    proc = _run(["predict", f"--workdir={workdir}", "--images", str(tmp_path / "nope.jpg"), f"--output={out}"])
    assert proc.returncode == 2 and "not found" in proc.stderr
