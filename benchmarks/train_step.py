"""One training step (forward + backward + SGD update) of R50-FPN Mask R-CNN / MS R-CNN,
msrcnn beside torchvision, on the same synthetic batch.

    python -m benchmarks.train_step [--framework=msrcnn|torchvision] [--size=512x512]
                                    [--batch=1] [--dtype=float32] [--plain] [--runs=5]
                                    [--output=bench_out/train_step.json]

Both sides start from the same weights (tests/seeded_weights.py: activations of a stable
magnitude, as a trained backbone's; msrcnn's converted with msrcnn.convert) and train the same
architecture with the same work per step: ResNet-50 with frozen
BatchNorm, stem and res2 frozen (torchvision: `trainable_backbone_layers=3`), FPN, RPN with
256 sampled anchors per image and 2000 proposals per level before NMS / 2000 per image after,
512 sampled RoIs per image at 25% positives, mask loss on every positive RoI at 28x28, 91
classes (torchvision's COCO head), SGD with momentum 0.9 and weight decay 1e-4, no resizing
(the images already have the configured size). msrcnn runs its whole step in one jit with the
state donated; `--plain` drops the MaskIoU head (the architecture torchvision has).

Every timed step starts from the same state (weights and optimizer state restored, untimed,
before each call), so each run does the same work: otherwise the weights move with every
step and so does the number of positive RoIs the mask head trains on (43 at the start on the
default batch, ~80 five steps later), on each side differently. `--start_step=K` takes that
state after K untimed SGD steps (more positives); `--drift` times successive steps instead.

Each image carries `--objects` ellipses inside random boxes: torchvision gets full-image
masks, msrcnn the same ellipses as box-aligned crops (its input format).
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import time

import numpy as np

from benchmarks import timing
from tests import seeded_weights

# Small enough that neither side diverges over the timed steps (a NaN would change the work).
LEARNING_RATE = 1e-3
COLUMNS = ["framework", "model", "size", "batch", "dtype", "median_ms", "images_per_s"]


def synthetic_objects(height: int, width: int, count: int, seed: int):
    """-> (boxes [count, 4] xyxy float32, labels [count] in 1..90)."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, width * 0.7, count)
    y0 = rng.uniform(0, height * 0.7, count)
    w = rng.uniform(0.1, 0.3, count) * width
    h = rng.uniform(0.1, 0.3, count) * height
    boxes = np.stack([x0, y0, np.minimum(x0 + w, width), np.minimum(y0 + h, height)], axis=1)
    return np.floor(boxes).astype(np.float32), rng.integers(1, 91, count).astype(np.int64)


def ellipse(height: int, width: int, box) -> np.ndarray:
    """uint8 {0, 1} [height, width]: the ellipse inscribed in `box` (pixel centres inside)."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    return ((((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) <= 1).astype(np.uint8)


def msrcnn_config(height: int, width: int, batch: int, dtype: str, mask_scoring: bool):
    from experiments import coco

    config = coco.get_config("" if mask_scoring else "plain")
    config.model.num_classes = 90
    config.model.dtype = dtype
    config.data.image_hw = (height, width)
    config.data.min_size, config.data.max_size = min(height, width), max(height, width)
    t = config.train
    t.batch_size = batch
    t.rpn_pre_nms_top_k, t.rpn_post_nms_top_k = 2000, 2000  # torchvision's training values
    t.roi_batch_size_per_image = 512
    t.mask_rois_per_image = 0  # every positive, as torchvision
    t.mask_size = 28
    t.max_instances = 100
    t.warmup_steps = 0
    t.learning_rate = LEARNING_RATE
    return config


def msrcnn_batch(height, width, batch, objects, max_instances, mask_size):
    out = {
        "images": np.stack([_image(height, width, seed=i) for i in range(batch)]),
        "image_hw": np.array([[height, width]] * batch, np.int32),
        "gt_boxes": np.zeros((batch, max_instances, 4), np.float32),
        "gt_classes": np.zeros((batch, max_instances), np.int32),
        "gt_masks": np.zeros((batch, max_instances, mask_size, mask_size), np.uint8),
        "gt_valid": np.zeros((batch, max_instances), bool),
        "image_id": np.arange(batch, dtype=np.int64),
        "orig_hw": np.array([[height, width]] * batch, np.int32),
    }
    crop = 255 * ellipse(mask_size, mask_size, (0, 0, mask_size, mask_size))
    for i in range(batch):
        boxes, labels = synthetic_objects(height, width, objects, seed=i)
        out["gt_boxes"][i, :objects] = boxes
        out["gt_classes"][i, :objects] = labels
        out["gt_masks"][i, :objects] = crop
        out["gt_valid"][i, :objects] = True
    return out


def _image(height, width, seed):
    from benchmarks.inference import test_image

    return test_image(height, width, seed)


def time_msrcnn(args, height, width) -> dict:
    import jax
    import jax.numpy as jnp

    from msrcnn import detector as detector_lib
    from msrcnn.training import optim
    from msrcnn.training import train_step as train_step_lib
    from msrcnn.training.train_state import TrainState
    from msrcnn.weights import torchvision as tv_weights

    config = msrcnn_config(height, width, args.batch, args.dtype, not args.plain)
    for item in args.set:  # e.g. train.mask_rois_per_image=48, to measure one change
        key, value = item.split("=", 1)
        section, name = key.split(".")
        config[section][name] = type(config[section][name])(ast.literal_eval(value))
    detector = detector_lib.from_config(config)
    variables, _ = tv_weights.convert_torchvision_state_dict(seeded_weights.state_dict(), config)
    params = jax.device_put(variables["params"])
    optimizer = optim.make_optimizer(config, params)
    state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), {})
    traces = []

    def step(state, batch):
        traces.append(1)  # runs once per trace
        return train_step_lib.train_step(detector, config, optimizer, state, batch)

    step_fn = jax.jit(step, donate_argnums=(0,))
    t = config.train
    batch = jax.device_put(
        msrcnn_batch(height, width, args.batch, args.objects, t.max_instances, t.mask_size)
    )
    holder = {"state": state}
    for _ in range(args.start_step):
        holder["state"], _ = step_fn(holder["state"], batch)
    state = holder["state"]
    start_state = jax.tree.map(jnp.copy, state)

    def restore():
        holder["state"] = jax.block_until_ready(jax.tree.map(jnp.copy, start_state))

    def call():
        holder["state"], metrics = step_fn(holder["state"], batch)
        return metrics

    setup = None if args.drift else restore
    result = timing.time_fn(call, runs=args.runs, warmup=2, setup=setup)
    if setup:
        setup()  # the reported loss is then the first step's, as torchvision's
    metrics = jax.device_get(call())
    assert np.isfinite(metrics["loss"]), metrics
    row = {
        "framework": "msrcnn",
        "model": "Mask R-CNN" if args.plain else "MS R-CNN",
        "traces": len(traces),
        "loss": float(metrics["loss"]),
        **_row(result, args, args.dtype),
        "peak_device_gib": timing.jax_device_peak_gib(),
    }
    return row


def torchvision_model(height, width):
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_ops

    backbone = torchvision.models.resnet50(weights=None, norm_layer=misc_ops.FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, trainable_layers=3)
    return torchvision.models.detection.MaskRCNN(
        backbone, num_classes=91, min_size=min(height, width), max_size=max(height, width)
    )


def time_torchvision(args, height, width) -> dict:
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    device = timing.torch_device()
    model = torchvision_model(height, width)
    state = seeded_weights.state_dict()
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    model.to(device).train()
    amp = args.dtype == "bfloat16" and device == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=LEARNING_RATE, momentum=0.9, weight_decay=1e-4)
    images, targets = [], []
    for i in range(args.batch):
        image = _image(height, width, seed=i)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float().div(255).to(device))
        boxes, labels = synthetic_objects(height, width, args.objects, seed=i)
        masks = np.stack([ellipse(height, width, b) for b in boxes])
        targets.append(
            {
                "boxes": torch.from_numpy(boxes).to(device),
                "labels": torch.from_numpy(labels).to(device),
                "masks": torch.from_numpy(masks).to(device),
            }
        )

    def one_step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    for _ in range(args.start_step):
        one_step()
    start_weights = copy.deepcopy(model.state_dict())
    start_optimizer = copy.deepcopy(opt.state_dict())

    def restore():
        model.load_state_dict(start_weights)
        # load_state_dict may keep the given tensors, which the next step updates in place.
        opt.load_state_dict(copy.deepcopy(start_optimizer))

    setup = None if args.drift else restore
    result = timing.time_fn(one_step, runs=args.runs, warmup=2, sync=lambda x: x, setup=setup)
    if setup:
        setup()
    row = {
        "framework": "torchvision",
        "model": "Mask R-CNN",
        "loss": float(one_step()),
        **_row(result, args, "bfloat16 (AMP)" if amp else "float32"),
    }
    row["compile_s"] = None
    row["peak_device_gib"] = timing.torch_device_peak_gib()
    return row


def _row(result: timing.Timing, args, dtype: str) -> dict:
    return {
        "size": args.size,
        "batch": args.batch,
        "dtype": dtype,
        "median_ms": result.median_s * 1e3,
        "min_ms": result.min_s * 1e3,
        "images_per_s": args.batch / result.median_s,
        # The first call minus a timed one: compilation (and first-use) time; with
        # --start_step the compilation happened in the untimed steps before.
        "compile_s": None if args.start_step else result.first_call_s - result.median_s,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="msrcnn", choices=["msrcnn", "torchvision"])
    p.add_argument("--size", default="512x512", help="HxW of the (already resized) images")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--plain", action="store_true", help="plain Mask R-CNN (no MaskIoU head)")
    p.add_argument("--objects", type=int, default=8, help="ground-truth objects per image")
    p.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument(
        "--start_step", type=int, default=0, help="untimed SGD steps before the timed state"
    )
    p.add_argument(
        "--drift", action="store_true", help="time successive steps (weights move between runs)"
    )
    p.add_argument("--set", action="append", default=[], help="msrcnn config SECTION.KEY=VALUE")
    p.add_argument("--output", default="bench_out/train_step.json")
    return p


def measure(args) -> dict:
    height, width = (int(v) for v in args.size.split("x"))
    start = time.perf_counter()
    if args.framework == "msrcnn":
        row = time_msrcnn(args, height, width)
    else:
        row = time_torchvision(args, height, width)
    row["wall_s"] = time.perf_counter() - start
    return row


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    timing.report([measure(args)], [*COLUMNS, "compile_s", "loss"], args.output, args)


if __name__ == "__main__":
    main()
