"""Converts torchvision weights into an msrcnn checkpoint.

    python -m msrcnn.convert --from=torchvision --checkpoint=X.pth|X.npz --output=DIR \\
        [--num_classes=N] [--mask_scoring=true|false] [--seed=0] [--bn_eps=...]

A .pth needs torch (`pip install msrcnn[convert]`); a .npz of the same name -> array mapping
needs only numpy. Which state dicts are accepted and how each tensor is converted:
`msrcnn.weights.torchvision` (the library this command runs).
"""

from __future__ import annotations

import os

from absl import flags

from msrcnn import cli
from msrcnn.weights.torchvision import convert_checkpoint

FLAGS = flags.FLAGS
flags.DEFINE_enum("from", None, ["torchvision"], "Source framework of the checkpoint.")
flags.DEFINE_string("checkpoint", None, "A torchvision state dict: .pth (needs torch) or .npz.")
flags.DEFINE_string("output", None, "Directory for the msrcnn checkpoint (new or empty).")
flags.DEFINE_integer("num_classes", None, "Foreground classes K (default: the checkpoint's).")
flags.DEFINE_bool("mask_scoring", True, "Add a (fresh) MaskIoU head; false: plain Mask R-CNN.")
flags.DEFINE_integer("seed", 0, "Seed of the freshly initialised layers.")
flags.DEFINE_float("bn_eps", None, "BatchNorm eps to fold with (default: torchvision's).")


def main(argv):
    del argv
    report = convert_checkpoint(
        FLAGS.checkpoint,
        FLAGS.output,
        num_classes=FLAGS.num_classes,
        mask_scoring=FLAGS.mask_scoring,
        seed=FLAGS.seed,
        bn_eps=FLAGS.bn_eps,
    )
    print(report.summary())
    print(f"wrote {os.path.abspath(FLAGS.output)}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["from", "checkpoint", "output"])
    cli.run(main)
