"""`Predictor`: uint8 RGB images in, detections in original image pixels out.

Preprocessing follows torchvision's GeneralizedRCNNTransform: RGB / 255, mean/std
normalisation, the shorter side scaled to `min_size` unless that makes the longer side exceed
`max_size`, bilinear resize (align_corners=False, no antialias; skipped when the scale leaves
the size unchanged), zero padding at the bottom/right to a multiple of `size_divisibility`.
The detector runs under one jit per padded shape; mask pasting under one jit per original
image shape.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrcnn import checkpointing
from msrcnn import detector as detector_lib
from msrcnn.data.pipeline.transforms import resize_scale, resized_hw
from msrcnn.label_map import LabelMap, given_or_config
from msrcnn.ops import masks as mask_ops


@dataclasses.dataclass
class Detections:
    """Detections of one image, in its original pixels; N = number of detections.

    Attributes:
      boxes: [N, 4] float32 xyxy.
      labels: [N] int dataset category ids.
      scores: [N] class scores (rank boxes by these).
      mask_scores: [N] class score x predicted MaskIoU (rank masks by these); equal to
        `scores` for a model without a MaskIoU head.
      masks: [N, H, W] bool.
      classes: [N] the model's contiguous class indices 1..K.
    """

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    mask_scores: np.ndarray
    masks: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] interpolation weights, align_corners=False (half-pixel centres), no antialias."""
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = (src - lo).astype(np.float32)
    weights = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


@functools.partial(jax.jit, static_argnames=("out_hw",))
def resize_bilinear(image, out_hw: tuple[int, int]):
    """[H, W, C] float -> [out_h, out_w, C], as PyTorch's bilinear interpolate."""
    wy = _bilinear_matrix(image.shape[0], out_hw[0])
    wx = _bilinear_matrix(image.shape[1], out_hw[1])
    hp = jax.lax.Precision.HIGHEST  # float32 accumulation: matches PyTorch to ~1e-6
    rows = jnp.einsum("oh,hwc->owc", wy, image, precision=hp)
    return jnp.einsum("pw,owc->opc", wx, rows, precision=hp)


def _divide(x, value, xp):
    """x / value (float32, `value` broadcast to x) as a true division under jit too.

    XLA rewrites a division by a broadcast value (a constant, or a per-channel vector) into
    a multiplication by its rounded reciprocal, which differs from numpy's (and ONNX's)
    division in the last bit. A divisor of x's full shape, behind an optimization barrier,
    stays a division.
    """
    value = np.asarray(value, np.float32)
    if xp is np:
        return x / value
    return x / jax.lax.optimization_barrier(jnp.broadcast_to(value, x.shape))


def preprocess_images(images, data_config):
    """uint8 RGB [N, H, W, 3] -> (normalised, padded [N, Hp, Wp, 3] float32, resized (h, w)).

    Every image of the batch has the same size, hence one scale. A numpy batch is processed
    with numpy (the resize jitted), as `preprocess` does for `Predictor`; a jax array or a
    tracer with jnp, so that the same steps trace into an exported model (`msrcnn.export`),
    with the same float32 values (see `_divide`).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected RGB images [N, H, W, 3], got shape {images.shape}")
    xp = np if isinstance(images, np.ndarray) else jnp
    h, w = images.shape[1:3]
    scale = resize_scale((h, w), data_config.min_size, data_config.max_size)
    out_hw = resized_hw((h, w), scale)
    x = _divide(images.astype(np.float32), 255.0, xp)
    if out_hw != (h, w):
        x = xp.asarray(jax.vmap(functools.partial(resize_bilinear, out_hw=out_hw))(x))
    x = _divide(x - np.asarray(data_config.pixel_mean, np.float32), data_config.pixel_std, xp)
    div = data_config.size_divisibility
    pad_h, pad_w = (-(-size // div) * div - size for size in out_hw)
    return xp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0))), out_hw


def preprocess(image: np.ndarray, data_config) -> tuple[np.ndarray, tuple[int, int]]:
    """uint8 RGB [H, W, 3] -> (normalised, padded [1, Hp, Wp, 3] float32, resized (h, w))."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    return preprocess_images(image[None], data_config)


@functools.partial(jax.jit, static_argnames=("image_hw", "threshold"))
def paste_masks(mask_probs, boxes, image_hw, threshold):
    """Jitted `paste_masks_in_image` -> bool [N, H, W]; one compilation per (H, W)."""
    return mask_ops.paste_masks_in_image(mask_probs, boxes, image_hw, threshold=threshold)


def scale_boxes(boxes, image_hw: Sequence[int], orig_hw: Sequence[int]):
    """Boxes [..., 4] xyxy in resized-image pixels -> original pixels (numpy or jnp).

    x scales by the widths' ratio, y by the heights'; float32 throughout.
    """
    ih, iw = (float(s) for s in image_hw)
    oh, ow = (int(s) for s in orig_hw)
    ratio = np.array([ow / iw, oh / ih, ow / iw, oh / ih], np.float32)
    return boxes.astype(np.float32) * ratio


def category_labels(classes, category_ids: Sequence[int]):
    """Model classes 1..K -> dataset category ids; class 0 (padding) -> 0 (numpy or jnp)."""
    table = np.concatenate([[0], np.asarray(category_ids, np.int64)])
    if isinstance(classes, np.ndarray):
        return table[classes]
    return jnp.asarray(table.astype(np.int32))[classes]


def outputs_to_detections(
    outputs: Mapping[str, np.ndarray],
    image_hw: Sequence[int],
    orig_hw: Sequence[int],
    category_ids: Sequence[int],
    mask_threshold: float = 0.5,
    paste_multiple: int = 128,
) -> Detections:
    """One image's `detect` outputs (D padded slots, input pixels) -> Detections.

    Boxes scale by orig / image_hw per axis (x by widths, y by
    heights), all D masks are pasted and thresholded (`>= mask_threshold`), then padding
    slots are dropped.

    The paste is jitted per output size, and a dataset has hundreds of original sizes
    (COCO val: many distinct (h, w)). So masks are pasted into a canvas rounded up to
    `paste_multiple` and cropped to the original size: every pixel of the paste is computed
    on its own and clipping only drops pixels outside, so the crop equals a paste at the
    exact size, with one compilation per canvas size (at most 25 for images up to 640).
    paste_multiple=1 pastes at the exact size.

    Args:
      outputs: dict with boxes [D, 4] xyxy input pixels, labels [D] (1..K, 0 = padding),
        scores [D], mask_probs [D, S, S], mask_scores [D], valid [D] bool.
      image_hw: (h, w) of the resized image inside the padded input.
      orig_hw: (h, w) of the original image.
      category_ids: K dataset category ids; class c maps to category_ids[c - 1].
      mask_threshold: binarisation threshold of the pasted probabilities.
      paste_multiple: canvas size granularity of the paste (see above).

    Returns:
      Detections with the valid slots, boxes in original pixels, masks [N, H, W] bool.
    """
    outputs = {key: np.asarray(value) for key, value in outputs.items()}
    valid = outputs["valid"].astype(bool)
    oh, ow = (int(s) for s in orig_hw)
    boxes = scale_boxes(outputs["boxes"], image_hw, orig_hw)
    canvas = tuple(-(-size // paste_multiple) * paste_multiple for size in (oh, ow))
    masks = paste_masks(
        outputs["mask_probs"], boxes, image_hw=canvas, threshold=float(mask_threshold)
    )
    masks = np.asarray(masks)[:, :oh, :ow]
    classes = outputs["labels"][valid].astype(np.int64)
    if classes.size and (classes.min() < 1 or classes.max() > len(category_ids)):
        raise ValueError(f"classes must lie in 1..{len(category_ids)}, got {np.unique(classes)}")
    return Detections(
        boxes=boxes[valid],
        labels=category_labels(classes, category_ids),
        scores=outputs["scores"][valid].astype(np.float32),
        mask_scores=outputs["mask_scores"][valid].astype(np.float32),
        masks=masks[valid],
        classes=classes,
    )


class Predictor:
    """Runs a detector on single images.

    predictor = Predictor(config, variables)     # or Predictor.from_checkpoint(directory)
    detections = predictor(image)                # uint8 RGB [H, W, 3]

    `labels` names the classes and maps them to dataset category ids: the checkpoint's with
    `from_checkpoint`, else the config's (`LabelMap.of_config`) unless given.
    """

    def __init__(
        self, config: ml_collections.ConfigDict, variables, labels: LabelMap | None = None
    ):
        self.config = config
        self.detector = detector_lib.from_config(config)
        self.model = self.detector.model
        self.variables = variables
        self._detect = detector_lib.make_detect_fn(
            self.detector, detector_lib.inference_settings(config)
        )
        self.labels = given_or_config(labels, config)
        self.category_ids = np.asarray(self.labels.category_ids)

    @classmethod
    def from_checkpoint(cls, directory: str, step: int | None = None) -> Predictor:
        variables, config, labels = checkpointing.load_checkpoint(directory, step)
        return cls(config, variables, labels)

    def raw(self, image: np.ndarray):
        """Network-level outputs for one image: (detect() dict for batch 1, resized (h, w))."""
        batch, out_hw = preprocess(image, self.config.data)
        outputs = self._detect(self.variables, jnp.asarray(batch), np.asarray([out_hw]))
        return outputs, out_hw

    def __call__(self, image: np.ndarray) -> Detections:
        image = np.asarray(image)
        outputs, out_hw = self.raw(image)
        return outputs_to_detections(
            jax.tree.map(lambda x: np.asarray(x[0]), outputs),
            out_hw,
            image.shape[:2],
            self.category_ids,
            mask_threshold=float(self.config.inference.mask_threshold),
        )
