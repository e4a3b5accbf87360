"""``launch.py train`` end to end (subprocesses), and the 8-simulated-device run vs 1 device."""

import json
import os
import textwrap

import pytest

from ssd_jax import host_malloc, run_info

@pytest.mark.xdist_group("launched_run")
def test_launch_train_runlocal_writes_checkpoints_config_and_metrics(launched_run, read_events):
    workdir, _, proc = launched_run
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    config = json.loads((workdir / "config.json").read_text())
    assert config["runlocal"] is True and config["model"]["name"] == "tiny_cnn" and config["num_steps"] == 4
    info = json.loads((workdir / "run_info.json").read_text())
    assert info["devices"] and info["packages"]["jax"] and "commit" in info["git"]
    # launch.py's training profile of CPU flags (ssd_jax/xla_flags.py)
    assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in info["xla_flags"].split()
    # ... and its glibc malloc settings (ssd_jax/host_malloc.py; a user's own values win)
    if host_malloc.missing({}):
        assert info["malloc_env"] == {k: os.environ.get(k, v) for k, v in host_malloc.SETTINGS.items()}
    assert config["model"]["cpu_kernels"] == "auto" and config["model"]["conv_wgrad"] == "auto"  # the run's choices
    assert "ssd_jax process: " in proc.stderr and "xla_profile train" in proc.stderr  # runtime's one line
    assert info["cpu"] == run_info.cpu_model()
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4]
    assert any("eval/mAP" in x for x in lines)
    assert "eval: mAP=" in proc.stdout
    # clu writers: the same scalars in TensorBoard event files, rates from ReportProgress

    scalars, images = read_events(workdir / "tensorboard")
    assert [s for s, _ in scalars["loss"]] == [2, 4] and "eval/mAP" in scalars
    assert [s for s, _ in scalars["steps_per_sec"]] == [2, 4] and "eta_sec" in scalars and "images_per_sec" in scalars
    np_loss = [x["loss"] for x in lines if "loss" in x]
    assert [v for _, v in scalars["loss"]] == pytest.approx(np_loss, rel=1e-6)
    assert images.get("predictions") == 1
    assert (workdir / "predictions" / "step_4.png").exists()
    assert "tensorboard" in proc.stdout and "predictions" in proc.stdout


def test_launch_train_bad_key_is_a_clear_error(tmp_path, run_python):
    proc = run_python(["launch.py", "train", "--config.optim.lrr=0.1", f"--workdir={tmp_path}"], timeout=60)
    assert proc.returncode == 2
    assert "unknown config key 'optim.lrr'" in proc.stderr and "optim.lr" in proc.stderr


SHARDING_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from flax import nnx
    from ssd_jax import anchors, parallel, train_step as train
    from ssd_jax.models import tiny as tiny_model
    assert jax.device_count() == 8, jax.devices()
    batches = np.load(sys.argv[1])

    def run(devices):
        mesh = parallel.make_mesh(devices)
        model = tiny_model.build_tiny(3, 32, rngs=nnx.Rngs(0))
        tx, sched = train.make_optimizer(train.OptimConfig(batch_size=8, lr=0.05, lr_batch_size=8))
        g, state = train.create_train_state(model, tx)
        step = parallel.jit_train_step(train.make_train_step(g, tx, sched, anchors.generate(model.spec)), mesh,
                                       parallel.replicate(state, mesh))
        state = parallel.replicate(state, mesh)
        losses = []
        for i in range(3):
            batch = parallel.global_batch({k: batches[f"{k}_{i}"] for k in ("image", "boxes", "labels")}, mesh, 8)
            if len(devices) == 8:
                assert len(batch["image"].sharding.device_set) == 8
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
        return losses, jax.device_get(state.params)

    l1, p1 = run(jax.devices()[:1])
    l8, p8 = run(jax.devices())
    print("losses", l1, l8)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p1, p8)
    try:
        parallel.per_process_batch_size(12, parallel.make_mesh())
        raise SystemExit("indivisible batch accepted")
    except ValueError as e:
        assert "not divisible by the 8 devices" in str(e)
    print("OK")
""")


def test_eight_simulated_devices_match_one_device(run_python, fixed_batches_file):
    proc = run_python(["-c", SHARDING_SCRIPT, fixed_batches_file(3, 8)],
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
