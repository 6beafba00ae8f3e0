"""What happens to bad input: a clear error, or a counted skip when the config allows it.

Every reader and builder reports a problem through one `BadInputPolicy`:

    policy = BadInputPolicy(skip=False)
    policy.problem("unknown category id", "annotation 17 in train.json has category_id 99, "
                   "not one of the ids in 'categories'; fix the id or add the category")

With `skip=False` (the default) that raises `BadInputError` with the message, which names the
file, the annotation and the fix, followed by how to skip such input instead; one line, so the
command line can print it as it is. With `skip=True` it counts the problem under its reason,
keeps the first few messages as examples, and the caller leaves the image or annotation out.
`policy.summary()` lists every reason with its count; builders print it at the end and store the
counts in the dataset's metadata, so nothing is dropped silently.

Some clean-ups are not errors (a box clipped to the image, an object too small to train on):
`policy.note(reason, message)` counts them whatever the setting.

Counts are of items (images, annotations, rows), not of messages: one message about several
items (both entries of a repeated image id, every image without objects) passes `count=`.
"""

from __future__ import annotations

import collections
import logging

from msrcnn.errors import UserInputError

_log = logging.getLogger(__name__)

# Example messages kept per reason for the summary.
_EXAMPLES_PER_REASON = 3

# Appended to every problem raised as an error.
# (The builders' argument has the same name as the command-line setting.)
SKIP_HINT = (
    "Or pass --config.data.skip_bad_input=True to leave such input out, counted in the build "
    "summary."
)


class BadInputError(UserInputError, ValueError):
    """Input that cannot be used as it is; the message says where and how to fix it."""


class BadInputPolicy:
    """Raises on problems (default) or counts them as skips; counts clean-ups either way.

    Attributes:
      skip: leave bad images / annotations out (counted) instead of raising.
      counts: reason -> how many times it happened.
      examples: reason -> the first few messages.
    """

    def __init__(self, skip: bool = False):
        self.skip = skip
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def problem(self, reason: str, message: str, count: int = 1) -> None:
        """Raises `BadInputError(message)`, or records a skip of `count` items when `skip`
        is set."""
        if not self.skip:
            raise BadInputError(f"{message.rstrip('.')}. {SKIP_HINT}")
        self._count(f"skipped: {reason}", message, count)

    def note(self, reason: str, message: str, count: int = 1) -> None:
        """Records a clean-up of `count` items that the data needs whatever the setting
        (never raises)."""
        self._count(reason, message, count)

    def _count(self, key: str, message: str, count: int) -> None:
        first = key not in self.counts
        self.counts[key] += count
        if len(self.examples[key]) < _EXAMPLES_PER_REASON:
            self.examples[key].append(message)
        if first:
            _log.warning("%s: %s", key, message)

    def summary(self) -> str:
        """One line per reason: count, then up to three example messages."""
        if not self.counts:
            return "input hygiene: nothing skipped or changed"
        lines = ["input hygiene summary:"]
        for key in sorted(self.counts):
            lines.append(f"  {self.counts[key]:>7d}  {key}")
            lines.extend(f"             e.g. {m}" for m in self.examples[key])
        return "\n".join(lines)

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def repeats(pairs) -> dict:
    """{key: [values]} of the keys that more than one (key, value) pair has, in first-seen
    order: what the readers check for repeated ids, files and keys."""
    groups: dict = collections.defaultdict(list)
    for key, value in pairs:
        groups[key].append(value)
    return {key: values for key, values in groups.items() if len(values) > 1}


def report_repeats(policy: BadInputPolicy, reason: str, pairs, message) -> dict:
    """`repeats(pairs)`, each group reported as one `policy.problem(reason, message(key,
    values), count=len(values))`: nothing says which of the repeats is right, so every item
    of a group counts as skipped and the caller leaves them all out."""
    groups = repeats(pairs)
    for key, values in groups.items():
        policy.problem(reason, message(key, values), count=len(values))
    return groups


def check_class_names(class_names, path: str) -> None:
    """Raises `BadInputError` when `class_names` repeats a name: two labels for one class
    (the reader would silently give every object the last of them)."""
    repeated = [n for n, c in collections.Counter(class_names).items() if c > 1]
    if repeated:
        raise BadInputError(
            f"reading {path}: class_names {list(class_names)} name {repeated[0]!r} more than "
            "once; each name is one class (one label): remove the repeat from class_names"
        )
