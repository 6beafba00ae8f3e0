"""Errors in what a user gave (data, config, paths), as opposed to bugs.

Each message names the file, setting or annotation and the fix. The `python -m msrcnn.*`
commands print a `UserInputError` as its message alone, without a traceback, and exit with
status 1 (`msrcnn.cli.run`); library callers catch the usual builtin types, since each class
here also derives from the builtin error it refines.
"""

from __future__ import annotations


class UserInputError(Exception):
    """Base of the errors a user fixes by changing their input, config or command."""


class ConfigError(UserInputError, ValueError):
    """Settings that cannot work together, or that do not match a checkpoint or dataset."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A file or folder the command needs is not there."""
