"""Experiments as code: the config schema, the one loader of experiment files, typed overrides.

* :func:`default_config`: the full schema, every key with its default. It is built from the
  settings dataclasses (:data:`SECTIONS`), so a field added to one of them is a config key.
* :class:`Settings` (``Settings.from_config(config)``): the validated settings of a config,
  one frozen dataclass per section; each is built and checked by its own class.
* :func:`load_module` / :func:`load_config` (``"experiments/demo.py:runlocal"`` or
  ``"experiments.demo:runlocal"``): imports the experiment file once and calls its
  ``get_config(arg)``. Files of the installed ``experiments`` package import as such
  (``from experiments.base import ...`` works inside them); other files load by path.
* :func:`parse_override` (``"--config.optim.lr=0.002"`` -> ``("optim.lr", "0.002")``) and
  :func:`apply_overrides`: each value is parsed as the type of the field it replaces
  (bool: true/false/1/0/yes/no; int; float (ints accepted); str; tuple/list: a Python
  literal such as ``"(80000,100000)"`` or ``"80000,100000"``; a field whose default is None
  takes any Python literal, else the string). An unknown key is a ``KeyError`` naming the
  closest existing keys; a value that does not parse is a ``ValueError`` naming the key.

No absl flags are defined (no global state), so this works the same inside tests.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import os
import types
from typing import Any, Sequence

import ml_collections

from ssd_jax.data.config import DataConfig
from ssd_jax.data.transforms import AugmentConfig
from ssd_jax.evaluation.loop import EvalConfig
from ssd_jax.models.config import ModelConfig
from ssd_jax.schema import Section
from ssd_jax.train_step import LossConfig, OptimConfig


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """The top-level keys of an experiment: the run itself.

    Attributes:
      name: the experiment's name (default workdir ``runs/<name>``).
      runlocal: the config was shrunk for a smoke test (``get_config("runlocal")``).
      seed: parameter init, data order, augmentation.
      num_steps: optimiser steps in all.
      log_every: steps between metric lines (console, ``metrics.jsonl``, TensorBoard).
      checkpoint_every: steps between checkpoints.
      keep_checkpoints: the latest checkpoints kept ...
      keep_best: ... and the one with the best evaluation (mAP, or AP for the COCO metric).
      eval_every: steps between evaluations (0: only at the end, if ``eval_at_end``).
      eval_at_end: evaluate after the last step.
      eval_max_images: evaluate on the first N images of the split (0: all).
      eval_draw_images: each evaluation draws its predictions on this many val images.
      init_from: a converted checkpoint (``launch.py convert``) to start from: its
        parameters, no optimiser state.
      progress_bar: a tqdm bar on the console.
    """

    name: str = "experiment"
    runlocal: bool = False
    seed: int = 0
    num_steps: int = 1000
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    keep_best: bool = True
    eval_every: int = 0
    eval_at_end: bool = True
    eval_max_images: int = 0
    eval_draw_images: int = 8
    init_from: str = ""
    progress_bar: bool = True

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be positive, got {self.num_steps}")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.eval_every < 0:
            raise ValueError("log_every and checkpoint_every must be >= 1 and eval_every >= 0")
        if self.keep_checkpoints < 1 or self.eval_max_images < 0 or self.eval_draw_images < 0:
            raise ValueError("keep_checkpoints must be >= 1, eval_max_images and eval_draw_images >= 0")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")

    def check_paths(self) -> None:
        if self.init_from and not os.path.exists(self.init_from):
            raise ValueError(f"init_from {self.init_from!r} does not exist")


#: config section -> the settings classes that read it (the top level, "", is the run's).
SECTIONS: dict[str, tuple[type[Section], ...]] = {
    "": (RunConfig,),
    "model": (ModelConfig,),
    "data": (DataConfig, AugmentConfig),
    "optim": (OptimConfig,),
    "loss": (LossConfig,),
    "eval": (EvalConfig,),
}


def default_config() -> ml_collections.ConfigDict:
    """Every key of the schema with its default (what every experiment starts from)."""
    c = ml_collections.ConfigDict()
    for section, classes in SECTIONS.items():
        node = c
        if section:
            c[section] = ml_collections.ConfigDict()
            node = c[section]
        for cls in classes:
            for key, value in cls.config_defaults().items():
                if key in node:
                    raise TypeError(f"config key {section}.{key} is claimed by two settings classes")
                node[key] = value
    return c


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings of an experiment config, one object per section."""

    run: RunConfig
    model: ModelConfig
    data: DataConfig
    augment: AugmentConfig | None  # None: data.augment is off
    optim: OptimConfig
    loss: LossConfig
    eval: EvalConfig

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | dict) -> "Settings":
        """Build and validate every section (ValueError naming the key; a key that no
        settings class reads is an error too, so a typo in an experiment file is caught)."""
        for section, classes in SECTIONS.items():
            node = config if not section else config.get(section, {})
            known = {k for c in classes for k in c.config_keys()} | (set(SECTIONS) - {""} if not section else set())
            unknown = sorted(set(node.keys()) - known)
            if unknown:
                where = f"{section}." if section else ""
                close = {k: difflib.get_close_matches(k, sorted(known), n=1) for k in unknown}
                hints = ", ".join(f"{where}{k}" + (f" (did you mean {where}{c[0]}?)" if c else "") for k, c in close.items())
                raise ValueError(f"unknown config key(s): {hints}")
        data = config["data"]
        run = RunConfig.from_config(config)
        data_cfg = DataConfig.from_config(data)
        return cls(
            run=run,
            model=ModelConfig.from_config(config["model"]),
            data=data_cfg,
            augment=AugmentConfig.from_config(data) if data_cfg.augment else None,
            optim=OptimConfig.from_config(config["optim"], batch_size=data_cfg.batch_size, total_steps=run.num_steps),
            loss=LossConfig.from_config(config["loss"]),
            eval=EvalConfig.from_config(config["eval"]),
        )

    def check_paths(self) -> None:
        """ValueError naming the key when a file or folder the config reads is missing."""
        self.run.check_paths()
        self.data.check_paths()


# ------------------------------------------------------------------------ resuming a run

#: Settings that define what a checkpoint is: a resumed run refuses to change them (unless
#: told to). The sections ``model``, ``data`` (with its augmentation) and ``loss``, and the
#: seed; the fields of :data:`RESUME_FREE` only choose how the same computation runs.
RESUME_FROZEN_SECTIONS = ("model", "data", "loss")
RESUME_FROZEN_RUN_FIELDS = ("seed",)
RESUME_FREE = frozenset({"model.conv_wgrad", "model.cpu_kernels", "data.num_workers", "data.cache_dir"})


class ConfigChangeError(ValueError):
    """A run resumed with a config that changes what its checkpoints are."""


def settings_values(settings: Settings) -> dict[str, Any]:
    """``{config key: value}`` of every setting (``num_steps``, ``model.width``,
    ``data.crop`` ...), JSON-comparable (tuples as lists); derived fields left out."""
    out: dict[str, Any] = {}
    for name, section in (("", settings.run), ("model", settings.model), ("data", settings.data),
                          ("data", settings.augment), ("optim", settings.optim), ("loss", settings.loss),
                          ("eval", settings.eval)):
        if section is None:  # augmentation off: data.augment says so
            continue
        for f in dataclasses.fields(section):
            if f.name in section.DERIVED:
                continue
            value = getattr(section, f.name)
            out[f"{name}.{f.name}" if name else f.name] = list(value) if isinstance(value, tuple) else value
    return out


def resume_changes(previous: Settings, new: Settings) -> tuple[dict[str, list], dict[str, list]]:
    """``(refused, allowed)``: the settings that differ between a run's ``previous`` config
    and the ``new`` one it resumes with, as ``{key: [old, new]}``; ``refused`` holds those
    of :data:`RESUME_FROZEN_SECTIONS` and :data:`RESUME_FROZEN_RUN_FIELDS` (not
    :data:`RESUME_FREE`)."""
    old_values, new_values = settings_values(previous), settings_values(new)
    refused, allowed = {}, {}
    for key in sorted(set(old_values) | set(new_values)):
        a, b = old_values.get(key), new_values.get(key)
        if a == b:
            continue
        section = key.split(".")[0] if "." in key else ""
        frozen = (section in RESUME_FROZEN_SECTIONS or key in RESUME_FROZEN_RUN_FIELDS) and key not in RESUME_FREE
        (refused if frozen else allowed)[key] = [a, b]
    return refused, allowed


# ---------------------------------------------------------------------------- experiment files


def _package_module_name(path: str) -> str | None:
    """``experiments.<name>`` when ``path`` is a file of the importable ``experiments``
    package, else None."""
    spec = importlib.util.find_spec("experiments")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.dirname(os.path.realpath(path))
    if any(os.path.realpath(p) == folder for p in spec.submodule_search_locations):
        return "experiments." + os.path.splitext(os.path.basename(path))[0]
    return None


def load_module(spec: str) -> tuple[types.ModuleType, str | None]:
    """``(module, arg)`` of ``"path.py[:arg]"`` or ``"package.module[:arg]"``: the experiment
    file imported once (a file of the ``experiments`` package by its module name)."""
    target, _, arg = spec.partition(":")
    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise FileNotFoundError(f"config file {target!r} not found")
        name = _package_module_name(target)
        if name is None:
            name = "ssd_jax_experiment_" + os.path.splitext(os.path.basename(target))[0]
            module_spec = importlib.util.spec_from_file_location(name, target)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(name)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as e:
            raise FileNotFoundError(f"config {target!r} is neither a file nor an importable module ({e})") from None
    return module, arg or None


def config_of(module: types.ModuleType, arg: str | None, where: str = "") -> ml_collections.ConfigDict:
    """``module.get_config(arg)``, checked to be a ConfigDict."""
    where = where or getattr(module, "__file__", module.__name__)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {where!r} has no get_config()")
    config = module.get_config(arg)
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{where}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``path.py[:arg]`` (or ``module[:arg]``) -> ``get_config(arg)`` of that file."""
    module, arg = load_module(spec)
    return config_of(module, arg, spec.partition(":")[0])


PREFIX = "--config."


def parse_override(arg: str) -> tuple[str, str]:
    """``"--config.a.b=v"`` -> ``("a.b", "v")``."""
    if not arg.startswith(PREFIX) or "=" not in arg:
        raise ValueError(f"override {arg!r} must look like --config.<key>=<value>")
    key, _, value = arg[len(PREFIX):].partition("=")
    if not key:
        raise ValueError(f"override {arg!r} has an empty key")
    return key, value


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, ml_collections.ConfigDict):
            out += all_keys(v, full + ".")
    return out


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "1", "yes", "y", "on"):
        return True
    if t in ("false", "0", "no", "n", "off"):
        return False
    raise ValueError(f"not a bool: {text!r}")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_value(text: str, current: Any) -> Any:
    """``text`` parsed as the type of ``current`` (see the module docstring)."""
    if isinstance(current, bool):
        return _parse_bool(text)
    if isinstance(current, int):
        return int(text.strip())
    if isinstance(current, float):
        return float(text.strip())
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        t = text.strip()
        if t in ("", "()", "[]"):
            return type(current)()
        value = _literal(t if t[0] in "([" else f"({t},)")
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"not a sequence: {text!r}")
        if current and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in current):
            kind = float if any(isinstance(x, float) for x in current) else int
            value = [kind(x) if kind is float else x for x in value]
            if kind is int and not all(isinstance(x, int) for x in value):
                raise ValueError(f"expected integers, got {text!r}")
        return type(current)(value)
    if current is None:
        return _literal(text)
    raise ValueError(f"cannot override a field of type {type(current).__name__}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Set each ``(dotted key, text)`` on ``config`` (in place; also returned)."""
    keys = all_keys(config)
    for key, text in overrides:
        *parents, leaf = key.split(".")
        node = config
        for i, p in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                node = None
                break
            node = node[p]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown config key {key!r}{hint}")
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise KeyError(f"config key {key!r} is a group; override one of its fields")
        try:
            value = parse_value(text, current)
        except ValueError as e:
            raise ValueError(f"--config.{key}={text}: {e} (the field is {type(current).__name__}, default {current!r})") from None
        node[leaf] = value
    return config
