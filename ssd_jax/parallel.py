"""Data parallelism: the device mesh, shardings, host batches -> global arrays, the jitted step.

One mesh axis, ``'data'``, over every device of every process. The batch is split over
it; the train state is replicated. The step is compiled once with its shardings declared
at the jit site (``in_shardings``, ``out_shardings``, ``donate_argnums=0``), so the same
code runs on 1 CPU, 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), a GPU or a multi-host slice.

The global batch size is the config's whatever the device count: each process feeds
``global_batch / process_count`` images (its shard of the data) and
:func:`global_batch` assembles them with ``jax.make_array_from_process_local_data``.

Multi-host: the entry points start ``jax.distributed`` before anything else touches JAX
(:func:`ssd_jax.runtime.setup_process`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def per_process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Images each process feeds; errors if the global batch does not split evenly."""
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the {num_devices} devices "
            f"of the mesh; choose a multiple of {num_devices}"
        )
    return global_batch_size // jax.process_count()


def global_batch(host_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict[str, jax.Array]:
    """This process's numpy batch ``{k: [B_local, ...]}`` -> global arrays ``[B_global, ...]``
    sharded over ``'data'``."""
    sharding = data_sharding(mesh)
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        shape = (global_batch_size, *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on all devices of ``mesh`` (fully replicated)."""
    return jax.device_put(tree, replicated(mesh))


def jit_train_step(train_step: Callable, mesh: Mesh, state: Any) -> Callable:
    """``train_step(state, batch) -> (state, metrics)`` compiled with the state replicated
    (and donated) and the batch split over ``'data'``; metrics come back replicated."""
    state_sharding = jax.tree.map(lambda _: replicated(mesh), state)
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, data_sharding(mesh)),
        out_shardings=(state_sharding, replicated(mesh)),
        donate_argnums=0,
    )
