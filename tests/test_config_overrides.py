"""Every config field of every experiment can be set from the command line.

ml-collections' `--config.x=y` refuses some field types (a list: "Type <class 'list'> ... is
not supported for overriding"), and a locked config refuses keys that do not exist yet (an
empty dict cannot take `--config.train.loss_weights.loss_mask=2`). This parses, through
`config_flags` itself, one override of every leaf of every experiment variant, with a value of
the leaf's own type, and checks that the override arrived.
"""

from __future__ import annotations

import importlib
import pathlib
import sys
from unittest import mock

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANTS = {
    "shapes": ("", "plain"),
    "coco": ("", "plain", "r101", "runlocal"),
    "custom": ("coco", "via", "png_masks"),
    "tiny": ("",),
}


def _leaves(config: ml_collections.ConfigDict, prefix: str = ""):
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            assert len(value), f"{path} is an empty section: its keys cannot be set"
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _other_value(value):
    """A value of the same type that differs from `value`, as command-line text."""
    if isinstance(value, bool):
        return str(not value), (not value)
    if isinstance(value, int):
        return str(value + 3), value + 3
    if isinstance(value, float):
        return repr(value + 0.25), value + 0.25
    if isinstance(value, str):
        return "changed", "changed"
    if isinstance(value, tuple):
        new = (*value, value[-1]) if value else ("x", "y")
        return repr(new), new
    raise AssertionError(f"field of type {type(value).__name__} cannot be overridden")


def _parse(config_arg: str, overrides: list[str]) -> ml_collections.ConfigDict:
    argv = ["prog", f"--config={config_arg}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
    # config_flags reads the override flags from sys.argv, as in a real run.
    with mock.patch.object(sys, "argv", argv):
        flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize(
    "experiment, variant", [(e, v) for e, variants in VARIANTS.items() for v in variants]
)
def test_every_field_parses_from_the_command_line(experiment, variant):
    module = importlib.import_module(f"experiments.{experiment}")
    config = module.get_config(variant) if variant else module.get_config()
    overrides, expected = [], {}
    for path, value in _leaves(config):
        assert not isinstance(value, list | dict), f"{path} is a {type(value).__name__}"
        text, parsed = _other_value(value)
        overrides.append(f"--config.{path}={text}")
        expected[path] = parsed
    config_arg = str(REPO / "experiments" / f"{experiment}.py") + (f":{variant}" if variant else "")
    parsed_config = _parse(config_arg, overrides)
    for path, value in expected.items():
        got = parsed_config
        for key in path.split("."):
            got = got[key]
        assert got == value, path


def test_class_names_and_buckets_take_the_documented_forms():
    config_arg = str(REPO / "experiments" / "custom.py") + ":via"
    config = _parse(
        config_arg,
        [
            '--config.data.custom.class_names=("balloon", "kite")',
            "--config.data.image_hw_buckets=((512, 768), (768, 512))",
            "--config.data.train_min_sizes=(480, 512)",
            "--config.train.loss_weights.loss_maskiou=0.5",
        ],
    )
    assert config.data.custom.class_names == ("balloon", "kite")
    assert config.data.image_hw_buckets == ((512, 768), (768, 512))
    assert config.data.train_min_sizes == (480, 512)
    assert config.train.loss_weights.loss_maskiou == 0.5
    # One name needs no tuple syntax.
    one = _parse(config_arg, ["--config.data.custom.class_names=balloon"])
    assert one.data.custom.class_names == ("balloon",)
