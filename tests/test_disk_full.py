"""A real full disk while saving, and a resume with a changed config, through the CLI.

The workdir lives on a 32 MB tmpfs mounted in a private mount namespace (`unshare --user
--map-root-user --mount`, no root needed where unprivileged user namespaces are allowed):
  1. train 2 steps (a checkpoint every step);
  2. resume with a different `num_steps`: refused, naming the setting and the override;
  3. fill the disk to 1 MB free, resume with the override: the step-3 write fails, the run
     stops with the out-of-space message, steps 1-2 intact, nothing half-written left;
  4. free the space, rerun: resumes from step 2 and finishes step 4.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.trainer_helpers import tiny_train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _user_namespaces_work() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "true"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_disk_full_while_saving_then_resume(tmp_path):
    if not _user_namespaces_work():
        pytest.skip("this machine does not allow unprivileged user/mount namespaces (unshare)")
    fs, data_dir, logs = tmp_path / "fs", tmp_path / "tfds", tmp_path / "logs"
    fs.mkdir()
    logs.mkdir()
    workdir = fs / "workdir"

    def train(num_steps, *flags):
        command = tiny_train_command(workdir, data_dir, num_steps, *flags)
        command[0] = sys.executable
        return " ".join(shlex.quote(str(c)) for c in command)

    allow = "--config.train.allow_config_change=True"
    script = f"""
        mount -t tmpfs -o size=32m tmpfs {fs}
        run() {{ name=$1; shift; "$@" > {logs}/$name.out 2>&1; echo $? > {logs}/$name.rc; }}
        run first {train(2)}
        run drift {train(4)}
        free_kb=$(df -k --output=avail {fs} | tail -1)
        fallocate -l $(( (free_kb - 1024) * 1024 )) {fs}/filler
        run full {train(4, allow)}
        ls {workdir}/checkpoints > {logs}/after_full.ls
        rm {fs}/filler
        run resume {train(4, allow)}
        ls {workdir}/checkpoints > {logs}/after_resume.ls
    """
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", script],
        cwd=REPO,
        check=True,
        timeout=900,
    )

    def result(name):
        out = (logs / f"{name}.out").read_text()
        return int((logs / f"{name}.rc").read_text()), out

    rc, out = result("first")
    assert rc == 0, out[-3000:]

    rc, out = result("drift")
    assert rc != 0
    assert "was written by a different config" in out
    assert "train.num_steps: checkpoint 2 vs config 4" in out
    assert "--config.train.allow_config_change=True" in out

    rc, out = result("full")
    assert rc != 0
    assert "CheckpointWriteError: no space left on device while writing a checkpoint" in out
    assert "half-written step(s) removed: 3" in out
    assert "The last complete checkpoint, step 2, is intact" in out
    assert (logs / "after_full.ls").read_text().split() == ["1", "2"]

    rc, out = result("resume")
    assert rc == 0, out[-3000:]
    assert "resumed from step 2" in out
    assert "with a changed setting (allow_config_change): train.num_steps: 2 -> 4" in out
    assert (logs / "after_resume.ls").read_text().split() == ["2", "3", "4"]
