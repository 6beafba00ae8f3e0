"""RoIAlign (single level and FPN multi-level), bit-for-bit the semantics of torchvision's kernel.

Every pooled value is the average, over a static `sampling_ratio x sampling_ratio` grid of points
inside its bin, of the bilinear interpolation of the feature map at that point. The sampling
positions, the "outside the map" test and the border clamping follow torchvision's C++
`roi_align` kernel (`bilinear_interpolate` / `pre_calc_for_bilinear_interpolate`) exactly:

  * `aligned=True` shifts the box by -0.5 pixel (pixel centres at integer + 0.5);
    `aligned=False` does not, and clamps the RoI width and height to at least 1 feature pixel;
  * a sample with y < -1, y > H, x < -1 or x > W contributes 0 (but still counts in the mean);
  * otherwise y, x <= 0 are clamped to 0 and a low corner at >= H-1 (W-1) is clamped to the last
    row (column), so the sample reads the border value.

Implementation: the bilinear weights are separable (the outside test and the clamping act on y
and x independently), so they are computed per axis, `[R, out, grid, 2]`, then combined into the
flat indices and weights of the S = 4 * grid**2 corners of every bin's samples. The features are
flattened to `[H*W, C]` (for FPN: all levels concatenated into one buffer, each box carrying its
level's offset, size and scale) and read by gathers of whole C-vectors (channels are the minor
axis, so each gathered row is contiguous), one per corner slot, which XLA fuses with the
weighting and the sum over the S slots into a single loop: the `[R, out_h, out_w, S, C]` samples
are never materialised. See `_gather_weighted_sum` for why it is not literally one gather
followed by a reduce (XLA:CPU does not fuse that).

The backward pass is a custom VJP: a scatter-add of cotangent x weight into a float32 `[H*W, C]`
buffer, in chunks of RoIs so the scatter's update buffer stays ~16 MB. Boxes get no gradient (as
in torchvision, whose kernel returns none for the rois); forward-mode differentiation (jvp) is
not supported.

Geometry is float32 whatever the features' dtype; sums are accumulated in float32 and the
output (and the features' gradient) has the features' dtype.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from msrcnn.ops.boxes import box_area

# Weighted sum over the sample axes; float32 accumulation even for bf16 features.
_ACC_DTYPE = jnp.float32


def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, numbers.Integral):
        return int(output_size), int(output_size)
    out_h, out_w = output_size
    return operator.index(out_h), operator.index(out_w)


def _check_sampling_ratio(sampling_ratio) -> int:
    if not isinstance(sampling_ratio, numbers.Integral) or sampling_ratio <= 0:
        raise ValueError(
            f"sampling_ratio must be a positive int, got {sampling_ratio!r}. torchvision's "
            "adaptive sampling (sampling_ratio <= 0: ceil(roi_size / output_size) points per bin) "
            "makes the number of samples depend on each box's size, which has no static shape "
            "under jit; pass an explicit sampling_ratio (2 is the Mask R-CNN default)."
        )
    return int(sampling_ratio)


def _axis_corners(start, bin_size, size, num_bins: int, grid: int):
    """Bilinear corners along one axis, as torchvision's `bilinear_interpolate`.

    Args:
      start: [R] float32, first edge of the RoI in feature pixels (offset already applied).
      bin_size: [R] float32, RoI extent / num_bins.
      size: [R] int32 (or a scalar), the feature map's extent along this axis.
      num_bins: static number of output bins along the axis.
      grid: static number of samples per bin along the axis.

    Returns:
      index: [R, num_bins, grid, 2] int32, the low and high corner along the axis.
      weight: [R, num_bins, grid, 2] float32, their interpolation weights (0 outside the map).
    """
    size = jnp.asarray(size, jnp.int32)
    size_f = size.astype(jnp.float32)
    if size.ndim:
        size, size_f = size[:, None, None], size_f[:, None, None]
    bins = jnp.arange(num_bins, dtype=jnp.float32)[None, :, None]
    # (i + 0.5) * bin / grid, in the kernel's operation order so floor() agrees at the edges.
    frac = jnp.arange(grid, dtype=jnp.float32)[None, None, :] + 0.5
    b = bin_size[:, None, None]
    pos = start[:, None, None] + bins * b + frac * b / float(grid)  # [R, num_bins, grid]

    inside = (pos >= -1.0) & (pos <= size_f)
    # Outside samples get weight 0; zeroing their position keeps the index in range (and NaN out).
    pos = jnp.where(inside, jnp.maximum(pos, 0.0), 0.0)
    low = jnp.floor(pos).astype(jnp.int32)  # pos >= 0 here, so floor == the kernel's (int) cast
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    # At the last row/column the kernel snaps the position onto it: weight 1 on `low`.
    frac_low = jnp.where(at_edge, 0.0, pos - low.astype(jnp.float32))
    index = jnp.stack([low, high], axis=-1)
    weight = jnp.stack([1.0 - frac_low, frac_low], axis=-1) * inside[..., None]
    return index, weight


# Scatter-add of the backward pass in chunks of about this many gathered rows: bounds the
# [rows, C] update buffer (16 MB at C=256) instead of materialising all R*out_h*out_w*S rows.
_BWD_ROWS_PER_CHUNK = 16384


@jax.custom_vjp
def _gather_weighted_sum(flat, index, weight):
    """sum_s weight[..., s] * flat[index[..., s]]: [N, C], 2 x [R, P, Q, S] -> [R, P, Q, C].

    One gather per sample slot s, all summed: XLA fuses the S gathers, the weighting and the sum
    into a single loop that writes only the output. (A single gather to [R, P, Q, S, C] followed
    by a reduce over S is NOT fused on CPU: it materialises R*P*Q*S*C floats, 400 MB per image
    for 512 RoIs of 7x7, and runs many times slower.) Indices must be in range; weights get no
    gradient.
    """
    acc = jnp.zeros((*index.shape[:-1], flat.shape[-1]), _ACC_DTYPE)
    for s in range(index.shape[-1]):
        rows = flat.at[index[..., s]].get(mode="promise_in_bounds")
        acc = acc + rows.astype(_ACC_DTYPE) * weight[..., s, None]
    # A bin whose samples all fall outside the map is 0 anyway, so this select changes nothing;
    # it is here because XLA:CPU's YNNPACK fusion cannot take a select. Without it, a consumer
    # such as a reduce, a dot or a conv pulls the adds and multiplies above into its YNNPACK
    # fusion, leaving the S gathers behind as S materialised [R, P, Q, C] arrays (0.4 GB per
    # image for 512 RoIs of 7x7 instead of the output's 25 MB, and many times slower).
    live = jnp.any(weight != 0, axis=-1, keepdims=True)
    return jnp.where(live, acc, 0.0).astype(flat.dtype)


def _gather_weighted_sum_fwd(flat, index, weight):
    # The backward pass needs only flat's row count and dtype: an empty [N, 0] array holds both.
    flat_spec = jnp.zeros((flat.shape[0], 0), flat.dtype)
    return _gather_weighted_sum(flat, index, weight), (index, weight, flat_spec)


def _gather_weighted_sum_bwd(residuals, cotangent):
    index, weight, flat_spec = residuals
    num_rois = index.shape[0]
    chunk = max(1, min(num_rois, _BWD_ROWS_PER_CHUNK // max(1, math.prod(index.shape[1:]))))
    # Prefer a chunk that divides R (no separate tail scatter), if one is not much smaller.
    divisor = max(d for d in range(1, chunk + 1) if num_rois % d == 0) if num_rois else 1
    chunk = divisor if 2 * divisor >= chunk else chunk
    num_full = num_rois // chunk if num_rois else 0

    def scatter_rois(grad, start, size):
        # Slicing the RoI axis in place (rather than splitting the arrays into [chunks, ...]
        # scan inputs) avoids copying the cotangent, which under vmap is also a transpose.
        take = lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)
        cot = take(cotangent).astype(_ACC_DTYPE)
        # [size, P, Q, S, C]: each gathered row's share of its output's cotangent.
        updates = cot[..., None, :] * take(weight)[..., None]
        return grad.at[take(index)].add(updates, mode="promise_in_bounds")

    # One float32 buffer, updated in place chunk after chunk.
    grad = jnp.zeros((flat_spec.shape[0], cotangent.shape[-1]), _ACC_DTYPE)
    if num_full:
        grad = jax.lax.fori_loop(0, num_full, lambda i, g: scatter_rois(g, i * chunk, chunk), grad)
    if num_rois - num_full * chunk:
        grad = scatter_rois(grad, num_full * chunk, num_rois - num_full * chunk)
    return grad.astype(flat_spec.dtype), None, None


_gather_weighted_sum.defvjp(_gather_weighted_sum_fwd, _gather_weighted_sum_bwd)


def _roi_align_flat(
    flat, boxes, height, width, offset, spatial_scale, output_size, sampling_ratio, aligned
):
    """RoIAlign reading from a flat `[N, C]` buffer; per-box map geometry.

    Args:
      flat: [N, C] features, one or more maps flattened row-major and concatenated.
      boxes: [R, 4] float32 xyxy in input pixels.
      height, width: [R] int32 (or scalars), extent of the map each box reads.
      offset: [R] int32 (or a scalar), where that map starts in `flat`.
      spatial_scale: [R] float32 (or a scalar), feature pixels per input pixel.

    Returns:
      [R, out_h, out_w, C] in flat's dtype.
    """
    out_h, out_w = output_size
    grid = sampling_ratio
    num_rois = boxes.shape[0]
    scale = jnp.broadcast_to(jnp.asarray(spatial_scale, jnp.float32), (num_rois,))
    shift = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * scale - shift for i in range(4))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        # Legacy (Detectron v1) behaviour: malformed RoIs are forced to 1x1 feature pixels.
        roi_w, roi_h = jnp.maximum(roi_w, 1.0), jnp.maximum(roi_h, 1.0)

    iy, wy = _axis_corners(y1, roi_h / out_h, height, out_h, grid)  # [R, out_h, grid, 2]
    ix, wx = _axis_corners(x1, roi_w / out_w, width, out_w, grid)  # [R, out_w, grid, 2]

    # All corners of all samples: [R, out_h, out_w, grid_y, grid_x, 2 (y), 2 (x)].
    row = iy * jnp.asarray(width, jnp.int32).reshape(-1, 1, 1, 1)
    row = row + jnp.asarray(offset, jnp.int32).reshape(-1, 1, 1, 1)
    index = row[:, :, None, :, None, :, None] + ix[:, None, :, None, :, None, :]
    weight = wy[:, :, None, :, None, :, None] * wx[:, None, :, None, :, None, :]
    num_samples = grid * grid * 4
    index = index.reshape(num_rois, out_h, out_w, num_samples)
    # Mean over the grid: divide the weights (R*S values) rather than the output.
    weight = weight.reshape(num_rois, out_h, out_w, num_samples) / float(grid * grid)

    return _gather_weighted_sum(flat, index, jax.lax.stop_gradient(weight))


def roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=2, aligned=True):
    """RoIAlign of one image's feature map (torchvision.ops.roi_align semantics).

    Args:
      features: [H, W, C] feature map (any float dtype).
      boxes: [R, 4] xyxy boxes in input pixels (cast to float32). R may be 0.
      output_size: int or (out_h, out_w), static.
      spatial_scale: feature pixels per input pixel (e.g. 1/4 for P2); Python float or scalar.
      sampling_ratio: static samples per bin along each axis; must be > 0.
      aligned: shift boxes by -0.5 pixel (True: Detectron2 / correct) or not (torchvision's
        default and Mask R-CNN v1 weights).

    Returns:
      [R, out_h, out_w, C] in features' dtype.
    """
    output_size = _pair(output_size)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    features = jnp.asarray(features)
    height, width, channels = features.shape
    boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
    flat = features.reshape(height * width, channels)
    return _roi_align_flat(
        flat, boxes, height, width, 0, spatial_scale, output_size, sampling_ratio, aligned
    )


def fpn_level_assignment(
    boxes, min_level=2, max_level=5, canonical_scale=224, canonical_level=4, eps=1e-6
):
    """FPN level of each box (eq. 1 of the FPN paper, torchvision's LevelMapper).

    level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), clamped to
    [min_level, max_level].

    Args:
      boxes: [R, 4] xyxy boxes in input pixels.

    Returns:
      [R] int32 levels. Zero-area and inverted boxes (area clamped to 0) get min_level;
      torchvision would take |w*h| for a box inverted on both axes and NaN for one axis.
    """
    area = box_area(boxes)
    # Floor the area so log2 never sees 0 (-inf); any such box is clamped to min_level anyway.
    size = jnp.sqrt(jnp.maximum(area, 1e-12))
    level = jnp.floor(canonical_level + jnp.log2(size / canonical_scale) + eps)
    return jnp.clip(level, min_level, max_level).astype(jnp.int32)


def multilevel_roi_align(
    features: Sequence,
    boxes,
    output_size,
    sampling_ratio=2,
    aligned=True,
    min_level=2,
    canonical_scale=224,
    canonical_level=4,
):
    """RoIAlign from FPN levels, each box from its assigned level (MultiScaleRoIAlign semantics).

    The levels are flattened and concatenated into one `[sum(H_l*W_l), C]` buffer and every box
    reads only its own level's region of it (per-box offset, size and scale), so all boxes are
    pooled in one fused gather pass; no box is pooled at a level it is not assigned to.

    Args:
      features: sequence of L maps `[H_l, W_l, C]` for levels min_level..min_level+L-1, level l
        at spatial scale 1/2**l (P2..P5 of an 800x1344 input: 200x336 .. 25x42).
      boxes: [R, 4] xyxy boxes in input pixels. R may be 0.
      output_size: int or (out_h, out_w), static.
      sampling_ratio: static samples per bin along each axis; must be > 0.
      aligned: see `roi_align`. torchvision's MultiScaleRoIAlign uses aligned=False.
      min_level: level of features[0].
      canonical_scale, canonical_level: level mapping of `fpn_level_assignment`.

    Returns:
      [R, out_h, out_w, C] in the features' dtype.
    """
    output_size = _pair(output_size)
    sampling_ratio = _check_sampling_ratio(sampling_ratio)
    features = [jnp.asarray(f) for f in features]
    if not features:
        raise ValueError("multilevel_roi_align needs at least one feature level")
    channels = features[0].shape[-1]
    max_level = min_level + len(features) - 1
    boxes = jax.lax.stop_gradient(jnp.asarray(boxes, jnp.float32))

    heights, widths, offsets, scales = [], [], [], []
    start = 0
    for i, f in enumerate(features):
        h, w, c = f.shape
        if c != channels:
            raise ValueError(f"all levels need {channels} channels, level {i} has {c}")
        heights.append(h)
        widths.append(w)
        offsets.append(start)
        scales.append(2.0 ** -(min_level + i))
        start += h * w
    flat = jnp.concatenate([f.reshape(-1, channels) for f in features], axis=0)

    level = (
        fpn_level_assignment(boxes, min_level, max_level, canonical_scale, canonical_level)
        - min_level
    )
    # Per-box geometry of its level: tiny [L] tables indexed by the level.
    take = lambda table, dtype: jnp.asarray(table, dtype)[level]
    return _roi_align_flat(
        flat,
        boxes,
        take(heights, jnp.int32),
        take(widths, jnp.int32),
        take(offsets, jnp.int32),
        take(scales, jnp.float32),
        output_size,
        sampling_ratio,
        aligned,
    )
