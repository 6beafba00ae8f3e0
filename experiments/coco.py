"""COCO 2017: R-50-FPN Mask Scoring R-CNN, 1x schedule (Huang et al. 2019 / detectron2 recipe).

Prepare once (no downloads at run time; see `msrcnn.data.builders.instances.COCO_INSTRUCTIONS`):

    # COCO 2017 images + annotations unpacked into /data/coco (annotations/, train2017/, val2017/)
    # ImageNet ResNet-50 from torchvision (resnet50-0676ba61.pth, or resnet101-63fe2227.pth):
    python -m msrcnn.convert --from=torchvision --checkpoint=resnet50-0676ba61.pth \\
        --num_classes=80 --output=/data/r50_imagenet

Train (the dataset is built into data_dir on first use) and evaluate:

    python -m msrcnn.train --config=experiments/coco.py --workdir=/runs/ms_r50_1x \\
        --config.data.coco.manual_dir=/data/coco \\
        --config.train.init_checkpoint=/data/r50_imagenet

Recipe: shorter side 800 (max 1333), batch 16, SGD momentum 0.9, lr 0.02 with 1000 linear
warm-up steps, decay 1e-4, 90k steps with x0.1 at 60k and 80k, frozen BN, stem and res2 frozen,
RPN 256 anchors / 2000 -> 1000 proposals (per image, training), 512 RoIs at 25% positives,
28x28 masks; bf16 computation on GPU / TPU (float32 parameters, boxes and losses), float32 on
CPU. Inputs are padded to 800x1344 (landscape) or 1344x800 (portrait) shape buckets, so 4:3
images waste little padding and each bucket compiles once.

Shapes and memory on paper (`python -m benchmarks.train_memory --config=experiments/coco.py
--batch=1,2`, XLA's buffer assignment of the whole jitted step compiled for CPU with bf16
compute, 2026-11-21): parameters 60.7 M (44.5 M Mask R-CNN + 16.4 M MaskIoU head) and SGD
momentum take 0.45 GiB; temporaries are 2.11 GiB at 1 image of 800x1344 per device and 3.99 GiB
at 2, i.e. ~1.9 GiB per image. Batch 16 therefore needs ~31 GiB of temporaries on one device
(fits an 80 GB H100) or ~4 GiB per device at 2 images on each of 8 devices. A GPU compile fuses
differently, so these are estimates, not device measurements.

Variants (`--config=experiments/coco.py:VARIANT`):
  plain     plain Mask R-CNN (no MaskIoU head), the separately trained baseline;
  r101      ResNet-101 backbone (init from resnet101 ImageNet weights);
  runlocal  a few steps of a tiny model on small images, to check the COCO code path on a
            laptop, e.g. on the generated folder of `python -m msrcnn.data.builders.tiny_coco DIR`.
"""

from msrcnn import config_lib


def get_config(arg: str = ""):
    variants = {"", "plain", "r101", "runlocal"}
    if arg not in variants:
        raise ValueError(f"unknown variant {arg!r} of experiments/coco.py; use one of {variants}")
    config = config_lib.base_config()
    m = config.model
    m.num_classes = 80
    m.depth = 101 if arg == "r101" else 50
    m.mask_scoring = arg != "plain"
    m.dtype = "auto"

    d = config.data
    d.dataset = "coco"
    d.coco.year = 2017
    d.image_hw = (800, 1344)
    d.image_hw_buckets = ((800, 1344), (1344, 800))
    d.min_size, d.max_size = 800, 1333

    t = config.train
    t.batch_size = 16
    t.optimizer = "sgd"
    t.learning_rate = 0.02
    t.num_steps = 90_000
    t.lr_steps = (60_000 / 90_000, 80_000 / 90_000)
    t.warmup_steps = 1000
    t.checkpoint_every = 5000
    t.eval_every = 0

    if arg == "runlocal":
        m.depth, m.width, m.fpn_channels, m.box_hidden, m.mask_convs = 18, 8, 32, 64, 2
        m.norm, m.freeze_at = "gn", 0
        config.geometry.anchor_sizes = (8, 16, 32, 64, 128)
        m.num_classes = 4  # the generated tiny_coco folder has 4 categories
        m.dtype = "float32"
        d.image_hw, d.image_hw_buckets = (96, 96), ((96, 96),)
        d.min_size = d.max_size = 96
        d.eval_batch_size = 4
        t.batch_size = 2
        t.num_steps = 4
        t.learning_rate = 0.01
        t.warmup_steps = 0
        t.rpn_batch_size_per_image = 64
        t.rpn_pre_nms_top_k, t.rpn_post_nms_top_k = 200, 64
        t.roi_batch_size_per_image = 32
        t.max_instances = 8
        t.mask_size = 28
        t.log_every = 1
        t.checkpoint_every = 2
        i = config.inference
        i.rpn_pre_nms_top_k, i.rpn_post_nms_top_k = 200, 32
        i.detections_per_image = 8
    return config
