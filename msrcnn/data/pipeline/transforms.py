"""Host-side (numpy) geometry for the input pipeline: flip, resize, mask crops, padding.

Conventions as in `msrcnn.ops`: boxes are xyxy float32 in pixel-edge coordinates (pixel
(i, j) covers [j, j + 1) x [i, i + 1); width = x2 - x1, no "+1").
"""

from __future__ import annotations

import math

import numpy as np


def flip_horizontal(image: np.ndarray, boxes: np.ndarray, masks: np.ndarray):
    """Mirrors an image left-right with its boxes and masks.

    Args:
      image: [H, W, C]; boxes: [N, 4] xyxy; masks: [N, H, W].

    Returns:
      (image, boxes, masks) mirrored: column x goes to W - 1 - x, so the edge coordinate x
      goes to W - x and a box (x1, y1, x2, y2) becomes (W - x2, y1, W - x1, y2).
    """
    width = image.shape[1]
    flipped = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return image[:, ::-1], flipped.astype(np.float32), masks[:, :, ::-1]


def resize_scale(image_hw: tuple[int, int], min_size: int | None, max_size: int | None) -> float:
    """The resize scale of torchvision's GeneralizedRCNNTransform, for training and inference.

    scale = min(min_size / shorter side, max_size / longer side): the shorter side goes to
    `min_size` unless that would take the longer side past `max_size`. A bound that is None
    is left out of the min; both None gives 1. `msrcnn.predictor` uses this same function.
    """
    short, long = float(min(image_hw)), float(max(image_hw))
    scales = []
    if min_size is not None:
        scales.append(min_size / short)
    if max_size is not None:
        scales.append(max_size / long)
    return min(scales) if scales else 1.0


def resized_hw(image_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Output (h, w) at `scale`: floor(size * scale) per axis, as PyTorch's
    interpolate(scale_factor=scale) (what torchvision resizes with), but at least 1 px.

    The clamp matters only for a side that would floor to 0 (an image tens of times longer
    than wide, capped by max_size), which PyTorch refuses to produce; every other size is
    torchvision's.
    """
    return tuple(max(1, math.floor(s * scale)) for s in image_hw)


def _linear_taps(in_size: int, out_size: int):
    """Bilinear source taps along one axis, align_corners=False (PyTorch's rule).

    Returns (lo, hi, frac): [out] int indices and the weight of `hi` (`lo` gets 1 - frac).
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [out_h, out_w, C], bilinear without antialiasing.

    The interpolation of PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`
    (what torchvision's transform and `msrcnn.predictor` use), rounded back to uint8 because
    the batch ships uint8. Two taps per output pixel and axis, so it costs O(output) rather
    than a dense resampling matmul.
    """
    out_h, out_w = out_hw
    if (out_h, out_w) == image.shape[:2]:
        return image
    y0, y1, fy = _linear_taps(image.shape[0], out_h)
    x0, x1, fx = _linear_taps(image.shape[1], out_w)
    x = image.astype(np.float32)
    rows = x[y0] * (1.0 - fy)[:, None, None] + x[y1] * fy[:, None, None]
    out = rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _roi_align_taps(lo: float, hi: float, size: int, out: int, grid: int):
    """RoIAlign (aligned=True) sample taps along one axis of a one-box, one-channel map.

    torchvision's kernel: the box edge shifted by -0.5, `out` bins of (hi - lo) / out, `grid`
    samples per bin at (i + 0.5) / grid of the bin; a sample below -1 or above `size`
    contributes 0; otherwise it is clamped to >= 0 and snapped to the last row/column when
    its low corner reaches it.

    Returns:
      (index, weight): [out, 2 * grid] int indices into the axis and their weights, already
      divided by `grid`, so a bin's value is sum(weight * value) over its taps.
    """
    bin_size = (hi - lo) / out
    frac = (np.arange(grid) + 0.5) / grid
    pos = (lo - 0.5) + (np.arange(out)[:, None] + frac[None, :]) * bin_size  # [out, grid]
    inside = (pos >= -1.0) & (pos <= size)
    pos = np.where(inside, np.maximum(pos, 0.0), 0.0)
    low = np.floor(pos).astype(np.int64)
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    f = np.where(at_edge, 0.0, pos - low)
    index = np.concatenate([low, high], axis=1)
    weight = np.concatenate([(1.0 - f) * inside, f * inside], axis=1) / grid
    return index, weight.astype(np.float32)


def crop_and_resize_masks(
    masks: np.ndarray, boxes: np.ndarray, size: int, sampling_ratio: int = 2
) -> np.ndarray:
    """Each full-image mask resampled into its box: numpy twin of
    `msrcnn.ops.masks.crop_and_resize_masks`.

    RoIAlign with aligned=True, spatial scale 1 and `sampling_ratio` x `sampling_ratio`
    bilinear samples per output bin (detectron2's `BitMasks.crop_and_resize` without its
    threshold): the fraction of each of the S x S cells of the box covered by the mask, which
    keeps thin parts and area faithful. Bilinear interpolation and the per-bin mean are both
    separable, so each mask costs two small gathers (rows, then columns) of 2 * ratio taps per
    output row/column, O(S * ratio * W) per instance, whatever the image size.

    Args:
      masks: [N, H, W] bool / integer / float (nonzero = foreground unless float).
      boxes: [N, 4] xyxy in the masks' pixel coordinates.
      size: output side S.
      sampling_ratio: samples per bin and axis (> 0).

    Returns:
      [N, S, S] float32 in [0, 1] for binary masks.
    """
    masks = np.asarray(masks)
    if masks.dtype == np.bool_ or np.issubdtype(masks.dtype, np.integer):
        masks = masks != 0
    num, height, width = masks.shape
    out = np.zeros((num, size, size), np.float32)
    for n in range(num):
        x1, y1, x2, y2 = (float(v) for v in boxes[n])
        yi, yw = _roi_align_taps(y1, y2, height, size, sampling_ratio)
        xi, xw = _roi_align_taps(x1, x2, width, size, sampling_ratio)
        rows = masks[n][yi].astype(np.float32)  # [S, 2g, W]
        rows = np.einsum("skw,sk->sw", rows, yw)
        out[n] = np.einsum("stk,tk->st", rows[:, xi], xw)  # rows[:, xi]: [S, S, 2g]
    return out
