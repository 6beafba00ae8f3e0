"""Golden values for msrcnn.ops.masks from torchvision.

Run in a throwaway venv with torch 2.13 (CUDA build, runs on CPU) and torchvision 0.28:
    python tests/testdata/make_golden_masks.py
Writes tests/testdata/golden/masks.npz (inputs included):
  paste_*: torchvision.models.detection.roi_heads.paste_masks_in_image on random 28 x 28
    probabilities and boxes inside the image, crossing each border and corner, tiny, empty,
    fractional and larger than the image.
  crop_*: torchvision.ops.roi_align(aligned=True, spatial_scale=1) of full-image binary
    masks, one mask per box, as detectron2's BitMasks.crop_and_resize (before thresholding).
"""

import pathlib

import numpy as np
import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

OUT = pathlib.Path(__file__).parent / "golden"
MASK_SIZE = 28


def paste_boxes(rng, height, width):
    """Boxes covering the cases that matter for the integer arithmetic of the paste."""
    h, w = float(height), float(width)
    boxes = [
        # Inside, integer and fractional corners.
        [10.0, 8.0, 30.0, 25.0],
        [3.3, 4.7, 21.9, 17.2],
        [20.5, 12.5, 41.5, 33.5],
        # Crossing the left, top, right and bottom borders, and corners.
        [-7.6, 10.2, 12.3, 30.8],
        [15.1, -9.4, 35.6, 9.9],
        [w - 12.2, 5.5, w + 6.7, 22.1],
        [8.8, h - 10.4, 27.3, h + 8.1],
        [-5.5, -6.5, 9.5, 8.5],
        [w - 9.1, h - 7.3, w + 4.4, h + 3.9],
        # Touching the borders exactly (clipped detections look like this).
        [0.0, 0.0, 17.0, 13.0],
        [w - 20.0, h - 15.0, w, h],
        [0.0, 0.0, w, h],
        # Larger than the image on every side.
        [-20.3, -15.7, w + 11.2, h + 9.6],
        # Tiny, sub-pixel and empty boxes.
        [5.2, 6.1, 6.0, 6.9],
        [30.0, 20.0, 30.4, 21.3],
        [12.0, 12.0, 12.0, 12.0],
        [0.0, 0.0, 0.0, 0.0],
        [w - 0.5, h - 0.5, w, h],
    ]
    # Random fractional boxes, some crossing the borders. Each keeps x2, y2 >= 1: torchvision
    # cannot paste a box lying entirely above or left of the image (its slice end goes
    # negative and wraps around), so there is nothing to compare with there.
    for _ in range(6):
        x1, y1 = rng.uniform(-10, w - 5), rng.uniform(-10, h - 5)
        bw = rng.uniform(max(0.3, 1.0 - x1), w / 2)
        bh = rng.uniform(max(0.3, 1.0 - y1), h / 2)
        boxes.append([x1, y1, x1 + bw, y1 + bh])
    return np.asarray(boxes, np.float32)


def paste_golden(rng, height, width):
    boxes = paste_boxes(rng, height, width)
    n = boxes.shape[0]
    # Half uniform noise, half sigmoid of smooth-ish logits (values near 0.5 are rare then).
    probs = rng.uniform(0, 1, (n, MASK_SIZE, MASK_SIZE))
    logits = rng.normal(0, 4, (n // 2, MASK_SIZE, MASK_SIZE))
    probs[: n // 2] = 1.0 / (1.0 + np.exp(-logits))
    probs = probs.astype(np.float32)
    pasted = paste_masks_in_image(
        torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (height, width), padding=1
    )[:, 0]
    return probs, boxes, pasted.numpy()


def random_full_masks(rng, m, height, width):
    """Binary masks made of a filled ellipse and a rectangle each, with their tight boxes."""
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((m, height, width), bool)
    for i in range(m):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(2, height / 3), rng.uniform(2, width / 3)
        masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        y0, x0 = rng.integers(0, height - 3), rng.integers(0, width - 3)
        masks[i, y0 : y0 + rng.integers(2, 12), x0 : x0 + rng.integers(2, 12)] = True
    ys, xs = masks.any(2), masks.any(1)
    boxes = np.zeros((m, 4), np.float32)
    for i in range(m):
        ry, rx = np.flatnonzero(ys[i]), np.flatnonzero(xs[i])
        boxes[i] = [rx[0], ry[0], rx[-1] + 1, ry[-1] + 1]
    return masks, boxes


def crop_golden(rng, height, width, sampling_ratios=(1, 2, 3)):
    m = 12
    masks, tight = random_full_masks(rng, m, height, width)
    # Proposal-like boxes: jittered tight boxes (fractional, some crossing the border).
    jitter = rng.uniform(-4, 4, tight.shape).astype(np.float32)
    boxes = tight + jitter
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    boxes[0] = tight[0]
    rois = torch.cat(
        [torch.arange(m, dtype=torch.float32)[:, None], torch.from_numpy(boxes)], dim=1
    )
    out = {"crop_masks": masks, "crop_boxes": boxes}
    for ratio in sampling_ratios:
        res = torchvision.ops.roi_align(
            torch.from_numpy(masks)[:, None].float(),
            rois,
            (MASK_SIZE, MASK_SIZE),
            spatial_scale=1.0,
            sampling_ratio=ratio,
            aligned=True,
        )[:, 0]
        out[f"crop_out_sr{ratio}"] = res.numpy()
    return out


def main():
    rng = np.random.default_rng(0)
    out = {}
    for tag, (height, width) in {"a": (48, 64), "b": (37, 23)}.items():
        probs, boxes, pasted = paste_golden(rng, height, width)
        out[f"paste_{tag}_probs"] = probs
        out[f"paste_{tag}_boxes"] = boxes
        out[f"paste_{tag}_out"] = pasted
        out[f"paste_{tag}_hw"] = np.asarray([height, width], np.int32)
    out.update(crop_golden(rng, 45, 61))
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "masks.npz", **out)
    for key, val in out.items():
        print(f"{key}: {val.shape} {val.dtype}")


if __name__ == "__main__":
    main()
