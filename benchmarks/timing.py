"""Timing helpers shared by the benchmark scripts: warm-up, median of runs, environment record."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass
class Timing:
    """Wall-clock seconds of repeated calls after warm-up."""

    median_s: float
    min_s: float
    runs: int
    first_call_s: float | None = None  # the first call: compile time for jitted functions

    def as_dict(self) -> dict[str, float | int | None]:
        return dataclasses.asdict(self)


def block(tree: Any) -> Any:
    """Waits for every jax array in `tree` (no-op for numpy / torch values)."""
    return jax.block_until_ready(tree)


def time_fn(
    fn: Callable[[], Any],
    runs: int = 5,
    warmup: int = 1,
    sync=block,
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Times `fn()`; the first call is reported separately (it includes compilation).

    `setup()`, if given, runs untimed before every call (e.g. to restore a starting state).
    """
    setup = setup or (lambda: None)
    setup()
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        setup()
        sync(fn())
    times = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), runs, first)


def environment() -> dict[str, Any]:
    """What a benchmark figure needs beside it: date, device, versions, commit, threads."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    try:
        import torch  # optional: only for the side-by-side columns
        import torchvision

        env["torch"] = torch.__version__
        env["torchvision"] = torchvision.__version__
        env["torch_threads"] = torch.get_num_threads()
    except Exception:  # any import failure means "no torchvision column"
        pass
    return env


def jax_device_peak_gib() -> float | None:
    """Peak bytes in use on JAX's first device (GPU / TPU); None on CPU, where the process's
    peak RSS (which `benchmarks.run` reads per case) is the measure."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**30


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync(value):
    """`value`, after the GPU's queued torch work is done (nothing to wait for on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value


def torch_device_peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def report(rows: list[dict[str, Any]], columns: list[str], output: str, args=None, shown=None):
    """Prints the table (of `shown`, default all rows) and the environment, and writes the
    JSON file {environment, args, results} that every benchmark script produces."""
    env = environment()
    print("\n" + format_table(rows if shown is None else shown, columns))
    print("\n" + ", ".join(f"{k}={v}" for k, v in env.items()))
    payload = {"environment": env, "results": rows}
    if args is not None:
        payload["args"] = vars(args)
    write_json(output, payload)
    print(f"wrote {output}")


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A GitHub-markdown table of `rows` restricted to `columns` (floats to 4 significant)."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def side_by_side_parser(doc: str, output: str) -> argparse.ArgumentParser:
    """The flags of a component benchmark timed in msrcnn beside torchvision in one process:
    --size, --runs, --threads, --no_torchvision, --output (default `output`)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--size", default="512x512", help="HxW of the image")
    p.add_argument("--runs", type=int, default=7, help="timed runs (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--no_torchvision", action="store_true")
    p.add_argument("--output", default=output)
    return p
