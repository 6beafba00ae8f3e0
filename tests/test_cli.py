"""Command-line errors of the `python -m msrcnn.*` commands (msrcnn/cli.py): a config file
that cannot be read, an override of a field the config does not have and a malformed
override value are each one line on stderr and exit status 2, before any work."""

from __future__ import annotations

import json
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
    "show_missing_file": (
        ["msrcnn.show", "data", "--config=nope.py", "--output_dir=OUT"],
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


# Errors in the user's input found while working (not flag errors): the message alone, exit 1.
USER_ERRORS = {
    "evaluate_without_checkpoints": (
        ["msrcnn.evaluate", "--config=experiments/tiny.py"],
        "MissingInputError: no checkpoint directory",
    ),
    "train_coco_without_download": (
        ["msrcnn.train", "--config=experiments/coco.py:runlocal", "--config.data.data_dir=OUT"],
        "MissingInputError: COCO 2017 is not in manual_dir=''",
    ),
    "train_repeated_image_id": (
        [
            "msrcnn.train",
            "--config=experiments/custom.py:coco",
            "--config.data.custom.train.annotations=OUT/train.json",
            "--config.data.custom.train.images=OUT/images",
            "--config.data.data_dir=OUT/tfds",
        ],
        "BadInputError: ",
    ),
}


@pytest.mark.parametrize("name", list(USER_ERRORS))
def test_user_input_error_is_its_message_without_traceback(name, tmp_path):
    args, start = USER_ERRORS[name]
    if name == "train_repeated_image_id":
        from tests.data import instance_fixtures as fx

        data = fx.coco_dataset(str(tmp_path), num_images=2)
        data["images"].append(dict(data["images"][0]))
        (tmp_path / "train.json").write_text(json.dumps(data))
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    if args[0] in ("msrcnn.train", "msrcnn.evaluate"):
        args.append(f"--workdir={tmp_path / 'run'}")
    out = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(start.split(":")[0])]
    assert len(lines) == 1 and lines[0].startswith(start), out.stderr[-3000:]
    assert out.returncode == 1, out.stderr[-3000:]
