"""training_loop + checkpointing: exact resume, NaN guard, SIGTERM, init_from (tiny network)."""

import functools
import os
import shutil
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import builders, checkpointing, training_loop
from ssd_jax import train_step as train_lib
from ssd_jax.config import Settings
from ssd_jax.metric_writers import read_metrics
from ssd_jax.models import params_io



def _params(result):
    return params_io.flatten(nnx.to_pure_dict(jax.device_get(result["state"].params)))


def _losses(workdir):
    return {m["step"]: m["loss"] for m in read_metrics(workdir) if "loss" in m}


def _resume_config(tiny_config, num_steps, num_workers=0, augment_on="host"):
    # A step schedule (warmup, a drop at step 4 after the restart) does not depend on
    # num_steps, so "stop at 3, then run to 6" is the same run as "run to 6".
    device = {"data.augment_on": "device", "data.canvas_size": 64, "data.photometric": True, "data.expand_p": 0.5,
              "data.crop": True} if augment_on == "device" else {}
    return tiny_config(num_steps=num_steps, checkpoint_every=3, **{
        "optim.schedule": "step", "optim.warmup_steps": 2, "optim.decay_steps": (4,),
        "data.num_workers": num_workers, **device})


def _assert_same_run(straight, resumed, dir_a, dir_b):
    """Same batches and losses, step by step, and bitwise-equal final parameters and state."""
    assert _losses(dir_a) == _losses(dir_b)
    pa, pb = _params(straight), _params(resumed)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight["state"]), jax.device_get(resumed["state"]))


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_continues_exactly(tiny_config, tmp_path, num_workers):
    config = functools.partial(_resume_config, tiny_config, num_workers=num_workers)
    straight = training_loop.train_and_evaluate(config(6), str(tmp_path / "a"))
    first = training_loop.train_and_evaluate(config(3), str(tmp_path / "b"))
    assert first["step"] == 3
    resumed = training_loop.train_and_evaluate(config(6), str(tmp_path / "b"))
    assert resumed["step"] == 6
    _assert_same_run(straight, resumed, tmp_path / "a", tmp_path / "b")
    steps = sorted(os.listdir(tmp_path / "b" / "checkpoints"))
    assert steps == ["3", "6"]
    assert os.path.exists(tmp_path / "b" / "run_info.1.json")  # the first start's record is kept


# Trains to step 6 (checkpoint every 3) and kills itself with SIGKILL when step 5 is about
# to be logged, once checkpoint 3 is on disk: mid-run, with batch 6 already prefetched.
_KILLED_AT_STEP_5 = """
import json, os, signal, sys, time
import ml_collections
from ssd_jax import metric_writers, training_loop
config_file, workdir = sys.argv[1:3]
create_writer = metric_writers.create_writer

def killing_writer(*args, **kwargs):
    writer = create_writer(*args, **kwargs)
    write_scalars = writer.write_scalars

    def write(step, scalars):
        if step == 5 and "loss" in scalars:
            deadline = time.time() + 60  # the background save of step 3 commits
            while not os.path.isdir(os.path.join(workdir, "checkpoints", "3")) and time.time() < deadline:
                time.sleep(0.05)
            print("KILLED_AT 5", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        write_scalars(step, scalars)

    writer.write_scalars = write
    return writer

metric_writers.create_writer = killing_writer
training_loop.train_and_evaluate(ml_collections.ConfigDict(json.load(open(config_file))), workdir)
"""


def test_a_sigkilled_run_with_device_augmentation_resumes_exactly(tiny_config, tmp_path, run_python):
    """The full SSD augmentation on the device (its keys come from (seed, step, image
    index)), background checkpoints and a prefetched batch: a run killed with SIGKILL after
    checkpoint 3 restarts there and logs the losses and ends with the weights of a run
    that was never interrupted."""
    config = functools.partial(_resume_config, tiny_config, augment_on="device")
    straight = training_loop.train_and_evaluate(config(6), str(tmp_path / "a"))
    config_file = tmp_path / "config.json"
    config_file.write_text(config(6).to_json())
    script = tmp_path / "killed.py"
    script.write_text(_KILLED_AT_STEP_5)
    proc = run_python([script, config_file, tmp_path / "b"], timeout=240)
    assert proc.returncode == -signal.SIGKILL and "KILLED_AT 5" in proc.stdout, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["3"]
    assert max(_losses(tmp_path / "b")) == 4  # steps 1-4 were logged before the kill
    resumed = training_loop.train_and_evaluate(config(6), str(tmp_path / "b"))
    assert resumed["step"] == 6
    _assert_same_run(straight, resumed, tmp_path / "a", tmp_path / "b")


def test_a_killed_run_resumes_with_one_log_line_per_step(tiny_config, tmp_path):
    """Killed after step 4 was logged but before its checkpoint, in the middle of a line: the
    restart replays steps 3 and 4 from the checkpoint of step 2, and metrics.jsonl then holds
    each step once (the replayed values, equal to the first ones), with no torn line."""
    config = tiny_config(num_steps=4, checkpoint_every=2)
    training_loop.train_and_evaluate(config, str(tmp_path))
    first = _losses(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.')
    training_loop.train_and_evaluate(config, str(tmp_path))
    entries = read_metrics(str(tmp_path))
    assert [m["step"] for m in entries if "loss" in m] == [1, 2, 3, 4]
    assert _losses(tmp_path) == first
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")


def test_resume_refuses_a_changed_model_data_or_loss_and_records_allowed_changes(tiny_config, tmp_path, caplog):
    import json
    import logging

    from ssd_jax.config import ConfigChangeError

    workdir = tmp_path / "run"
    training_loop.train_and_evaluate(tiny_config(num_steps=2, checkpoint_every=2), str(workdir))
    first_config = (workdir / "config.json").read_text()
    changed = tiny_config(num_steps=4, checkpoint_every=2, **{"loss.neg_pos_ratio": 2.0, "model.image_size": 48})
    with pytest.raises(ConfigChangeError, match=r"(?s)loss.neg_pos_ratio: 3.0 -> 2.0.*model.image_size: 32 -> 48"
                                                r".*--allow-config-change"):
        training_loop.train_and_evaluate(changed, str(workdir))
    assert (workdir / "config.json").read_text() == first_config and not (workdir / "config.1.json").exists()

    # More steps and another learning rate: allowed, logged, recorded; the schedule is rebuilt.
    more = tiny_config(num_steps=4, checkpoint_every=2, **{"optim.lr": 0.5, "data.num_workers": 0})
    with caplog.at_level(logging.WARNING):
        result = training_loop.train_and_evaluate(more, str(workdir))
    assert result["step"] == 4
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["config_changes"] == {"num_steps": [2, 4], "optim.lr": [tiny_config().optim.lr, 0.5]}
    assert (workdir / "config.1.json").read_text() == first_config  # the first start's config, archived
    assert json.loads((workdir / "config.json").read_text())["num_steps"] == 4
    assert "learning-rate schedule is rebuilt; at step 2" in caplog.text

    # A refused change goes through when asked for, and is recorded too.
    bigger = tiny_config(num_steps=6, checkpoint_every=2, **{"optim.lr": 0.5, "loss.neg_pos_ratio": 2.0})
    assert training_loop.train_and_evaluate(bigger, str(workdir), allow_config_change=True)["step"] == 6
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["config_changes"] == {"num_steps": [4, 6], "loss.neg_pos_ratio": [3.0, 2.0]}
    assert sorted(p.name for p in workdir.glob("config*.json")) == ["config.1.json", "config.2.json", "config.json"]


def test_keeps_the_last_k_checkpoints(tiny_config, tmp_path):
    training_loop.train_and_evaluate(tiny_config(num_steps=5, checkpoint_every=1, keep_checkpoints=2), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]


def test_keeps_the_latest_and_the_best_evaluated_checkpoint(tiny_config, tmp_path, monkeypatch):
    scores = {2: 0.5, 4: 0.9, 6: 0.1, 8: 0.2}
    steps = iter(sorted(scores))
    monkeypatch.setattr(training_loop.eval_loop, "evaluate", lambda *a, **k: ({"mAP": scores[next(steps)]}, 1.0))
    config = tiny_config(num_steps=8, checkpoint_every=2, keep_checkpoints=1, eval_every=2,
                         eval_at_end=True)
    result = training_loop.train_and_evaluate(config, str(tmp_path))
    assert result["eval"] == {"mAP": 0.2}
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]  # the best (0.9) and the latest


def test_partial_evaluations_do_not_rank_checkpoints(tiny_config, tmp_path, monkeypatch, caplog):
    """Evaluations of 2 of the 4 val images (eval_max_images): keep_best is off (said in
    the log), so the latest checkpoint is kept, not the one with the best partial score."""
    import logging

    scores = {2: 0.5, 4: 0.9, 6: 0.1, 8: 0.2}
    steps = iter(sorted(scores))
    monkeypatch.setattr(training_loop.eval_loop, "evaluate", lambda *a, **k: ({"mAP": scores[next(steps)]}, 1.0))
    config = tiny_config(num_steps=8, checkpoint_every=2, keep_checkpoints=1, eval_every=2, eval_at_end=True,
                         eval_max_images=2)
    with caplog.at_level(logging.WARNING):
        training_loop.train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["8"]
    assert "keep_best is off: evaluations cover 2 of the 4 eval images" in caplog.text


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    """A batch that makes the loss NaN (here: NaN pixels in the 3rd batch) stops the run with
    an error naming the step; the checkpoint of step 2 is the latest and resumes cleanly."""
    real_global_batch = training_loop.parallel.global_batch
    calls = []

    def poisoned(host_batch, mesh, size):
        calls.append(1)
        if len(calls) == 3:
            host_batch = {**host_batch, "image": np.full_like(host_batch["image"], np.nan)}
        return real_global_batch(host_batch, mesh, size)

    monkeypatch.setattr(training_loop.parallel, "global_batch", poisoned)
    with pytest.raises(training_loop.NonFiniteLossError, match=r"non-finite loss at step 3 .*checkpoint \(step 2\)"):
        training_loop.train_and_evaluate(tiny_config(num_steps=6, checkpoint_every=1), str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()
    monkeypatch.setattr(training_loop.parallel, "global_batch", real_global_batch)
    # Resuming from the intact checkpoint trains on, with finite numbers.
    ok = training_loop.train_and_evaluate(tiny_config(num_steps=4, checkpoint_every=100), str(tmp_path))
    assert ok["step"] == 4 and all(np.isfinite(v).all() for v in _params(ok).values())
    assert all(np.isfinite(v) for v in _losses(tmp_path).values())


def test_divergence_never_reaches_a_checkpoint(tiny_config, tmp_path):
    """An absurd learning rate: whichever comes first (inf weights or a NaN loss) stops the
    run, and every checkpoint on disk holds finite numbers."""
    training_loop.train_and_evaluate(tiny_config(num_steps=2, checkpoint_every=1), str(tmp_path))
    config = tiny_config(num_steps=20, checkpoint_every=1, **{"optim.lr": 1e30, "optim.warmup_steps": 0})
    with pytest.raises(training_loop.NonFiniteLossError, match=r"at step \d+ ") as info:
        training_loop.train_and_evaluate(config, str(tmp_path))
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
    steps = ckpt.all_steps()
    # Finite-but-huge weights (a loss that is still finite) may be saved; inf/NaN never are.
    assert info.value.step >= 3 and steps[:2] == [1, 2] and steps[-1] == info.value.step - 1
    settings = Settings.from_config(config)
    model = builders.build_model(settings.model, 10, nnx.Rngs(0))
    _, template = train_lib.create_train_state(model, train_lib.make_optimizer(settings.optim)[0])
    for s in steps:
        restored = ckpt.restore(s, template, None)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(restored)))
    ckpt.close()


_KILLED_DURING_SAVE = """
import os, signal, sys
import numpy as np
from ssd_jax import checkpointing
ckpt = checkpointing.Checkpointer(sys.argv[1], 1)
ckpt.save(1, {"w": np.full((4,), 1.0, np.float32)}, None)
ckpt.wait()
big = {"w": np.full((4,), 2.0, np.float32), "big": np.ones((32, 1024, 1024), np.float32)}  # 128 MiB
ckpt.save(2, big, None)  # returns before the files are written
print("IN_FLIGHT", not os.path.isdir(os.path.join(sys.argv[1], "2")), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_during_a_background_save_leaves_the_previous_checkpoint(tmp_path, run_python):
    """Saves run in the background; a process killed while one is being written leaves no
    step 2 that looks complete, and step 1 restores."""
    script = tmp_path / "kill.py"
    script.write_text(_KILLED_DURING_SAVE)
    proc = run_python([script, tmp_path / "checkpoints"], timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert "IN_FLIGHT True" in proc.stdout  # the save had not finished when the process died
    ckpt = checkpointing.Checkpointer(str(tmp_path / "checkpoints"), 1)
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    restored = ckpt.restore(None, {"w": np.zeros((4,), np.float32)}, None)
    np.testing.assert_array_equal(restored["w"], np.ones(4, np.float32))
    ckpt.close()


def test_weights_finite_check_used_before_saves():
    ok = {"a": np.ones((2, 3), np.float32), "b": [np.zeros(4, np.float32)]}
    assert bool(training_loop._all_finite(ok))
    bad = {"a": np.ones((2, 3), np.float32), "b": [np.array([0.0, np.inf], np.float32)]}
    assert not bool(training_loop._all_finite(bad))
    mixed = {"count": np.arange(3, dtype=np.int32), "scalar": np.float32(2.0),
             "half": jnp.array([1.0, -2.0], jnp.bfloat16)}
    assert bool(training_loop._all_finite(mixed)) and bool(training_loop._all_finite({}))
    assert not bool(training_loop._all_finite({**mixed, "half": jnp.array([1.0, jnp.nan], jnp.bfloat16)}))


def test_preemption_flag_handler():
    flag = checkpointing.PreemptionFlag()
    assert not flag.requested
    flag.handler(signal.SIGTERM, None)
    assert flag.requested and flag.signum == signal.SIGTERM


def test_preemption_is_agreed_across_processes():
    # one process: the local flag, no communication
    flag = checkpointing.PreemptionFlag()
    assert flag.agreed() is False
    flag.handler(signal.SIGTERM, None)
    assert flag.agreed() is True
    # several processes: any host's signal stops all of them (a fake gather of 3 hosts)
    quiet = checkpointing.PreemptionFlag()
    seen = []

    def gather(local, others):
        seen.append(int(local))
        return np.array([int(local), *others], np.int32)

    assert quiet.agreed(lambda x: gather(x, [0, 1])) is True
    assert quiet.agreed(lambda x: gather(x, [0, 0])) is False
    assert seen == [0, 0]  # this host sent its own (unset) flag
    assert flag.agreed(lambda x: gather(x, [0, 0])) is True


#: Every two-host script runs between these: argv is ``pid port *args root``.
_HOST_START = """
import sys
import jax
pid, port = int(sys.argv[1]), sys.argv[2]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
"""
_HOST_END = "jax.distributed.shutdown()\n"


def _two_hosts(script_text, tmp_path, args):
    """Start ``script_text`` (between :data:`_HOST_START` and :data:`_HOST_END`) as two
    jax.distributed CPU processes; returns the ``Popen`` objects."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "host.py"
    script.write_text(_HOST_START + script_text + _HOST_END)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port), *args, root], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    return procs


def _finish(procs, timeout):
    """``[(stdout, stderr)]`` of ``procs``; any still running after ``timeout`` s is killed."""
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


_TWO_HOSTS = """
import signal
from ssd_jax import checkpointing
flag = checkpointing.PreemptionFlag()
before = flag.agreed()
if pid == 1:
    flag.handler(signal.SIGTERM, None)  # only host 1 gets the signal
print("RESULT", jax.process_count(), before, flag.agreed(), flush=True)
"""


def test_preemption_agreed_by_two_real_processes(tmp_path):
    # jax.distributed on the CPU (gloo collectives): the host without the signal stops too
    procs = _two_hosts(_TWO_HOSTS, tmp_path, [])
    outs = _finish(procs, 120)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert "RESULT 2 False True" in out, out + err[-2000:]


_TRAIN_HOST = """
import json
import ml_collections
config_file, workdir, root = sys.argv[3:6]
from ssd_jax import training_loop
config = ml_collections.ConfigDict(json.load(open(config_file)))
r = training_loop.train_and_evaluate(config, workdir)
print("RESULT", json.dumps({"step": r["step"], "preempted": r["preempted"], "loss": r["metrics"].get("loss")}), flush=True)
"""


@pytest.mark.slow
def test_sigterm_to_one_of_two_hosts_stops_both_at_one_checkpoint(tiny_config, tiny_config_file, tmp_path):
    # Two jax.distributed CPU processes train one run (global batch 4, 2 images per host);
    # only host 1 gets SIGTERM. Both must stop after the same step, with one checkpoint.
    import json

    builders.build_sources(Settings.from_config(tiny_config()).data)  # generate the data once, before the hosts
    workdir = str(tmp_path / "run")
    config_file = tiny_config_file(num_steps=10_000, checkpoint_every=10_000)
    procs = _two_hosts(_TRAIN_HOST, tmp_path, [str(config_file), workdir])
    deadline = time.time() + 180
    while time.time() < deadline and not read_metrics(workdir) and all(p.poll() is None for p in procs):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outs = _finish(procs, 120)  # without the agreement host 0 would hang here
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        line = next(l for l in out.splitlines() if l.startswith("RESULT"))
        results.append(json.loads(line[len("RESULT"):]))
    assert results[0] == results[1], results  # same step, both preempted, the same global loss
    step = results[0]["step"]
    assert results[0]["preempted"] and 1 <= step < 10_000
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
    assert "another host" in outs[0][0] + outs[0][1]  # host 0 says why it stopped


class _Recorder:
    """An evaluator that keeps, per image id, the number of valid detections and their
    score sum (what two evaluation paths must agree on)."""

    def reset(self):
        self.seen = {}

    def add(self, ids, detections):
        for i, image_id in enumerate(ids):
            if image_id is not None:
                valid = np.asarray(detections.valid[i])
                self.seen[str(image_id)] = [int(valid.sum()), float(np.asarray(detections.scores[i])[valid].sum())]

    def compute(self):
        return {"images": float(len(self.seen))}


_EVAL_HOST = """
import json
import ml_collections
config_file, workdir, root = sys.argv[3:6]
from tests.train.test_train_loop import _Recorder
from ssd_jax import builders, restore, training_loop
from ssd_jax.evaluation import loop as eval_loop
c = ml_collections.ConfigDict(json.load(open(config_file)))
r = training_loop.train_and_evaluate(c, workdir)  # trains, then evaluates on both hosts
run = restore.restore_run(workdir)
pcfg = builders.eval_pipeline_config(run.settings, run.model.spec.image_size, 2)
rec = _Recorder()
eval_loop.evaluate(builders.build_predict_fn(run.graphdef, run.model.spec, run.settings), run.params,
                   run.model_state, run.eval_source, pcfg, run.mesh, rec)
print("RESULT", json.dumps({"eval": r["eval"], "seen": rec.seen}), flush=True)
"""


@pytest.mark.slow
def test_evaluation_on_two_hosts_equals_one_host(tiny_config, tiny_config_file, tmp_path):
    # 5 val images over 2 hosts (3 + 2, local batches of 2, padded): every image's
    # detections reach the evaluator once, equal to a one-process evaluation of the same
    # checkpoint.
    import json

    builders.build_sources(Settings.from_config(tiny_config(**{"data.builtin_num_val": 5})).data)
    workdir = str(tmp_path / "run")
    config_file = tiny_config_file(num_steps=2, checkpoint_every=2, eval_max_images=0, eval_at_end=True,
                                   **{"data.builtin_num_val": 5})
    procs = _two_hosts(_EVAL_HOST, tmp_path, [str(config_file), workdir])
    outs = _finish(procs, 180)
    results = []
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(next(l for l in out.splitlines() if l.startswith("RESULT"))[len("RESULT"):]))
    assert results[0] == results[1]  # the same metrics and detections on both hosts
    assert results[0]["eval"]["num_images"] == 5.0  # the loop's own evaluation saw every val image once

    from ssd_jax import restore
    from ssd_jax.evaluation import loop as eval_loop

    run = restore.restore_run(workdir)  # this process: one host
    pcfg = builders.eval_pipeline_config(run.settings, run.model.spec.image_size, 4)
    rec = _Recorder()
    eval_loop.evaluate(builders.build_predict_fn(run.graphdef, run.model.spec, run.settings), run.params,
                       run.model_state, run.eval_source, pcfg, run.mesh, rec)
    two = results[0]["seen"]
    assert sorted(two) == sorted(rec.seen) and len(two) == len(run.eval_source)
    for image_id, (n, total) in rec.seen.items():
        assert two[image_id][0] == n and two[image_id][1] == pytest.approx(total, rel=1e-4, abs=1e-4)


def test_sigterm_saves_a_checkpoint_and_stops(tiny_config, tmp_path):
    workdir = str(tmp_path)

    def send_sigterm_after_first_step():
        deadline = time.time() + 120
        while time.time() < deadline and not read_metrics(workdir):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=send_sigterm_after_first_step, daemon=True)
    killer.start()
    result = training_loop.train_and_evaluate(tiny_config(num_steps=10_000, checkpoint_every=10_000), workdir)
    killer.join()
    assert result["preempted"] and 1 <= result["step"] < 10_000
    assert os.listdir(tmp_path / "checkpoints") == [str(result["step"])]
    assert signal.getsignal(signal.SIGTERM) == previous  # handler uninstalled


def test_init_from_a_converted_checkpoint(tiny_config, tmp_path):
    config = tiny_config(num_steps=1, checkpoint_every=1)
    donor = builders.build_model(Settings.from_config(config).model, 10, nnx.Rngs(123))
    flat = params_io.flatten(nnx.to_pure_dict(nnx.state(donor, nnx.Param)))
    params_io.save_converted(str(tmp_path / "conv"), flat, {"source": "test", "model": "tiny_cnn", "num_classes": 10})
    config.init_from = str(tmp_path / "conv")
    config.optim.lr = 1e-12  # one step barely moves anything
    config.optim.weight_decay = 0.0
    result = training_loop.train_and_evaluate(config, str(tmp_path / "run"))
    got = _params(result)
    for k, v in flat.items():
        np.testing.assert_allclose(got[k], v, atol=1e-6, err_msg=k)


def test_init_from_uses_the_normalization_its_weights_expect(tiny_config, tmp_path):
    """A converted checkpoint records the input convention of its weights (``convert --from
    torchvision-vgg16``: ``torchvision``); a run started from it trains, evaluates and
    predicts with that convention, and a config that names another one is an error."""
    from ssd_jax import restore
    from ssd_jax import normalization

    config = tiny_config(num_steps=1, checkpoint_every=1)
    donor = builders.build_model(Settings.from_config(config).model, 10, nnx.Rngs(0))
    flat = params_io.flatten(nnx.to_pure_dict(nnx.state(donor, nnx.Param)))
    params_io.save_converted(str(tmp_path / "conv"), flat, {"source": "test", "model": "tiny_cnn",
                                                            "normalization": "caffe_vgg"})
    config.init_from = str(tmp_path / "conv")
    assert builders.normalization_name(Settings.from_config(config).model) == "torchvision"  # the network's own
    training_loop.train_and_evaluate(config, str(tmp_path / "run"))
    run_settings = restore.load_run_settings(str(tmp_path / "run"))
    assert run_settings.model.normalization == "caffe_vgg"  # recorded in config.json
    caffe = normalization.CAFFE_VGG.mean_pixel
    assert builders.input_normalization(run_settings.model) == normalization.CAFFE_VGG
    assert builders.train_pipeline_config(run_settings, 32, 4).normalization.mean_pixel == pytest.approx(caffe)
    assert config.model.normalization == "auto"  # the caller's config is left as it was

    config.model.normalization = "torchvision"
    with pytest.raises(ValueError, match=r"model.normalization='torchvision' contradicts init_from .*'caffe_vgg' inputs"):
        training_loop.train_and_evaluate(config, str(tmp_path / "run2"))


def test_init_from_normalization_of_a_converted_vgg16(tmp_path):
    """``ssd300_vgg16`` alone means Caffe inputs (0-255 minus the mean); the torchvision
    VGG16 backbone that ``convert --from torchvision-vgg16`` writes expects torchvision's
    (0-1, ImageNet mean and std): started from it, the run takes the backbone's."""
    from ssd_jax import normalization
    from ssd_jax.models.config import ModelConfig

    backbone = {"extractor/conv1_1/kernel": np.zeros((3, 3, 3, 64), np.float32)}
    params_io.save_converted(str(tmp_path), backbone, {"source": "torchvision-vgg16", "model": "ssd300_vgg16|ssd512_vgg16",
                                                       "partial": True, "normalization": "torchvision"})
    model = ModelConfig(name="ssd300_vgg16", image_size=300)
    assert builders.normalization_name(model) == "caffe_vgg"
    assert builders.init_from_normalization(model, str(tmp_path)) == "torchvision"
    chosen = ModelConfig(name="ssd300_vgg16", image_size=300, normalization="torchvision")
    assert builders.input_normalization(chosen) == normalization.TORCHVISION
    with pytest.raises(ValueError, match="contradicts"):
        builders.init_from_normalization(ModelConfig(name="ssd300_vgg16", normalization="caffe_vgg"), str(tmp_path))
    with pytest.raises(ValueError, match="model.normalization must be one of"):
        ModelConfig(normalization="imagenet")


def test_voc_experiment_on_a_tiny_devkit(tmp_path, make_voc):
    """The VOC experiment's data path (07 trainval -> 07 test, difficult flags) with the tiny network."""
    from experiments.ssd300_vgg16_voc import get_config

    objects = [("car", (3, 4, 40, 30), 0), ("person", (20, 10, 60, 45), 1)]
    make_voc(str(tmp_path / "devkit"), {"2007": {f"{i:06d}": (64, 48, objects) for i in range(4)}}, split="trainval")
    make_voc(str(tmp_path / "devkit"), {"2007": {f"{i:06d}": (64, 48, objects) for i in range(2)}}, split="test")
    config = get_config("runlocal")
    config.model.name, config.model.image_size = "tiny_cnn", 32
    config.data.voc_root = str(tmp_path / "devkit")
    config.data.voc_train = ("2007/trainval",)
    result = training_loop.train_and_evaluate(config, str(tmp_path / "run"))
    ev = result["eval"]
    assert result["step"] == config.num_steps and ev["num_images"] == 2
    # VOC metric with the difficult flags: person has only difficult objects (no AP), car
    # has an AP; classes without objects have none; mAP is the mean over the classes with one
    assert np.isnan(ev["AP/person"]) and np.isnan(ev["AP/dog"]) and 0.0 <= ev["AP/car"] <= 1.0
    per_class = [v for k, v in ev.items() if k.startswith("AP/") and not np.isnan(v)]
    assert per_class == [ev["AP/car"]] and ev["mAP"] == pytest.approx(ev["AP/car"])


@pytest.mark.parametrize("experiment", ["ssd300_vgg16_coco", "ssdlite_mobilenetv2_coco"])
def test_coco_experiments_on_a_tiny_coco_json(tmp_path, experiment, make_coco, tiny_coco_dict):
    """The COCO experiments' data path (COCO JSON, crowd kept as 'difficult', COCO metric)
    with the tiny network."""
    import importlib


    json_path, images = make_coco(str(tmp_path / "coco"), tiny_coco_dict)
    config = importlib.import_module(f"experiments.{experiment}").get_config("runlocal")
    config.model.name, config.model.image_size = "tiny_cnn", 32
    config.data.coco_train_json = config.data.coco_val_json = json_path
    config.data.coco_train_images = config.data.coco_val_images = images
    result = training_loop.train_and_evaluate(config, str(tmp_path / "run"))
    ev = result["eval"]
    assert result["step"] == config.num_steps and ev["num_images"] == 3
    # COCO metric: every category has a (non-crowd) object, so an AP in [0, 1]; AP is their mean
    per_class = [ev[f"AP/{c}"] for c in ("cat", "dog", "zebra")]
    assert all(0.0 <= v <= 1.0 for v in per_class) and ev["AP"] == pytest.approx(np.mean(per_class))
    assert 0.0 <= ev["AP50"] <= 1.0 and 0.0 <= ev["AR100"] <= 1.0 and ev["AP50"] >= ev["AP"] - 1e-12


def test_config_checks_are_clear():
    from experiments.ssd300_vgg16_coco import get_config as coco_config
    from experiments.ssd300_vgg16_voc import get_config

    with pytest.raises(ValueError, match="needs data.voc_root"):
        Settings.from_config(get_config())
    with pytest.raises(ValueError, match="needs data.coco_train_json"):
        Settings.from_config(coco_config())


def test_best_step_ranks_only_complete_evaluations(tmp_path, monkeypatch):
    """A partial evaluation in the training log (eval_max_images: ``eval/complete`` 0) does
    not rank checkpoints, however high its score; a log without the flag counts."""
    import json

    from ssd_jax import restore

    monkeypatch.setattr(restore, "checkpoint_steps", lambda workdir: [2, 4, 6])
    lines = [{"step": 2, "eval/mAP": 0.9, "eval/complete": 0.0}, {"step": 4, "eval/mAP": 0.5, "eval/complete": 1.0},
             {"step": 6, "eval/mAP": 0.4}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert restore.best_step(str(tmp_path)) == (4, 0.5)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "eval/mAP": 0.9, "eval/complete": 0.0}) + "\n")
    with pytest.raises(ValueError, match="no kept checkpoint"):
        restore.best_step(str(tmp_path))
