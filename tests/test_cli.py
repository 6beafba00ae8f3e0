"""Command-line errors of the `python -m msrcnn.*` commands (msrcnn/cli.py): a config file
that cannot be read, an override of a field the config does not have and a malformed
override value are each one line on stderr and exit status 2, before any work."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PREFIX = "FATAL Flags parsing error: "

# name -> (command line after `python -m`, the one line expected on stderr after PREFIX)
CASES = {
    "train_unknown_field": (
        ["msrcnn.train", "--config=experiments/tiny.py", "--config.train.num_step=5"],
        "unknown config field --config.train.num_step; did you mean --config.train.num_steps?",
    ),
    "train_unknown_group": (
        ["msrcnn.train", "--config=experiments/tiny.py", "--config.trian.num_steps=5"],
        "unknown config field --config.trian; did you mean --config.train?",
    ),
    "train_field_below_a_value": (
        ["msrcnn.train", "--config=experiments/tiny.py", "--config.train.num_steps.x=5"],
        "unknown config field --config.train.num_steps.x: --config.train.num_steps is a value "
        "(int), not a group of fields",
    ),
    "train_missing_file": (
        ["msrcnn.train", "--config=experiments/nope.py"],
        "--config=experiments/nope.py: no config file 'experiments/nope.py'",
    ),
    "train_missing_file_with_override": (
        ["msrcnn.train", "--config=experiments/nope.py:bn", "--config.train.num_steps=5"],
        "--config=experiments/nope.py:bn: no config file 'experiments/nope.py'",
    ),
    "train_malformed_value": (
        ["msrcnn.train", "--config=experiments/tiny.py", "--config.train.num_steps=abc"],
        "flag --config.train.num_steps=abc: invalid literal for int() with base 10: 'abc'",
    ),
    "evaluate_unknown_field": (
        ["msrcnn.evaluate", "--config=experiments/tiny.py", "--config.data.image_h=5"],
        "unknown config field --config.data.image_h; did you mean --config.data.image_hw?",
    ),
    "inspect_missing_file": (
        ["msrcnn.inspect", "data", "--config=nope.py", "--output_dir=OUT"],
        "--config=nope.py: no config file 'nope.py'",
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case's process, two at a time (each mostly imports jax)."""
    root = tmp_path_factory.mktemp("cli")
    results = {}
    names = list(CASES)
    for start in range(0, len(names), 2):
        procs = {}
        for name in names[start : start + 2]:
            args, _ = CASES[name]
            workdir = root / name
            args = [a.replace("OUT", str(workdir)) for a in args]
            if args[0] in ("msrcnn.train", "msrcnn.evaluate"):
                args.append(f"--workdir={workdir}")
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = (proc.returncode, out, err, root / name)
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_config_flag_error_is_one_line_and_exit_2(runs, name):
    returncode, out, err, workdir = runs[name]
    assert "Traceback" not in err, err[-3000:]
    assert err.splitlines() == [PREFIX + CASES[name][1]], err[-3000:]
    assert returncode == 2, err[-3000:]
    assert out == ""
    assert not workdir.exists()  # failed before any work
