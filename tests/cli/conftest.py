"""Fixtures of the ``launch.py`` tests: one tiny training run made by ``launch.py train``,
shared by the tests of the commands that read a run (``eval``, ``predict``)."""

import pytest


@pytest.fixture(scope="session")
def launched_run(tmp_path_factory, builtin_cache, run_python):
    """``(workdir, cache, process)`` of ``launch.py train --config.runlocal=True`` on the
    ``tiny_cnn`` network at 32 px (4 steps, checkpoints at 2 and 4, a final evaluation).
    Tests that write into a run copy ``workdir`` first."""
    workdir, cache = tmp_path_factory.mktemp("launched") / "run", builtin_cache
    proc = run_python(["launch.py", "train", "--config.runlocal=True", "--config.model.name=tiny_cnn",
                       "--config.model.image_size=32", f"--config.data.cache_dir={cache}", f"--workdir={workdir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, cache, proc
