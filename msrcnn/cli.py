"""What the `python -m msrcnn.*` commands share: `run(main)`, absl's `app.run` with flag
errors reported in one line.

absl prints a parse error of an ordinary flag as one line, but the config flags
(ml_collections `DEFINE_config_file`) fail in ways it does not catch:

  * an override of a field the config does not have (`--config.train.num_step=5`) raises a
    KeyError / AttributeError inside absl's parser, which it lets through as a traceback
    ending in an escaped message;
  * a config file that cannot be read is not an error while parsing at all: ml_collections
    keeps a placeholder that raises on the first access to the config, wherever that is.

`run` parses the flags itself, so that these are flag errors like the others: one line on
stderr, `FATAL Flags parsing error: ...`, and exit status 2 (a command-line error), before
`main`. (A config file whose `get_config` raises keeps its traceback, indented below that
line, as absl shows it.)
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import textwrap

from absl import app, flags, logging
from ml_collections.config_flags import config_flags

from msrcnn.errors import UserInputError

USAGE_EXIT_CODE = 2


def run(main) -> None:
    """`app.run(main)` with the flag errors of `parse_flags`; a `UserInputError` raised by
    main (bad data, a config that does not fit the checkpoint, a missing folder) is printed
    as its message alone, exit status 1: it is the user's to fix, not a bug to trace."""

    def main_without_user_tracebacks(argv):
        if not flags.FLAGS["verbosity"].present:
            # Library INFO logs (orbax's every save, converters' progress) are not for users;
            # --verbosity=0 brings them back.
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except UserInputError as error:
            sys.stdout.flush()
            sys.stderr.write(f"{type(error).__name__}: {error}\n")
            sys.stderr.flush()
            sys.exit(1)

    app.run(main_without_user_tracebacks, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses `argv` into absl's FLAGS and reads every config file named on it; on an error
    prints it (`usage_error`) and exits with USAGE_EXIT_CODE. -> the arguments for main."""
    try:
        remaining = flags.FLAGS(argv)
        for flag in _config_flags():
            # A config file that could not be read is a placeholder that raises OSError on
            # any attribute access: touch one now, so that the error is a flag error.
            getattr(flag.value, "lock", None)
        return remaining
    except flags.Error as error:
        message = str(error)
    except (OSError, KeyError, AttributeError, IndexError):
        message = _diagnose_config_flags(argv)
        if message is None:  # not a bad file or field: a genuine bug, keep its traceback
            raise
    usage_error(message)


def usage_error(message: str):
    """Prints `message` as absl prints a flag error and exits with USAGE_EXIT_CODE. A
    multi-line message (a config file whose `get_config` raised: its traceback) is indented
    below the first line, as absl does."""
    if "\n" in message:
        message = "\n" + textwrap.indent(message.rstrip("\n"), "  ")
    else:
        message = " " + message
    sys.stderr.write(f"FATAL Flags parsing error:{message}\n")
    sys.stderr.flush()
    sys.exit(USAGE_EXIT_CODE)


def _config_flags():
    for name in list(flags.FLAGS):
        flag = flags.FLAGS[name]
        if config_flags.is_config_flag(flag) and flag.value is not None:
            yield flag


def _diagnose_config_flags(argv: list[str]) -> str | None:
    """What is wrong with the config flags on `argv` (a config file that cannot be read,
    an override of a field the config does not have), in words; None if nothing is."""
    argv = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
    for name in list(flags.FLAGS):
        if not config_flags.is_config_flag(flags.FLAGS[name]):
            continue
        value = _flag_argument(argv, name)
        if value is None:
            continue
        path = value.split(":", 1)[0]
        if not os.path.isfile(path):
            return f"--{name}={value}: no config file {path!r}"
        try:
            config = config_flags.ConfigFileFlagParser(name, lock_config=False).parse(value)
            getattr(config, "lock", None)  # see parse_flags
        except Exception as error:
            return f"--{name}={value}: cannot load the config: {' '.join(str(error).split())}"
        for override in _overrides(argv, name):
            problem = _missing_field(config, name, override)
            if problem:
                return problem
    return None


def _flag_argument(argv: list[str], name: str) -> str | None:
    """The value of the last `--name=VALUE` / `--name VALUE` on argv."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        match = re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", arg, re.DOTALL)
        if match:
            value = match.group(1)
            if value is None and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def _overrides(argv: list[str], name: str) -> list[str]:
    """The field paths of the `--name.a.b=...` (and `--noname.a.b`) overrides on argv."""
    paths = []
    for arg in argv:
        if arg == "--":
            break
        match = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
        if match:
            paths.append(match.group(1))
    return paths


def _missing_field(config, name: str, override: str) -> str | None:
    """'unknown config field --config.train.num_step; did you mean ...' if `override` names
    a field `config` does not have (at any depth), else None."""
    parts = override.split(".")
    holder = config
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        if hasattr(holder, "keys") and callable(holder.keys):  # ConfigDict, dict
            keys = [str(k) for k in holder]
            if part not in keys:
                message = f"unknown config field --{name}.{here}"
                close = difflib.get_close_matches(part, keys, n=1)
                if close:
                    parent = ".".join([name, *parts[:depth], close[0]])
                    message += f"; did you mean --{parent}?"
                return message
            holder = holder[part]
        elif isinstance(holder, (list, tuple)) and part.lstrip("-").isdigit():
            if not -len(holder) <= int(part) < len(holder):
                return f"--{name}.{here}: index {part} out of range (length {len(holder)})"
            holder = holder[int(part)]
        elif hasattr(holder, part):
            holder = getattr(holder, part)
        else:
            parent = ".".join([name, *parts[:depth]])
            return (
                f"unknown config field --{name}.{here}: --{parent} is a value "
                f"({type(holder).__name__}), not a group of fields"
            )
    return None
