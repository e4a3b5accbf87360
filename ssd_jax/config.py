"""Configs as code on the command line: load ``experiments/<name>.py[:arg]``, apply typed overrides.

* :func:`load_config` (``"experiments/demo.py:runlocal"``): imports the file and calls its
  ``get_config(arg)`` (``arg`` after the colon, or None).
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
import difflib
import importlib.util
import os
import sys
from typing import Any, Sequence

import ml_collections

PREFIX = "--config."


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``path.py[:arg]`` -> ``get_config(arg)`` of that file."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if repo_root not in sys.path:  # so experiments can `from experiments.base import ...`
        sys.path.insert(0, repo_root)
    name = "ssd_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} has no get_config()")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}")
    return config


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
