"""The embedded default: MS R-CNN trained from scratch on the synthetic `shapes` dataset.

    python -m msrcnn.train --config=experiments/shapes.py --workdir=/tmp/msrcnn_shapes

Builds the dataset on first use (2000 train / 200 validation images of 128x128, 4 classes,
up to 4 shapes per image, radii from 7% to 30% of the image side, no shape more than 40%
hidden by later ones, instances with fewer than 48 visible pixels left unlabelled), trains a
narrow ResNet-18-FPN with GroupNorm from scratch for 2400 steps of 8 images (AdamW, cosine;
64 RoIs per image for the box head, 6 of the positives for the mask and MaskIoU heads), then
evaluates and prints bbox AP and segm AP ranked by class score (plain) and by mask score.

Measured figures, the time they take and what varies between machines: README.md, "Quick
start".

Variants: `:plain` trains plain Mask R-CNN (no MaskIoU head) as the separately trained
baseline.
"""

from msrcnn import config_lib


def get_config(arg: str = ""):
    config = config_lib.base_config()
    m = config.model
    m.num_classes = 4
    m.depth, m.width, m.fpn_channels, m.box_hidden, m.mask_convs = 18, 16, 32, 256, 2
    m.norm = "gn"
    m.freeze_at = 0
    config.geometry.anchor_sizes = (8, 16, 32, 64, 128)
    m.mask_scoring = arg != "plain"

    d = config.data
    d.image_hw = (128, 128)
    d.min_size = d.max_size = 128
    d.eval_batch_size = 16
    d.shapes.update(
        max_objects=4, min_visible_pixels=48, min_radius_frac=0.07, min_visible_fraction=0.6
    )

    t = config.train
    t.batch_size = 8
    t.num_steps = 2400
    # From scratch on a CPU budget AdamW beat SGD (0.02, step decay): segm AP 0.181 vs 0.171.
    t.optimizer = "adamw"
    t.learning_rate = 0.002
    t.schedule = "cosine"
    t.warmup_steps = 100
    t.grad_clip_norm = 5.0
    t.rpn_batch_size_per_image = 128
    t.rpn_pre_nms_top_k, t.rpn_post_nms_top_k = 600, 300
    t.roi_batch_size_per_image = 64
    t.mask_rois_per_image = 6
    t.max_instances = 8
    t.mask_size = 56
    t.log_every = 25
    t.checkpoint_every = 500

    i = config.inference
    i.rpn_pre_nms_top_k, i.rpn_post_nms_top_k = 600, 200
    i.detections_per_image = 20
    return config
