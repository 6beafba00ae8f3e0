"""Inference time of R50-FPN Mask (Scoring) R-CNN, msrcnn or torchvision (one per call).

    python -m benchmarks.inference [--framework=msrcnn|torchvision] [--size=800x800]
        [--batch=1] [--dtype=float32|bfloat16] [--plain] [--runs=5]
        [--output=bench_out/inference.json]

Both models carry the same weights: a seeded torchvision state dict (tests/seeded_weights.py)
loaded into torchvision's maskrcnn_resnet50_fpn and converted with msrcnn.convert, so both
find the same detections and do the same post-processing work. torchvision uses all cores
(CPU) or the GPU with bf16 autocast when --dtype=bfloat16. msrcnn is timed twice: the jitted
detector alone (normalised, padded input -> 100 padded detections with 28x28 masks) and the
whole call (resize, normalise, detect, paste masks into each image), the counterpart of
torchvision's `model(images)`. The MaskIoU head (mask scoring) costs one more head; --plain
times plain Mask R-CNN, torchvision's architecture.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from msrcnn import predictor
from msrcnn.weights import torchvision as tv_weights
from tests import seeded_weights

COLUMNS = [
    "framework",
    "model",
    "size",
    "batch",
    "dtype",
    "median_ms",
    "images_per_s",
    "compile_s",
    "note",
]


def test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with smooth structure and edges (random noise would be atypical)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 60 * np.sin(xx / (17 + 9 * c) + yy / (23 + 5 * c)) for c in range(3)])
    image = image.transpose(1, 2, 0)
    for _ in range(12):
        y0, x0 = rng.integers(0, height - 40), rng.integers(0, width - 40)
        h, w = rng.integers(20, height // 3), rng.integers(20, width // 3)
        image[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def msrcnn_predictor(state, size_hw, dtype: str, mask_scoring: bool) -> predictor.Predictor:
    config = tv_weights.config_for_state_dict(state, mask_scoring=mask_scoring)
    config.data.min_size, config.data.max_size = min(size_hw), max(size_hw)
    config.model.dtype = dtype
    variables, _ = tv_weights.convert_torchvision_state_dict(state, config)
    return predictor.Predictor(config, jax.device_put(variables))


def predict_batch(pred: predictor.Predictor, images: list[np.ndarray]) -> list:
    """The whole call for a batch of same-sized images: resize + normalise each, one jitted
    detector call, then boxes to original pixels and masks pasted per image (what
    torchvision's `model(images)` does in eval mode)."""
    prepared = [predictor.preprocess(image, pred.config.data) for image in images]
    batch = jnp.asarray(np.concatenate([b for b, _ in prepared]))
    image_hw = np.asarray([hw for _, hw in prepared])
    outputs = jax.device_get(pred._detect(pred.variables, batch, image_hw))
    threshold = float(pred.config.inference.mask_threshold)
    return [
        predictor.outputs_to_detections(
            {k: v[i] for k, v in outputs.items()},
            image_hw[i],
            image.shape[:2],
            pred.category_ids,
            mask_threshold=threshold,
        )
        for i, image in enumerate(images)
    ]


def time_msrcnn(args, images, state) -> list[dict]:
    height, width = images[0].shape[:2]
    pred = msrcnn_predictor(state, (height, width), args.dtype, not args.plain)
    name = "MS R-CNN" if not args.plain else "Mask R-CNN"
    detect = pred._detect
    batch, out_hw = predictor.preprocess(images[0], pred.config.data)
    padded = jnp.asarray(np.repeat(batch, len(images), axis=0))
    image_hw = np.asarray([out_hw] * len(images))
    rows = []
    t = timing.time_fn(lambda: detect(pred.variables, padded, image_hw), runs=args.runs)
    rows.append(
        dict(
            framework="msrcnn",
            model=name,
            note="detector only: padded input -> detections, 28x28 masks",
            **_row(t, args),
        )
    )
    t = timing.time_fn(functools.partial(predict_batch, pred, images), runs=args.runs)
    found = sum(len(d) for d in predict_batch(pred, images))
    rows.append(
        dict(
            framework="msrcnn",
            model=name,
            note=f"whole call: resize, detect, paste; {found} detections",
            **_row(t, args),
        )
    )
    rows[-1]["traces"] = detect._cache_size()  # compiled variants of the jitted detector
    # The detector compiled during the first timing; the whole call adds the paste's compile.
    rows[-1]["compile_s"] += rows[0]["compile_s"]
    rows[-1]["peak_device_gib"] = timing.jax_device_peak_gib()
    return rows


def time_torchvision(args, images, state) -> list[dict]:
    import torch
    import torchvision

    height, width = images[0].shape[:2]
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=91,
        min_size=min(height, width),
        max_size=max(height, width),
    )
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    model.eval()
    device = timing.torch_device()
    model.to(device)
    inputs = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images]
    amp = args.dtype == "bfloat16" and device == "cuda"

    def torch_call():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    t = timing.time_fn(torch_call, runs=args.runs, sync=lambda x: x)
    found = sum(len(o["scores"]) for o in torch_call())
    row = dict(
        framework="torchvision",
        model="Mask R-CNN",
        note=f"model(images), {found} detections",
        **_row(t, args, dtype="bfloat16 (AMP)" if amp else "float32"),
    )
    row["compile_s"] = None
    row["peak_device_gib"] = timing.torch_device_peak_gib()
    return [row]


def measure(args) -> list[dict]:
    height, width = (int(v) for v in args.size.split("x"))
    state = seeded_weights.state_dict()
    images = [test_image(height, width, seed=i) for i in range(args.batch)]
    if args.framework == "torchvision":
        return time_torchvision(args, images, state)
    return time_msrcnn(args, images, state)


def _row(t: timing.Timing, args, dtype: str | None = None) -> dict:
    return {
        "size": args.size,
        "batch": args.batch,
        "dtype": dtype or args.dtype,
        "median_ms": t.median_s * 1e3,
        "images_per_s": args.batch / t.median_s,
        # The first call minus a timed one: compilation (and first-use) time.
        "compile_s": t.first_call_s - t.median_s,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="msrcnn", choices=["msrcnn", "torchvision"])
    parser.add_argument("--runs", type=int, default=5, help="timed runs (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--size", default="800x800", help="HxW of the input images")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--plain", action="store_true", help="plain Mask R-CNN (no MaskIoU)")
    parser.add_argument("--output", default="bench_out/inference.json")
    args = parser.parse_args(argv)
    timing.report(measure(args), COLUMNS, args.output, args)


if __name__ == "__main__":
    main()
