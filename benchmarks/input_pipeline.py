"""Input pipeline throughput at COCO scale: images/s into 800x1344 / 1344x800 buckets.

    python -m benchmarks.input_pipeline [--images=64] [--threads=1,2] [--json=OUT]

Writes a COCO-layout folder of 640x480 and 480x640 JPEGs (quality 90) with 8 shapes-renderer
objects each as RLE (COCO images average 7.3 objects), builds it with the `custom_instances`
builder, then times (a) each per-image stage in one thread: reading + decoding the record
(JPEG and RLE masks), and `prepare_example` (mask crops at 56x56, bilinear resize to 800 on the
short side, padding), and (b) the bucketed training iterator (batch 8, grain threads as given)
over a warmed-up window. The per-image time of one core gives the host cores needed to feed a
given rate (e.g. 200 img/s for one H100) assuming linear scaling across processes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from msrcnn.data.builders import instances
from msrcnn.data.builders.records import decode_record
from msrcnn.data.pipeline import buckets, pipeline
from msrcnn.data.sources.shapes_render import CLASS_NAMES, render_example

BUCKETS = [(800, 1344), (1344, 800)]


def write_dataset(root: str, num_images: int) -> str:
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        hw = (480, 640) if i % 3 else (640, 480)  # ~2/3 landscape, as COCO
        ex = render_example(np.random.default_rng(i), hw, 8, 64)
        name = f"{i:06d}.jpg"
        Image.fromarray(ex["image"]).save(os.path.join(root, "images", name), quality=90)
        images.append({"id": i + 1, "file_name": name, "height": hw[0], "width": hw[1]})
        for mask, label in zip(ex["masks"], ex["labels"], strict=True):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            x, y, w, h = mask_utils.toBbox(rle).tolist()
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)]
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    batch = 8
    if args.images < 2 * batch:
        parser.error(f"--images must be at least {2 * batch}: a batch of {batch} in each bucket")

    root = tempfile.mkdtemp(prefix="msrcnn_pipeline_")
    json_path = write_dataset(root, args.images)
    builder = instances.build_custom(
        os.path.join(root, "tfds"),
        "coco",
        [],
        train={"annotations": json_path, "images": os.path.join(root, "images")},
    )
    source = builder.as_data_source("train")
    record_hw = builder.info.metadata["splits"]["train"]["image_hw"]
    objects = np.mean(builder.info.metadata["splits"]["train"]["num_instances"])

    n = len(source)
    t0 = time.perf_counter()
    decoded = [decode_record(source[i]) for i in range(n)]
    decode_ms = (time.perf_counter() - t0) / n * 1e3
    specs = [pipeline.InputSpec(b, 100, 56, 800, 1333) for b in BUCKETS]
    t0 = time.perf_counter()
    for inst, hw in zip(decoded, record_hw, strict=True):
        bucket = buckets.bucket_index(hw, BUCKETS, 800, 1333)
        pipeline.prepare_example(inst, specs[bucket], flip=True)
    prepare_ms = (time.perf_counter() - t0) / n * 1e3

    result = {
        "images": n,
        "objects_per_image": float(objects),
        "decode_ms_per_image": decode_ms,
        "prepare_ms_per_image": prepare_ms,
        "one_core_images_per_s": 1e3 / (decode_ms + prepare_ms),
        "iterator": {},
    }
    for threads in (int(t) for t in args.threads.split(",")):
        it = iter(
            buckets.make_bucketed_train_dataset(
                source,
                record_hw,
                batch,
                BUCKETS,
                max_instances=100,
                mask_size=56,
                min_size=800,
                max_size=1333,
                num_threads=threads,
                prefetch_buffer_size=2 * threads,
            )
        )
        next(it)  # warm-up: threads started, first batches in flight
        steps = max(4, 2 * n // batch)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        rate = steps * batch / (time.perf_counter() - t0)
        result["iterator"][f"{threads}_threads_images_per_s"] = rate
    result["cores_for_200_images_per_s"] = 200.0 / result["one_core_images_per_s"]

    print(f"{n} images, {objects:.1f} objects each, 800x1344 / 1344x800 buckets")
    print(f"  read + decode (JPEG, RLE):      {decode_ms:7.1f} ms / image")
    print(f"  prepare (crop masks, resize):   {prepare_ms:7.1f} ms / image")
    print(f"  one core:                       {result['one_core_images_per_s']:7.1f} images/s")
    for key, rate in result["iterator"].items():
        print(f"  iterator, {key.replace('_', ' ')}: {rate:7.1f}")
    print(f"  cores to feed 200 images/s:     {result['cores_for_200_images_per_s']:7.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
