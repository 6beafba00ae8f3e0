"""One entry for the model benchmarks: msrcnn beside torchvision, one table, one JSON file.

    python -m benchmarks.run [--quick] [--sizes=512x512,800x800] [--batches=1,2]
                             [--modes=train,inference] [--rounds=1] [--malloc_hugepages]
                             [--output=bench_out/run.json]

Each case (mode x size x batch x framework / model) runs in its own process, so that the peak
resident memory of that process (CPU) or the device's peak bytes in use (GPU) belong to that
case alone and one framework's threads or caches never slow the other. Cases:
  train      `benchmarks.train_step`: forward + backward + SGD update, msrcnn's one jitted
             step vs torchvision's `model(images, targets)`, backward, `optimizer.step()`;
  inference  `benchmarks.inference`: the whole call (resize, detect, paste masks) vs
             torchvision's `model(images)` in eval mode.
msrcnn runs twice per case: plain Mask R-CNN (torchvision's architecture, the ratio that
compares like with like) and MS R-CNN (one more head). `ratio` = msrcnn time / torchvision
time; below 1 msrcnn is faster.

Defaults: on CPU 512x512 (train, inference) and 800x800 (inference) at batch 1, float32, torch
with all cores; on GPU 512x512, 800x800 and 800x1344 at batch 1, 2 and 8, bf16 (torchvision
with bf16 autocast). --quick: train at 512x512 and inference at 800x800, batch 1, 3 runs.
torchvision rows appear when torch and torchvision import.

--rounds=N runs every case's processes N times, interleaved (msrcnn plain, msrcnn MS R-CNN,
torchvision, then again), and reports the median of the N per-process medians, with the
paired ratios of each round (`ratio_min` .. `ratio_max`): on a shared or throttled machine the
speed drifts by more than the difference being measured, and interleaving exposes both
frameworks to the same drift.

--malloc_hugepages sets GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for every case's process (both
frameworks): glibc then asks for transparent huge pages on the memory it maps. XLA:CPU maps
its temporaries afresh on every call (~1.6 GB per 512x512 train step: ~400,000 page faults
with 4 KiB pages); torch's allocations are served from glibc's reused heap.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import timing

COLUMNS = [
    "mode",
    "size",
    "batch",
    "framework",
    "model",
    "dtype",
    "median_ms",
    "images_per_s",
    "ratio",
    "ratio_min",
    "ratio_max",
    "compile_s",
    "traces",
    "peak_mem_gib",
]
SCRIPTS = {"train": "benchmarks.train_step", "inference": "benchmarks.inference"}


def _has_torchvision() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "torchvision"))


def default_cases(backend: str, quick: bool) -> list[tuple[str, str, int]]:
    if quick:
        return [("train", "512x512", 1), ("inference", "800x800", 1)]
    if backend == "cpu":
        return [("train", "512x512", 1), ("inference", "512x512", 1), ("inference", "800x800", 1)]
    sizes, batches = ("512x512", "800x800", "800x1344"), (1, 2, 8)
    return [(m, s, b) for m in ("train", "inference") for s in sizes for b in batches]


HUGEPAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def child_environment(malloc_hugepages: bool) -> dict[str, str]:
    """The case processes' environment: ours, plus the huge-page tunable when asked."""
    env = dict(os.environ)
    if malloc_hugepages:
        tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]
        env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGES_TUNABLE])
    return env


def run_case(
    mode: str,
    size: str,
    batch: int,
    framework: str,
    extra: list[str],
    runs: int,
    env: dict[str, str] | None = None,
):
    """Runs one case in a child process -> its rows, with the child's peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "result.json")
        command = [
            sys.executable,
            "-m",
            SCRIPTS[mode],
            f"--framework={framework}",
            f"--size={size}",
            f"--batch={batch}",
            f"--runs={runs}",
            f"--output={output}",
            *extra,
        ]
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        log = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not os.path.exists(output):
            print(f"case {mode} {size} x{batch} {framework} {extra} failed:\n{log[-3000:]}")
            return []
        with open(output) as f:
            rows = json.load(f)["results"]
    for row in rows:
        row["mode"] = mode
        # On a GPU the device's own peak (set by the child); on CPU the child's peak RSS
        # (ru_maxrss is in KiB on Linux).
        row["peak_mem_gib"] = row.get("peak_device_gib") or usage.ru_maxrss / 2**20
    return rows


def _row_key(row: dict) -> tuple:
    detector_only = "detector only" in row.get("note", "")
    return (
        row["mode"],
        row["size"],
        row["batch"],
        row["framework"],
        row.get("model"),
        detector_only,
    )


def combine_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Rows of N rounds of the same cases -> one row per case: the median of the rounds'
    medians (`rounds_ms` keeps each), the largest peak memory, the first round's compile time,
    and msrcnn / torchvision ratios of the rounds where both ran as `ratio_min` /
    `ratio_max` (N > 1; a case that failed in a round is missing from that round only)."""
    combined: dict[tuple, dict] = {}
    for round_index, rows in enumerate(rounds):
        for row in rows:
            first = combined.setdefault(_row_key(row), {**row, "rounds": {}})
            first["rounds"][round_index] = row["median_ms"]
            first["peak_mem_gib"] = max(first["peak_mem_gib"], row["peak_mem_gib"])
    for row in combined.values():
        by_round = row.pop("rounds")
        row["rounds_ms"] = list(by_round.values())
        row["median_ms"] = statistics.median(row["rounds_ms"])
        row["images_per_s"] = row["batch"] * 1000.0 / row["median_ms"]
        row["_by_round"] = by_round
    rows = with_ratios(list(combined.values()))
    references = _torchvision_rows(rows)
    for row in rows:
        if len(rounds) > 1 and "ratio" in row:
            mine, theirs = row["_by_round"], references[_case(row)]["_by_round"]
            paired = [mine[i] / theirs[i] for i in mine if i in theirs]
            row["ratio_min"], row["ratio_max"] = min(paired), max(paired)
    for row in rows:
        del row["_by_round"]
    return rows


def _case(row: dict) -> tuple:
    return (row["mode"], row["size"], row["batch"])


def _torchvision_rows(rows: list[dict]) -> dict[tuple, dict]:
    return {_case(r): r for r in rows if r["framework"] == "torchvision"}


def with_ratios(rows: list[dict]) -> list[dict]:
    """Adds msrcnn time / torchvision time for the same mode, size and batch."""
    references = _torchvision_rows(rows)
    for row in rows:
        ref = references.get(_case(row))
        if row["framework"] == "msrcnn" and ref and "detector only" not in row.get("note", ""):
            row["ratio"] = row["median_ms"] / ref["median_ms"]
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two cases, 3 timed runs")
    parser.add_argument("--modes", default="", help="train,inference (default: both)")
    parser.add_argument("--sizes", default="", help="e.g. 512x512,800x800 (default: see doc)")
    parser.add_argument("--batches", default="", help="e.g. 1,2,8 (default: see doc)")
    parser.add_argument("--dtype", default="", help="float32 | bfloat16 (default: per backend)")
    parser.add_argument("--runs", type=int, default=0, help="timed runs per case")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of all")
    parser.add_argument(
        "--malloc_hugepages", action="store_true", help=f"GLIBC_TUNABLES={HUGEPAGES_TUNABLE}"
    )
    parser.add_argument("--no_torchvision", action="store_true")
    parser.add_argument("--output", default="bench_out/run.json")
    args = parser.parse_args(argv)

    import jax

    backend = jax.default_backend()
    cases = default_cases(backend, args.quick)
    if args.modes or args.sizes or args.batches:
        modes = args.modes.split(",") if args.modes else sorted({c[0] for c in cases})
        sizes = args.sizes.split(",") if args.sizes else sorted({c[1] for c in cases})
        batches = [int(b) for b in args.batches.split(",")] if args.batches else [1]
        cases = [(m, s, b) for m in modes for s in sizes for b in batches]
    dtype = args.dtype or ("float32" if backend == "cpu" else "bfloat16")
    runs = args.runs or (3 if args.quick else 5)
    torchvision = _has_torchvision() and not args.no_torchvision

    env = child_environment(args.malloc_hugepages)
    rounds = []
    for round_index in range(args.rounds):
        rows = []
        for mode, size, batch in cases:
            variants = [("msrcnn", ["--plain"]), ("msrcnn", [])]
            if torchvision:
                variants.append(("torchvision", []))
            for framework, extra in variants:
                new = run_case(
                    mode, size, batch, framework, [f"--dtype={dtype}", *extra], runs, env
                )
                rows += new
                for row in new:
                    print(
                        f"round {round_index + 1}/{args.rounds} {mode} {size} x{batch} "
                        f"{framework} {row.get('model')}: {row['median_ms']:.1f} ms "
                        f"({row.get('note', '')})",
                        flush=True,
                    )
        rounds.append(rows)
    rows = combine_rounds(rounds)
    shown = [r for r in rows if "detector only" not in r.get("note", "")]
    timing.report(rows, COLUMNS, args.output, args, shown=shown)


if __name__ == "__main__":
    main()
