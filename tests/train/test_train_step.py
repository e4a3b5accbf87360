"""train.py: optimiser pieces and the pure train step (tiny network, fixed batch)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ssd_jax import anchors, parallel
from ssd_jax.models import tiny as tiny_model
from ssd_jax import train_step as train_lib
from ssd_jax.models import params_io



def _setup(compute_dtype=jnp.float32, **optim):
    model = tiny_model.build_tiny(3, 32, compute_dtype=compute_dtype, rngs=nnx.Rngs(0))
    cfg = train_lib.OptimConfig(**{"batch_size": 4, "lr": 0.05, "lr_batch_size": 4, "total_steps": 100, **optim})
    tx, schedule = train_lib.make_optimizer(cfg)
    graphdef, state = train_lib.create_train_state(model, tx, seed=0)
    step = train_lib.make_train_step(graphdef, tx, schedule, anchors.generate(model.spec))
    return state, step, schedule


def test_weight_decay_mask_excludes_biases_and_norm_scales():
    state, _, _ = _setup()
    mask = params_io.flatten(nnx.to_pure_dict(train_lib.weight_decay_mask(state.params)))
    assert mask and set(mask) == set(params_io.flatten(nnx.to_pure_dict(state.params)))
    for path, decayed in mask.items():
        assert decayed == path.endswith("/kernel"), path
    assert any(p.endswith("bn/scale") for p in mask) and any(p.endswith("/bias") for p in mask)


def test_masked_weight_decay_leaves_biases_and_scales_alone():
    """With a zero gradient, one SGD step (no momentum history yet) moves only the kernels."""
    state, _, _ = _setup(weight_decay=0.1, momentum=0.0)
    tx, _ = train_lib.make_optimizer(train_lib.OptimConfig(lr=1.0, lr_batch_size=1, batch_size=1, weight_decay=0.1, momentum=0.0))
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = tx.update(zeros, tx.init(state.params), state.params)
    flat_u = params_io.flatten(nnx.to_pure_dict(updates))
    flat_p = params_io.flatten(nnx.to_pure_dict(state.params))
    for path, u in flat_u.items():
        expected = -0.1 * np.asarray(flat_p[path]) if path.endswith("/kernel") else 0.0
        np.testing.assert_allclose(u, expected, rtol=1e-6, atol=0, err_msg=path)


def test_weight_decay_on_every_parameter():
    """``optim.decay="all"`` (torchvision's reference without ``--norm-weight-decay``): with
    a zero gradient one SGD step shrinks every parameter, biases and batch-norm scales too."""
    state, _, _ = _setup()
    cfg = train_lib.OptimConfig(lr=1.0, lr_batch_size=1, batch_size=1, weight_decay=0.1, momentum=0.0, decay="all")
    tx, _ = train_lib.make_optimizer(cfg)
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, state.params), tx.init(state.params), state.params)
    flat_u = params_io.flatten(nnx.to_pure_dict(updates))
    flat_p = params_io.flatten(nnx.to_pure_dict(state.params))
    assert any(p.endswith("/bias") for p in flat_u) and any(p.endswith("bn/scale") for p in flat_u)
    for path, u in flat_u.items():
        np.testing.assert_allclose(u, -0.1 * np.asarray(flat_p[path]), rtol=1e-6, err_msg=path)
    with pytest.raises(ValueError, match="optim.decay must be 'kernels' or 'all'"):
        train_lib.OptimConfig(decay="biases")


def test_step_schedule_warmup_and_decays():
    cfg = train_lib.OptimConfig(lr=1e-3, lr_batch_size=32, batch_size=64, warmup_steps=10, decay_steps=(80, 100))
    s = train_lib.make_schedule(cfg)
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(5)), 1e-3, rtol=1e-6)  # halfway to the scaled peak 2e-3
    np.testing.assert_allclose([float(s(t)) for t in (10, 79, 80, 99, 100, 200)],
                               [2e-3, 2e-3, 2e-4, 2e-4, 2e-5, 2e-5], rtol=1e-5)


def test_cosine_schedule():
    cfg = train_lib.OptimConfig(lr=1.0, lr_batch_size=1, batch_size=1, schedule="cosine", warmup_steps=2, total_steps=12)
    s = train_lib.make_schedule(cfg)
    np.testing.assert_allclose([float(s(t)) for t in (0, 1, 2, 7, 12)], [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_bad_optim_config_is_a_clear_error():
    with pytest.raises(ValueError, match="schedule"):
        train_lib.OptimConfig(schedule="linear")
    with pytest.raises(ValueError, match="decay_steps"):
        train_lib.OptimConfig(decay_steps=(100, 80))


def test_train_step_is_pure(fixed_batch):
    state, step, _ = _setup()
    step = jax.jit(step)  # no donation: the input state must survive
    batch = {k: jnp.asarray(v) for k, v in fixed_batch().items()}
    before = jax.tree.map(np.asarray, state)
    s1, m1 = step(state, batch)
    s2, m2 = step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)  # inputs untouched
    jax.tree.map(np.testing.assert_array_equal, s1, s2)
    assert m1 == m2 or all(float(m1[k]) == float(m2[k]) for k in m1)
    assert int(s1.step) == 1
    assert set(m1) == {"loss", "conf_loss", "loc_loss", "num_pos", "num_neg", "lr", "grad_norm"}


def test_jits_once_and_loss_decreases_on_a_fixed_batch(fixed_batch):
    state, step, _ = _setup(optimizer="adamw", lr=3e-3, weight_decay=0.0)
    traces = []

    def counted(s, b):
        traces.append(1)
        return step(s, b)

    mesh = parallel.make_mesh()
    state = parallel.replicate(state, mesh)
    jstep = parallel.jit_train_step(counted, mesh, state)
    batch = parallel.global_batch(fixed_batch(), mesh, 4)
    losses = []
    for _ in range(40):
        state, metrics = jstep(state, batch)
        losses.append(float(metrics["loss"]))
    assert len(traces) == 1 and jstep._cache_size() == 1  # one trace, one executable
    assert int(state.step) == 40
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses[::5]
    assert float(metrics["num_pos"]) > 0 and float(metrics["grad_norm"]) > 0


def test_bfloat16_compute_keeps_float32_params_and_loss(fixed_batch):
    state, step, _ = _setup(compute_dtype=jnp.bfloat16)
    new, metrics = jax.jit(step)(state, {k: jnp.asarray(v) for k, v in fixed_batch().items()})
    assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))


def test_gradient_clipping_bounds_the_update(fixed_batch):
    state, step, _ = _setup(grad_clip=1e-3, momentum=0.0, weight_decay=0.0, lr=1.0, lr_batch_size=4)
    new, metrics = jax.jit(step)(state, {k: jnp.asarray(v) for k, v in fixed_batch().items()})
    delta = optax.tree.norm(jax.tree.map(lambda a, b: a - b, new.params, state.params))
    assert float(metrics["grad_norm"]) > 1e-2  # reported before clipping
    np.testing.assert_allclose(float(delta), 1e-3, rtol=1e-3)
