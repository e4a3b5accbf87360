"""``launch.py eval``, ``predict`` and a refused ``train`` resume on a tiny training run,
including a checkpoint saved on 1 device evaluated on 8 simulated CPU devices and by two
``jax.distributed`` processes."""

import glob
import json
import os
import shutil

import pytest

from ssd_jax import restore
from ssd_jax.cli import main


def _assert_same_metrics(got, want):
    assert set(got) == set(want)
    for key, value in want.items():
        assert abs(got[key] - value) < 1e-6 or (value != value and got[key] != got[key]), key


def _two_hosts_launch(args, timeout=240):
    """``launch.py *args`` as two ``jax.distributed`` CPU processes (one device each),
    coordinated through the environment as on a cluster; their stdouts."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = []
    for pid in range(2):
        env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid)}
        env.pop("XLA_FLAGS", None)
        procs.append(subprocess.Popen([sys.executable, "launch.py", *args], cwd=root, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


@pytest.mark.xdist_group("launched_run")
def test_eval_on_1_and_8_devices_and_2_hosts_and_predict(tmp_path, launched_run, run_python, capsys):
    """The 8-device and two-host evaluations run ``launch.py`` in subprocesses (their
    device setups); the others call the commands in this process (one device)."""
    workdir, cache = tmp_path / "run", launched_run[1]
    shutil.copytree(launched_run[0], workdir)

    def _run(args, env_extra=None):
        return run_python(["launch.py", *args], env_extra)

    assert main(["eval", f"--workdir={workdir}"]) == 0
    out = capsys.readouterr().out
    assert "checkpoint step 4" in out and "images/s" in out and "mAP" in out
    one = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert one["devices"] == 1 and 0.0 <= one["metrics"]["mAP"] <= 1.0
    assert (workdir / "eval" / "step_4_pr.png").stat().st_size > 1000

    proc = _run(["eval", f"--workdir={workdir}", "--step=4"],
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    eight = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert eight["devices"] == 8
    _assert_same_metrics(eight["metrics"], one["metrics"])

    # Two hosts: each evaluates its shard, process 0 alone reports and writes the files.
    os.remove(workdir / "eval" / "step_4.json")
    outs = _two_hosts_launch(["eval", f"--workdir={workdir}", "--step=4"])
    assert "checkpoint step 4" in outs[0] and "2 device(s) on 2 process(es)" in outs[0] and "mAP" in outs[0]
    assert "process 1 of 2: evaluated its shard" in outs[1] and "mAP" not in outs[1]
    hosts = json.loads((workdir / "eval" / "step_4.json").read_text())
    assert hosts["devices"] == 2 and hosts["processes"] == 2 and hosts["num_images"] == one["num_images"]
    _assert_same_metrics(hosts["metrics"], one["metrics"])

    # --best: step 4 was evaluated by the training log and above; an earlier eval of step 2
    # (written here, with a known score) ties it (the later step wins), does not count when
    # partial or of another metric, then beats it.
    assert one["complete"] is True and one["metrics"]["complete"] == 1.0
    best = one["metrics"]["mAP"]
    for score, changes, expected in ((best, {}, 4), (best + 0.5, {"complete": False}, 4),
                                     (best + 0.5, {"metric": "coco"}, 4), (best + 0.1, {}, 2)):
        record = {"step": 2, "metric": "voc", "num_images": one["num_images"], "complete": True, "devices": 1,
                  "metrics": {"mAP": score}, **changes}
        (workdir / "eval" / "step_2.json").write_text(json.dumps(record))
        assert restore.best_step(str(workdir), "mAP", "voc") == (expected, pytest.approx(best if expected == 4 else score))
    assert main(["eval", f"--workdir={workdir}", "--best"]) == 0
    out = capsys.readouterr().out
    assert "best kept checkpoint: step 2" in out and "checkpoint step 2" in out

    images = sorted(glob.glob(str(cache / "**" / "*.jpg"), recursive=True))[:2]
    out = tmp_path / "pred"
    assert main(["predict", f"--workdir={workdir}", "--images", *images, f"--output={out}", "--score-threshold=0.0"]) == 0
    drawn = sorted(os.listdir(out))
    assert len([f for f in drawn if f.endswith(".png")]) == 2 and "detections.json" in drawn
    dets = json.loads((out / "detections.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "score", "bbox"} for d in dets)
    assert {d["image_id"] for d in dets} <= {os.path.basename(p) for p in images}


@pytest.mark.xdist_group("launched_run")
def test_eval_and_predict_errors_name_the_problem(launched_run, tmp_path, capsys):
    """The commands' own error paths, called in this process (``launch.py`` only adds the
    process setup)."""
    workdir = str(launched_run[0])
    with pytest.raises(ValueError, match=r"no checkpoint for step 3 .*saved steps: \[2, 4\]"):
        main(["eval", f"--workdir={workdir}", "--step=3"])
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"--workdir={workdir}", "--images", str(tmp_path / "nope.jpg"), f"--output={tmp_path}"])
    assert exit_info.value.code == 2 and "not found" in capsys.readouterr().err


@pytest.mark.xdist_group("launched_run")
def test_train_resume_with_another_model_is_refused(launched_run, tmp_path, capsys):
    """``launch.py train`` on a workdir of another network size: exit 2 naming the key and
    the flag, before anything is trained."""
    workdir = tmp_path / "run"
    shutil.copytree(launched_run[0], workdir)
    args = ["train", "--config.runlocal=True", "--config.model.name=tiny_cnn", "--config.model.image_size=48",
            f"--config.data.cache_dir={launched_run[1]}", f"--workdir={workdir}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "model.image_size: 32 -> 48" in err and "--allow-config-change" in err
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


@pytest.mark.xdist_group("launched_run")
def test_predict_needs_only_the_workdir(launched_run, tmp_path, capsys):
    """The run records its classes (classes.json) and its input convention (config.json):
    predict runs with the dataset gone (a cache folder that does not exist is not
    generated) and names the same classes."""
    workdir = tmp_path / "run"
    shutil.copytree(launched_run[0], workdir)
    classes = json.loads((workdir / "classes.json").read_text())
    assert classes["class_names"][:2] == ["circle", "square"] and len(classes["category_ids"]) == 10
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["cache_dir"] = str(tmp_path / "no_dataset")
    (workdir / "config.json").write_text(json.dumps(config))
    image = sorted(glob.glob(str(launched_run[1] / "**" / "*.jpg"), recursive=True))[0]
    out = tmp_path / "pred"
    assert main(["predict", f"--workdir={workdir}", "--images", image, f"--output={out}", "--score-threshold=0"]) == 0
    assert not (tmp_path / "no_dataset").exists()
    dets = json.loads((out / "detections.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= set(classes["category_ids"])
