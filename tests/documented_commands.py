"""The shell commands the project's documents show a user, read from the documents themselves.

Sources: README.md and benchmarks/README.md (every line of a ```bash block, and inline code
that starts with a command) and the docstrings of experiments/*.py (indented command lines and
inline code). Lines joined by a trailing backslash are one command; `a && b` is two steps;
comments are dropped. tests/test_documented_commands.py runs each step, so a document cannot
show a command that no test runs.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pathlib
import re
import shlex
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
MARKDOWN = ("README.md", "benchmarks/README.md")
EXPERIMENTS = "experiments"
# What a documented command starts with (after any VAR=value prefixes).
_PROGRAMS = ("python", "python3", "pytest", "pip", "ruff", "/tmp/tv/bin/", ".", "bash")
_INLINE = re.compile(r"`([^`]+)`")
_FENCE = re.compile(r"^```(\w*)\s*$")
_SHELL_BLOCKS = ("bash", "sh", "shell", "console")


@dataclasses.dataclass(frozen=True)
class Step:
    """One command of a document: `text` as written, from `source` (path:line)."""

    text: str
    source: str


def _is_command(text: str) -> bool:
    words = [w for w in text.split() if not re.match(r"^[A-Z_]+=", w)]
    return bool(words) and words[0].startswith(_PROGRAMS) and not words[0].startswith("..")


def _split_steps(command: str) -> list[str]:
    command = re.sub(r"\s+#.*$", "", command).strip()
    return [step.strip() for step in command.split(" && ") if step.strip()]


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    joined, pending, first = [], "", 0
    for number, line in lines:
        stripped = line.strip()
        if not pending:
            first = number
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        joined.append((first, pending + stripped))
        pending = ""
    return joined


def _inline_commands(text: str, first_line: int, source: str) -> list[Step]:
    steps = []
    for match in _INLINE.finditer(text):
        code = " ".join(match.group(1).split())  # inline code may wrap over lines
        if _is_command(code) and " " in code:
            line = first_line + text.count("\n", 0, match.start())
            steps += [Step(s, f"{source}:{line}") for s in _split_steps(code)]
    return steps


def _markdown_steps(path: pathlib.Path) -> list[Step]:
    source = str(path.relative_to(REPO))
    steps: list[Step] = []
    prose: list[str] = []
    prose_start = 1
    block: list[tuple[int, str]] | None = None
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        fence = _FENCE.match(line)
        if fence and block is None:
            steps += _inline_commands("\n".join(prose), prose_start, source)
            # A python or text block holds no shell commands.
            prose, block = [], [] if fence.group(1) in _SHELL_BLOCKS else "skip"
            continue
        if line.startswith("```") and block is not None:
            if block != "skip":
                for first, command in _join_continuations(block):
                    if command and not command.startswith("#"):
                        steps += [Step(s, f"{source}:{first}") for s in _split_steps(command)]
            block, prose_start = None, number + 1
            continue
        if block is None:
            prose.append(line)
        elif block != "skip":
            block.append((number, line))
    steps += _inline_commands("\n".join(prose), prose_start, source)
    return steps


def _docstring_steps(path: pathlib.Path) -> list[Step]:
    source = str(path.relative_to(REPO))
    tree = ast.parse(path.read_text())
    docstring = ast.get_docstring(tree, clean=False) or ""
    first_line = tree.body[0].lineno if tree.body else 1
    lines = docstring.splitlines()
    indented = [
        (first_line + i, line)
        for i, line in enumerate(lines)
        if line.startswith("    ") and line.strip() and not line.strip().startswith("#")
    ]
    steps = []
    for first, command in _join_continuations(indented):
        if _is_command(command):
            steps += [Step(s, f"{source}:{first}") for s in _split_steps(command)]
    prose = "\n".join(line for line in lines if not line.startswith("    "))
    return steps + _inline_commands(prose, first_line, source)


def documented_steps() -> list[Step]:
    """Every command step of every document, in document order (repeats included)."""
    steps = []
    for name in MARKDOWN:
        steps += _markdown_steps(REPO / name)
    for path in sorted((REPO / EXPERIMENTS).glob("*.py")):
        steps += _docstring_steps(path)
    return steps


# ---- running a step -------------------------------------------------------------------------


def with_settings(argv: list[str], settings: tuple[str, ...]) -> list[str]:
    """argv with each `--flag=value` of settings in place of the same flag's documented value
    (config_flags accumulates a repeated tuple flag, so it must be replaced, not repeated)."""
    argv = list(argv)
    for setting in settings:
        name = setting.split("=", 1)[0] + "="
        where = [i for i, arg in enumerate(argv) if arg.startswith(name)]
        if where:
            argv[where[0]] = setting
        else:
            argv.append(setting)
    return argv


def moved(arg: str, root: pathlib.Path) -> str:
    """Documented absolute paths (/tmp, /data, /runs) moved under root; a .pth by its .npz."""
    arg = re.sub(r"(?<![\w./])/(tmp|data|runs)/", lambda m: f"{root}/{m.group(1)}/", arg)
    return re.sub(r"\.pth$", ".npz", arg)


def run_documented(text: str, settings: tuple[str, ...], root: pathlib.Path, timeout: int = 1500):
    argv = shlex.split(text)
    if argv[0] in ("python", "python3", "/tmp/tv/bin/python"):
        argv[0] = sys.executable
    argv = with_settings([argv[0]] + [moved(a, root) for a in argv[1:]], settings)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["HOME"] = str(root / "home")  # no dataset or cache from earlier runs
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"  # half the compile time, same semantics
    out = subprocess.run(
        argv, cwd=root / "work", env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, (
        f"{text}\nran as {shlex.join(argv)}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    )
    return out


def make_root(tmp_path: pathlib.Path) -> pathlib.Path:
    for name in ("work", "home", "tmp", "data", "runs"):
        (tmp_path / name).mkdir()
    (tmp_path / "work" / "experiments").symlink_to(REPO / "experiments")
    return tmp_path
