"""ssd_jax.losses: a hand-computed loss, mining caps, the zero-positive guard, gradients,
and an argsort-based reference on random batches."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssd_jax import losses


def _ce(logits, label):
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def test_hand_computed_loss():
    logits = [[0, 2, 0], [0, 0, 0], [1, 0, 0], [0, 3, 0], [0, 1, 1]]
    labels = [1, 0, 0, 0, 0]  # one positive -> 3 hard negatives out of 4
    loc_preds = [[0.5, -2, 0, 0.1]] + [[9, 9, 9, 9]] * 4  # negatives' offsets never count
    loc_targets = [[0, 0, 0, 0]] * 5
    # Background losses: prior 1 log 3 = 1.10, prior 2 log(e + 2) - 1 = 0.55,
    # prior 3 log(2 + e^3) = 3.10, prior 4 log(1 + 2e) = 1.86 -> keep priors 3, 4, 1.
    conf = _ce(logits[0], 1) + _ce(logits[3], 0) + _ce(logits[4], 0) + _ce(logits[1], 0)
    loc = 0.5 * 0.5**2 + (2 - 0.5) + 0 + 0.5 * 0.1**2  # Smooth-L1 of the positive
    loss, metrics = losses.multibox_loss(
        jnp.array([logits], jnp.float32), jnp.array([loc_preds], jnp.float32),
        jnp.array([labels]), jnp.array([loc_targets], jnp.float32), alpha=2.0,
    )
    assert float(loss) == pytest.approx(conf + 2.0 * loc, rel=1e-6)
    assert float(metrics["conf_loss"]) == pytest.approx(conf, rel=1e-6)
    assert float(metrics["loc_loss"]) == pytest.approx(loc, rel=1e-6)
    assert float(metrics["num_pos"]) == 1 and float(metrics["num_neg"]) == 3


def test_negatives_capped_at_what_exists():
    logits = jnp.zeros((1, 3, 4))
    labels = jnp.array([[2, 0, 0]])  # 3 * 1 wanted, 2 exist
    _, metrics = losses.multibox_loss(logits, jnp.zeros((1, 3, 4)), labels, jnp.zeros((1, 3, 4)))
    assert float(metrics["num_neg"]) == 2
    assert float(metrics["conf_loss"]) == pytest.approx(3 * math.log(4), rel=1e-6)


def test_ratio_and_per_image_counts_normalised_by_batch_positives():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 40, 3)), jnp.float32)
    labels = np.zeros((2, 40), np.int32)
    labels[0, [3, 7]] = [1, 2]  # image 0: 2 positives -> 6 negatives; image 1: none -> 0
    loss, metrics = losses.multibox_loss(logits, jnp.zeros((2, 40, 4)), jnp.asarray(labels),
                                         jnp.zeros((2, 40, 4)), neg_pos_ratio=3.0)
    assert float(metrics["num_pos"]) == 2 and float(metrics["num_neg"]) == 6
    ref, _ = reference_loss(logits, jnp.zeros((2, 40, 4)), labels, np.zeros((2, 40, 4)))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    _, m = losses.multibox_loss(logits, jnp.zeros((2, 40, 4)), jnp.asarray(labels),
                                jnp.zeros((2, 40, 4)), neg_pos_ratio=1.5)
    assert float(m["num_neg"]) == 3


def test_zero_positive_batch_is_finite_with_finite_gradients():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 5)), jnp.float32)
    zeros = jnp.zeros((2, 10, 4))
    labels = jnp.zeros((2, 10), jnp.int32)
    fn = lambda lg, lp: losses.multibox_loss(lg, lp, labels, zeros)[0]  # noqa: E731
    loss, (g_logits, g_loc) = jax.value_and_grad(fn, argnums=(0, 1))(logits, zeros)
    assert float(loss) == 0.0
    assert np.all(np.isfinite(g_logits)) and np.all(np.isfinite(g_loc))
    np.testing.assert_array_equal(g_logits, 0.0)


def reference_mask(logits, labels, neg_pos_ratio=3.0):
    """The ports' mining: rank negatives by a stable descending argsort of the background
    loss (ties in prior order) and keep the first floor(ratio * num_pos) of each image."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    top = logits.max(-1, keepdims=True)
    background = np.log(np.exp(logits - top).sum(-1)) + top[..., 0] - logits[..., 0]
    pos = labels > 0
    mask = pos.copy()
    for b in range(labels.shape[0]):
        k = min(int(math.floor(neg_pos_ratio * pos[b].sum())), int((~pos[b]).sum()))
        order = np.argsort(-np.where(pos[b], -np.inf, background[b]), kind="stable")
        mask[b, order[:k]] = True
    return mask


def reference_loss(logits, loc_preds, labels, loc_targets, neg_pos_ratio=3.0, alpha=1.0):
    """Written with jax.nn.logsumexp + gather, the mask from :func:`reference_mask`; a
    differentiable function of (logits, loc_preds) for the given mask."""
    mask = reference_mask(logits, labels, neg_pos_ratio)
    pos = np.asarray(labels) > 0
    n = max(pos.sum(), 1)

    def fn(logits, loc_preds):
        logits = jnp.asarray(logits, jnp.float32)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, jnp.asarray(labels)[..., None], -1)[..., 0]
        d = jnp.asarray(loc_preds) - jnp.asarray(loc_targets)
        sl1 = jnp.where(jnp.abs(d) < 1, 0.5 * d * d, jnp.abs(d) - 0.5).sum(-1)
        return (jnp.sum(jnp.where(mask, ce, 0)) + alpha * jnp.sum(jnp.where(pos, sl1, 0))) / n

    return fn(logits, loc_preds), fn


@pytest.mark.parametrize("seed", range(3))
def test_value_and_gradients_match_argsort_reference(seed):
    rng = np.random.default_rng(seed)
    b, p, c = 3, 300, 6
    logits = jnp.asarray(rng.normal(size=(b, p, c)) * 3, jnp.float32)
    loc_preds = jnp.asarray(rng.normal(size=(b, p, 4)), jnp.float32)
    loc_targets = jnp.asarray(rng.normal(size=(b, p, 4)), jnp.float32)
    labels = np.where(rng.uniform(size=(b, p)) < [[0.02], [0.1], [0.3]], rng.integers(1, c, (b, p)), 0)
    ours = jax.jit(jax.value_and_grad(
        lambda lg, lp: losses.multibox_loss(lg, lp, jnp.asarray(labels), loc_targets)[0], argnums=(0, 1)))
    theirs = jax.value_and_grad(reference_loss(logits, loc_preds, labels, loc_targets)[1], argnums=(0, 1))
    (v, (g1, g2)), (rv, (rg1, rg2)) = ours(logits, loc_preds), theirs(logits, loc_preds)
    assert float(v) == pytest.approx(float(rv), rel=1e-5)
    np.testing.assert_allclose(g1, rg1, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g2, rg2, rtol=1e-5, atol=1e-7)


def test_jit_equals_eager_and_low_precision_logits():
    rng = np.random.default_rng(3)
    args = (jnp.asarray(rng.normal(size=(2, 50, 4)), jnp.float32), jnp.asarray(rng.normal(size=(2, 50, 4)), jnp.float32),
            jnp.asarray(rng.integers(0, 4, (2, 50)) * (rng.uniform(size=(2, 50)) < 0.2)),
            jnp.asarray(rng.normal(size=(2, 50, 4)), jnp.float32))
    eager, _ = losses.multibox_loss(*args)
    jitted, _ = jax.jit(losses.multibox_loss)(*args)
    assert float(eager) == pytest.approx(float(jitted), rel=1e-6)
    bf16, _ = losses.multibox_loss(args[0].astype(jnp.bfloat16), *args[1:])
    assert float(bf16) == pytest.approx(float(eager), rel=2e-2)


def test_large_logits_stay_finite():
    logits = jnp.array([[[200.0, -200.0, 0.0], [-300.0, 300.0, 0.0]]])
    loss, _ = losses.multibox_loss(logits, jnp.zeros((1, 2, 4)), jnp.array([[1, 0]]), jnp.zeros((1, 2, 4)))
    assert float(loss) == pytest.approx(400.0 + 600.0)


def test_select_largest_with_ties_exclusions_and_edge_ks():
    values = jnp.array([
        [0.5, 2.0, 2.0, -1.0, 2.0, 0.0, 0.0],  # ties at 2.0; one excluded entry
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied at zero
        [1e-30, 3e-38, 7.0, -1.0, -1.0, 1e30, 0.0],  # tiny / denormal / huge values
    ])
    cases = {0: [0, 1, 2, 6], 1: [0, 3, 7, 7], 2: [0, 2, 5, 5]}
    for k_index in range(4):
        k = jnp.array([cases[r][k_index] for r in range(3)])
        mask = np.asarray(jax.jit(losses.select_largest)(values, k))
        for r in range(3):
            v = np.asarray(values[r])
            order = [i for i in np.argsort(-v, kind="stable") if v[i] >= 0][: cases[r][k_index]]
            expected = np.zeros(7, bool)
            expected[order] = True
            np.testing.assert_array_equal(mask[r], expected, err_msg=f"row {r}, k {cases[r][k_index]}")


def test_select_largest_random_against_sort():
    rng = np.random.default_rng(5)
    values = np.round(rng.exponential(size=(8, 500)), 2).astype(np.float32)  # many ties
    values[rng.uniform(size=values.shape) < 0.1] = -1.0
    k = np.minimum(rng.integers(0, 400, 8), (values >= 0).sum(1))
    mask = np.asarray(jax.jit(losses.select_largest)(jnp.asarray(values), jnp.asarray(k)))
    for r in range(8):
        order = [i for i in np.argsort(-values[r], kind="stable") if values[r, i] >= 0][: k[r]]
        expected = np.zeros(500, bool)
        expected[order] = True
        np.testing.assert_array_equal(mask[r], expected)
