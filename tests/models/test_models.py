"""Tests of ssd_jax.models: shapes, prior counts, parameter count, spec checks, dtypes,
batch norm, the pure split/apply pattern, layouts, receptive fields.

Paper-size networks are checked abstractly (``nnx.eval_shape`` / ``jax.eval_shape``: no
compute); numerics use the light model at small sizes.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssd_jax import anchors, models, xla_flags
from ssd_jax.models import heads, layers, mobilenet, mobilenet_v3, params_io
from ssd_jax.receptive_field import receptive_fields


@functools.cache
def abstract_model(name, num_classes=20, **kw):
    """The network's shapes, no parameters allocated; one per argument set for the whole
    module (the tests only read it; an SSDLite's abstract build traces for seconds)."""
    return nnx.eval_shape(lambda: models.build_model(name, num_classes, **kw))


def abstract_outputs(model, batch=2):
    g, p, s = models.split(model)
    size = model.spec.image_size
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(functools.partial(models.apply, g, train=False), p, s, x)[0]


def source_shapes(model, batch=1):
    g, p, s = models.split(model)
    size = model.spec.image_size
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def feats(p, s, x):
        return nnx.merge(g, p, s).source_features(x)

    return [f.shape for f in jax.eval_shape(feats, p, s, x)]


@pytest.fixture(scope="module")
def lite():
    """A small light model: width 0.5, 96x96, 3 object classes."""
    return models.build_model("ssdlite_mobilenetv2", 3, image_size=96, width=0.5, rngs=nnx.Rngs(0))


#: The tests that share the light models and their compiled functions run in one worker
#: process (pytest-xdist), so each is built and compiled once.
SHARED_LIGHT_MODELS = pytest.mark.xdist_group("light_models")


@functools.cache
def eval_forward(graphdef):
    """The jitted eval-mode ``models.apply`` of one network (GraphDefs of one architecture
    are equal): tests that run the same light model on the same input shape share one
    compilation."""
    return jax.jit(functools.partial(models.apply, graphdef, train=False))


@pytest.fixture(scope="module")
def lite_sgd_step(lite):
    """``step(params, state, opt_state, x) -> (params, state, opt_state, loss, grads, logits)``:
    one jitted train-mode forward, backward and SGD (momentum) update of ``lite``, with the
    optimiser state to start from, compiled once.

    SSDLite-MobileNetV3's train-mode step is checked elsewhere, each compilation once: against
    torchvision's own step (``test_torchvision_import``) and on 8 devices
    (``test_cpu_kernels``)."""
    g, p, _ = models.split(lite)
    opt = optax.sgd(1e-2, momentum=0.9)

    @jax.jit
    def step(p, s, opt_state, x):
        def loss_fn(p):
            (logits, offsets), new_s = models.apply(g, p, s, x, train=True)
            loss = jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]) + jnp.mean(jnp.abs(offsets))
            return loss, (new_s, logits)

        (loss, (new_s, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), new_s, opt_state, loss, grads, logits

    return step, opt.init(p)


def images(batch, size, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


# --- paper networks: structure ---------------------------------------------------------


def test_ssd300_parameter_count_matches_torchvision():
    assert models.count_params(abstract_model("ssd300_vgg16", 20)) == 26_285_486


@pytest.mark.parametrize(
    "name,spec,sizes",
    [
        ("ssd300_vgg16", anchors.SSD300_VOC, (38, 19, 10, 5, 3, 1)),
        ("ssd300_vgg16", anchors.SSD300_COCO, (38, 19, 10, 5, 3, 1)),
        ("ssd512_vgg16", anchors.SSD512_VOC, (64, 32, 16, 8, 4, 2, 1)),
    ],
)
def test_paper_networks_shapes_and_prior_count(name, spec, sizes):
    model = abstract_model(name, 20, priors=spec)
    assert models.network_feature_sizes(name, spec.image_size) == sizes
    assert [s[1:3] for s in source_shapes(model)] == [(f, f) for f in sizes]
    assert [s[3] for s in source_shapes(model)] == list(model.extractor.out_channels)
    logits, offsets = abstract_outputs(model, batch=2)
    assert logits.shape == (2, spec.num_priors, 21) and offsets.shape == (2, spec.num_priors, 4)
    assert logits.dtype == offsets.dtype == jnp.float32
    assert spec.num_priors == {300: 8732, 512: 24564}[spec.image_size]


def test_ssd300_channels_and_fc6():
    model = abstract_model("ssd300_vgg16")
    ex = model.extractor
    assert ex.out_channels == (512, 1024, 512, 256, 256, 256)
    assert ex.fc6.kernel.shape == (3, 3, 512, 1024) and ex.fc6.dilation == 6 and ex.fc6.padding == 6
    assert ex.fc7.kernel.shape == (1, 1, 1024, 1024)
    assert ex.conv4_3_norm.scale.shape == (512,)
    assert [h.kernel.shape[-1] for h in model.head.cls] == [4 * 21, 6 * 21, 6 * 21, 6 * 21, 4 * 21, 4 * 21]


def test_l2norm_scale_initialised_to_20_and_normalises():
    norm = layers.L2Norm(8)
    np.testing.assert_array_equal(np.asarray(norm.scale[...]), np.full(8, 20.0, np.float32))
    x = images(2, 5)[..., :3].repeat(3, axis=-1)[..., :8]
    y = norm(x)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(y), axis=-1), 20.0, rtol=1e-5)
    # and the model's conv4_3 norm is one of these, initialised to 20
    m = models.build_model("ssd300_vgg16", 2)
    np.testing.assert_array_equal(np.asarray(m.extractor.conv4_3_norm.scale[...]), 20.0)


def test_receptive_fields_of_ssd300():
    model = abstract_model("ssd300_vgg16")
    infos = [receptive_fields(stack, 300)[-1] for stack in model.layer_stacks()]
    assert [i.size for i in infos] == [38, 19, 10, 5, 3, 1]
    assert [i.jump for i in infos[:4]] == [8, 16, 32, 64]
    assert infos[0].receptive_field == 92  # VGG16 conv4_3


def test_new_layers_xavier_uniform_zero_bias():
    m = models.build_model("ssd300_vgg16", 2)
    k = np.asarray(m.extractor.conv8_2.kernel[...])
    fan_in, fan_out = 9 * 256, 9 * 512
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.95 * limit
    np.testing.assert_allclose(k.std(), limit / np.sqrt(3), rtol=0.02)
    for conv in (m.extractor.fc6, m.extractor.conv8_2, m.head.cls[0], m.head.box[5]):
        assert not np.any(np.asarray(conv.bias[...]))


# --- spec / network agreement -------------------------------------------------------------


def test_spec_network_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"disagree.*sizes \(38, 19, 10, 5, 3, 2, 1\), the spec expects 6 maps"):
        nnx.eval_shape(lambda: models.build_model("ssd512_vgg16", 20, priors=anchors.SSD300_VOC))
    bad = anchors.PriorSpec.from_scales(96, (6, 3, 2, 1, 1, 9), [0.1] * 7, [(2.0,)] * 6)
    with pytest.raises(ValueError, match="disagree"):
        nnx.eval_shape(lambda: models.build_model("ssdlite_mobilenetv2", 3, priors=bad, width=0.5))
    with pytest.raises(ValueError, match="defined at 300x300"):
        models.build_model("ssd300_vgg16", 20, image_size=320)
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("ssd300_resnet", 20)


@SHARED_LIGHT_MODELS
def test_input_size_mismatch_is_a_clear_error(lite):
    with pytest.raises(ValueError, match=r"expects NHWC images \[B,96,96,3\]"):
        lite(jnp.zeros((1, 3, 96, 96)))


@pytest.mark.parametrize("size", [320, 256, 160, 128])
def test_light_prior_spec_follows_the_network(size):
    spec = models.ssdlite_prior_spec(size)
    model = abstract_model("ssdlite_mobilenetv2", 5, image_size=size)
    assert [s[1] for s in source_shapes(model)] == list(spec.feature_sizes)
    assert spec.boxes_per_cell == (6,) * 6
    logits, offsets = abstract_outputs(model, batch=1)
    assert logits.shape == (1, spec.num_priors, 6) and offsets.shape == (1, spec.num_priors, 4)
    if size == 320:
        assert spec.feature_sizes == (20, 10, 5, 3, 2, 1)
        assert model.extractor.out_channels == (576, 1280, 512, 256, 256, 128)


@pytest.mark.parametrize("size, sizes", [(160, (40, 20, 10, 5, 3, 2)), (128, (32, 16, 8, 4, 2, 1)),
                                         (96, (24, 12, 6, 3, 2, 1))])
def test_compact_network_shapes_priors_and_receptive_fields(size, sizes):
    model = abstract_model("ssd_compact", 10, image_size=size)
    spec = model.spec
    assert spec.feature_sizes == sizes and [s[1] for s in source_shapes(model)] == list(sizes)
    assert spec.boxes_per_cell == (4,) * 6  # min, sqrt(min*max), 2:1, 1:2
    logits, offsets = abstract_outputs(model, batch=2)
    assert logits.shape == (2, spec.num_priors, 11) and offsets.shape == (2, spec.num_priors, 4)
    assert spec.min_sizes[0] == pytest.approx(0.06 * size) and spec.min_sizes[-1] == pytest.approx(0.9 * size)
    ratios = np.array(spec.min_sizes[1:]) / np.array(spec.min_sizes[:-1])
    np.testing.assert_allclose(ratios, ratios[0])  # log-spaced
    infos = [receptive_fields(stack, size)[-1] for stack in model.layer_stacks()]
    assert [i.jump for i in infos[:4]] == [4, 8, 16, 32]
    assert [i.receptive_field for i in infos[:4]] == [15, 39, 87, 119]  # 3x3 convs: +2*jump per layer
    assert model.extractor.out_channels == (32, 64, 128, 128, 128, 128)
    half = abstract_model("ssd_compact", 10, image_size=size, width=0.5)
    assert half.extractor.out_channels == (16, 32, 64, 64, 64, 64)
    with pytest.raises(ValueError, match="width multiplier"):
        models.build_model("ssd300_vgg16", 3, width=0.5)


def test_compact_depth_and_top_down():
    size = 96
    base = abstract_model("ssd_compact", 10, image_size=size)
    deep = abstract_model("ssd_compact", 10, image_size=size, depth=3)
    fused = abstract_model("ssd_compact", 10, image_size=size, top_down=True)
    assert deep.spec == base.spec and fused.spec == base.spec  # the priors do not change
    c = (32, 64, 128)
    # depth 3: two more 3x3 conv + BN (no bias; BN scale and bias) per stage s4, s8, s16
    assert models.count_params(deep) - models.count_params(base) == sum(2 * (9 * ch * ch + 2 * ch) for ch in c)
    # top-down: a 1x1 conv + BN from each coarser map into s16, s8, s4
    assert models.count_params(fused) - models.count_params(base) == sum(
        hi * lo + 2 * lo for lo, hi in zip(c, (64, 128, 128)))
    assert [s[1] for s in source_shapes(deep)] == [s[1] for s in source_shapes(fused)] == list(base.spec.feature_sizes)
    rf = [receptive_fields(stack, size)[-1].receptive_field for stack in deep.layer_stacks()]
    assert rf[:4] == [15 + 2 * 2 * 4, 39 + 2 * 2 * 4 + 2 * 2 * 8, 87 + 16 + 32 + 64, 119 + 16 + 32 + 64]
    with pytest.raises(ValueError, match="depth must be at least 1"):
        models.build_model("ssd_compact", 3, image_size=size, depth=0)
    with pytest.raises(ValueError, match="only to ssd_compact"):
        models.build_model("ssd300_vgg16", 3, depth=2)
    with pytest.raises(ValueError, match="only to ssd_compact"):
        models.build_model("ssdlite_mobilenetv2", 3, image_size=size, top_down=True)


@pytest.mark.parametrize("size", [96, 100])  # 100: maps 25 -> 13 -> 7 -> 4, upsampling crops
def test_compact_top_down_runs_and_feeds_the_coarse_maps(size):
    model = models.build_model("ssd_compact", 3, image_size=size, width=0.25, top_down=True, rngs=nnx.Rngs(0))
    g, p, s = models.split(model)
    x = images(2, size)

    def first_map(p):
        return jnp.sum(nnx.merge(g, p, s).source_features(x)[0] ** 2)

    leaves = jax.tree_util.tree_flatten_with_path(jax.jit(jax.grad(first_map))(p))[0]
    # the first (stride-4) source map now depends on the s32 stage through the top-down path
    g_s32 = [v for path, v in leaves if "s32" in jax.tree_util.keystr(path)]
    assert g_s32 and sum(float(jnp.abs(v).sum()) for v in g_s32) > 0
    (logits, offsets), _ = jax.jit(models.apply, static_argnums=(0, 4))(g, p, s, x, False)
    assert logits.shape == (2, model.spec.num_priors, 4) and np.isfinite(np.asarray(logits)).all()


def test_mobilenet_v2_width_one_matches_torchvision_parameter_count():
    # torchvision mobilenet_v2().features has 2,223,872 parameters (classifier excluded).
    ex = nnx.eval_shape(lambda: mobilenet.MobileNetV2Extractor(1.0, conv=layers.ConvChoices(), rngs=nnx.Rngs(0)))
    n_backbone = models.count_params(ex.stem) + models.count_params(ex.blocks) + models.count_params(ex.last)
    assert n_backbone == 2_223_872


@pytest.mark.parametrize("width, num_classes, count", [(1.0, 20, 2_469_860), (0.5, 3, 956_072)])
def test_ssdlite_mobilenet_v3_matches_torchvision_parameter_count(width, num_classes, count):
    # torchvision ssdlite320_mobilenet_v3_large(num_classes=C+1, width_mult=width), weights=None
    # (reduced tail) has these many parameters; its mobilenet_v3_large(reduced_tail=True).features
    # 1,620,512 at width 1 and 444,104 at width 0.5 (counted with torchvision 0.29)
    model = abstract_model("ssdlite_mobilenetv3", num_classes, width=width)
    assert models.count_params(model) == count
    ex = model.extractor
    backbone = models.count_params(ex.stem) + models.count_params(ex.blocks) + models.count_params(ex.last)
    assert backbone == {1.0: 1_620_512, 0.5: 444_104}[width]


def test_ssdlite_mobilenet_v3_layout():
    model = abstract_model("ssdlite_mobilenetv3", 20)
    spec, ex = model.spec, model.extractor
    assert spec.feature_sizes == (20, 10, 5, 3, 2, 1) and spec.boxes_per_cell == (6,) * 6
    assert [s[1:] for s in source_shapes(model)] == [(20, 20, 672), (10, 10, 480), (5, 5, 512), (3, 3, 256),
                                                      (2, 2, 256), (1, 1, 128)]
    assert ex.c4_block == 12 and ex.source_names[0] == "block12.expand"
    blocks = list(ex.blocks)
    assert [b.depthwise.conv.kernel_size for b in blocks] == [3, 3, 3, 5, 5, 5, 3, 3, 3, 3, 3, 3, 5, 5, 5]
    assert [b.se is not None for b in blocks] == [False] * 3 + [True] * 3 + [False] * 4 + [True] * 5
    assert [b.depthwise.activation for b in blocks] == ["relu"] * 6 + ["hardswish"] * 9
    assert ex.stem.activation == ex.last.activation == "hardswish" and blocks[0].expand is None
    assert [b.use_residual for b in blocks] == [True, False, True, False, True, True, False, True, True, True,
                                                False, True, False, True, True]
    logits, offsets = abstract_outputs(model, batch=2)
    assert logits.shape == (2, spec.num_priors, 21) and offsets.shape == (2, spec.num_priors, 4)
    assert models.ssdlite_prior_spec(320, name="ssdlite_mobilenetv3").feature_sizes == spec.feature_sizes
    with pytest.raises(ValueError, match="NHWC only"):
        nnx.eval_shape(lambda: models.build_model("ssdlite_mobilenetv3", 3, layout="NCHW"))


def test_squeeze_excitation_and_activations_by_hand():
    se = mobilenet_v3.SqueezeExcitation(4, 8, compute_dtype=jnp.float32, conv=layers.ConvChoices(), rngs=nnx.Rngs(0))
    x = images(2, 5)[..., :1] * jnp.arange(1.0, 5.0)  # [2,5,5,4]
    m = np.asarray(x).mean(axis=(1, 2))  # [2,4]
    w1, b1 = np.asarray(se.fc1.kernel[...])[0, 0], np.asarray(se.fc1.bias[...])
    w2, b2 = np.asarray(se.fc2.kernel[...])[0, 0], np.asarray(se.fc2.bias[...]) + 0.5
    se.fc2.bias[...] = jnp.asarray(b2)
    gate = np.clip((np.maximum(m @ w1 + b1, 0) @ w2 + b2 + 3) / 6, 0, 1)  # hardsigmoid
    np.testing.assert_allclose(se(x), np.asarray(x) * gate[:, None, None, :], rtol=1e-5, atol=1e-6)
    v = jnp.array([-4.0, -1.0, 0.0, 1.0, 4.0])
    np.testing.assert_allclose(layers.ACTIVATIONS["hardswish"](v), [0, -1 / 3, 0, 2 / 3, 4], atol=1e-6)
    np.testing.assert_allclose(layers.ACTIVATIONS["relu6"](v * 2), [0, 0, 0, 2, 6])
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        layers.ConvBNAct(3, 4, 1, activation="gelu", conv=layers.ConvChoices(), rngs=nnx.Rngs(0))


# --- prediction order ---------------------------------------------------------------------


def test_head_output_order_is_map_cell_box():
    head = heads.SSDHead((4, 4), (2, 3), num_outputs=5, conv=layers.ConvChoices(), rngs=nnx.Rngs(0))
    f0, f1 = images(1, 3)[..., :3], images(1, 2, seed=1)[..., :3]
    f0, f1 = jnp.concatenate([f0, f0[..., :1]], -1), jnp.concatenate([f1, f1[..., :1]], -1)
    logits, offsets = head([f0, f1])
    assert logits.shape == (1, 3 * 3 * 2 + 2 * 2 * 3, 5) and offsets.shape == (1, 30, 4)
    raw1 = head.cls[1](f1)  # [1, 2, 2, 3*5]
    # map 1, cell (row 1, col 0), box 2, class 4: prior index 18 + (1*2 + 0)*3 + 2
    np.testing.assert_allclose(logits[0, 18 + 2 * 3 + 2, 4], raw1[0, 1, 0, 2 * 5 + 4], rtol=1e-6)
    raw0 = head.box[0](f0)
    np.testing.assert_allclose(offsets[0, (2 * 3 + 1) * 2 + 1], raw0[0, 2, 1, 4:8], rtol=1e-6)


# --- numerics: dtypes, batch norm, jit + grad ---------------------------------------------


@SHARED_LIGHT_MODELS
def test_bfloat16_forward_close_to_float32(lite):
    g, p, s = models.split(lite)
    x = images(2, 96)
    lite16 = models.build_model("ssdlite_mobilenetv2", 3, image_size=96, width=0.5, compute_dtype=jnp.bfloat16)
    params_io.assign(lite16, params_io.flatten(nnx.to_pure_dict(p)), strict=True)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(lite16, nnx.Param)))
    l32, o32 = eval_forward(g)(p, s, x)[0]
    g16, p16, s16 = models.split(lite16)
    l16, o16 = jax.jit(functools.partial(models.apply, g16, train=False))(p16, s16, x)[0]
    assert l16.dtype == jnp.float32
    for a, b in ((l16, l32), (o16, o32)):
        a, b = np.asarray(a), np.asarray(b)
        assert np.abs(a - b).max() <= 0.05 * np.abs(b).max() + 1e-3
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_vgg_bfloat16_layers_close_to_float32():
    conv = layers.Conv2d(16, 32, 3, padding=6, dilation=6, conv=layers.ConvChoices(), rngs=nnx.Rngs(0))
    x = images(1, 20)[..., :1].repeat(16, -1)
    y32 = conv(x)
    conv.compute_dtype = jnp.bfloat16
    y16 = conv(x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.03 * float(jnp.abs(y32).max()))


def test_batch_norm_is_flax_batch_norm_to_the_bit():
    """layers.batch_norm (running averages replaced with set_value) gives flax's
    nnx.BatchNorm.__call__ bit for bit: outputs and running averages, train and eval,
    jitted (float32 NHWC, bfloat16 NCHW) and eager (float32 NHWC, train)."""
    def make(layout, dtype):
        bn = nnx.BatchNorm(6, axis=layers.channel_axis(layout), momentum=0.97, epsilon=1e-3,
                           dtype=dtype, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
        bn.scale.set_value(jnp.linspace(0.5, 2.0, 6))
        bn.bias.set_value(jnp.linspace(-1.0, 1.0, 6))
        bn.mean.set_value(jnp.linspace(-0.2, 0.3, 6))
        bn.var.set_value(jnp.linspace(0.5, 1.5, 6))
        return bn

    x = images(3, 5, seed=1)[..., :1].repeat(6, -1) * jnp.arange(1, 7) + jnp.arange(6)
    cases = [("NHWC", jnp.float32, train, nnx.jit) for train in (True, False)]
    cases += [("NCHW", jnp.bfloat16, train, nnx.jit) for train in (True, False)]
    cases += [("NHWC", jnp.float32, True, lambda f: f)]
    for layout, dtype, train, wrap in cases:
        xl = x if layout == "NHWC" else x.transpose(0, 3, 1, 2)

        def ours(bn, x):
            return layers.batch_norm(bn, x, train), bn.mean[...], bn.var[...]

        def flax_(bn, x):
            return nnx.BatchNorm.__call__(bn, x, use_running_average=not train), bn.mean[...], bn.var[...]

        got, want = wrap(ours)(make(layout, dtype), xl), wrap(flax_)(make(layout, dtype), xl)
        assert got[0].dtype == want[0].dtype == dtype
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
        moved = not np.array_equal(got[1], make(layout, dtype).mean[...])
        assert moved == train  # train updates the running averages, eval leaves them


@SHARED_LIGHT_MODELS
def test_batch_norm_train_vs_eval(lite, lite_sgd_step):
    g, p, s = models.split(lite)
    step, opt_state = lite_sgd_step
    x = images(2, 96)
    (l_eval, _), s_eval = eval_forward(g)(p, s, x)
    *_, s_train, _, _, _, l_train = step(p, s, opt_state, x)  # train-mode forward, before the update
    before, after_eval, after_train = (params_io.flatten(nnx.to_pure_dict(t)) for t in (s, s_eval, s_train))
    assert before and all(k.endswith(("/mean", "/var")) for k in before)
    # eval: running averages untouched; train: they move (every variance; the means
    # of a 1x1 conv after a batch-normalised linear layer stay ~0, as they should)
    for k in before:
        np.testing.assert_array_equal(after_eval[k], before[k])
    moved = [k for k in before if not np.allclose(after_train[k], before[k])]
    assert {k for k in before if k.endswith("/var")} <= set(moved)
    assert len(moved) > 0.8 * len(before)
    # at init the running stats are (0, 1): eval and train outputs differ
    assert not np.allclose(l_eval, l_train, atol=1e-3)
    # eval is per-sample; train depends on the batch (the same first image among other
    # ones: the batch shape stays, so no new compilation)
    others = jnp.concatenate([x[:1], x[1:] * 0.1])
    (l_eval_one, _), _ = eval_forward(g)(p, s, others)
    np.testing.assert_allclose(l_eval_one[0], l_eval[0], rtol=1e-4, atol=1e-5)
    l_train_one = step(p, s, opt_state, others)[-1]
    assert not np.allclose(l_train_one[0], l_train[0], atol=1e-3)
    # the model object itself was not mutated by the pure apply
    assert np.array_equal(params_io.flatten(nnx.to_pure_dict(nnx.state(lite, nnx.BatchStat)))[k], before[k])


@SHARED_LIGHT_MODELS
def test_jitted_forward_backward_sgd_step(lite, lite_sgd_step):
    g, p, s = models.split(lite)
    step, opt_state = lite_sgd_step
    x = images(2, 96)
    p2, s2, _, loss, grads, _ = step(p, s, opt_state, x)
    assert np.isfinite(float(loss))
    flat_g = params_io.flatten(nnx.to_pure_dict(grads))
    assert all(np.all(np.isfinite(v)) for v in flat_g.values())
    assert np.abs(flat_g["extractor/stem/conv/kernel"]).sum() > 0
    assert np.abs(flat_g["head/cls/0/pointwise/kernel"]).sum() > 0
    assert jax.tree.structure(p2) == jax.tree.structure(p)
    assert not np.allclose(p2["extractor"]["stem"]["conv"]["kernel"][...], p["extractor"]["stem"]["conv"]["kernel"][...])


@SHARED_LIGHT_MODELS
def test_nchw_layout_gives_the_same_outputs(lite):
    g, p, s = models.split(lite)
    nchw = models.build_model("ssdlite_mobilenetv2", 3, image_size=96, width=0.5, layout="NCHW")
    params_io.assign(nchw, params_io.flatten(nnx.to_pure_dict(p)), strict=True)
    x = images(2, 96)
    # eval mode: train-mode batch norm over 1x1 maps with batch 2 amplifies rounding
    a = eval_forward(g)(p, s, x)[0]
    g2, p2, s2 = models.split(nchw)
    b = jax.jit(functools.partial(models.apply, g2, train=False))(p2, s2, x)[0]
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-4 * float(jnp.abs(v).max()))


@pytest.mark.parametrize("layout,stride,size,k", [("NHWC", 1, 7, 3), ("NHWC", 2, 7, 3), ("NHWC", 2, 8, 3),
                                                   ("NCHW", 2, 5, 3), ("NHWC", 1, 7, 5), ("NHWC", 2, 8, 5)])
def test_depthwise_shifted_equals_grouped_conv(layout, stride, size, k):
    x = images(2, size)[..., :1].repeat(6, -1) * jnp.arange(1, 7)
    if layout == "NCHW":
        x = jnp.transpose(x, (0, 3, 1, 2))
    k = jax.random.normal(jax.random.key(3), (k, k, 1, 6))
    b = jnp.arange(6.0)
    kw = dict(stride=stride, padding=k.shape[0] // 2, layout=layout)

    @jax.jit  # one compilation instead of one per operation
    def outputs_and_kernel_grads(x, k):
        grouped = lambda k: layers.conv2d(x, k, b, groups=6, **kw)
        shifted = lambda k: layers.depthwise_conv2d(x, k, b, **kw)
        exported = layers.depthwise_conv2d(x, k, b, conv=layers.ConvChoices(grouped_depthwise=True), **kw)
        return (grouped(k), shifted(k), jax.grad(lambda k: (grouped(k) ** 2).sum())(k),
                jax.grad(lambda k: (shifted(k) ** 2).sum())(k), exported)

    ref, ours, g1, g2, exported = outputs_and_kernel_grads(x, k)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g2, g1, rtol=1e-4)
    np.testing.assert_allclose(exported, ref, rtol=1e-5, atol=1e-5)  # the form of exported programs


def test_max_pool_ceil_mode():
    x = jnp.arange(5 * 5, dtype=jnp.float32).reshape(1, 5, 5, 1)
    y = layers.max_pool(x, 2, 2, 0, ceil_mode=True)
    assert y.shape == (1, 3, 3, 1)
    np.testing.assert_array_equal(y[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])
    assert layers.max_pool(jnp.zeros((1, 75, 75, 2)), 2, 2, 0, ceil_mode=True).shape == (1, 38, 38, 2)
    assert layers.max_pool(jnp.zeros((1, 2, 19, 19)), 3, 1, 1, layout="NCHW").shape == (1, 2, 19, 19)
    grad = jax.jit(jax.grad(lambda x: layers.max_pool(x, 2, 2, 0, ceil_mode=True).sum()))(x)
    assert float(grad.sum()) == 9.0 and grad[0, 4, 4, 0] == 1.0  # one max per window
    grad = jax.grad(lambda x: layers.max_pool(x, 3, 1, 1).sum())(x.astype(jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16


def _reduce_window_max_pool(x, kernel, stride, padding, ceil_mode, layout):
    """The reference: ``lax.reduce_window`` with PyTorch's output size and -inf padding."""
    spatial = (1, 2) if layout == "NHWC" else (2, 3)
    pads, window, strides = [(0, 0)] * 4, [1] * 4, [1] * 4
    for ax in spatial:
        n_out = layers.pool_layer("p", kernel, stride, padding, ceil_mode).output_size(x.shape[ax])
        pads[ax] = (padding, max((n_out - 1) * stride + kernel - x.shape[ax] - padding, 0))
        window[ax], strides[ax] = kernel, stride
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pads)


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode,layout", [
    # non-overlapping (kernel == stride): the reshape path
    ((2, 75, 75, 3), 2, 2, 0, True, "NHWC"),    # VGG's pool3 at 300 px: 75 -> 38, -inf row and column
    ((2, 75, 75, 3), 2, 2, 0, False, "NHWC"),   # floor mode: the last row and column are never read
    ((1, 76, 9, 2), 2, 2, 0, False, "NHWC"),    # even x odd
    ((1, 7, 5, 2), 3, 3, 0, True, "NHWC"),      # 3x3 blocks, ceil
    ((1, 6, 6, 2), 2, 2, 1, False, "NHWC"),     # padded: border windows hold one -inf row/column
    ((2, 3, 11, 10), 2, 2, 0, True, "NCHW"),
    ((1, 2, 2, 4), 2, 2, 0, False, "NHWC"),     # one window
    # overlapping (kernel > stride): the strided-slice path
    ((2, 19, 19, 4), 3, 1, 1, False, "NHWC"),   # VGG's pool5
    ((1, 7, 9, 3), 3, 2, 1, True, "NHWC"),      # strided, ceil: a partial last window
    ((1, 8, 8, 2), 3, 2, 0, False, "NHWC"),     # floor: the last row and column are never read
    ((1, 3, 10, 6), 3, 1, 1, False, "NCHW"),
])
def test_max_pool_equals_reduce_window(shape, kernel, stride, padding, ceil_mode, layout):
    """Both pooling paths give ``reduce_window``'s values and, on inputs without ties, its
    gradient (exactly for the reshape path; the separable maxima to float rounding)."""
    x = jax.random.normal(jax.random.key(0), shape)
    ours_fn = lambda x: layers.max_pool(x, kernel, stride, padding, ceil_mode, layout)
    ref_fn = lambda x: _reduce_window_max_pool(x, kernel, stride, padding, ceil_mode, layout)
    ours, ref = jax.jit(lambda x: (ours_fn(x), ref_fn(x)))(x)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    weights = jax.random.normal(jax.random.key(1), ref.shape)
    g_ours, g_ref = jax.jit(lambda x: (jax.grad(lambda x: (ours_fn(x) * weights).sum())(x),
                                       jax.grad(lambda x: (ref_fn(x) * weights).sum())(x)))(x)
    tol = 0.0 if kernel == stride else 1e-6
    np.testing.assert_allclose(g_ours, g_ref, rtol=tol, atol=tol)


def test_block_max_pool_ties_share_the_gradient():
    """Exact ties inside a window share its gradient equally (jnp.max's rule); reduce_window
    gives all of it to one element. The total per window is the same."""
    x = jnp.array([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 2, 1)
    g = jax.grad(lambda x: layers.max_pool(x, 2, 2).sum())(x)
    np.testing.assert_allclose(g[0, :, :, 0], [[1 / 3, 1 / 3], [0, 1 / 3]], rtol=1e-6)
    g_ref = jax.grad(lambda x: _reduce_window_max_pool(x, 2, 2, 0, False, "NHWC").sum())(x)
    assert float(g_ref.sum()) == float(g.sum()) == 1.0 and int((g_ref > 0).sum()) == 1


# --- checkpoint io ------------------------------------------------------


@SHARED_LIGHT_MODELS
def test_converted_checkpoint_round_trip(lite, tmp_path):
    g, p, s = models.split(lite)
    flat_p = params_io.flatten(nnx.to_pure_dict(p))
    flat_s = params_io.flatten(nnx.to_pure_dict(s))
    root = params_io.save_converted(str(tmp_path), flat_p, {"source": "test", "model": "ssdlite_mobilenetv2"}, flat_s)
    assert root.endswith("converted")
    conv = params_io.load_converted(str(tmp_path))
    assert conv.meta["model"] == "ssdlite_mobilenetv2" and set(conv.params) == set(flat_p)
    fresh = models.build_model("ssdlite_mobilenetv2", 3, image_size=96, width=0.5, rngs=nnx.Rngs(7))
    params_io.assign(fresh, conv.params, strict=True)
    params_io.assign(fresh, conv.model_state, variables=nnx.BatchStat, strict=True)
    x = images(2, 96)
    # the restored model's outputs equal the saved one's (jitted: eager SSDLite costs ~20 s)
    g2, p2, s2 = models.split(fresh)
    np.testing.assert_array_equal(eval_forward(g2)(p2, s2, x)[0][0], eval_forward(g)(p, s, x)[0][0])
    with pytest.raises(FileExistsError):
        params_io.save_converted(str(tmp_path), flat_p, {})
    with pytest.raises(ValueError, match="shape"):
        params_io.assign(fresh, {"extractor/stem/conv/kernel": np.zeros((1, 1, 1, 1))})
    with pytest.raises(KeyError, match="not in the model"):
        params_io.assign(fresh, {"extractor/nope/kernel": np.zeros(1)})


@pytest.mark.parametrize("kernel, stride, padding, dilation, size", [
    (3, 1, 1, 1, 34),  # 34x34 output: the shifted-matmul kernel gradient
    (3, 2, 1, 1, 66),  # strided, 33x33 output
    (1, 1, 0, 1, 32),  # 1x1
    (3, 1, 6, 6, 40),  # fc6's dilation 6
    (3, 1, 1, 1, 9),  # small map: XLA's own kernel gradient
])
def test_conv_gradients_equal_xla(kernel, stride, padding, dilation, size):
    shifted = layers.resolve_conv_choices("shifted", "off")  # the matmul gradient even for 3 input channels
    rng = np.random.default_rng(kernel * 100 + size)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 4)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(conv(x, w) ** 2)

    ours = jax.grad(loss(lambda x, w: layers.conv2d(x, w, None, stride=stride, padding=padding, dilation=dilation,
                                                    conv=shifted)), (0, 1))(x, w)
    ref = jax.grad(loss(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding),) * 2, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))), (0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-4)


def test_resolve_conv_choices():
    resolve = functools.partial(layers.resolve_conv_choices, cpu_kernels="off")
    # XLA's default flags: YNNPACK takes single convolutions, so the matmul gradient on the CPU
    assert resolve(backend="cpu", xla_flags="").matmul_wgrad
    assert resolve(backend="cpu", xla_flags="--xla_force_host_platform_device_count=8").matmul_wgrad
    assert not resolve(backend="gpu", xla_flags="").matmul_wgrad and not resolve(backend="tpu", xla_flags="").matmul_wgrad
    # the train profile (launch.py): XLA's own kernel gradient is the faster one there
    train_flags = " ".join(xla_flags.PROFILES["train"])
    assert resolve(backend="cpu", xla_flags=train_flags) == layers.ConvChoices()
    assert resolve("xla", backend="cpu", xla_flags="") == layers.ConvChoices()
    shifted = layers.ConvChoices(matmul_wgrad=True, matmul_wgrad_all=True)
    assert resolve("shifted", backend="gpu") == resolve("shifted", backend="cpu", xla_flags=train_flags) == shifted
    # another backend, auto: XLA's gradients and no CPU kernels
    assert layers.resolve_conv_choices(backend="gpu", xla_flags="") == layers.ConvChoices()
    assert layers.resolve_conv_choices("shifted", "on", backend="gpu").cpu_kernels is False
    # xla_flags=None: the process's XLA_FLAGS, read at this call
    assert resolve(backend="cpu").matmul_wgrad == xla_flags.ynn_takes_convolutions()
    with pytest.raises(ValueError, match="wgrad='fast'.*'auto', 'shifted', 'xla'"):
        layers.resolve_conv_choices("fast")
    with pytest.raises(ValueError, match="cpu_kernels='sometimes'.*'auto', 'on', 'off'"):
        layers.resolve_conv_choices(cpu_kernels="sometimes")
    with pytest.raises(ValueError, match="matmul_wgrad_all=True needs matmul_wgrad=True"):
        layers.ConvChoices(matmul_wgrad_all=True)


def test_matmul_wgrad_only_for_wide_inputs_unless_forced():
    auto = layers.ConvChoices(matmul_wgrad=True)
    assert layers._matmul_wgrad_for(auto, (3, 3, 64, 8))
    assert not layers._matmul_wgrad_for(auto, (3, 3, 3, 64))  # VGG conv1_1: XLA's gradient is faster
    assert not layers._matmul_wgrad_for(auto, (3, 3, 32, 32))
    assert layers._matmul_wgrad_for(auto, (3, 3, 3, 32), stride=2)  # strided (a stem): matmuls
    assert layers._matmul_wgrad_for(auto, (1, 1, 16, 96))  # 1x1: one matmul
    assert layers._matmul_wgrad_for(layers.ConvChoices(matmul_wgrad=True, matmul_wgrad_all=True), (3, 3, 3, 64))
    assert not layers._matmul_wgrad_for(layers.ConvChoices(), (3, 3, 512, 512))
    assert not layers._matmul_wgrad_for(layers.resolve_conv_choices("xla", "off"), (3, 3, 512, 512))


def test_models_take_conv_choices_not_the_environment(monkeypatch):
    """The modules get their ConvChoices when built; tracing reads no environment variable
    (the variables that once chose these paths hold values that would be errors)."""
    monkeypatch.setenv("SSD_JAX_CONV_WGRAD", "garbage")
    monkeypatch.setenv("SSD_JAX_CPU_KERNELS", "garbage")
    x = images(2, 64)

    def lowered_grad(conv):
        model = models.build_model("ssd_compact", 3, image_size=64, width=0.25, conv=conv, rngs=nnx.Rngs(0))
        assert model.extractor.stem.conv.conv_choices == conv and model.head.conv_choices == conv
        g, p, s = models.split(model)

        def loss(p):
            (logits, offsets), _ = models.apply(g, p, s, x, train=True)
            return jnp.mean(logits ** 2) + jnp.mean(offsets ** 2)

        return jax.jit(jax.grad(loss)).lower(p), p

    forced = layers.ConvChoices(matmul_wgrad=True, matmul_wgrad_all=True)
    lowered, p = lowered_grad(forced)
    grads = lowered.compile()(p)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grads))
    # the choice is the one given: the stem's (32x32 output) kernel gradient is matmuls, or not
    assert "dot_general" in lowered.as_text()
    assert "dot_general" not in lowered_grad(layers.ConvChoices())[0].as_text()
