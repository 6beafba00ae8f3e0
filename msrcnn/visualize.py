"""Pictures of detections: overlays (masks, outlines, boxes, labels) and colour splash.

    overlay = draw_detections(image, detections, class_names, score_threshold=0.5)
    splash = colour_splash(image, detections.masks)

Numpy + PIL only. Colours come from a fixed palette of well-separated hues; each mask is a
translucent fill with a full-colour rim and a dark edge line, so it shows on light and dark
objects alike. Labels ("dog 0.93 | mask 0.88")
sit on an opaque tag above their box (inside it when the box touches the top edge); a tag that
would cover an earlier one moves down until it does not, so labels never overlap. The font is
PIL's bundled scalable font, sized to the image.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MASK_ALPHA = 0.5


def palette(n: int) -> np.ndarray:
    """[n, 3] uint8 RGB colours: golden-ratio hues at high saturation, two brightness levels,
    so neighbouring indices differ strongly."""
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    values = np.where(np.arange(n) % 2 == 0, 0.95, 0.75)
    rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, values, strict=True)]
    return np.asarray(np.rint(np.array(rgb).reshape(n, 3) * 255), np.uint8)


def _font(image_hw: tuple[int, int]) -> ImageFont.ImageFont:
    size = int(np.clip(min(image_hw) / 40, 11, 28))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font only
        return ImageFont.load_default()


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of `mask` within `width` (4-neighbour steps) of a pixel outside it."""
    inner = mask
    for _ in range(width):
        padded = np.pad(inner, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _label_text(name: str, score: float, mask_score: float | None) -> str:
    text = f"{name} {score:.2f}"
    if mask_score is not None:
        text += f" | mask {mask_score:.2f}"
    return text


def _free_position(box, size, taken, image_hw):
    """Top-left of a tag of `size` for `box`, below any tag in `taken` it would overlap."""
    w, h = size
    x = float(np.clip(box[0], 0, max(image_hw[1] - w, 0)))
    y = box[1] - h if box[1] - h >= 0 else box[1]
    for _ in range(len(taken) + 1):
        clash = [t for t in taken if x < t[2] and t[0] < x + w and y < t[3] and t[1] < y + h]
        if not clash:
            break
        y = max(t[3] for t in clash)
    y = float(np.clip(y, 0, max(image_hw[0] - h, 0)))
    return x, y


def draw_detections(
    image: np.ndarray,
    detections,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.5,
    show_masks: bool = True,
    show_mask_scores: bool = True,
    max_labels: int | None = None,
) -> np.ndarray:
    """uint8 [H, W, 3] image with the detections scoring >= score_threshold drawn on it.

    Args:
      detections: `msrcnn.predictor.Detections` (boxes, classes, scores, mask_scores, masks).
      class_names: names of classes 1..K (by `detections.classes`); default "class k".
      score_threshold: minimum class score drawn.
      show_mask_scores: add the mask score (class score x MaskIoU) to each label.
      max_labels: label only the this many highest-scoring detections (others get a box
        only); None labels all.
    """
    keep = np.flatnonzero(np.asarray(detections.scores) >= score_threshold)
    # Largest first, so smaller objects' masks and tags end up on top.
    boxes = np.asarray(detections.boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else []
    keep = keep[np.argsort(-np.asarray(areas)[keep], kind="stable")] if len(keep) else keep
    colours = palette(max(len(keep), 1))
    out = image.astype(np.float32)
    masks = np.asarray(detections.masks) if show_masks else None
    line = max(1, round(min(image.shape[:2]) / 250))
    for colour, i in zip(colours, keep, strict=False):
        if masks is None or not masks[i].any():
            continue
        m = masks[i]
        out[m] = (1 - MASK_ALPHA) * out[m] + MASK_ALPHA * colour
        # A full-colour rim with a dark inner line: visible on light and dark objects.
        rim = _outline(m, line + 1)
        out[rim] = colour
        out[_outline(m, 1)] = colour * 0.35
    canvas = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = _font(image.shape[:2])
    taken: list[tuple[float, float, float, float]] = []
    scores = np.asarray(detections.scores)
    labelled = set(keep[np.argsort(-scores[keep], kind="stable")][:max_labels].tolist())
    for colour, i in zip(colours, keep, strict=False):
        draw.rectangle(
            [float(v) for v in boxes[i]], outline=tuple(int(v) for v in colour), width=line
        )
    # Tags after every box, so no box line crosses a tag.
    for colour, i in zip(colours, keep, strict=False):
        if i not in labelled:
            continue
        c = tuple(int(v) for v in colour)
        box = [float(v) for v in boxes[i]]
        k = int(detections.classes[i])
        name = class_names[k - 1] if class_names and 0 < k <= len(class_names) else f"class {k}"
        mask_score = float(detections.mask_scores[i]) if show_mask_scores else None
        text = _label_text(name, float(detections.scores[i]), mask_score)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        pad = 2
        size = (right - left + 2 * pad, bottom - top + 2 * pad)
        x, y = _free_position(box, size, taken, image.shape[:2])
        taken.append((x, y, x + size[0], y + size[1]))
        draw.rectangle([x, y, x + size[0], y + size[1]], fill=c)
        # Black or white text, whichever contrasts more with the tag colour.
        luminance = 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
        draw.text(
            (x + pad - left, y + pad - top),
            text,
            fill=(0, 0, 0) if luminance > 140 else (255, 255, 255),
            font=font,
        )
    return np.asarray(canvas)


def colour_splash(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Greyscale image with the original colour kept inside any of the masks [N, H, W]."""
    grey = (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    grey = np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8), 3, axis=-1)
    if masks is None or not len(masks):
        return grey
    inside = np.any(np.asarray(masks, bool), axis=0)
    return np.where(inside[..., None], image, grey)
