"""Synthesis of one image of the `shapes` dataset: textured background, occluding shapes.

Pure numpy + PIL (no TensorFlow, no JAX), deterministic given a `np.random.Generator`.
`msrcnn.data.builders.shapes` wraps it into a TFDS builder.

Rendering: a background (noise, gradient or stripes) is drawn, then the shapes one after
another, each in a flat random colour that contrasts with what lies under it; later shapes
cover earlier ones. Each instance's mask is what stays visible of it at the end, so instances
never share a pixel. An instance left with fewer than `min_visible_pixels` pixels is dropped
(its few pixels stay in the image, unlabelled). Finally mild per-pixel noise is added.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

# Category names; the label of CLASS_NAMES[i] is i + 1 (0 is background).
CLASS_NAMES = ("circle", "square", "triangle", "star")

# Smallest and largest shape "radius" (centre to corner) as fractions of the shorter image
# side; radii are log-uniform in between so small and large objects are equally common.
_MIN_RADIUS_FRAC = 0.04
_MAX_RADIUS_FRAC = 0.3
_MIN_RADIUS_PX = 3.0
# Probability that a shape is placed next to an earlier one: forces overlaps / occlusion.
_NEAR_PREVIOUS_PROB = 0.35
# Placements tried per shape before it is left out (see `min_visible_fraction`).
_PLACEMENT_TRIES = 10
# A shape's colour differs from the mean colour under it by at least this much in some
# channel (retried a few times), so every object is visible.
_MIN_CONTRAST = 60.0
_COLOUR_TRIES = 8


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[h, w, 3] float32 texture in [0, 255]: noise, a linear gradient or stripes."""
    kind = rng.integers(3)
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)  # [h, w] coordinate along a direction
    if kind == 0:
        # Blotchy noise: low-resolution noise blown up to blocks, plus fine noise.
        cell = int(rng.integers(4, 17))
        coarse = rng.normal(0.0, 30.0, size=(-(-h // cell), -(-w // cell), 3))
        coarse = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]
        fine = rng.normal(0.0, rng.uniform(5.0, 25.0), size=(h, w, 3))
        out = c0 + coarse + fine
    elif kind == 1:
        span = max(float(along.max() - along.min()), 1.0)
        t = ((along - along.min()) / span)[..., None]
        out = c0 + (c1 - c0) * t
    else:
        period = rng.uniform(4.0, 20.0)
        duty = rng.uniform(0.3, 0.7)
        phase = rng.uniform(0.0, 1.0)
        on = (((along / period) + phase) % 1.0 < duty)[..., None]
        out = np.where(on, c0, c1)
    return np.clip(out, 0.0, 255.0).astype(np.float32)


def _polygon(cx: float, cy: float, radius: float, angle: float, label: int):
    """Vertices [(x, y), ...] of a square / triangle / star (labels 2, 3, 4)."""
    if label == 2:  # square: corners at the radius
        angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, radius)
    elif label == 3:  # equilateral triangle, slightly larger so its area is comparable
        angles = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, 1.15 * radius)
    else:  # five-pointed star: alternating outer and inner vertices
        angles = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.1 * radius, 0.45 * 1.1 * radius)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]


def _shape_mask(h: int, w: int, cx: float, cy: float, radius: float, angle: float, label: int):
    """[h, w] bool rasterisation of one shape (PIL's polygon / ellipse fill)."""
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if label == 1:
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    else:
        draw.polygon(_polygon(cx, cy, radius, angle, label), fill=1)
    return np.asarray(canvas, dtype=bool)


def _place_shape(rng, image_hw, centres, radius, angle, label, owner, full_areas, min_visible):
    """Draws a position for a shape and returns its [h, w] mask, or None if every tried
    position would leave an earlier shape with less than `min_visible` of its full area."""
    h, w = image_hw
    for _ in range(_PLACEMENT_TRIES):
        if centres and rng.random() < _NEAR_PREVIOUS_PROB:
            px, py, pr = centres[int(rng.integers(len(centres)))]
            cx, cy = rng.normal([px, py], pr)
        else:
            cx, cy = rng.uniform(0.0, w), rng.uniform(0.0, h)
        mask = _shape_mask(h, w, cx, cy, radius, angle, label)
        if min_visible > 0 and full_areas:
            # Pixels each earlier shape keeps once this one is drawn over it.
            kept = np.bincount(owner[~mask & (owner >= 0)], minlength=len(full_areas))
            if np.any(kept < min_visible * np.asarray(full_areas)):
                continue
        centres.append((cx, cy, radius))
        return mask
    return None


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random RGB colour that stands out against `under` ([n, 3] pixels it will cover)."""
    reference = under.mean(axis=0) if len(under) else np.full(3, 127.5, np.float32)
    colour = rng.uniform(0.0, 255.0, size=3)
    for _ in range(_COLOUR_TRIES - 1):
        if np.abs(colour - reference).max() >= _MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 255.0, size=3)
    return colour.astype(np.float32)


def tight_box(mask: np.ndarray) -> np.ndarray:
    """[4] float32 xyxy box of a non-empty [h, w] mask, in pixel-edge coordinates.

    A mask covering columns x0..x1 and rows y0..y1 (inclusive) gets the box
    (x0, y0, x1 + 1, y1 + 1): width = x2 - x1 is the pixel count across, as COCO's
    [x, y, w, h] from `pycocotools.mask.toBbox`.
    """
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    y0, x0 = int(rows.argmax()), int(cols.argmax())
    y1 = mask.shape[0] - int(rows[::-1].argmax())
    x1 = mask.shape[1] - int(cols[::-1].argmax())
    return np.array([x0, y0, x1, y1], np.float32)


def render_example(
    rng: np.random.Generator,
    image_hw: tuple[int, int],
    num_shapes: int,
    min_visible_pixels: int,
    min_radius_frac: float = _MIN_RADIUS_FRAC,
    min_visible_fraction: float = 0.0,
) -> dict[str, np.ndarray]:
    """Draws one image with `num_shapes` shapes and returns it with its visible instances.

    Args:
      rng: the only source of randomness (the result is a function of its state).
      image_hw: (h, w) of the image.
      num_shapes: shapes to draw (0 gives an image without objects); fewer may survive.
      min_visible_pixels: instances with fewer visible pixels are dropped.
      min_radius_frac: smallest shape radius as a fraction of the shorter side (largest 0.3).
      min_visible_fraction: a new shape may hide at most 1 - this of any earlier shape; a
        placement that hides more is redrawn (position only, up to 10 tries), and a shape
        with no acceptable placement is left out. 0 allows any occlusion. Bounding the
        occlusion keeps every labelled instance recognisable as its class.

    Returns:
      dict with
        image:  uint8 [h, w, 3] RGB.
        boxes:  float32 [N, 4] xyxy tight boxes of the visible masks (see `tight_box`).
        labels: int64 [N] classes 1..K (index into CLASS_NAMES + 1).
        masks:  bool [N, h, w] visible masks, pairwise disjoint, in drawing order.
        visible_fractions: float32 [N] visible pixels / pixels of the whole shape (in the
          image).
    """
    h, w = image_hw
    image = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)  # index of the shape visible at each pixel
    short = min(h, w)
    log_lo = np.log(max(_MIN_RADIUS_PX, min_radius_frac * short))
    log_hi = np.log(max(_MIN_RADIUS_PX + 1.0, _MAX_RADIUS_FRAC * short))
    labels, centres, full_areas = [], [], []
    for _ in range(num_shapes):
        label = int(rng.integers(1, len(CLASS_NAMES) + 1))
        radius = float(np.exp(rng.uniform(log_lo, log_hi)))
        angle = rng.uniform(0.0, 2 * np.pi)
        mask = _place_shape(
            rng, (h, w), centres, radius, angle, label, owner, full_areas, min_visible_fraction
        )
        if mask is None:
            continue
        image[mask] = _pick_colour(rng, image[mask])
        owner[mask] = len(labels)
        labels.append(label)
        full_areas.append(int(mask.sum()))
    image += rng.normal(0.0, 3.0, size=image.shape).astype(np.float32)  # sensor noise
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    keep_masks, keep_labels, keep_fractions = [], [], []
    for k, label in enumerate(labels):
        visible = owner == k
        if visible.sum() >= min_visible_pixels:
            keep_masks.append(visible)
            keep_labels.append(label)
            keep_fractions.append(visible.sum() / max(full_areas[k], 1))
    masks = np.stack(keep_masks) if keep_masks else np.zeros((0, h, w), bool)
    boxes = np.stack([tight_box(m) for m in masks]) if len(masks) else np.zeros((0, 4), np.float32)
    return {
        "image": image,
        "boxes": boxes.astype(np.float32),
        "labels": np.asarray(keep_labels, np.int64),
        "masks": masks,
        "visible_fractions": np.asarray(keep_fractions, np.float32),
    }
