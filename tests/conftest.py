"""Shared test helpers: golden fixtures and trace counting."""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import pytest

GOLDEN_DIR = pathlib.Path(__file__).parent / "testdata" / "golden"


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
