"""`python -m msrcnn.train --config=experiments/shapes.py --workdir=DIR [--config.x=y ...]`.

Trains the configured model, resuming from DIR's checkpoints if there are any, then evaluates
on the validation split and prints the table. The config file's `get_config(arg)` takes the
text after ':' (e.g. `--config=experiments/shapes.py:plain`).
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from msrcnn import trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # A missing config file only raises when the config is first read: read it now, before
    # any work, so the error names the file straight away.
    config = _CONFIG.value
    config.model.num_classes  # noqa: B018
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
    trainer.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
