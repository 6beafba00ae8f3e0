"""Exported detectors against msrcnn's Predictor: parity and CPU latency, same images.

    python -m benchmarks.deploy --workdir=/tmp/msrcnn_tiny --onnx=/tmp/msrcnn_tiny.onnx \\
        [--stablehlo=/tmp/msrcnn_tiny.stablehlo] [--saved_model=/tmp/msrcnn_tiny_saved_model] \\
        [--images=2] [--runs=5] [--output=bench_out/deploy.json]

Each artifact is the one `python -m msrcnn.export` writes (batch 1); the images are
`benchmarks.inference.test_image`s of its input size (seeded), run through `Predictor` (the
whole call: resize, normalise, detect, paste and threshold the masks) and through each
artifact (the same work inside one graph). A first pass checks parity and takes each
backend's first call (compilation for jax, session warm-up for onnxruntime), reported apart.
Then `--runs` rounds, interleaved: every round runs every image through every backend in
turn, so the machine's drift hits all of them alike; the latency is the median per image.

Parity, per backend over all images: detection count and labels equal, the largest box
difference (px), score and mask-score difference, and the mask pixels that differ (with how
many of them have a pasted probability within 1e-4 of the mask threshold, where rounding
alone decides).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np

from benchmarks import timing
from benchmarks.inference import test_image
from msrcnn import export
from msrcnn import predictor as predictor_lib
from msrcnn.ops import masks as mask_ops
from msrcnn.predict import load_predictor

MASK_BAND = 1e-4


def onnx_runner(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    shape = session.get_inputs()[0].shape
    return tuple(shape), lambda x: dict(zip(names, session.run(None, {"images": x}), strict=True))


def stablehlo_runner(path: str):
    with open(path, "rb") as f:
        exported = jax.export.deserialize(f.read())
    call = jax.jit(exported.call)
    names = export.OUTPUT_NAMES if len(exported.out_avals) == 6 else None

    def run(x):
        outputs = [np.asarray(o) for o in call(x)]
        return dict(zip(names or export.output_names(False), outputs, strict=True))

    return tuple(exported.in_avals[0].shape), run


def saved_model_runner(path: str):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    shape = tuple(serve.structured_input_signature[1]["images"].shape)
    return shape, lambda x: {k: v.numpy() for k, v in serve(images=tf.constant(x)).items()}


RUNNERS = {"onnx": onnx_runner, "stablehlo": stablehlo_runner, "saved_model": saved_model_runner}


def pasted_probabilities(predictor, image, count: int) -> np.ndarray:
    """The pasted (unthresholded) mask probabilities of Predictor's first `count` detections."""
    raw, resized = predictor.raw(image)
    raw = jax.tree.map(lambda x: np.asarray(x[0]), raw)
    boxes = predictor_lib.scale_boxes(raw["boxes"], resized, image.shape[:2])
    probs = mask_ops.paste_masks_in_image(raw["mask_probs"], boxes, image.shape[:2])
    return np.asarray(probs)[:count]


def compare(outputs, detections, probs, threshold: float) -> dict:
    n = int(outputs["num_detections"][0])
    same_count = n == len(detections)
    m = min(n, len(detections))
    differ = outputs["masks"][0, :m] != detections.masks[:m]
    near = np.abs(probs[:m] - threshold) <= MASK_BAND
    diff = lambda key: float(np.max(np.abs(outputs[key][0, :m] - getattr(detections, key)[:m])))
    return {
        "detections": len(detections),
        "same_count": bool(same_count),
        "same_labels": bool(np.array_equal(outputs["labels"][0, :m], detections.labels[:m])),
        "box_px": diff("boxes") if m else 0.0,
        "score": diff("scores") if m else 0.0,
        "mask_score": diff("mask_scores") if m else 0.0,
        "mask_pixels_differ": int(differ.sum()),
        "of_them_at_threshold": int((differ & near).sum()),
        "mask_pixels": int(detections.masks.sum()),
    }


def merge(rows: list[dict]) -> dict:
    return {
        "detections": sum(r["detections"] for r in rows),
        "same_count": all(r["same_count"] for r in rows),
        "same_labels": all(r["same_labels"] for r in rows),
        "box_px": max(r["box_px"] for r in rows),
        "score": max(r["score"] for r in rows),
        "mask_score": max(r["mask_score"] for r in rows),
        "mask_pixels_differ": sum(r["mask_pixels_differ"] for r in rows),
        "of_them_at_threshold": sum(r["of_them_at_threshold"] for r in rows),
        "mask_pixels": sum(r["mask_pixels"] for r in rows),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--checkpoint")
    for name in RUNNERS:
        parser.add_argument(f"--{name}", help=f"{name} artifact (msrcnn.export, batch 1)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5, help="timed, interleaved rounds")
    parser.add_argument("--output", default="")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.workdir, args.checkpoint)
    threshold = float(predictor.config.inference.mask_threshold)
    backends = {}
    for name, make in RUNNERS.items():
        if getattr(args, name):
            shape, run = make(getattr(args, name))
            backends[name] = run
    if not backends:
        parser.error("give at least one of --onnx, --stablehlo, --saved_model")
    if shape[0] != 1:
        parser.error(f"benchmark artifacts of batch 1; got input {shape}")
    height, width = int(shape[1]), int(shape[2])
    images = [test_image(height, width, seed) for seed in range(args.images)]

    calls = {"predictor": predictor}
    for name, run in backends.items():
        calls[name] = lambda image, run=run: run(image[None])

    # First pass: parity, and each backend's first call (compilation, session warm-up).
    parity = {name: [] for name in backends}
    first = {}
    for image in images:
        for name, call in calls.items():
            start = time.perf_counter()
            outputs = timing.block(call(image))
            first.setdefault(name, time.perf_counter() - start)
            if name == "predictor":
                detections = outputs
                probs = pasted_probabilities(predictor, image, len(detections))
            else:
                parity[name].append(compare(outputs, detections, probs, threshold))

    times = {name: [] for name in calls}
    for _ in range(args.runs):
        for image in images:
            for name, call in calls.items():
                start = time.perf_counter()
                timing.block(call(image))
                times[name].append(time.perf_counter() - start)

    result = {
        "size": f"{height}x{width}",
        "images": args.images,
        "runs": args.runs,
        "latency_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "min_ms": {name: 1000 * min(t) for name, t in times.items()},
        "first_call_ms": {name: 1000 * t for name, t in first.items()},
        "parity": {name: merge(rows) for name, rows in parity.items()},
        "environment": timing.environment(),
    }
    print(f"{height}x{width}, {args.images} images x {args.runs} interleaved rounds")
    print("| backend | median ms / image | min ms | first call ms |")
    print("| --- | ---: | ---: | ---: |")
    for name in calls:
        print(
            f"| {name} | {result['latency_ms'][name]:.1f} | {result['min_ms'][name]:.1f} "
            f"| {result['first_call_ms'][name]:.0f} |"
        )
    for name, row in result["parity"].items():
        print(f"parity {name}: {json.dumps(row)}")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
