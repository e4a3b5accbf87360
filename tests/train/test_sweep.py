"""ssd_jax.sweep and ``launch.py sweep``: points, naming, --index, skip/resume, failures,
and the summary (table, CSV, PNG)."""

import json
import os
import textwrap

import pytest

from ssd_jax import sweep
from ssd_jax.cli import sweep_cmd


def test_product_zip_and_names():
    points = sweep.product(**{"optim.lr": [0.001, 0.01], "loss.neg_pos_ratio": [3.0, 2.0]})
    assert points == [{"optim.lr": 0.001, "loss.neg_pos_ratio": 3.0}, {"optim.lr": 0.001, "loss.neg_pos_ratio": 2.0},
                      {"optim.lr": 0.01, "loss.neg_pos_ratio": 3.0}, {"optim.lr": 0.01, "loss.neg_pos_ratio": 2.0}]
    assert [sweep.point_name(p) for p in points[:2]] == ["lr=0.001_neg_pos_ratio=3", "lr=0.001_neg_pos_ratio=2"]
    assert sweep.zip_axes(**{"a.x": [1, 2], "b.y": ["p", "q"]}) == [{"a.x": 1, "b.y": "p"}, {"a.x": 2, "b.y": "q"}]
    assert sweep.point_name({"optim.decay_steps": (80, 100), "model.name": "ssd/300"}) == "decay_steps=80-100_name=ssd-300"
    with pytest.raises(ValueError, match="one length"):
        sweep.zip_axes(**{"a.x": [1, 2], "b.y": [1]})


def test_sweep_files_in_experiments_load():
    base, points = sweep.load_sweep("experiments/sweep_demo.py")
    assert len(points) == 6 and base.name == "sweep_demo"
    config = sweep.apply_point(base, points[5])
    assert config.optim.lr == 0.016 and config.loss.neg_pos_ratio == 3.0
    assert config.name.endswith("lr=0.016_neg_pos_ratio=3")
    assert base.optim.lr != 0.016  # the base is not changed
    # the GPU recipe search keeps the demo as it was when it ran (depth 1, crops)
    base, points = sweep.load_sweep("research/sweep_demo_recipe.py")
    assert len(points) == 12 and (base.model.depth, base.data.crop) == (1, True)
    deep = sweep.apply_point(base, points[5])
    assert (deep.num_steps, deep.model.depth, deep.model.top_down, deep.eval_every) == (2900, 2, True, 725)
    base, points = sweep.load_sweep("research/sweep_demo_capacity.py")
    assert len(points) == 4 and all(sweep.apply_point(base, p).data.crop is False for p in points)
    _, points = sweep.load_sweep("experiments/sweep_ssd300_voc.py")
    assert len(points) == 6


def _write_sweep(tmp_path, cache, axes, combine="product"):
    path = tmp_path / "my_sweep.py"
    path.write_text(textwrap.dedent(f"""
        from experiments.demo import get_config as demo
        from ssd_jax import sweep

        def get_config(arg=None):
            c = demo("runlocal")
            c.name = "tiny_sweep"
            c.model.name, c.model.image_size = "tiny_cnn", 32
            c.data.cache_dir = {str(cache)!r}
            c.num_steps, c.checkpoint_every, c.eval_at_end = 3, 3, True
            return c

        def get_sweep():
            return sweep.{combine}(**{axes!r})
    """))
    return str(path)


def test_bad_point_keys_are_errors_before_anything_runs(tmp_path, builtin_cache, capsys):
    path = _write_sweep(tmp_path, builtin_cache, {"optim.lrr": [0.1]})
    assert sweep_cmd.main(["--config", path, "--workdir", str(tmp_path / "s")]) == 2
    assert "unknown config key 'optim.lrr'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_index_skip_failure_and_summary(tmp_path, builtin_cache, capsys):
    # The second point diverges (no clipping, absurd rate): the NaN guard stops it.
    path = _write_sweep(tmp_path, builtin_cache, {"optim.lr": [0.01, 1e30], "optim.grad_clip": [10.0, 0.0]}, "zip_axes")
    workdir = tmp_path / "sweep"
    assert sweep_cmd.main(["--config", path, "--list"]) == 0
    assert "lr=1e+30_grad_clip=0" in capsys.readouterr().out

    # --index runs exactly that point; the diverging one is recorded as failed.
    assert sweep_cmd.main(["--config", path, "--workdir", str(workdir), "--index", "1"]) == 1
    assert sorted(os.listdir(workdir)) == ["lr=1e+30_grad_clip=0"]
    status = json.loads((workdir / "lr=1e+30_grad_clip=0" / "status.json").read_text())
    assert status["status"] == "failed" and "NonFiniteLossError" in status["error"]

    # The whole sweep: point 0 runs despite point 1 failing again.
    assert sweep_cmd.main(["--config", path, "--workdir", str(workdir)]) == 1
    assert json.loads((workdir / "lr=0.01_grad_clip=10" / "status.json").read_text())["status"] == "done"
    assert (workdir / "lr=0.01_grad_clip=10" / "config.json").exists()

    # A rerun skips the finished point.
    capsys.readouterr()
    sweep_cmd.main(["--config", path, "--workdir", str(workdir), "--index", "0"])
    assert "done already, skipped" in capsys.readouterr().out

    assert sweep_cmd.main(["--summarize", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert out.index("lr=0.01_grad_clip=10") < out.index("lr=1e+30_grad_clip=0") and "failed" in out
    assert (workdir / "summary.csv").read_text().count("\n") == 3
    assert (workdir / "summary.png").stat().st_size > 1000


def test_summary_from_fake_finished_runs(tmp_path):
    runs = {"lr=0.1": (0.1, [0.2, 0.4], 5.0), "lr=0.3": (0.3, [0.5, 0.3], 6.0), "lr=1": (1.0, [], None)}
    for name, (lr, maps, loss) in runs.items():
        d = tmp_path / name
        d.mkdir()
        state = "done" if maps else "failed"
        (d / "status.json").write_text(json.dumps({"status": state, "point": {"optim.lr": lr}, "error": "boom\nmore"}))
        lines = [{"step": 10 * (i + 1), "eval/mAP": m} for i, m in enumerate(maps)]
        if loss is not None:
            lines.insert(0, {"step": 20, "loss": loss})
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = sweep.summarize(str(tmp_path))
    assert [r["name"] for r in rows] == ["lr=0.3", "lr=0.1", "lr=1"]  # by best mAP, failed last
    assert rows[0]["best_mAP"] == 0.5 and rows[0]["final_mAP"] == 0.3 and rows[0]["final_loss"] == 6.0
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "boom"
    csv_text = open(sweep.write_csv(rows, str(tmp_path / "s.csv"))).read().splitlines()
    assert csv_text[0].split(",")[:3] == ["name", "optim.lr", "status"] and len(csv_text) == 4
    assert "lr=0.3" in sweep.format_table(rows).splitlines()[2]
