"""The benchmark commands of the documents, each run on its own (they need nothing prepared
and nothing from each other) with small settings: see tests/test_documented_commands.py. A file
of their own, so that CI's slow step (one file per worker) runs them beside the scenarios."""

from __future__ import annotations

import pytest

from tests.documented_commands import make_root, run_documented
from tests.test_documented_commands import SCENARIOS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("index", range(len(SCENARIOS["benchmarks"])))
def test_benchmark_command(index, tmp_path):
    text, settings = SCENARIOS["benchmarks"][index]
    run_documented(text, settings, make_root(tmp_path))
