"""Experiments as code: each module's ``get_config(arg=None)`` returns an ``ml_collections.ConfigDict``.

``get_config("runlocal")`` (or ``--config.runlocal=True`` on the command line) returns the
same experiment shrunk for a smoke test. The shared defaults are in :mod:`experiments.base`.
"""
