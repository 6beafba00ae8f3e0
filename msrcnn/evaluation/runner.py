"""Evaluation of model variables on a dataset's validation split.

Runs inference over the split once and scores it three ways: boxes by class score, masks by
class score (plain Mask R-CNN ranking) and masks by mask score (class score x predicted
MaskIoU), plus the MaskIoU calibration (Pearson r between predicted and true mask IoU).
Used by the trainer and by `python -m msrcnn.evaluate`.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from msrcnn import detector as detector_lib
from msrcnn.evaluation import calibration, coco_eval, coco_format
from msrcnn.label_map import LabelMap
from msrcnn.ops.normalize import normalize_images


def make_eval_fn(detector, config):
    """uint8 batch -> detect() outputs, jitted once per padded input shape."""
    settings = detector_lib.inference_settings(config)

    @jax.jit
    def run(variables, images, image_hw):
        x = normalize_images(images, image_hw, config.data.pixel_mean, config.data.pixel_std)
        return detector_lib.detect(detector, variables, x, image_hw, settings)

    return run


def _preview(batch, index: int, detections, names):
    """The detections drawn on one evaluation image (its network input, resized back to the
    original size), for TensorBoard."""
    from PIL import Image

    from msrcnn import visualize

    h, w = (int(v) for v in batch["image_hw"][index])
    oh, ow = (int(v) for v in batch["orig_hw"][index])
    image = np.asarray(batch["images"][index][:h, :w])
    if (h, w) != (oh, ow):
        image = np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR))
    return visualize.draw_detections(image, detections, names, score_threshold=0.5)


def evaluate_variables(
    config, detector, variables, data, num_previews: int = 4, labels: LabelMap | None = None
) -> dict:
    """Inference over `data.eval_batches()` and COCO evaluation; `labels` (default: the
    dataset's) names the classes in the previews and maps them to the ground truth's ids.

    Returns:
      {'table': EvalTable, 'calibration': summary dict (None without a MaskIoU head),
       'calibration_arrays': (predicted [N], true [N]) MaskIoU of every detection or None,
       'num_images': int, 'previews': overlays of the first `num_previews` images}.
    """
    run = make_eval_fn(detector, config)
    labels = LabelMap.of_dataset(data) if labels is None else labels
    coco_gt = coco_eval.load_ground_truth(data.coco_gt)
    pairs = calibration.CalibrationPairs()
    results = {"bbox": [], "segm": [], "segm_ms": []}
    previews: list = []
    num_images = 0
    for batch in data.eval_batches():
        outputs = run(variables, jnp.asarray(batch["images"]), jnp.asarray(batch["image_hw"]))
        items = coco_format.batch_to_detections(
            jax.device_get(outputs),
            batch,
            labels.category_ids,
            mask_threshold=config.inference.mask_threshold,
        )
        for index, (image_id, detections) in enumerate(items):
            if len(previews) < num_previews:
                previews.append(_preview(batch, index, detections, labels.class_names))
            rles = coco_format.encode_masks(detections.masks)
            for kind, entries in coco_format.image_results(image_id, detections, rles).items():
                results[kind].extend(entries)
            if detector.mask_scoring:
                pairs.add(coco_gt, image_id, detections, rles)
            num_images += 1
    if jax.process_count() > 1:
        # Each process ran its shard of the images: pool detections and MaskIoU pairs.
        from msrcnn.sharding import allgather_json

        parts = allgather_json(
            {
                "results": results,
                "num_images": num_images,
                "pairs": [a.tolist() for a in pairs.arrays()],
            }
        )
        results = {k: [r for p in parts for r in p["results"][k]] for k in results}
        num_images = sum(p["num_images"] for p in parts)
        pairs = calibration.CalibrationPairs()
        for p in parts:
            predicted, true, cats = (np.asarray(a) for a in p["pairs"])
            pairs.predicted.append(predicted)
            pairs.true.append(true)
            pairs.category_ids.append(cats)
    table = coco_eval.evaluate(coco_gt, results)
    summary = pairs.summary() if detector.mask_scoring else None
    arrays = pairs.arrays()[:2] if detector.mask_scoring else None
    return {
        "table": table,
        "calibration": summary,
        "calibration_arrays": arrays,
        "num_images": num_images,
        "previews": previews,
    }


def format_results(result: dict, step: int | None = None) -> str:
    head = f"evaluation at step {step}" if step is not None else "evaluation"
    lines = [f"{head} ({result['num_images']} images)", coco_eval.format_table(result["table"])]
    cal = result.get("calibration")
    if cal:
        r = cal.get("pearson_r")
        line = (
            f"MaskIoU calibration: Pearson r = {r:.3f} over {cal['n']} detections"
            if r is not None
            else f"MaskIoU calibration: undefined over {cal['n']} detections"
        )
        matched = cal.get("pearson_r_matched")
        if matched is not None:
            line += f"; {matched:.3f} over the {cal['n_matched']} with a same-class ground truth"
        lines.append(line)
    return "\n".join(lines)


def write_results(result: dict, path: str) -> dict[str, str]:
    """Writes the table (with precision-recall curves) as json at `path`, and next to it
    PATH_pr.png (segm ranked by class score vs by mask score, and bbox) and, for a
    mask-scoring model, PATH_calibration.png (predicted vs true MaskIoU). Returns the paths."""
    from msrcnn.evaluation import plots  # matplotlib only when writing

    payload = {
        "num_images": result["num_images"],
        "table": result["table"].to_dict(),
        "calibration": result["calibration"],
        "pr_curves": result["table"].curves,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    stem = os.path.splitext(path)[0]
    written = {"json": path}
    if result["table"].curves:
        written["pr"] = stem + "_pr.png"
        plots.pr_curves_plot(
            result["table"].curves, written["pr"], f"{result['num_images']} images"
        )
    if result.get("calibration_arrays") is not None:
        written["calibration"] = stem + "_calibration.png"
        plots.calibration_plot(
            *result["calibration_arrays"], written["calibration"], "MaskIoU head"
        )
    return written


def flat_scalars(result: dict) -> dict[str, float]:
    """'eval/<row>/<column>' -> value, for TensorBoard and the metrics log."""
    out = {}
    for row, columns in result["table"].rows.items():
        for column, value in columns.items():
            out[f"eval/{row}/{column}"] = float(value)
    cal = result.get("calibration") or {}
    if cal.get("pearson_r") is not None:
        out["eval/maskiou_pearson_r"] = float(cal["pearson_r"])
    return out
