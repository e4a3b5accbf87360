"""The SSD network (feature extractor + heads) and the pure-function pattern for training.

:class:`SSD` ties a feature extractor to a head and to a :class:`~ssd_jax.anchors.PriorSpec`:
the heads' boxes per cell come from the spec, and construction fails with a clear error
when the extractor's feature-map sizes at ``spec.image_size`` (derived from its layer
stack with :mod:`ssd_jax.receptive_field`) differ from ``spec.feature_sizes``. So the
number and order of predictions always equal the priors'.

Input: an already-normalised ``[B, H, W, 3]`` float array (NHWC, see
:mod:`ssd_jax.normalization`), H = W = ``spec.image_size``. Output: ``(class_logits
[B, P, C+1] float32, box_offsets [B, P, 4] float32)``, predictions ordered as the priors
(map, row-major cell, box). Parameters are float32; ``compute_dtype`` (float32 or
bfloat16) is what the convolutions run in.

Pure-function pattern (what the train step, sharding, donation and orbax use)::

    model = build_model("ssd300_vgg16", num_classes=20, rngs=nnx.Rngs(0))
    graphdef, params, model_state = split(model)     # static graph + two pytrees
    # params: nnx.State of nnx.Param (what the optimizer updates)
    # model_state: nnx.State of everything else (batch-norm running averages; empty for VGG)

    @jax.jit
    def train_step(params, model_state, opt_state, images):
        def loss_fn(p):
            (logits, offsets), new_state = apply(graphdef, p, model_state, images, train=True)
            return loss(logits, offsets), new_state
        (l, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        ...
        return new_params, new_state, new_opt_state

``apply`` merges the graph with the given state, runs it, and returns the outputs with
the updated model state; it never mutates its inputs, so it can be jitted, sharded,
donated and differentiated like any pure function. ``nnx.to_pure_dict(params)`` gives a
plain nested dict of arrays (what :mod:`ssd_jax.models.params_io` stores with orbax) and
``nnx.replace_by_pure_dict(params, d)`` puts one back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssd_jax import anchors
from ssd_jax.models.layers import ConvChoices
from ssd_jax.receptive_field import Layer, receptive_fields

Array = jax.Array


def feature_sizes(layer_stacks: list[list[Layer]], image_size: int) -> tuple[int, ...]:
    """Side of each source map for a square input of ``image_size``."""
    return tuple(receptive_fields(stack, image_size)[-1].size for stack in layer_stacks)


class SSD(nnx.Module):
    """Feature extractor + head, bound to a prior spec.

    Args:
      extractor: module with ``__call__(x, train) -> list of NHWC maps``,
        ``out_channels`` and ``layer_stacks()``.
      head_cls: :class:`~ssd_jax.models.heads.SSDHead` or ``SSDLiteHead``.
      spec: the prior layout the predictions must line up with.
      num_classes: object classes C (background excluded); logits have C + 1 columns.
      name: model name, for messages.
      conv: the head's :class:`~ssd_jax.models.layers.ConvChoices` (give the extractor's).
    """

    def __init__(self, extractor, head_cls, spec: anchors.PriorSpec, num_classes: int, *, name: str = "ssd",
                 compute_dtype=jnp.float32, conv: ConvChoices, rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"num_classes (object classes, background excluded) must be >= 1, got {num_classes}")
        stacks = extractor.layer_stacks()
        try:
            sizes = feature_sizes(stacks, spec.image_size)
        except ValueError as e:
            raise ValueError(f"{name}: input {spec.image_size}x{spec.image_size} is too small for the network: {e}") from e
        if len(sizes) != spec.num_maps or sizes != spec.feature_sizes:
            raise ValueError(
                f"{name} and prior spec {spec.name or '(custom)'} disagree: at input "
                f"{spec.image_size}x{spec.image_size} the network's {len(sizes)} source maps "
                f"({', '.join(extractor.source_names)}) have sizes {sizes}, the spec expects "
                f"{spec.num_maps} maps of sizes {spec.feature_sizes}"
            )
        self.name = name
        self.spec = spec
        self.num_classes = num_classes
        self.compute_dtype = compute_dtype
        self.extractor = extractor
        self.head = head_cls(extractor.out_channels, spec.boxes_per_cell, num_classes + 1, compute_dtype=compute_dtype,
                             conv=conv, rngs=rngs)

    def __call__(self, images: Array, train: bool = False) -> tuple[Array, Array]:
        """``images [B,S,S,3]`` -> ``(class_logits [B,P,C+1], box_offsets [B,P,4])`` float32."""
        s = self.spec.image_size
        if images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"{self.name} expects NHWC images [B,{s},{s},3] (its prior spec's size), got shape {images.shape}")
        features = self.extractor(images, train=train)
        logits, offsets = self.head(features, train=train)
        return logits.astype(jnp.float32), offsets.astype(jnp.float32)

    def source_features(self, images: Array, train: bool = False) -> list[Array]:
        """The NHWC source feature maps (shallow to deep)."""
        return self.extractor(images, train=train)

    def layer_stacks(self) -> list[list[Layer]]:
        """Per source map, the spatial layers from the input (for receptive fields)."""
        return self.extractor.layer_stacks()

    @property
    def source_names(self) -> tuple[str, ...]:
        return tuple(self.extractor.source_names)


def split(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, model_state)``: parameters and everything else (BN stats)."""
    return nnx.split(model, nnx.Param, ...)


def merge(graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State) -> nnx.Module:
    return nnx.merge(graphdef, params, model_state)


def apply(
    graphdef: nnx.GraphDef, params: nnx.State, model_state: nnx.State, images: Array, train: bool = False
) -> tuple[tuple[Array, Array], nnx.State]:
    """Pure forward pass: ``((class_logits [B,P,C+1], box_offsets [B,P,4]), new_model_state)``.

    ``train=True`` uses batch statistics and returns updated running averages;
    ``train=False`` returns ``model_state`` unchanged.
    """
    # copy=True: fresh Variables in the current trace (the state may come from an outer
    # jit while this runs under grad; mutating the outer trace's Variables is an error).
    model = nnx.merge(graphdef, params, model_state, copy=True)
    out = model(images, train=train)
    _, _, new_state = nnx.split(model, nnx.Param, ...)
    return out, new_state


def count_params(tree: Any) -> int:
    """Number of scalar parameters in a model or a params pytree."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
