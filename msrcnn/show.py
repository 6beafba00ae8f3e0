"""`python -m msrcnn.show`: look inside the data, the model's stages and the weights (PNGs).

    python -m msrcnn.show data --config=experiments/shapes.py --output_dir=/tmp/show
        [--split=train] [--num_images=4]
    python -m msrcnn.show pipeline --workdir=/tmp/msrcnn_shapes --input=image.png
        --output_dir=/tmp/show
    python -m msrcnn.show weights --workdir=/tmp/msrcnn_shapes --output_dir=/tmp/show

data:      data_K.png, the first images of a split with their ground-truth masks and boxes as
           the pipeline delivers them (resized and padded, crowd regions left out), and
           anchors.png: at each FPN level the anchors of one cell in the image centre and, in
           faint lines, of a coarse grid of cells, so their sizes can be judged against the
           objects.
pipeline:  NAME_pipeline.png, one image through the stages: the 50 anchors with the highest
           objectness (before box regression), the 50 best proposals after the RPN NMS,
           the 50 best class detections before the per-class NMS, the final detections,
           and their masks with class score vs mask score.
weights:   weights.png (per-layer histograms of kernels) and weights.json / a printed table:
           per parameter shape, mean, std, max |w|, NaN / Inf counts; layers whose weights
           are all zero, constant or non-finite are flagged.
"""

from __future__ import annotations

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from msrcnn import cli, visualize
from msrcnn.data.sources.bad_input import BadInputPolicy
from msrcnn.data.sources.image_io import read_image
from msrcnn.evaluation.plots import pyplot
from msrcnn.predict import load_predictor

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when run as a command (see `msrcnn.predict`)."""
    config_flags.DEFINE_config_file("config", None, "experiment config (for `data`)")
    flags.DEFINE_string("workdir", None, "training directory (latest checkpoint)")
    flags.DEFINE_string("checkpoint", None, "checkpoint directory")
    flags.DEFINE_string("input", None, "image for `pipeline`")
    flags.DEFINE_string("output_dir", None, "where the PNGs go")
    flags.DEFINE_string("split", "train", "split for `data`")
    flags.DEFINE_integer("num_images", 4, "images for `data`")


TOP = 50


class _Boxes:
    """Duck-typed Detections for drawing boxes (and optional masks) with one label each."""

    def __init__(self, boxes, classes, scores, masks=None, mask_scores=None):
        n = len(boxes)
        self.boxes = np.asarray(boxes, np.float32).reshape(n, 4)
        self.classes = np.asarray(classes).reshape(n)
        self.scores = np.asarray(scores, np.float32).reshape(n)
        self.mask_scores = self.scores if mask_scores is None else np.asarray(mask_scores)
        self.masks = np.zeros((n, 1, 1), bool) if masks is None else np.asarray(masks, bool)

    def __len__(self):
        return len(self.scores)


# ----------------------------------------------------------------------------- data


def show_data(config, output_dir: str, split: str, num_images: int) -> list[str]:
    from msrcnn.data import datasets

    data = datasets.load(config)
    batches = data.eval_batches() if split == "validation" else [next(data.train_iterator())]
    names = data.class_names
    written = []
    for batch in batches:
        for i in range(len(batch["image_id"])):
            if len(written) >= num_images or batch["image_id"][i] < 0:
                continue
            written.append(_draw_ground_truth(batch, i, names, output_dir, len(written)))
        if len(written) >= num_images:
            break
    written.append(draw_anchors(config, batch["images"][0], output_dir))
    return written


def _draw_ground_truth(batch, i, names, output_dir, k) -> str:
    from PIL import Image

    from msrcnn.ops.masks import paste_masks_in_image  # same paste as inference

    valid = np.asarray(batch["gt_valid"][i])
    boxes = np.asarray(batch["gt_boxes"][i])[valid]
    h, w = (int(v) for v in batch["image_hw"][i])
    crops = np.asarray(batch["gt_masks"][i])[valid].astype(np.float32) / 255.0
    masks = np.asarray(
        paste_masks_in_image(jnp.asarray(crops), jnp.asarray(boxes), (h, w), threshold=0.5)
    )
    gt = _Boxes(boxes, np.asarray(batch["gt_classes"][i])[valid], np.ones(len(boxes)), masks)
    image = np.asarray(batch["images"][i][:h, :w])
    picture = visualize.draw_detections(image, gt, names, 0.0, show_mask_scores=False)
    path = os.path.join(output_dir, f"data_{k}.png")
    Image.fromarray(picture).save(path)
    return path


def draw_anchors(config, image: np.ndarray, output_dir: str) -> str:
    """One panel per RPN level: the centre cell's anchors, and a coarse grid of cells."""
    from msrcnn.ops import anchors as anchor_ops

    plt = pyplot()
    hw = image.shape[:2]
    levels = range(2, 2 + len(config.geometry.anchor_sizes))
    grids = anchor_ops.fpn_grid_sizes(hw, levels)
    all_anchors = anchor_ops.fpn_anchors(
        hw,
        levels=levels,
        sizes=tuple(config.geometry.anchor_sizes),
        aspect_ratios=tuple(config.geometry.aspect_ratios),
        grid_sizes=grids,
    )
    num_ratios = len(config.geometry.aspect_ratios)
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.6), dpi=110)
    for ax, level, grid, anchors in zip(axes, levels, grids, all_anchors, strict=True):
        anchors = np.asarray(anchors).reshape(grid[0], grid[1], num_ratios, 4)
        ax.imshow(image)
        step = max(1, max(grid) // 4)
        for y in range(step // 2, grid[0], step):
            for x in range(step // 2, grid[1], step):
                for a in anchors[y, x]:
                    ax.add_patch(_rect(plt, a, "#ffffff", 0.5, 0.35))
        centre = anchors[grid[0] // 2, grid[1] // 2]
        for a, colour in zip(centre, ["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00"], strict=False):
            ax.add_patch(_rect(plt, a, colour, 1.8, 1.0))
        size = config.geometry.anchor_sizes[level - 2]
        ax.set_title(f"P{level}: stride {2**level}, size {size}", fontsize=9)
        ax.set_xlim(-0.25 * hw[1], 1.25 * hw[1])
        ax.set_ylim(1.25 * hw[0], -0.25 * hw[0])
        ax.axis("off")
    fig.suptitle("anchors: centre cell (colours = aspect ratios) and a grid of cells", fontsize=10)
    fig.tight_layout()
    path = os.path.join(output_dir, "anchors.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def _rect(plt, box, colour, width, alpha):
    x1, y1, x2, y2 = (float(v) for v in box)
    return plt.Rectangle(
        (x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=width, alpha=alpha
    )


# ------------------------------------------------------------------------- pipeline


def pipeline_stages(predictor, image: np.ndarray) -> dict[str, np.ndarray]:
    """Intermediate outputs for one image, in the resized network-input frame."""
    from msrcnn import detector as detector_lib
    from msrcnn.predictor import preprocess

    detector = predictor.detector
    settings = detector_lib.inference_settings(predictor.config)
    batch, out_hw = preprocess(image, predictor.config.data)

    @jax.jit
    def early(variables, images):
        pyramid, _ = detector.features(variables, images)
        rpn_out = detector.rpn(variables, pyramid)
        anchors = jnp.concatenate(rpn_out[2], axis=0)
        objectness = jnp.concatenate([lv[0] for lv in rpn_out[0]], axis=0)
        top_scores, top = jax.lax.top_k(jax.nn.sigmoid(objectness), min(TOP, len(anchors)))
        image_hw = jnp.asarray([out_hw], jnp.float32)
        props, prop_scores, prop_valid = detector.proposals(rpn_out, image_hw, settings.proposals)
        class_logits, deltas = detector.box_head(variables, pyramid, props)
        scores = jax.nn.softmax(class_logits[0], -1)[:, 1:]  # [P, K]
        boxes = detector_lib.decode_class_boxes(deltas[0], props[0], image_hw[0])
        scores = jnp.where(prop_valid[0][:, None], scores, 0.0)
        flat_scores, flat = jax.lax.top_k(scores.reshape(-1), min(TOP, scores.size))
        k = scores.shape[1]
        return {
            "anchors": anchors[top],
            "anchor_scores": top_scores,
            "proposals": props[0][:TOP],
            "proposal_scores": prop_scores[0][:TOP],
            "pre_nms_boxes": boxes[flat // k, flat % k],
            "pre_nms_classes": flat % k + 1,
            "pre_nms_scores": flat_scores,
        }

    stages = jax.tree.map(np.asarray, early(predictor.variables, jnp.asarray(batch)))
    scale = np.array([image.shape[1] / out_hw[1], image.shape[0] / out_hw[0]] * 2, np.float32)
    for key in ("anchors", "proposals", "pre_nms_boxes"):
        stages[key] = stages[key] * scale  # to the original image's pixels
    return stages


def show_pipeline(predictor, path: str, output_dir: str) -> str:
    loaded = read_image(path, BadInputPolicy())
    image = loaded.pixels
    names = predictor.labels.class_names
    stages = pipeline_stages(predictor, image)
    final = predictor(image)
    panels = [
        (
            "anchors by objectness (unregressed)",
            _Boxes(stages["anchors"], 0 * stages["anchor_scores"], stages["anchor_scores"]),
        ),
        (
            "proposals after RPN NMS",
            _Boxes(stages["proposals"], 0 * stages["proposal_scores"], stages["proposal_scores"]),
        ),
        (
            "class detections before NMS",
            _Boxes(stages["pre_nms_boxes"], stages["pre_nms_classes"], stages["pre_nms_scores"]),
        ),
    ]
    plt = pyplot()
    fig, axes = plt.subplots(1, 5, figsize=(20, 4.6), dpi=110)
    anchor_names = ["object"]
    for ax, (title, boxes) in zip(axes[:3], panels, strict=True):
        labels = anchor_names if title.startswith(("anchors", "proposals")) else names
        shown = _Boxes(boxes.boxes, np.maximum(boxes.classes, 1), boxes.scores)
        picture = visualize.draw_detections(image, shown, labels, 0.0, False, False, max_labels=5)
        ax.imshow(picture)
        ax.set_title(f"{title}: top {len(boxes)}, best 5 labelled", fontsize=9)
    after = _Boxes(final.boxes, final.classes, final.scores)
    axes[3].imshow(visualize.draw_detections(image, after, names, 0.5, False, False))
    axes[3].set_title("detections after NMS (score >= 0.5)", fontsize=9)
    axes[4].imshow(visualize.draw_detections(image, final, names, 0.5))
    axes[4].set_title("masks: class score | mask score", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(output_dir, f"{stem}_pipeline.png")
    fig.savefig(out)
    plt.close(fig)
    return out


# -------------------------------------------------------------------------- weights


def weight_statistics(params) -> list[dict]:
    """Per parameter: name, shape, mean, std, max |w|, non-finite count, and flags."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        w = np.asarray(leaf, np.float64)
        finite = np.isfinite(w)
        good = w[finite]
        flags_ = []
        if not finite.all():
            flags_.append("NON-FINITE")
        if good.size and np.all(good == 0) and "bias" not in jax.tree_util.keystr(path):
            flags_.append("ALL ZERO")
        elif good.size > 1 and np.ptp(good) == 0 and "bias" not in jax.tree_util.keystr(path):
            flags_.append("CONSTANT")
        rows.append(
            {
                "name": "/".join(str(getattr(k, "key", k)) for k in path),
                "shape": list(w.shape),
                "mean": float(good.mean()) if good.size else math.nan,
                "std": float(good.std()) if good.size else math.nan,
                "max_abs": float(np.abs(good).max()) if good.size else math.nan,
                "non_finite": int((~finite).sum()),
                "flags": flags_,
            }
        )
    return rows


def show_weights(predictor, output_dir: str) -> list[str]:
    rows = weight_statistics(predictor.variables["params"])
    json_path = os.path.join(output_dir, "weights.json")
    with open(json_path, "w") as f:
        json.dump(rows, f, indent=1)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(
            f"{r['name']:<{width}} {tuple(r['shape'])!s:>20} mean {r['mean']:+.3e} "
            f"std {r['std']:.3e} max {r['max_abs']:.3e} {' '.join(r['flags'])}"
        )
    flagged = [r for r in rows if r["flags"]]
    print(f"{len(rows)} tensors, {len(flagged)} flagged")
    kernels = [
        (r["name"], leaf)
        for r, (_, leaf) in zip(
            rows,
            jax.tree_util.tree_flatten_with_path(predictor.variables["params"])[0],
            strict=True,
        )
        if r["name"].endswith("kernel")
    ]
    plt = pyplot()
    cols = 6
    nrows = math.ceil(len(kernels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 2.2 * nrows), dpi=90, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, leaf) in zip(axes.ravel(), kernels, strict=False):
        values = np.asarray(leaf, np.float64).ravel()
        values = values[np.isfinite(values)]
        ax.axis("on")
        ax.hist(values, bins=50, color="#1f77b4")
        ax.set_title(name.replace("/kernel", "")[-38:], fontsize=7)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    png = os.path.join(output_dir, "weights.png")
    fig.savefig(png)
    plt.close(fig)
    return [json_path, png]


def main(argv) -> None:
    if len(argv) != 2 or argv[1] not in ("data", "pipeline", "weights"):
        raise app.UsageError("usage: python -m msrcnn.show {data|pipeline|weights} --flags")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    command = argv[1]
    if command == "data":
        if FLAGS.config is None:
            raise app.UsageError("`data` needs --config")
        written = show_data(FLAGS.config, FLAGS.output_dir, FLAGS.split, FLAGS.num_images)
    else:
        predictor = load_predictor(FLAGS.workdir, FLAGS.checkpoint)
        if command == "pipeline":
            if not FLAGS.input:
                raise app.UsageError("`pipeline` needs --input=IMAGE")
            written = [show_pipeline(predictor, FLAGS.input, FLAGS.output_dir)]
        else:
            written = show_weights(predictor, FLAGS.output_dir)
    for path in written:
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
