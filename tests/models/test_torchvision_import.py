"""torchvision weight import: our outputs equal torchvision's for the same weights and input.

* Without torch: the committed fixture ``fixtures/torchvision_ssd300.npz`` holds
  torchvision's ``model.head(model.backbone(x))`` for numpy-generated weights
  (``fixtures/synthetic_weights.py``; made by ``fixtures/make_torchvision_fixture.py``).
  We regenerate the same weights, convert them and compare to 1e-4 relative.
* With torch + torchvision importable: the same against a live, randomly initialised
  torchvision model (skipped otherwise, with the reason).
"""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssd_jax import models
from ssd_jax.models import params_io, torchvision_import as ti

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
FIXTURE = os.path.join(FIXTURES, "torchvision_ssd300.npz")


def _synthetic():
    spec = importlib.util.spec_from_file_location("synthetic_weights", os.path.join(FIXTURES, "synthetic_weights.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def converted_model(flat, num_classes):
    """An ssd300_vgg16 holding exactly the converted params (no random init)."""
    model = nnx.eval_shape(lambda: models.build_model("ssd300_vgg16", num_classes))
    params_io.assign(model, flat, strict=True)
    return model


def assert_close_relative(ours, ref, rtol=1e-4):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def run(model, x_nhwc):
    return jax.jit(lambda m, x: m(x))(model, jnp.asarray(x_nhwc))


@pytest.mark.usefixtures("optimized_xla")
def test_ssd300_matches_recorded_torchvision_outputs():
    sw = _synthetic()
    ref = np.load(FIXTURE)
    assert int(ref["seed"]) == sw.SEED
    flat, num_classes = ti.from_torchvision_ssd300(sw.ssd300_state_dict())
    assert num_classes == int(ref["num_classes_tv"]) - 1
    model = converted_model(flat, num_classes)
    logits, offsets = run(model, sw.ssd300_input())
    assert_close_relative(logits, ref["cls_logits"])
    assert_close_relative(offsets, ref["bbox_regression"])


def test_ssd300_import_rejects_other_architectures():
    sw = _synthetic()
    sd = sw.ssd300_state_dict()
    sd["backbone.extra.5.0.weight"] = np.zeros((128, 256, 1, 1), np.float32)
    with pytest.raises(KeyError, match="unexpected entries"):
        ti.from_torchvision_ssd300(sd)
    del sd["backbone.extra.5.0.weight"], sd["backbone.scale_weight"]
    with pytest.raises(KeyError, match="backbone.scale_weight"):
        ti.from_torchvision_ssd300(sd)


def test_fc_reduction_is_every_4th_unit_and_every_3rd_tap():
    o, c = 8, 2
    fc6 = np.arange(o * c * 49, dtype=np.float32).reshape(o, c * 49)
    k6, b6 = ti.reduce_fc6(fc6, np.arange(o, dtype=np.float32), in_channels=c)
    assert k6.shape == (3, 3, c, o // 4)
    view = fc6.reshape(o, c, 7, 7)
    for out_idx, src_out in enumerate((0, 4)):
        for y, sy in enumerate((0, 3, 6)):
            for x, sx in enumerate((0, 3, 6)):
                np.testing.assert_array_equal(k6[y, x, :, out_idx], view[src_out, :, sy, sx])
    np.testing.assert_array_equal(b6, [0, 4])
    fc7 = np.arange(8 * 8, dtype=np.float32).reshape(8, 8)
    k7, b7 = ti.reduce_fc7(fc7, np.arange(8, dtype=np.float32))
    assert k7.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(k7[0, 0], fc7[::4, ::4].T)  # [in, out]
    np.testing.assert_array_equal(b7, [0, 4])


def _vgg16_state_dict():
    """A torchvision ``vgg16`` state dict of random conv layers and constant classifiers."""
    rng = np.random.default_rng(0)
    sd = {}
    convs = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
             (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
    for i, cin, cout in convs:
        sd[f"features.{i}.weight"] = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32)
        sd[f"features.{i}.bias"] = rng.standard_normal(cout, dtype=np.float32)
    # the real fc6 is [4096, 25088]; a zero-stride view keeps this test light
    sd["classifier.0.weight"] = np.broadcast_to(np.float32(0.5), (4096, 25088))
    sd["classifier.0.bias"] = np.arange(4096, dtype=np.float32)
    sd["classifier.3.weight"] = np.broadcast_to(np.float32(0.25), (4096, 4096))
    sd["classifier.3.bias"] = np.arange(4096, dtype=np.float32)
    return sd


def test_vgg16_import_names_and_shapes():
    sd = _vgg16_state_dict()
    flat = ti.from_torchvision_vgg16(sd)
    assert flat["extractor/fc6/kernel"].shape == (3, 3, 512, 1024)
    assert flat["extractor/fc7/kernel"].shape == (1, 1, 1024, 1024)
    np.testing.assert_array_equal(flat["extractor/fc6/bias"], np.arange(0, 4096, 4))
    np.testing.assert_array_equal(flat["extractor/conv3_2/kernel"], sd["features.12.weight"].transpose(2, 3, 1, 0))
    for name in ("ssd300_vgg16", "ssd512_vgg16"):
        model = nnx.eval_shape(lambda: models.build_model(name, 20))
        assert len(params_io.assign(model, flat)) == 30  # partial: backbone only

    # A feature-only checkpoint (no valid classifier): the conv layers alone.
    sd["classifier.0.weight"] = np.broadcast_to(np.float32(np.nan), (4096, 25088))
    features_only = ti.from_torchvision_vgg16(sd)
    assert set(features_only) == set(flat) - {f"extractor/{n}/{p}" for n in ("fc6", "fc7") for p in ("kernel", "bias")}
    assert len(features_only) == 26
    sd["features.0.bias"] = np.full(64, np.inf, np.float32)
    with pytest.raises(ValueError, match="features.0 holds non-finite values"):
        ti.from_torchvision_vgg16(sd)


def test_convert_records_the_normalization_and_leaves_out_an_invalid_classifier(tmp_path, monkeypatch, capsys):
    """``launch.py convert --from torchvision-vgg16``: ``--normalization`` is recorded for
    ``init_from``; the feature-only VGG16 (no valid classifier) converts without fc6/fc7."""
    from ssd_jax.cli import main

    sd = _vgg16_state_dict()
    monkeypatch.setattr(ti, "read_pth", lambda path: sd)  # reading .pth needs torch
    assert main(["convert", "--from", "torchvision-vgg16", "--checkpoint", "vgg16.pth", "--workdir", str(tmp_path / "a")]) == 0
    assert params_io.load_converted_meta(str(tmp_path / "a"))["normalization"] == "torchvision"
    assert "extractor/fc6/kernel" in params_io.load_converted(str(tmp_path / "a")).params
    sd["classifier.3.weight"] = np.broadcast_to(np.float32(np.nan), (4096, 4096))
    assert main(["convert", "--from", "torchvision-vgg16", "--checkpoint", "features.pth", "--normalization", "caffe_vgg",
                 "--workdir", str(tmp_path / "b")]) == 0
    assert "has no valid classifier" in capsys.readouterr().out
    assert params_io.load_converted_meta(str(tmp_path / "b"))["normalization"] == "caffe_vgg"
    params = params_io.load_converted(str(tmp_path / "b")).params
    assert len(params) == 26 and "extractor/fc6/kernel" not in params


def test_reading_pth_without_torch_says_how_to_install(tmp_path):
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here; the missing-torch message cannot be exercised")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
        ti.read_pth(str(tmp_path / "model.pth"))


@pytest.mark.slow
@pytest.mark.usefixtures("optimized_xla")
def test_ssd300_matches_live_torchvision():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[torch]'); the committed fixture covers the mapping")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (pip install -e '.[torch]')")
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=4).eval()
    sd = {k: v.numpy() for k, v in tv.state_dict().items()}
    flat, num_classes = ti.from_torchvision_ssd300(sd)
    x = np.random.default_rng(0).standard_normal((1, 300, 300, 3)).astype(np.float32)
    with torch.no_grad():
        out = tv.head(list(tv.backbone(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).values()))
    logits, offsets = run(converted_model(flat, num_classes), x)
    assert_close_relative(logits, out["cls_logits"].numpy())
    assert_close_relative(offsets, out["bbox_regression"].numpy())


def run_eval(model, x_nhwc):
    g, p, s = models.split(model)
    return jax.jit(lambda p, s, x: models.apply(g, p, s, x, train=False)[0])(p, s, jnp.asarray(x_nhwc))


@pytest.mark.usefixtures("optimized_xla")
def test_ssdlite_v3_matches_recorded_torchvision_outputs():
    """The committed fixture: torchvision's ``ssdlite320_mobilenet_v3_large`` (the state
    dict's layout and its outputs for numpy-generated weights, batch-norm statistics
    included); we regenerate the weights, convert them and compare."""
    import json

    sw = _synthetic()
    ref = np.load(os.path.join(FIXTURES, "torchvision_ssdlite_v3.npz"))
    assert int(ref["seed"]) == sw.SEED
    layout = [(name, tuple(shape)) for name, shape in json.loads(str(ref["layout"]))]
    params, stats, num_classes = ti.from_torchvision_ssdlite_v3(sw.ssdlite_v3_state_dict(layout))
    assert num_classes == sw.SSDLITE_NUM_CLASSES_TV - 1
    assert sum(v.size for v in params.values()) == sum(int(np.prod(s)) for n, s in layout
                                                       if not n.endswith(("running_mean", "running_var", "num_batches_tracked")))
    logits, offsets = run_eval(ti.ssdlite_v3_model(params, stats, num_classes), sw.ssdlite_input())
    # f32 through 15 inverted-residual blocks of random weights: XLA's and torch's summation
    # orders part by up to 1.9e-4 of the largest output on some CPUs (an AVX-512 Zen 4;
    # under 1e-4 on a Zen 3), on a few elements; a wrong mapping parts by O(1) everywhere.
    for ours, theirs in ((logits, ref["cls_logits"]), (offsets, ref["bbox_regression"])):
        assert_close_relative(ours, theirs, rtol=5e-4)
        err = np.abs(np.asarray(ours) - theirs) / np.abs(theirs).max()
        assert (err < 1e-4).mean() > 0.99
    sd = sw.ssdlite_v3_state_dict(layout)
    sd["backbone.scale_weight"] = np.ones(512, np.float32)  # an SSD300 entry
    with pytest.raises(KeyError, match="unexpected entries"):
        ti.from_torchvision_ssdlite_v3(sd)
    del sd["backbone.scale_weight"], sd["head.regression_head.module_list.5.1.bias"]
    with pytest.raises(KeyError, match="has no 'head.regression_head.module_list.5.1.bias'"):
        ti.from_torchvision_ssdlite_v3(sd)


def test_convert_ssdlite_records_its_statistics_and_inputs(tmp_path, monkeypatch, capsys):
    """``launch.py convert --from torchvision-ssdlite320``: every parameter, the batch-norm
    statistics, and torchvision's [-1, 1] inputs (``symmetric``) for ``init_from``."""
    import json

    from ssd_jax.cli import main

    sw = _synthetic()
    layout = [(n, tuple(s)) for n, s in json.loads(str(np.load(os.path.join(FIXTURES, "torchvision_ssdlite_v3.npz"))["layout"]))]
    sd = sw.ssdlite_v3_state_dict(layout)
    monkeypatch.setattr(ti, "read_pth", lambda path: sd)  # reading .pth needs torch
    assert main(["convert", "--from", "torchvision-ssdlite320", "--checkpoint", "ssdlite.pth",
                 "--workdir", str(tmp_path)]) == 0
    assert "symmetric inputs" in capsys.readouterr().out
    converted = params_io.load_converted(str(tmp_path))
    assert converted.meta["normalization"] == "symmetric" and converted.meta["model"] == "ssdlite_mobilenetv3"
    assert converted.meta["num_classes"] == sw.SSDLITE_NUM_CLASSES_TV - 1 and not converted.meta["partial"]
    np.testing.assert_array_equal(converted.model_state["extractor/stem/bn/var"], sd["backbone.features.0.0.1.running_var"])
    assert len(converted.params) == 266 and len(converted.model_state) == 140


@pytest.mark.slow
@pytest.mark.usefixtures("optimized_xla")
def test_ssdlite_v3_matches_live_torchvision():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install -e '.[torch]'); the committed fixture covers the mapping")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (pip install -e '.[torch]')")
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=21).eval()
    rng = np.random.default_rng(1)
    with torch.no_grad():  # batch-norm statistics other than (0, 1), so their mapping counts
        for name, buf in tv.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                low = 0.5 if name.endswith("var") else -0.1
                buf.copy_(torch.from_numpy(rng.uniform(low, low + 1.0 if low > 0 else 0.2, buf.shape).astype(np.float32)))
    sd = {k: v.numpy() for k, v in tv.state_dict().items()}
    params, stats, num_classes = ti.from_torchvision_ssdlite_v3(sd)
    assert num_classes == 20 and sum(v.size for v in params.values()) == sum(p.numel() for p in tv.parameters())
    x = rng.standard_normal((2, 320, 320, 3)).astype(np.float32)
    with torch.no_grad():
        out = tv.head(list(tv.backbone(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).values()))
    logits, offsets = run_eval(ti.ssdlite_v3_model(params, stats, num_classes), x)
    assert_close_relative(logits, out["cls_logits"].numpy())
    assert_close_relative(offsets, out["bbox_regression"].numpy())


def test_normal_init_and_the_parity_experiment(tiny_config):
    """``model.init="normal"`` (torchvision's SSDLite from scratch): every convolution kernel
    N(0, 0.03), every convolution bias 0, batch norm (1, 0); the parity experiment sets it
    with torchvision's other settings."""
    from ssd_jax import builders
    from ssd_jax.config import Settings
    from experiments.ssdlite_mobilenetv3_parity import get_config

    settings = Settings.from_config(get_config())
    assert (settings.model.init, settings.model.init_std, settings.model.normalization) == ("normal", 0.03, "symmetric")
    assert (settings.optim.decay, settings.optim.weight_decay, settings.optim.schedule) == ("all", 4e-5, "cosine")
    assert settings.augment.crop_min_ious[0] == 0.0 and not settings.augment.photometric and settings.augment.expand_p == 0
    # the tiny network (cheap to build; normal_init is the same for every network)
    small = dataclasses.replace(Settings.from_config(tiny_config()).model, init="normal", init_std=0.03)
    net = builders.build_model(small, 10, nnx.Rngs(0))
    flat = params_io.flatten(nnx.to_pure_dict(nnx.state(net, nnx.Param)))
    kernels = np.concatenate([np.ravel(v) for k, v in flat.items() if k.endswith("/kernel")])
    assert kernels.size == sum(v.size for k, v in flat.items() if k.endswith("/kernel")) > 1000
    assert abs(kernels.std() - 0.03) < 0.1 * 0.03 * max(1.0, (10_000 / kernels.size) ** 0.5) and abs(kernels.mean()) < 0.003
    for path, value in flat.items():
        if path.endswith("/bias"):
            assert not np.any(value), path  # conv biases and batch-norm offsets
        elif path.endswith("bn/scale"):
            assert np.all(value == 1), path
    first = sorted(k for k in flat if k.endswith("/kernel"))[0]
    stem = flat[first]
    default = builders.build_model(dataclasses.replace(small, init="default"), 10, nnx.Rngs(0))
    default_stem = params_io.flatten(nnx.to_pure_dict(nnx.state(default, nnx.Param)))[first]
    assert not np.allclose(stem, default_stem)
    with pytest.raises(ValueError, match="model.init must be 'default' or 'normal'"):
        dataclasses.replace(settings.model, init="xavier")


# --- one training step against torchvision's ---------------------------------------------


def our_ssdlite_step(sd, batch, sw):
    """One step of our jitted train step from torchvision state dict ``sd`` on ``batch``,
    with torchvision's recipe settings: SGD (momentum, weight decay on every parameter), the
    [-1, 1] inputs, matching at 0.5, 3 negatives per positive. Returns the metrics and the
    updated parameters and batch-norm statistics, flat in our layout."""
    from ssd_jax import anchors, normalization, train_step as T

    # grouped depthwise convolutions: the same values as the shifted products, half the compile time
    model = ti.ssdlite_v3_model(*ti.from_torchvision_ssdlite_v3(sd), conv=models.ConvChoices(grouped_depthwise=True))
    b = len(batch["image"])
    tx, schedule = T.make_optimizer(T.OptimConfig(lr=sw.STEP_LR, lr_batch_size=b, batch_size=b, schedule="step",
                                                  momentum=sw.STEP_MOMENTUM, weight_decay=sw.STEP_WEIGHT_DECAY,
                                                  decay="all"))
    graphdef, state = T.create_train_state(model, tx)
    step = jax.jit(T.make_train_step(graphdef, tx, schedule, jnp.asarray(anchors.generate(model.spec)), T.LossConfig()))
    x = {"image": normalization.SYMMETRIC(batch["image"]), "boxes": batch["boxes"], "labels": batch["labels"]}
    state, metrics = step(state, x)
    flat = {**params_io.flatten(nnx.to_pure_dict(state.params)), **params_io.flatten(nnx.to_pure_dict(state.model_state))}
    return {k: float(v) for k, v in metrics.items()}, flat


def assert_step_matches(metrics, flat, losses, names, before, values32, values64, sw):
    """Loss parts to 1e-4 relative of torchvision's float32 step. The updated parameters and
    running means (sampled, ``names``) against torchvision's float64 step, the truth: no
    farther than 1e-5, or than 3x torchvision's own float32 step where that is farther
    (element-wise maximum, and relative distance of the whole update).

    Why not 1e-5 alone: in float32 the first layers' update is 0.1-0.2% from the float64
    one in torchvision too (up to 3.5e-5 on these weights): rounding amplified through the
    backward pass of 20 batch-normalised layers. A wrong matching, mining or loss
    normalisation changes the loss itself; a wrong gradient or learning-rate scale moves the
    whole update by more than 3x float32's rounding. Momentum and weight decay barely act in
    one step (the first momentum step is the gradient itself; decay 4e-5 moves a weight by
    about 4e-8): the 300-step comparison of ``benchmarks/bench_convergence.py`` covers them."""
    np.testing.assert_allclose(metrics["conf_loss"], losses["classification"], rtol=1e-4)
    np.testing.assert_allclose(metrics["loc_loss"], losses["bbox_regression"], rtol=1e-4)
    np.testing.assert_allclose(metrics["loss"], losses["classification"] + losses["bbox_regression"], rtol=1e-4)
    ours = np.concatenate([np.ravel(flat[n])[sw.sample_indices(n, flat[n].size)] for n in names]).astype(np.float64)
    before = np.concatenate([np.ravel(before[n])[sw.sample_indices(n, before[n].size)] for n in names]).astype(np.float64)
    values32, values64 = np.asarray(values32, np.float64), np.asarray(values64, np.float64)
    assert ours.shape == values32.shape == values64.shape
    assert np.abs(values64 - before).max() > 1e-2  # the step moves the weights far beyond the tolerances
    err_ours, err_tv = np.abs(ours - values64).max(), np.abs(values32 - values64).max()
    assert err_ours <= max(1e-5, 3 * err_tv), (err_ours, err_tv)

    def rel(x):
        return np.linalg.norm(x - values64) / np.linalg.norm(values64 - before)

    assert rel(ours) <= max(1e-5, 3 * rel(values32)), (rel(ours), rel(values32))


@pytest.mark.slow
@pytest.mark.usefixtures("optimized_xla")
def test_one_training_step_matches_recorded_torchvision_step():
    """The committed fixture (``fixtures/make_torchvision_ssdlite_step_fixture.py``):
    torchvision's own training step (``model(images, targets)``, backward, ``SGD.step``)
    from the synthetic weights on the synthetic batch; ours from the same weights and batch
    gives its loss and its updated parameters."""
    import json

    sw = _synthetic()
    ref = np.load(os.path.join(FIXTURES, "torchvision_ssdlite_v3_step.npz"))
    assert int(ref["seed"]) == sw.SEED
    layout = [(n, tuple(s)) for n, s in json.loads(str(ref["layout"]))]
    sd = sw.ssdlite_v3_state_dict(layout)
    metrics, flat = our_ssdlite_step(sd, sw.ssdlite_step_batch(), sw)
    names = json.loads(str(ref["names"]))
    assert len(names) == 266 + 70 and set(names) <= set(flat)  # every parameter, every running mean
    params, stats, _ = ti.from_torchvision_ssdlite_v3(sd)
    losses = {"classification": float(ref["classification"]), "bbox_regression": float(ref["bbox_regression"])}
    assert_step_matches(metrics, flat, losses, names, {**params, **stats}, ref["values"], ref["values_float64"], sw)


@pytest.mark.slow
@pytest.mark.usefixtures("optimized_xla")
def test_one_training_step_matches_live_torchvision():
    pytest.importorskip("torch", reason="torch not installed (pip install -e '.[torch]'); the committed fixture covers the step")
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed (pip install -e '.[torch]')")
    sw = _synthetic()
    spec = importlib.util.spec_from_file_location(
        "make_step", os.path.join(FIXTURES, "make_torchvision_ssdlite_step_fixture.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    import torch

    torch.manual_seed(1)
    tv = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                     num_classes=sw.SSDLITE_NUM_CLASSES_TV)
    sd = {k: v.numpy().copy() for k, v in tv.state_dict().items()}  # torchvision's own initialisation
    batch = sw.ssdlite_step_batch(seed=sw.SEED + 1)
    losses, names, values32 = maker.sampled_step(sd, batch, torch.float32)
    _, _, values64 = maker.sampled_step(sd, batch, torch.float64)
    metrics, flat = our_ssdlite_step(sd, batch, sw)
    params, stats, _ = ti.from_torchvision_ssdlite_v3(sd)
    assert_step_matches(metrics, flat, losses, names, {**params, **stats}, values32, values64, sw)


def test_convergence_benchmark_without_torch_runs_our_half_only(tiny_config, tmp_path, monkeypatch, capsys):
    """``benchmarks/bench_convergence.py`` with no torch python: it says the torchvision half
    is skipped, starts no subprocess, writes the batch stream and runs our half alone."""
    from ssd_jax import builders
    from ssd_jax.config import Settings
    from ssd_jax.data import builtin

    spec = importlib.util.spec_from_file_location(
        "bench_convergence", os.path.join(os.path.dirname(FIXTURES), "..", "benchmarks", "bench_convergence.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    train_src, _ = builders.build_sources(Settings.from_config(tiny_config()).data)
    monkeypatch.setattr(builtin, "builtin_source", lambda split: train_src)  # the tiny set, not the 5,000 images
    monkeypatch.delenv("SSD_JAX_TORCH_PYTHON", raising=False)
    monkeypatch.setattr(bench.subprocess, "run", lambda *a, **k: pytest.fail("no subprocess without torch"))
    calls = []

    def ours(stream, init_sd, name, batch, steps, num_classes):  # the training itself is tested elsewhere
        calls.append((init_sd, name, batch, steps, num_classes, bench.read_stream(stream)[0].shape))
        return {"losses": [[3.0, 2.0, 1.0], [2.0, 1.5, 0.5]], "seconds": 1.0, "compile_s": 0.5}

    monkeypatch.setattr(bench, "run_ours", ours)
    assert bench.main(["--steps", "2", "--batch", "2", "--optimizers", "sgd", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torchvision half skipped" in out and "sgd: ours only, loss 3.000 -> 2.500 (2-step mean)" in out
    assert calls == [(None, "sgd", 2, 2, train_src.num_classes, (2, 2, bench.IMAGE_SIZE, bench.IMAGE_SIZE, 3))]
    assert (tmp_path / "convergence_trajectory.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # the trajectory comparison needs its 20-step means after step 50
        bench.main(["--steps", "2", "--torch", "python", "--out", str(tmp_path)])
