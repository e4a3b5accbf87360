"""The train state, the optimiser (schedules, weight-decay mask, clipping) and the pure train step.

Everything here is a pure function of explicit arguments (no globals, no config object):

* :class:`TrainState`: a pytree ``(step, params, model_state, opt_state, rng)`` that jits,
  shards, donates and checkpoints like any other.
* :func:`make_optimizer`: SGD with momentum (the paper's recipe, the default) or Adam(W),
  weight decay only on conv/dense kernels (:func:`weight_decay_mask`), optional global-norm
  clipping, and a learning-rate schedule from :func:`make_schedule` (linear warmup, then
  step decay or cosine).
* :func:`make_train_step`: ``train_step(state, batch) -> (state, metrics)``, network forward
  (``train=True``), matching and the multibox loss all inside one jit-able function.
* :class:`TrainMetrics`: a ``clu.metrics.Collection`` that averages a log interval's step
  metrics on the device (:func:`merge_train_metrics`).

The loss is computed in float32 whatever the network's compute dtype (the model returns
float32 outputs; :func:`~ssd_jax.losses.multibox_loss` casts), and parameters stay float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics as clu_metrics
from flax import nnx

from ssd_jax import boxes as box_ops
from ssd_jax import losses, matching
from ssd_jax.models import ssd as ssd_lib
from ssd_jax.schema import Section

Array = jax.Array
Batch = Mapping[str, Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree.

    Attributes:
      step: ``[]`` int32, optimiser steps taken.
      params: ``nnx.State`` of ``nnx.Param`` (float32), what the optimiser updates.
      model_state: ``nnx.State`` of the other variables (batch-norm running averages).
      opt_state: the optax state of ``params``.
      rng: ``[2]`` uint32 raw PRNG key (split every step; for stochastic layers).
    """

    step: Array
    params: Any
    model_state: Any
    opt_state: Any
    rng: Array


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """Optimiser and learning-rate schedule (the ``optim`` section of an experiment;
    ``batch_size`` and ``total_steps`` come from ``data.batch_size`` and ``num_steps``).

    Attributes:
      optimizer: ``"sgd"`` (momentum, the paper) or ``"adamw"``.
      lr: peak learning rate at batch size ``lr_batch_size``; scaled linearly to
        ``batch_size`` (the paper: 1e-3 at 32).
      lr_batch_size: the batch size ``lr`` refers to.
      batch_size: the global batch size actually trained with.
      schedule: ``"step"`` (multiply by ``decay_factor`` at each of ``decay_steps``) or
        ``"cosine"`` (to ``cosine_final_factor * lr`` at ``total_steps``).
      warmup_steps: linear warmup from ``warmup_init_factor * lr`` to ``lr``.
      momentum: SGD momentum (Adam's b1 is left at its default).
      weight_decay: L2 decay added to the gradient (SGD) or decoupled (AdamW).
      decay: what weight decay applies to: ``kernels`` (convolution and dense weights only,
        see :func:`weight_decay_mask`) or ``all`` (every parameter, biases and batch-norm
        scales too, as torchvision's detection reference does without
        ``--norm-weight-decay``).
      grad_clip: clip the gradient to this global norm; 0 disables.
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    lr_batch_size: int = 32
    batch_size: int = 32
    schedule: str = "step"
    total_steps: int = 120_000
    warmup_steps: int = 0
    warmup_init_factor: float = 0.0
    decay_steps: tuple[int, ...] = ()
    decay_factor: float = 0.1
    cosine_final_factor: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay: str = "kernels"
    grad_clip: float = 0.0

    DERIVED = ("batch_size", "total_steps")

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.decay not in ("kernels", "all"):
            raise ValueError(f"optim.decay must be 'kernels' or 'all', got {self.decay!r}")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}")
        if self.lr <= 0 or self.lr_batch_size <= 0 or self.batch_size <= 0:
            raise ValueError("lr, lr_batch_size and batch_size must be positive")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise ValueError("warmup_steps must be >= 0 and total_steps > 0")
        if list(self.decay_steps) != sorted(self.decay_steps):
            raise ValueError(f"decay_steps must be increasing, got {self.decay_steps}")
        if self.decay_steps and self.decay_steps[0] <= self.warmup_steps:
            raise ValueError(f"decay_steps {self.decay_steps} must come after the warmup ({self.warmup_steps} steps)")
        if min(self.decay_factor, self.cosine_final_factor, self.warmup_init_factor) < 0:
            raise ValueError("decay_factor, cosine_final_factor and warmup_init_factor must be >= 0")
        if self.momentum < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("momentum, weight_decay and grad_clip must be >= 0")

    @property
    def peak_lr(self) -> float:
        return self.lr * self.batch_size / self.lr_batch_size


def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Step -> learning rate: linear warmup, then step decay or cosine (see :class:`OptimConfig`)."""
    peak = cfg.peak_lr
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=peak * cfg.warmup_init_factor,
            peak_value=peak,
            warmup_steps=cfg.warmup_steps,
            decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
            end_value=peak * cfg.cosine_final_factor,
        )
    # join_schedules hands the second schedule ``step - warmup_steps``; decay_steps are absolute.
    boundaries = {int(s) - cfg.warmup_steps: cfg.decay_factor for s in cfg.decay_steps}
    decay = optax.piecewise_constant_schedule(peak, boundaries)
    if cfg.warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(peak * cfg.warmup_init_factor, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def weight_decay_mask(params: Any) -> Any:
    """Same-structure pytree of bools: True for parameters weight decay applies to.

    Decayed: every parameter whose path ends in ``kernel`` (conv and dense weights). Not
    decayed: biases, batch-norm scales and the L2Norm ``scale`` (anything else).
    """
    def decide(path, _):
        # Inside an nnx.State a leaf's path ends in the Variable's own GetAttrKey('value');
        # the parameter's name is the last dict key.
        names = [_key_name(k) for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
        return bool(names) and names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(cfg: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(optimizer, schedule)``: clip (optional) -> masked weight decay -> SGD/AdamW."""
    schedule = make_schedule(cfg)
    mask = weight_decay_mask if cfg.decay == "kernels" else None
    parts: list[optax.GradientTransformation] = []
    if cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.optimizer == "sgd":
        if cfg.weight_decay > 0:
            # Caffe / PyTorch SGD weight decay: wd * param added to the gradient, before momentum.
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None))
    else:
        parts.append(optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask))
    return optax.chain(*parts), schedule


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, seed: int = 0) -> tuple[nnx.GraphDef, TrainState]:
    """``(graphdef, state)`` of a freshly built model (step 0).

    The optimiser state is made by one jitted ``tx.init``: eagerly, every parameter shape
    not seen before compiles its own small program (2.7 s for SSDLite-MobileNetV3's 266
    parameters on a 2-core CPU, against 0.85 s jitted)."""
    graphdef, params, model_state = ssd_lib.split(model)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=jax.jit(tx.init)(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


@dataclasses.dataclass(frozen=True)
class LossConfig(Section):
    """Matching and loss settings (the ``loss`` section of an experiment; paper defaults).

    Attributes:
      iou_threshold: a prior matches a truth box at this IoU or above (besides each box's best prior).
      neg_pos_ratio: hard negatives kept per positive.
      alpha: weight of the localisation loss.
      variances: the box coder's ``(centre, size)`` variances; evaluation and predict
        decode with the same ones.
    """

    iou_threshold: float = 0.5
    neg_pos_ratio: float = 3.0
    alpha: float = 1.0
    variances: tuple[float, float] = box_ops.DEFAULT_VARIANCES

    def __post_init__(self):
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"loss.iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if self.neg_pos_ratio < 0 or self.alpha < 0:
            raise ValueError(f"loss.neg_pos_ratio and loss.alpha must be >= 0, got {self.neg_pos_ratio}, {self.alpha}")
        if len(self.variances) != 2 or min(self.variances) <= 0:
            raise ValueError(f"loss.variances must be two positive numbers, got {self.variances}")


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    priors: Array,
    loss_cfg: LossConfig = LossConfig(),
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """The pure train step of one model.

    Args:
      graphdef: the model's static graph (from :func:`create_train_state`).
      tx, schedule: from :func:`make_optimizer`.
      priors: ``[P, 4]`` float32 (cx, cy, w, h) priors of the model's spec.
      loss_cfg: matching and loss settings.

    Returns:
      ``train_step(state, batch) -> (new_state, metrics)`` with ``batch`` holding
      ``image [B,S,S,3]`` float (normalised), ``boxes [B,G,4]`` float32 normalised xyxy and
      ``labels [B,G]`` int32 (0 = padding). ``metrics``: float32 scalars ``loss``,
      ``conf_loss``, ``loc_loss``, ``num_pos`` (matched priors per image), ``num_neg``
      (mined negatives per image), ``lr`` (the rate this step used) and ``grad_norm``
      (global norm of the loss gradient, before clipping). Not jitted: jit it at the call
      site (see :mod:`ssd_jax.parallel`).
    """
    priors = jnp.asarray(priors, jnp.float32)
    variances = tuple(float(v) for v in loss_cfg.variances)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        images = batch["image"]
        loc_targets, labels = matching.match_batch(
            batch["boxes"], batch["labels"], priors, loss_cfg.iou_threshold, variances
        )

        def loss_fn(params):
            (logits, offsets), new_model_state = ssd_lib.apply(graphdef, params, state.model_state, images, train=True)
            loss, metrics = losses.multibox_loss(
                logits, offsets, labels, loc_targets, loss_cfg.neg_pos_ratio, loss_cfg.alpha
            )
            return loss, (metrics, new_model_state)

        (_, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
        batch_size = images.shape[0]
        out = {
            "loss": metrics["loss"],
            "conf_loss": metrics["conf_loss"],
            "loc_loss": metrics["loc_loss"],
            "num_pos": metrics["num_pos"] / batch_size,
            "num_neg": metrics["num_neg"] / batch_size,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            model_state=new_model_state,
            opt_state=new_opt_state,
            rng=jax.random.key_data(rng),
        )
        return new_state, out

    return train_step


#: The step metrics of a log interval (a ``clu.metrics.Collection``): averages, and the
#: last learning rate. (Built with ``create``: this module's postponed annotations would
#: hide the metric types from a class body.)
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output("loss"),
    conf_loss=clu_metrics.Average.from_output("conf_loss"),
    loc_loss=clu_metrics.Average.from_output("loc_loss"),
    num_pos=clu_metrics.Average.from_output("num_pos"),
    num_neg=clu_metrics.Average.from_output("num_neg"),
    grad_norm=clu_metrics.Average.from_output("grad_norm"),
    lr=clu_metrics.LastValue.from_output("lr"),
)


@jax.jit
def merge_train_metrics(acc: TrainMetrics | None, step_metrics: Mapping[str, Array]) -> TrainMetrics:
    """``acc`` merged with one step's ``metrics`` (from :func:`make_train_step`), on the
    device (no host transfer); ``acc=None`` starts an interval."""
    one = TrainMetrics.single_from_model_output(**step_metrics)
    return one if acc is None else acc.merge(one)
