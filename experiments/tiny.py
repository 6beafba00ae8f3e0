"""A seconds-per-step config for tests: tiny model, 64x64 images, a few dozen records.

    python -m msrcnn.train --config=experiments/tiny.py --workdir=/tmp/msrcnn_tiny

Variants (`--config=experiments/tiny.py:VARIANT`): `plain` (no MaskIoU head), `bn`
(BatchNorm backbone, to exercise batch statistics).
"""

from msrcnn import config_lib


def get_config(arg: str = ""):
    config = config_lib.base_config()
    m = config.model
    m.num_classes = 4
    m.depth, m.width, m.fpn_channels, m.box_hidden, m.mask_convs = 18, 8, 32, 64, 2
    m.norm = "bn" if arg == "bn" else "gn"
    m.freeze_at = 0
    config.geometry.anchor_sizes = (8, 16, 32, 64, 128)
    m.mask_scoring = arg != "plain"

    d = config.data
    d.image_hw = (64, 64)
    d.min_size = d.max_size = 64
    d.eval_batch_size = 4
    d.shapes.update(image_size=64, num_train=16, num_validation=8, max_objects=3)

    t = config.train
    t.batch_size = 2
    t.num_steps = 2
    t.learning_rate = 0.01
    t.warmup_steps = 0
    t.rpn_batch_size_per_image = 64
    t.rpn_pre_nms_top_k, t.rpn_post_nms_top_k = 200, 64
    t.roi_batch_size_per_image = 32
    t.max_instances = 4
    t.mask_size = 28
    t.log_every = 1
    t.checkpoint_every = 1

    i = config.inference
    i.rpn_pre_nms_top_k, i.rpn_post_nms_top_k = 200, 32
    i.detections_per_image = 8
    return config
