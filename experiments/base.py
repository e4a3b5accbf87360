"""What every experiment starts from: the full schema with its defaults.

The keys, their defaults and their meaning are the fields of the settings dataclasses
(``ssd_jax.config.SECTIONS``: ``RunConfig`` for the top level, ``ModelConfig``,
``DataConfig`` + ``AugmentConfig``, ``OptimConfig``, ``LossConfig``, ``EvalConfig``).
Every key is typed by its default: ``--config.x.y=v`` overrides must parse as that type.
``python launch.py train --config=experiments/<name>.py --print_config`` shows a resolved config.
"""

import ml_collections

from ssd_jax.config import default_config


def base_config() -> ml_collections.ConfigDict:
    return default_config()


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The smoke-test shrink shared by the full-scale experiments: 2 steps at batch 2."""
    c.runlocal = True
    c.num_steps, c.log_every, c.checkpoint_every, c.eval_every = 2, 1, 2, 0
    c.eval_max_images = 4
    c.progress_bar = False
    c.data.batch_size, c.data.num_workers = 2, 0
    return c
