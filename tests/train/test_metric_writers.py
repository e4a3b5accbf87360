"""clu metric writers (jsonl, TensorBoard via tensorboardX, console), ReportProgress, clu metrics."""

import json
import logging

import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import metric_writers, train_step


def test_create_writer_writes_every_backend(tmp_path, read_events):
    lines = []
    w = metric_writers.create_writer(str(tmp_path), echo=lines.append)
    w.write_hparams({"optim.lr": 0.1, "model.name": "tiny"})
    w.write_scalars(5, {"loss": np.float32(1.5), "lr": jnp.asarray(0.25)})
    w.write_scalars(10, {"loss": 0.75, "eval/mAP": float("nan")})
    w.write_images(10, {"predictions": np.zeros((1, 8, 12, 3), np.uint8)})
    w.write_texts(10, {"note": "hello"})
    w.flush()
    w.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(5, 1.5), (10, 0.75)] and rows[0]["lr"] == 0.25
    assert np.isnan(rows[1]["eval/mAP"]) and rows == metric_writers.read_metrics(str(tmp_path))
    scalars, images = read_events(str(tmp_path / "tensorboard"))
    assert scalars["loss"] == [(5, 1.5), (10, 0.75)] and scalars["lr"] == [(5, 0.25)]
    assert images == {"predictions": 1}
    assert lines[0] == "step 5: loss=1.5 lr=0.25" and lines[1] == "step 10: eval/mAP=nan loss=0.75"
    assert lines[2] == "step 10: note: hello"


def test_disabled_writer_writes_nothing(tmp_path):
    w = metric_writers.create_writer(str(tmp_path / "run"), echo=print, enabled=False)
    w.write_scalars(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_clu_tf_summary_writer_placeholder_explains():
    from clu.metric_writers import SummaryWriter

    try:
        import tensorflow  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorboardX"):
            SummaryWriter("/tmp/nowhere")


def test_progress_report_rates_exclude_the_first_step():
    report = metric_writers.ProgressReport(num_train_steps=10, every_steps=4, images_per_step=16)
    fired = [report(step, t) for step, t in [(1, 100.0), (2, 100.5), (3, 101.0), (4, 101.5)]]
    assert fired == [False, False, False, True]  # step 1 starts the clock (compilation excluded)
    assert report.last["steps_per_sec"] == pytest.approx(3 / 1.5)
    assert report.last["images_per_sec"] == pytest.approx(16 * 2.0)
    assert report.last["eta_sec"] == pytest.approx(6 / 2.0)
    for step, t in [(5, 102.0), (6, 102.5), (7, 103.0), (8, 103.5), (9, 104.0)]:
        report(step, t)
    assert report(10, 104.5) and report.last["eta_sec"] == 0.0  # the last step always reports


def test_train_metrics_average_and_last_lr():
    rng = np.random.default_rng(0)
    steps = [{k: np.float32(rng.uniform(0, 5)) for k in ("loss", "conf_loss", "loc_loss", "num_pos", "num_neg",
                                                          "lr", "grad_norm")} for _ in range(5)]
    acc = None
    for m in steps:
        acc = train_step.merge_train_metrics(acc, {k: jnp.asarray(v) for k, v in m.items()})
    out = {k: float(v) for k, v in acc.compute().items()}
    for k in ("loss", "conf_loss", "loc_loss", "num_pos", "num_neg", "grad_norm"):
        assert out[k] == pytest.approx(np.mean([m[k] for m in steps]), rel=1e-6)
    assert out["lr"] == pytest.approx(steps[-1]["lr"])


def test_torn_last_line_is_skipped_and_truncation_keeps_up_to_a_step(tmp_path, caplog):
    lines = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}, {"step": 2, "eval/mAP": 0.1}, {"step": 3, "loss": 2.0}]
    text = "".join(json.dumps(x) + "\n" for x in lines)
    path = tmp_path / "metrics.jsonl"
    path.write_text(text + '{"step": 4, "lo')  # a process killed while writing
    with caplog.at_level(logging.WARNING):
        assert metric_writers.read_metrics(str(tmp_path)) == lines
    assert "line 5 is cut short" in caplog.text
    assert metric_writers.truncate_metrics(str(tmp_path), 2) == 1  # step 3 (the torn line was no entry)
    assert path.read_text() == "".join(json.dumps(x) + "\n" for x in lines[:3])
    assert metric_writers.truncate_metrics(str(tmp_path), 2) == 0 and not (tmp_path / "metrics.jsonl.tmp").exists()
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not JSON"):
        metric_writers.read_metrics(str(tmp_path))
    assert metric_writers.read_metrics(str(tmp_path / "none")) == [] and metric_writers.truncate_metrics(str(tmp_path / "none"), 0) == 0
