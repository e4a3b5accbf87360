"""Training checkpoints: the train state and the data iterator, saved together with orbax.

Layout: ``<workdir>/checkpoints/<step>/`` holds two items, ``state`` (the
:class:`~ssd_jax.train.TrainState` pytree, ``StandardSave``) and ``data`` (the grain
iterator position, ``grain.checkpoint.CheckpointSave``), written by one orbax
``CheckpointManager`` that keeps the last ``keep`` checkpoints and, with ``keep_best``, also
the one with the best evaluation metric (saved with :meth:`Checkpointer.save`'s
``metrics``; orbax records them beside the step). Saves run in the background by default
(``background=True``): :meth:`Checkpointer.save` returns once the state is copied off the
devices and the data position taken, and the files are written while training goes on;
the next save, a restore and :meth:`Checkpointer.close` wait for it. Orbax writes into a
temporary folder and renames it when complete, so a save interrupted by a crash never
looks like a checkpoint, and the previous one stays restorable.

:class:`PreemptionFlag` is the SIGTERM handler: it only records the request; the loop
checks the flag after each step (agreed over all processes of a multi-host run, so every
host saves the same step and stops), saves and exits.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

logger = logging.getLogger(__name__)


class Checkpointer:
    """Save every ``save_every`` steps (and when forced), keep the last ``keep``.

    Args:
      directory: where the step folders go (created).
      save_every: the interval of :meth:`save` without ``force``.
      keep: the latest checkpoints kept (older ones are deleted); ``None`` keeps all.
      keep_best: also keep the checkpoint with the highest ``metrics[best_metric]`` among
        those saved with metrics (e.g. the evaluation mAP), however old.
      best_metric: the key of ``metrics`` that ranks checkpoints (higher is better).
      background: write the files in a background thread (False: :meth:`save` returns when
        the checkpoint is complete on disk).
    """

    def __init__(self, directory: str, save_every: int, keep: int | None = 3, *,
                 keep_best: bool = False, best_metric: str = "mAP", background: bool = True):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = os.path.abspath(directory)
        self.save_every = int(save_every)
        self.best_metric = best_metric
        if keep_best and keep is not None:
            from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

            policy = pp.AnyPreservationPolicy([
                pp.LatestN(n=keep),
                pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                         keep_checkpoints_without_metrics=False),
            ])
            options = ocp.CheckpointManagerOptions(
                save_interval_steps=1, enable_async_checkpointing=background, create=True,
                preservation_policy=policy,
            )
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=background, create=True
            )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None (after a background save ends)."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.wait_until_finished()
        return sorted(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, data_iterator: Any, *, force: bool = False,
             metrics: dict[str, float] | None = None) -> bool:
        """Write checkpoint ``step`` if it is on the interval (or ``force``); True if written.

        ``state``: the train state pytree; ``data_iterator``: the grain ``DatasetIterator``
        positioned after the batches consumed so far (or None to save no data position);
        ``metrics``: evaluation results of this state (ranks it for ``keep_best``).
        """
        if not (force or self.should_save(step)) or step in self.all_steps():
            return False
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if metrics is not None:
            metrics = {k: float(v) for k, v in metrics.items() if k == self.best_metric}
        self._manager.save(step, args=ocp.args.Composite(**items), force=True, metrics=metrics or None)
        logger.info("saving checkpoint %d in %s", step, self.directory)
        return True

    def wait(self) -> None:
        """Block until the background save (if any) is complete on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int | None, state_template: Any, data_iterator: Any) -> Any:
        """Restore checkpoint ``step`` (default: the latest) into the shapes, dtypes and
        shardings of ``state_template``, and set ``data_iterator``'s position in place.
        Returns the restored state."""
        self._manager.wait_until_finished()
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        logger.info("restored checkpoint %d from %s", step, self.directory)
        return restored["state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PreemptionFlag:
    """A SIGTERM (or any signal) handler that records the request; the loop polls it.

    ``install()`` registers :meth:`handler` for ``signals`` (main thread only) and
    ``uninstall()`` puts the previous handlers back.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def handler(self, signum: int, frame: Any = None) -> None:
        del frame
        self.requested = True
        self.signum = signum
        logger.warning("received signal %d: will save a checkpoint after this step and stop", signum)

    def agreed(self, allgather: Any = None) -> bool:
        """Whether any process of the run has received the signal; every process must call
        this at the same point of each step (the loop does, after the step).

        With several processes (hosts), a signal reaches them at different moments; if one
        host saved and left while the others ran the next step, they would wait for it in
        that step's collectives forever. So the hosts agree: the flags are gathered from
        all processes (``allgather``, default
        ``jax.experimental.multihost_utils.process_allgather``) and all stop at the same
        step when any has it. One process: just the local flag, no communication.
        """
        if allgather is None:
            if jax.process_count() == 1:
                return self.requested
            from jax.experimental import multihost_utils

            allgather = multihost_utils.process_allgather
        import numpy as np

        return bool(np.any(np.asarray(allgather(np.asarray(self.requested, np.int32)))))

    def install(self) -> "PreemptionFlag":
        for s in self.signals:
            self._previous[s] = signal.signal(s, self.handler)
        return self

    def uninstall(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()
