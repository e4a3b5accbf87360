"""Settings dataclasses that are built from one section of an experiment config.

A settings class (for example :class:`ssd_jax.train_step.OptimConfig`) is a frozen
dataclass that subclasses :class:`Section`. Its fields are the config keys of its section
and their defaults are the defaults of every experiment (``ssd_jax.config.default_config``
is built from them), so a new setting is one new field. Validation lives in the class's
``__post_init__`` and nowhere else. Fields named in ``DERIVED`` are not config keys of the
section: the caller passes them (for example the optimiser's batch size, which is
``data.batch_size``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping


def plain(value: Any) -> Any:
    """A config value as the dataclass field holds it: lists (JSON, ConfigDict) become tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    return value


class Section:
    """Mixin for a frozen settings dataclass built from one config section."""

    #: Fields that come from elsewhere than this section (passed to :meth:`from_config`).
    DERIVED: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The section's config keys this class reads."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in cls.DERIVED)

    @classmethod
    def config_defaults(cls) -> dict[str, Any]:
        """``{key: default}`` of the section (what an experiment starts from)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in cls.DERIVED:
                continue
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            else:
                raise TypeError(f"{cls.__name__}.{f.name} has no default: every config field needs one")
        return out

    @classmethod
    def from_config(cls, section: Mapping[str, Any], **derived: Any):
        """The settings of ``section`` (a ConfigDict or dict; keys of other classes that
        share the section are ignored, missing keys take the default), validated."""
        missing = set(cls.DERIVED) - set(derived)
        if missing:
            raise TypeError(f"{cls.__name__}.from_config needs {sorted(missing)}")
        values = {k: plain(section[k]) for k in cls.config_keys() if k in section}
        return cls(**values, **derived)
