"""Instance-mask ops: pasting mask-head outputs into the image, mask targets, mask IoU.

All functions have static output shapes (no data-dependent slicing), so they jit and vmap.
Boxes are `[N, 4]` xyxy float32 in absolute pixels (width = x2 - x1, no "+1").

`paste_masks_in_image` reproduces torchvision's `roi_heads.paste_masks_in_image` value for
value, including its integer box arithmetic; `crop_and_resize_masks` reproduces detectron2's
`BitMasks.crop_and_resize` (without its final threshold) for the mask-head targets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from msrcnn.ops.roi_align import roi_align

__all__ = ["crop_and_resize_masks", "mask_iou", "paste_masks_in_image"]


def _paste_axis_weights(lo, hi, length, padded_size):
    """Linear-interpolation taps of torchvision's paste, along one image axis.

    torchvision resizes the padded mask (size P) with `F.interpolate(bilinear,
    align_corners=False)` to the integer box size `n = max(hi - lo + 1, 1)` and copies it to
    image positions `lo .. hi` (clipped to the image). Here each image position `p` computes
    the two source taps of its resized-mask index `p - lo` directly.

    Args:
      lo, hi: [N] int32, the truncated corners of the expanded box on this axis.
      length: static int, image size along this axis.
      padded_size: static int P, size of the zero-padded mask.

    Returns:
      (i0, i1, w0, w1): [N, length] int32 indices into the padded mask (0 .. P - 1) and
      float32 weights; both weights are 0 where `p` lies outside the pasted box.
    """
    n = jnp.maximum(hi - lo + 1, 1)  # [N] resized-mask length, as torchvision's `max(w, 1)`
    pos = jnp.arange(length, dtype=jnp.int32)[None, :]  # [1, L]
    j = pos - lo[:, None]  # [N, L] index into the resized mask
    # F.interpolate with a target size: ratio = in / out in float32, source coordinate
    # (j + 0.5) * ratio - 0.5 clamped at 0 (PyTorch's area_pixel_compute_scale/source_index).
    ratio = jnp.float32(padded_size) / n.astype(jnp.float32)  # [N]
    src = jnp.maximum((j.astype(jnp.float32) + 0.5) * ratio[:, None] - 0.5, 0.0)
    i0 = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, padded_size - 1)
    i1 = jnp.minimum(i0 + 1, padded_size - 1)
    w1 = src - i0.astype(jnp.float32)
    w0 = 1.0 - w1
    # torchvision copies resized[y0 - lo : y1 - lo] with y0 = max(lo, 0), y1 = min(hi + 1, L):
    # image positions lo .. hi (never beyond the resized mask, which matters only for hi < lo).
    inside = (j >= 0) & (j < n[:, None]) & (pos <= hi[:, None])
    return i0, i1, jnp.where(inside, w0, 0.0), jnp.where(inside, w1, 0.0)


def _expanded_int_boxes(boxes, mask_size, padding):
    """torchvision's expand_boxes(boxes, (S + 2p) / S) followed by `.to(torch.int64)`."""
    boxes = jnp.asarray(boxes, jnp.float32)
    # Python float, as torchvision's expand_masks: float32 ops with a weakly typed scalar.
    scale = float(mask_size + 2 * padding) / mask_size
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    w_half = (x2 - x1) * 0.5 * scale
    h_half = (y2 - y1) * 0.5 * scale
    x_c = (x2 + x1) * 0.5
    y_c = (y2 + y1) * 0.5
    expanded = jnp.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=-1)
    # float -> int conversion truncates toward zero, like torch's cast (not floor).
    return expanded.astype(jnp.int32)


def _blend_rows(rows, i0, i1, w0, w1):
    """[P, W] rows, [H] indices and weights -> [H, W] = w0 * rows[i0] + w1 * rows[i1]."""
    return w0[:, None] * rows[i0] + w1[:, None] * rows[i1]


def paste_masks_in_image(mask_probs, boxes, image_hw, padding=1, threshold=None):
    """Pastes per-box mask probabilities into full-image masks, as torchvision does.

    Reproduces `torchvision.models.detection.roi_heads.paste_masks_in_image`: the S x S mask
    is zero-padded by `padding` pixels per side, its box scaled by (S + 2 * padding) / S about
    the centre and truncated to integers, the padded mask resized bilinearly
    (align_corners=False) to `max(int(x2 - x1 + 1), 1)` x `max(int(y2 - y1 + 1), 1)` and copied
    into the image at the integer box corner, clipped to the image. Boxes touching or crossing
    the image border are handled like torchvision (the part outside is dropped).

    Instead of resizing to a data-dependent size, every image pixel computes its own value:
    the x interpolation is a small matmul `padded_mask @ Wx^T` ([S + 2, W] per mask) with a
    two-tap weight matrix, and the y interpolation gathers two of those rows per image row and
    blends them. That keeps torchvision's arithmetic order (x first, then y), so values agree
    to float rounding (~1e-7), and costs two reads per output pixel, fewer than a dense second
    matmul `Wy @ (mask @ Wx^T)` (H * S * W multiply-adds per mask) or a take_along_axis
    gather (the variants compared: benchmarks/README.md, "Figures behind design choices").

    Padded (invalid) rows are not special-cased: an all-zero box pastes a single pixel at
    (0, 0). Mask them out with the detections' validity mask.

    Args:
      mask_probs: [N, S, S] float mask probabilities (after sigmoid) of each box's class.
      boxes: [N, 4] xyxy boxes in the image's pixel coordinates.
      image_hw: static (height, width) of the output masks.
      padding: static zero padding of the mask before pasting (torchvision: 1).
      threshold: optional static float. If given, return `probs >= threshold` as bool. This
        is the binarisation torchvision documents for Mask R-CNN outputs ("mask >= 0.5") and
        detectron2 applies in its paste (`>= threshold`); note torchvision's COCO evaluation
        script uses `> 0.5` instead, which differs only on pixels exactly at 0.5.

    Returns:
      [N, H, W] float32 probabilities, or bool if `threshold` is given.
    """
    mask_probs = jnp.asarray(mask_probs, jnp.float32)
    if mask_probs.ndim != 3 or mask_probs.shape[1] != mask_probs.shape[2]:
        raise ValueError(f"mask_probs must be [N, S, S], got {mask_probs.shape}")
    height, width = (int(s) for s in image_hw)
    size = mask_probs.shape[1]
    padded = jnp.pad(mask_probs, ((0, 0), (padding, padding), (padding, padding)))
    psize = size + 2 * padding

    ibox = _expanded_int_boxes(boxes, size, padding)  # [N, 4] int32
    xi0, xi1, xw0, xw1 = _paste_axis_weights(ibox[:, 0], ibox[:, 2], width, psize)
    yi0, yi1, yw0, yw1 = _paste_axis_weights(ibox[:, 1], ibox[:, 3], height, psize)

    # x interpolation as a matmul with a [W, P] two-tap matrix per mask. The zero products
    # it adds are exact, so each value is torchvision's w0 * a + w1 * b.
    cols = jnp.arange(psize, dtype=jnp.int32)
    wx = xw0[..., None] * (xi0[..., None] == cols) + xw1[..., None] * (xi1[..., None] == cols)
    rows_x = jnp.einsum("npk,nwk->npw", padded, wx, precision=jax.lax.Precision.HIGHEST)
    # y interpolation: gather the two source rows of every image row and blend. A per-mask
    # row gather (vmap) lowers to contiguous row copies; take_along_axis over [N, H, W] does
    # not (slower on CPU).
    out = jax.vmap(_blend_rows)(rows_x, yi0, yi1, yw0, yw1)
    if threshold is not None:
        return out >= threshold
    return out


def crop_and_resize_masks(masks, boxes, size, sampling_ratio=2):
    """Resamples full-image instance masks into their boxes: the mask-head training targets.

    detectron2's `BitMasks.crop_and_resize`: RoIAlign (aligned=True, spatial scale 1) of each
    mask, as a one-channel image, over its own box, without detectron2's final `>= 0.5`, so
    the caller can threshold or train on soft targets. Differences from detectron2:
    `sampling_ratio` is a fixed number of samples per bin and axis (detectron2 passes 0,
    adaptive `ceil(box_size / size)`, which has no static shape); targets differ only near mask
    edges. torchvision's Mask R-CNN crops with aligned=False instead.

    Args:
      masks: [M, H, W] bool / integer / float full-image masks (nonzero = foreground for
        bool/int; floats are used as they are).
      boxes: [M, 4] xyxy boxes (e.g. the matched proposals), one per mask.
      size: static int, output side length (28 for Mask R-CNN).
      sampling_ratio: static int > 0, bilinear samples per output bin along each axis.

    Returns:
      [M, size, size] float32 in [0, 1] (for binary or [0, 1] inputs).
    """
    masks = jnp.asarray(masks)
    if masks.dtype == jnp.bool_ or jnp.issubdtype(masks.dtype, jnp.integer):
        masks = masks != 0
    masks = masks.astype(jnp.float32)
    boxes = jnp.asarray(boxes, jnp.float32)

    def one(mask, box):
        # Each mask is its own one-channel feature map read by exactly one box.
        out = roi_align(
            mask[:, :, None],
            box[None, :],
            (size, size),
            spatial_scale=1.0,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )
        return out[0, :, :, 0]

    return jax.vmap(one)(masks, boxes)


def mask_iou(masks_a, masks_b):
    """Pairwise IoU of binary masks.

    Intersections are a float32 matmul of the flattened masks; pixel counts stay exact up to
    2^24 pixels per mask (4096 x 4096), enough for any detection input.

    Args:
      masks_a: [N, H, W] bool / integer / float (nonzero = foreground).
      masks_b: [M, H, W], same.

    Returns:
      [N, M] float32 IoU; 0 where the union is empty.
    """
    masks_a, masks_b = jnp.asarray(masks_a), jnp.asarray(masks_b)
    a = (masks_a != 0).reshape(masks_a.shape[0], -1).astype(jnp.float32)
    b = (masks_b != 0).reshape(masks_b.shape[0], -1).astype(jnp.float32)
    inter = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    union = a.sum(-1)[:, None] + b.sum(-1)[None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)
