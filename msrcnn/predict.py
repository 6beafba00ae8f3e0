"""`python -m msrcnn.predict`: detections on your images or video, as pictures and COCO json.

    python -m msrcnn.predict --workdir=/tmp/msrcnn_shapes --input='photos/*.jpg' \\
        --output_dir=/tmp/predictions [--score_threshold=0.5] [--splash] [--save_masks]
    python -m msrcnn.predict --checkpoint=/tmp/maskrcnn_coco --video=street.mp4 \\
        --output_dir=/tmp/predictions [--splash]

Inputs: comma-separated files, globs and folders (every image file in a folder, sorted).
Per image NAME: NAME_overlay.png (masks, outlines, boxes, class and mask scores), with
--splash NAME_splash.png (grey image, colour kept inside the masks), with --save_masks
NAME_mask_K.png per detection (K in score order). All images: predictions.json, in COCO results
format (one entry per detection: image_id, category_id, bbox xywh, segmentation RLE, score =
the mask score, class score x predicted MaskIoU, as masks are ranked by it, and class_score
alongside for box ranking; image ids 1.. in input order)
and images.json mapping those ids to the files. Only detections at or above the threshold are
drawn; predictions.json keeps all of them (what COCOeval wants). EXIF orientation is honoured;
an image with no detection still gets its pictures and an images.json entry; an unreadable
file is reported, skipped and counted.

--video: every frame of the (mp4) video through the detector, written as NAME_overlay.mp4 (or
NAME_splash.mp4) at the input frame rate, via imageio + imageio-ffmpeg
(`pip install msrcnn[video]`).
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import tqdm
from absl import app, flags, logging
from PIL import Image

from msrcnn import cli, visualize
from msrcnn.data.sources.bad_input import BadInputError, BadInputPolicy
from msrcnn.data.sources.image_io import read_image
from msrcnn.evaluation import coco_format

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined only when run as a command, so that importing this module
    (tests, `msrcnn.show`) does not clash with other commands' flags of the same name."""
    flags.DEFINE_string("workdir", None, "training directory (its latest checkpoint)")
    flags.DEFINE_string("checkpoint", None, "checkpoint directory (e.g. from convert)")
    flags.DEFINE_string("input", None, "comma-separated image files, globs or folders")
    flags.DEFINE_string("video", None, "a video file to run on, frame by frame")
    flags.DEFINE_string("output_dir", None, "where the outputs go (created)")
    flags.DEFINE_float("score_threshold", 0.5, "minimum class score drawn")
    flags.DEFINE_bool("splash", False, "also write colour-splash pictures")
    flags.DEFINE_bool("save_masks", False, "also write one PNG per detected mask")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_inputs(spec: str) -> list[str]:
    """Files, globs and folders (comma-separated) -> image paths, in the order given."""
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if os.path.isdir(part):
            found = sorted(
                os.path.join(part, f)
                for f in os.listdir(part)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif any(ch in part for ch in "*?["):
            found = sorted(glob.glob(part, recursive=True))
        else:
            found = [part]  # a missing file is reported when it is read
        if not found:
            logging.warning("no images match %s", part)
        paths += found
    return paths


def load_predictor(workdir: str | None, checkpoint: str | None):
    from msrcnn.predictor import Predictor

    if bool(workdir) == bool(checkpoint):
        raise app.UsageError("give exactly one of --workdir and --checkpoint")
    directory = os.path.join(workdir, "checkpoints") if workdir else checkpoint
    return Predictor.from_checkpoint(directory)


def _save_png(path: str, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def write_image_outputs(stem, image, detections, names, out_dir, threshold, splash, masks):
    """The pictures of one image; returns the paths written."""
    written = [os.path.join(out_dir, f"{stem}_overlay.png")]
    _save_png(written[-1], visualize.draw_detections(image, detections, names, threshold))
    if splash:
        keep = np.asarray(detections.scores) >= threshold
        written.append(os.path.join(out_dir, f"{stem}_splash.png"))
        _save_png(written[-1], visualize.colour_splash(image, detections.masks[keep]))
    if masks:
        for k in np.flatnonzero(np.asarray(detections.scores) >= threshold):
            written.append(os.path.join(out_dir, f"{stem}_mask_{k}.png"))
            _save_png(written[-1], detections.masks[k].astype(np.uint8) * 255)
    return written


def results_entries(image_id: int, detections) -> list[dict]:
    """COCO results of one image: the mask-scored segm entries of `coco_format.image_results`
    (score = mask score), with class_score and mask_score alongside and the box."""
    results = coco_format.image_results(image_id, detections)
    return [
        {**segm, "bbox": box["bbox"], "class_score": box["score"], "mask_score": segm["score"]}
        for segm, box in zip(results[coco_format.SEGM_MS], results[coco_format.BBOX], strict=True)
    ]


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate


def predict_images(predictor, paths, out_dir, threshold, splash, masks) -> dict:
    """Runs on every path; returns a summary {'images', 'detections', 'skipped'}."""
    names = predictor.labels.class_names
    policy = BadInputPolicy(skip=True)
    results, images, used = [], [], set()
    for path in tqdm.tqdm(paths, desc="predict", unit="image", disable=len(paths) < 2):
        loaded = read_image(path, policy)
        if loaded is None:
            continue
        image_id = len(images) + 1
        detections = predictor(loaded.pixels)
        stem = _unique_stem(path, used)
        write_image_outputs(
            stem, loaded.pixels, detections, names, out_dir, threshold, splash, masks
        )
        images.append(
            {
                "id": image_id,
                "file_name": os.path.abspath(path),
                "height": loaded.hw[0],
                "width": loaded.hw[1],
                "outputs": stem,
            }
        )
        results += results_entries(image_id, detections)
    with open(os.path.join(out_dir, "predictions.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(out_dir, "images.json"), "w") as f:
        json.dump(images, f, indent=1)
    skipped = sum(n for reason, n in policy.counts.items() if reason.startswith("skipped"))
    if policy.counts:
        print(policy.summary(), file=sys.stderr)
    return {"images": len(images), "detections": len(results), "skipped": skipped}


def predict_video(predictor, path, out_dir, threshold, splash) -> dict:
    """Every frame through the detector, written as an mp4 at the input frame rate."""
    try:
        import imageio
    except ImportError as e:
        raise SystemExit(
            "--video needs imageio and imageio-ffmpeg: pip install msrcnn[video]"
        ) from e
    names = predictor.labels.class_names
    try:
        reader = imageio.get_reader(path, format="FFMPEG")
        fps = float(reader.get_meta_data().get("fps", 25.0))
    except Exception as e:
        raise BadInputError(f"cannot read video {path}: {e}") from None
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(out_dir, f"{stem}_{'splash' if splash else 'overlay'}.mp4")
    frames = 0
    # macro_block_size=1: keep the frame size even when it is not a multiple of 16.
    writer = imageio.get_writer(
        out_path, format="FFMPEG", fps=fps, codec="libx264", macro_block_size=1
    )
    try:
        for frame in tqdm.tqdm(reader, desc="predict", unit="frame"):
            frame = np.ascontiguousarray(np.asarray(frame)[..., :3])
            detections = predictor(frame)
            if splash:
                keep = np.asarray(detections.scores) >= threshold
                picture = visualize.colour_splash(frame, detections.masks[keep])
            else:
                picture = visualize.draw_detections(frame, detections, names, threshold)
            writer.append_data(picture)
            frames += 1
    finally:
        writer.close()
        reader.close()
    return {"frames": frames, "output": out_path}


def main(argv) -> None:
    del argv
    if not FLAGS.output_dir or bool(FLAGS.input) == bool(FLAGS.video):
        raise app.UsageError("need --output_dir and exactly one of --input and --video")
    predictor = load_predictor(FLAGS.workdir, FLAGS.checkpoint)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    if FLAGS.video:
        summary = predict_video(
            predictor, FLAGS.video, FLAGS.output_dir, FLAGS.score_threshold, FLAGS.splash
        )
        print(f"{summary['frames']} frames -> {summary['output']}")
        return
    paths = expand_inputs(FLAGS.input)
    summary = predict_images(
        predictor,
        paths,
        FLAGS.output_dir,
        FLAGS.score_threshold,
        FLAGS.splash,
        FLAGS.save_masks,
    )
    print(
        f"{summary['images']} images, {summary['detections']} detections, "
        f"{summary['skipped']} unreadable files skipped -> {FLAGS.output_dir}"
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main)
