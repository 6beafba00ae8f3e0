"""Per-image inference latency of R50-FPN Mask (Scoring) R-CNN, beside torchvision's.

    python -m benchmarks.inference [--quick] [--size=800x1216] [--batch=1] [--dtype=float32]
                                   [--output=bench_out/inference.json]

Both models carry the same weights: a seeded torchvision state dict (tests/seeded_weights.py)
loaded into torchvision's maskrcnn_resnet50_fpn and converted with msrcnn.convert, so both
find the same detections and do the same post-processing work. torchvision runs when it is
importable (CPU: as many threads as JAX uses). msrcnn is timed twice: the jitted detector
alone (normalised, padded input -> 100 padded detections with 28x28 masks) and the whole
Predictor call (resize, normalise, detect, paste masks into the image). MaskIoU head on
(mask scoring) costs one more head; --plain times plain Mask R-CNN.
"""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from msrcnn import convert, predictor
from tests import seeded_weights

COLUMNS = ["model", "size", "batch", "dtype", "median_ms", "images_per_s", "compile_s", "note"]


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
    config = convert.config_for_state_dict(state, mask_scoring=mask_scoring)
    config.data.min_size, config.data.max_size = min(size_hw), max(size_hw)
    config.model.dtype = dtype
    variables, _ = convert.convert_torchvision_state_dict(state, config)
    return predictor.Predictor(config, jax.device_put(variables))


def run(args) -> list[dict]:
    height, width = (int(v) for v in args.size.split("x"))
    runs = 3 if args.quick else 7
    state = seeded_weights.state_dict()
    images = [test_image(height, width, seed=i) for i in range(args.batch)]
    rows = []

    pred = msrcnn_predictor(state, (height, width), args.dtype, not args.plain)
    batch, out_hw = predictor.preprocess(images[0], pred.config.data)
    batch = jnp.asarray(np.repeat(batch, args.batch, axis=0))
    image_hw = np.asarray([out_hw] * args.batch)
    detect = functools.partial(pred._detect, pred.variables, batch, image_hw)
    name = "msrcnn MS R-CNN" if not args.plain else "msrcnn Mask R-CNN"
    t = timing.time_fn(detect, runs=runs)
    rows.append(
        dict(model=name, note="detector (padded input -> detections, 28x28 masks)", **_row(t, args))
    )
    if args.batch == 1:
        t = timing.time_fn(functools.partial(pred, images[0]), runs=runs)
        rows.append(dict(model=name, note="Predictor: resize + detect + paste", **_row(t, args)))
        num = len(pred(images[0]))
        rows[-1]["note"] += f", {num} detections"

    try:
        import torch
        import torchvision
    except Exception:  # no torchvision column without a working torch
        torch = None
    if torch is not None:
        torch.set_num_threads(os.cpu_count() or 1)
        model = torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=91,
            min_size=min(height, width),
            max_size=max(height, width),
        )
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        model.eval()
        inputs = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]

        def torch_call():
            with torch.no_grad():
                return model(inputs)

        t = timing.time_fn(torch_call, runs=runs, sync=lambda x: x)
        num = len(torch_call()[0]["scores"])
        row = dict(model="torchvision Mask R-CNN", note=f"model(images), {num} detections")
        row.update(_row(t, args, dtype="float32"))
        row["compile_s"] = None
        rows.append(row)
        ours = rows[-2] if args.batch == 1 else rows[0]
        ratio = ours["median_ms"] / row["median_ms"]
        print(f"msrcnn / torchvision time ratio (whole call): {ratio:.3f}")
    return rows


def _row(t: timing.Timing, args, dtype: str | None = None) -> dict:
    return {
        "size": args.size,
        "batch": args.batch,
        "dtype": dtype or args.dtype,
        "median_ms": t.median_s * 1e3,
        "images_per_s": args.batch / t.median_s,
        "compile_s": t.first_call_s,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--size", default="800x1216", help="HxW of the input images")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--plain", action="store_true", help="plain Mask R-CNN (no MaskIoU)")
    parser.add_argument("--output", default="bench_out/inference.json")
    args = parser.parse_args(argv)
    rows = run(args)
    env = timing.environment()
    print("\n" + timing.format_table(rows, COLUMNS))
    print("\n" + ", ".join(f"{k}={v}" for k, v in env.items()))
    timing.write_json(args.output, {"environment": env, "args": vars(args), "results": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
