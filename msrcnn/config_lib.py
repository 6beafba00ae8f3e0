"""The base configuration shared by experiments/*.py, and builders that read it.

A config is an `ml_collections.ConfigDict` with sections `model` (architecture), `geometry`
(anchors and RoI pooling, shared by training and inference), `inference`, `data` and `train`.
Experiments start from `base_config()` and change what they need; a checkpoint stores its
config as JSON, so it rebuilds its own model (`msrcnn.detector.from_config`). The values here
are the only place the defaults are written.
"""

from __future__ import annotations

import json

import ml_collections

# torchvision's GeneralizedRCNNTransform normalisation of RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def base_config() -> ml_collections.ConfigDict:
    """R50-FPN Mask Scoring R-CNN for 80 COCO classes with torchvision's test settings."""
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(
        {
            "num_classes": 80,
            "depth": 50,
            "width": 64,
            "stride_in_1x1": False,
            "norm": "frozen_bn",
            "freeze_at": 2,
            "fpn_channels": 256,
            "box_hidden": 1024,
            "mask_convs": 4,
            "mask_scoring": True,
            # Computation dtype: float32, bfloat16, or auto (bf16 on accelerators).
            "dtype": "float32",
            # How convolutions compute: xla (XLA's own convolutions and gradients),
            # cpu_matmul (XLA:CPU workarounds: kernel gradients as matmuls, see
            # msrcnn/ops/xla_cpu), or auto (cpu_matmul on CPU, xla on GPU / TPU). Same
            # parameters and values up to float rounding.
            "conv_impl": "auto",
        }
    )
    config.geometry = ml_collections.ConfigDict(
        {
            # One anchor size per RPN level P2..P6, and the aspect ratios (h / w) of each.
            "anchor_sizes": (32, 64, 128, 256, 512),
            "aspect_ratios": (0.5, 1.0, 2.0),
            # FPN level rule for RoIs: a box of this size is pooled from P4 (Lin et al. 2017).
            "roi_canonical_scale": 224.0,
            # RoIAlign samples per bin and axis, and its half-pixel convention (False
            # reproduces torchvision's weights, see torchvision_inference_settings).
            "roi_sampling_ratio": 2,
            "roi_aligned": True,
        }
    )
    # Test-time settings, torchvision's (msrcnn.detector's ProposalSettings and
    # DetectionSettings explain each).
    config.inference = ml_collections.ConfigDict(
        {
            "rpn_pre_nms_top_k": 1000,
            "rpn_post_nms_top_k": 1000,
            "rpn_nms_threshold": 0.7,
            "rpn_min_size": 1e-3,
            "score_threshold": 0.05,
            "nms_threshold": 0.5,
            "detections_per_image": 100,
            "box_min_size": 1e-2,
            # Candidate budget of the per-class NMS (msrcnn.ops.nms.multiclass_nms; None =
            # every (RoI, class) pair).
            "class_nms_top_k": 4096,
            "mask_threshold": 0.5,
        }
    )
    config.data = ml_collections.ConfigDict(
        {
            "dataset": "shapes",
            # Where TFDS builders write; "" = ~/.cache/msrcnn/tensorflow_datasets.
            "data_dir": "",
            # Static padded input size of training / evaluation batches.
            "image_hw": (800, 1344),
            # More than one (H, W): shape buckets for training and evaluation batches, each
            # image in the first it fits (see msrcnn.data.pipeline.buckets); image_hw is then unused
            # except to initialise the model.
            "image_hw_buckets": (),
            "eval_batch_size": 8,
            "shapes": {
                "seed": 0,
                "image_size": 128,
                "num_train": 2000,
                "num_validation": 200,
                "max_objects": 5,
                "min_visible_pixels": 12,
                "min_radius_frac": 0.04,
                "min_visible_fraction": 0.0,
            },
            # dataset = "coco": a local COCO download (see msrcnn.data.builders.instances).
            "coco": {"manual_dir": "", "year": 2017},
            # dataset = "custom": your data; experiments/custom.py explains the fields.
            "custom": {
                "format": "coco",
                "class_names": (),
                "class_attribute": "class",
                "train": {"annotations": "", "images": "", "masks": ""},
                "validation": {"annotations": "", "images": "", "masks": ""},
            },
            # Leave out bad images / annotations (counted, summarised) instead of stopping.
            "skip_bad_input": False,
            # Train without images that have no (non-crowd) object; evaluation keeps them.
            "train_skip_empty": True,
            # Multi-scale training: each training image's shorter side is drawn from these
            # (e.g. (640, 672, 704, 736, 768, 800)); empty = always min_size.
            "train_min_sizes": (),
            "min_size": 800,
            "max_size": 1333,
            "size_divisibility": 32,
            "pixel_mean": IMAGENET_MEAN,
            "pixel_std": IMAGENET_STD,
            # Dataset category id and name of each model class 1..K (index 0 is background),
            # for variables without a label map of their own (`msrcnn.label_map`): converted
            # weights, old checkpoints. Training never fills them in: its checkpoints carry
            # the dataset's. Empty: ids are the model's own 1..K, names "class k".
            "category_ids": (),
            "class_names": (),
        }
    )
    config.train = ml_collections.ConfigDict(
        {
            # detectron2 1x: SGD 0.9, lr 0.02 x batch / 16, decay 1e-4, warmup 1000, steps at
            # 2/3 and 8/9 of training.
            "batch_size": 16,
            "optimizer": "sgd",
            "num_steps": 90_000,
            "learning_rate": 0.02,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "schedule": "step",
            "lr_steps": (2 / 3, 8 / 9),
            "lr_gamma": 0.1,
            "warmup_steps": 1000,
            "warmup_factor": 0.001,
            "grad_clip_norm": 0.0,
            "rpn_batch_size_per_image": 256,
            "rpn_positive_fraction": 0.5,
            "rpn_pre_nms_top_k": 2000,
            "rpn_post_nms_top_k": 1000,
            "rpn_nms_threshold": 0.7,
            "rpn_min_size": 1e-3,
            "roi_batch_size_per_image": 512,
            "roi_positive_fraction": 0.25,
            "roi_fg_iou_threshold": 0.5,
            # Mask and MaskIoU heads train on at most this many positive RoIs per image
            # (0 = all, as detectron2): the heads' convs dominate small-model CPU steps.
            "mask_rois_per_image": 0,
            # The mask branch runs on the smallest multiple of this many leading slots that
            # holds every positive (one compiled branch per multiple; 0 = always every slot).
            "mask_slot_step": 16,
            "max_instances": 100,
            "mask_size": 56,
            "maskiou_stop_gradient": False,
            # Multiplies each named loss term (msrcnn.training.losses), e.g.
            # --config.train.loss_weights.loss_maskiou=0.5.
            "loss_weights": {
                "loss_objectness": 1.0,
                "loss_rpn_box_reg": 1.0,
                "loss_classifier": 1.0,
                "loss_box_reg": 1.0,
                "loss_mask": 1.0,
                "loss_maskiou": 1.0,
            },
            "skip_nonfinite": False,
            # A variables checkpoint (e.g. `msrcnn.convert` of an ImageNet ResNet) to start
            # from when the workdir has no checkpoint; it must fit the model exactly.
            "init_checkpoint": "",
            # Parameter path prefixes ('classes' = every class-dependent layer) that start
            # from fresh initialisation instead of init_checkpoint, e.g. to fine-tune with a
            # new class count; the run prints what it re-initialised.
            "init_reinitialize": (),
            # Resume a workdir whose checkpoints were written with other settings (the model
            # must still match); without it such a resume is refused.
            "allow_config_change": False,
            "log_every": 20,
            "checkpoint_every": 1000,
            "eval_every": 0,
            "keep_checkpoints": 3,
        }
    )
    config.seed = 0
    return config


# Model settings that choose how the model computes, not its parameters or (beyond float
# rounding) its values: a checkpoint runs, resumes and evaluates under any of them.
COMPUTE_ONLY_MODEL_SETTINGS = ("conv_impl",)


# Geometry that belongs to a trained model: its anchors (their count sets parameter shapes)
# and the pyramid level each RoI is pooled from. RoIAlign's sampling and half-pixel convention
# are test-time choices (torchvision's weights run with other values than msrcnn's).
MODEL_GEOMETRY = ("anchor_sizes", "aspect_ratios", "roi_canonical_scale")


def model_identity(config: ml_collections.ConfigDict) -> dict:
    """config.model without COMPUTE_ONLY_MODEL_SETTINGS, and MODEL_GEOMETRY, as plain data:
    equal for two configs exactly when they describe the same model."""
    fields = json.loads(config.model.to_json())
    identity = {k: v for k, v in fields.items() if k not in COMPUTE_ONLY_MODEL_SETTINGS}
    geometry = json.loads(config.geometry.to_json())
    identity.update({k: geometry[k] for k in MODEL_GEOMETRY})
    return identity


def upgrade_stored(stored: dict) -> dict:
    """A config stored (as JSON data) by an earlier version -> today's layout, so that older
    checkpoints still load, resume and compare: the geometry moved out of `model` and
    `inference` into its own section; settings added since take the value that reproduces
    the old behaviour."""
    stored = json.loads(json.dumps(stored))  # a copy
    model, inference = stored.get("model", {}), stored.get("inference", {})
    if "geometry" not in stored:
        stored["geometry"] = {
            "anchor_sizes": model.pop("anchor_sizes", [32, 64, 128, 256, 512]),
            "aspect_ratios": model.pop("aspect_ratios", [0.5, 1.0, 2.0]),
            "roi_canonical_scale": model.pop("roi_canonical_scale", 224.0),
            "roi_sampling_ratio": inference.pop("sampling_ratio", 2),
            "roi_aligned": inference.pop("aligned", True),
        }
    model.setdefault("conv_impl", "auto")
    inference.setdefault("rpn_min_size", 1e-3)
    inference.setdefault("box_min_size", 1e-2)
    if "train" in stored:
        # Training used the test-time RPN NMS settings before it had its own.
        stored["train"].setdefault("rpn_nms_threshold", inference.get("rpn_nms_threshold", 0.7))
        stored["train"].setdefault("rpn_min_size", inference["rpn_min_size"])
    return stored


def torchvision_inference_settings(config: ml_collections.ConfigDict) -> None:
    """torchvision maskrcnn_resnet50_fpn's test-time behaviour, for its imported weights."""
    config.geometry.roi_aligned = False
    config.geometry.roi_sampling_ratio = 2
    config.inference.rpn_pre_nms_top_k = 1000
    config.inference.rpn_post_nms_top_k = 1000
    config.inference.rpn_nms_threshold = 0.7
    config.inference.score_threshold = 0.05
    config.inference.nms_threshold = 0.5
    config.inference.detections_per_image = 100
