"""Shared test helpers: golden fixtures, trace counting, and the run's XLA settings.

Compilation dominates the suite on 2 CPU cores (the tiny model's train step runs in well under
a second; XLA takes ~20 s to compile it), and many modules compile the same programs: every
`trainer.train_and_evaluate` call builds a new jit, so JAX's in-memory caches cannot share
them. So the whole run (both xdist workers and the CLI subprocesses the tests start, through
the environment) shares one persistent compilation cache in a temporary directory, removed at
the end; and modules that train the tiny model compile with `fast_xla`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest

from tests.trainer_helpers import FAST_COMPILE

GOLDEN_DIR = pathlib.Path(__file__).parent / "testdata" / "golden"
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED_CACHE = pytest.StashKey[str]()


def pytest_configure(config):
    # The first process (the xdist controller, or the only one) makes the directory; workers
    # and subprocesses inherit it through the environment. A directory the user set is kept.
    if not os.environ.get(_CACHE_ENV):
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="msrcnn-test-xla-cache-")
        config.stash[_OWNED_CACHE] = os.environ[_CACHE_ENV]
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])


def pytest_unconfigure(config):
    owned = config.stash.get(_OWNED_CACHE, None)
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


@pytest.fixture(scope="module")
def fast_xla():
    """XLA's fast-compile mode (`jax_disable_most_optimizations`: about half the compile
    time, same semantics) for one module, restored after. Use it with
    `pytestmark = pytest.mark.usefixtures("fast_xla")` in modules that train the tiny model."""
    if not FAST_COMPILE:
        yield
        return
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


def load_golden(name: str) -> dict[str, np.ndarray]:
    """Loads tests/testdata/golden/<name>.npz (made by tests/testdata/make_golden_*.py)."""
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"missing golden fixture {path}; regenerate it with the script beside it")
    with np.load(path, allow_pickle=False) as data:
        return dict(data)


class TraceCounter:
    """Wraps a function in jax.jit and counts how often JAX traces it.

    Python side effects run only while tracing, so `count` is the number of compilations
    (one per distinct input shape/dtype signature).
    """

    def __init__(self, fn, **jit_kwargs):
        self.count = 0

        @functools.wraps(fn)
        def counted(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        self.jitted = jax.jit(counted, **jit_kwargs)

    def __call__(self, *args, **kwargs):
        return self.jitted(*args, **kwargs)


@pytest.fixture
def trace_counter():
    """Factory fixture: `trace_counter(fn, static_argnames=...)` -> TraceCounter."""
    return TraceCounter
