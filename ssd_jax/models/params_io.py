"""Plain-pytree views of model variables, by '/'-joined path, and the converted checkpoint.

* :func:`flatten` / :func:`unflatten`: a nested dict (``nnx.to_pure_dict`` of a state,
  or what orbax restores) <-> ``{"extractor/conv1_1/kernel": array, ...}``. Integer keys
  (``nnx.List`` entries) and their string form (after an orbax round trip) are the same
  path, so trees restored from disk line up with live ones.
* :func:`assign`: put arrays (possibly a subset, e.g. a backbone only) into a model by
  path, checking shapes, and say which paths were set.
* :func:`save_converted` / :func:`load_converted`: the converted-weights checkpoint.

Converted checkpoint layout (``launch.py convert`` writes it, training's ``init_from``
and eval read it with :func:`load_converted`)::

    DIR/converted/
      meta.json    {"format": "ssd_jax.converted/1", "source": ..., "model": ...,
                    "num_classes": ..., "partial": bool, "paths": [...], ...}
      state/       orbax StandardCheckpointer: {"params": {...}, "model_state": {...}}
                   nested dicts of float32 arrays keyed like nnx.to_pure_dict(params)

``partial: true`` means the tree holds only some of the model's parameters (e.g. an
ImageNet VGG16 backbone); apply it to a freshly initialised model with :func:`assign`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

FORMAT = "ssd_jax.converted/1"


def _key_str(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten(tree: Mapping) -> dict[str, Any]:
    """Nested dict -> ``{"a/b/c": leaf}`` (leaves in tree order)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_str(k) for k in path): leaf for path, leaf in leaves}


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{"a/b/c": leaf}`` -> nested dict with string keys."""
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return out


def assign(model: nnx.Module, flat: Mapping[str, Any], *, variables=nnx.Param, strict: bool = False) -> list[str]:
    """Set the model variables named in ``flat`` (``"extractor/fc6/kernel"`` -> array).

    Shapes must match exactly; unknown paths are an error; with ``strict=True`` every
    variable of the kind ``variables`` must be given. Returns the paths that were set.
    """
    state = nnx.state(model, variables)
    pure = nnx.to_pure_dict(state)
    current = flatten(pure)
    unknown = sorted(set(flat) - set(current))
    if unknown:
        raise KeyError(f"{len(unknown)} converted paths are not in the model, e.g. {unknown[:5]}")
    if strict:
        missing = sorted(set(current) - set(flat))
        if missing:
            raise KeyError(f"{len(missing)} model variables not given, e.g. {missing[:5]}")
    for path, value in flat.items():
        if tuple(np.shape(value)) != tuple(current[path].shape):
            raise ValueError(f"{path}: converted shape {np.shape(value)} != model shape {current[path].shape}")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(pure)
    new_leaves = []
    for path, leaf in leaves:
        key = "/".join(_key_str(k) for k in path)
        new_leaves.append(np.asarray(flat[key], dtype=leaf.dtype) if key in flat else leaf)
    new_pure = jax.tree_util.tree_unflatten(treedef, new_leaves)
    nnx.replace_by_pure_dict(state, new_pure)
    nnx.update(model, state)
    return sorted(flat)


@dataclasses.dataclass(frozen=True)
class Converted:
    """A converted checkpoint: flat ``{path: np.ndarray}`` params and model state, and meta."""

    params: dict[str, np.ndarray]
    model_state: dict[str, np.ndarray]
    meta: dict


def converted_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "converted")


def save_converted(workdir: str, params: Mapping[str, Any], meta: Mapping, model_state: Mapping[str, Any] | None = None) -> str:
    """Write ``DIR/converted/`` (see the module docstring); returns that path."""
    import orbax.checkpoint as ocp

    root = converted_dir(workdir)
    if os.path.exists(root):
        raise FileExistsError(f"{root} already exists; remove it or choose another --workdir")
    os.makedirs(root)
    tree = {
        "params": unflatten({k: np.asarray(v, np.float32) for k, v in params.items()}),
        "model_state": unflatten({k: np.asarray(v, np.float32) for k, v in (model_state or {}).items()}),
    }
    if not tree["model_state"]:
        tree["model_state"] = {"_empty": np.zeros((1,), np.float32)}  # orbax rejects empty trees and arrays
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(root, "state"), tree)
    ckptr.wait_until_finished()
    full_meta = {"format": FORMAT, **dict(meta), "paths": sorted(params)}
    with open(os.path.join(root, "meta.json"), "w") as f:
        json.dump(full_meta, f, indent=1)
    return root


def _converted_root_and_meta(workdir: str) -> tuple[str, dict]:
    root = os.path.abspath(workdir)
    if not os.path.exists(os.path.join(root, "meta.json")):
        root = converted_dir(workdir)
    meta_path = os.path.join(root, "meta.json")
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no converted checkpoint at {workdir}: {meta_path} is missing (run `launch.py convert`)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return root, meta


def load_converted_meta(workdir: str) -> dict:
    """The ``meta.json`` of a converted checkpoint (source, model, ``normalization`` ...),
    without reading its arrays."""
    return _converted_root_and_meta(workdir)[1]


def load_converted(workdir: str) -> Converted:
    """Read ``DIR/converted/`` (``DIR`` may also be the ``converted`` folder itself)."""
    import orbax.checkpoint as ocp

    root, meta = _converted_root_and_meta(workdir)
    tree = ocp.StandardCheckpointer().restore(os.path.join(root, "state"))
    params = {k: np.asarray(v) for k, v in flatten(tree["params"]).items()}
    state = {k: np.asarray(v) for k, v in flatten(tree["model_state"]).items() if k != "_empty"}
    return Converted(params, state, meta)
