"""Golden values for msrcnn.ops.roi_align from torchvision's C++ roi_align kernel (CPU).

Run in a throwaway venv with torch 2.13 (CUDA build, runs on CPU) and torchvision 0.28:
    python tests/testdata/make_golden_roi_align.py
Writes tests/testdata/golden/roi_align.npz (inputs included). Features are stored NHWC
(msrcnn's layout) and outputs [R, out_h, out_w, C]; torch runs on the NCHW transposes.

Keys:
  single_features [H, W, C]; for each case k in 0..N-1 (see CASES):
    case{k}_boxes [R, 4], case{k}_out [R, oh, ow, C] and case{k}_params
    [spatial_scale, out_h, out_w, sampling_ratio, aligned].
  grad_boxes, grad_weights, grad_features: d sum(roi_align(...) * weights) / d features
    for spatial_scale 1/4, 7x7, sampling_ratio 2, aligned=True.
  ms_p2..ms_p5 [H_l, W_l, C], ms_image_hw, ms_boxes [R, 4], ms_levels [R] (absolute level),
    ms_out_legacy (torchvision MultiScaleRoIAlign, aligned=False, 7x7, sampling_ratio 2),
    ms_out_aligned (same level mapping, per-level roi_align with aligned=True),
    ms_grad_weights, ms_grad_p2..ms_grad_p5 (gradient of sum(ms_out_legacy * weights)).
  level_boxes [R, 4], level_levels [R]: LevelMapper(2, 5) on boxes at and near the thresholds.
"""

import pathlib

import numpy as np
import torch
import torchvision
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.poolers import LevelMapper

OUT = pathlib.Path(__file__).parent / "golden"

# Single-level feature map (feature pixels) and the cases run on it:
# (spatial_scale, (out_h, out_w), sampling_ratio, aligned, number of random interior boxes).
FEAT_HW = (19, 23)
CHANNELS = 3
CASES = [
    (0.25, (7, 7), 2, True, 6),
    (0.25, (7, 7), 2, False, 6),
    (0.25, (7, 7), 1, True, 6),
    (0.25, (7, 7), 1, False, 6),
    (0.125, (14, 14), 2, True, 0),
    (0.125, (14, 14), 1, False, 0),
    (1.0, (5, 3), 2, True, 4),
    (1.0, (7, 7), 3, False, 4),
]


def feature_boxes(rng, n_random):
    """Boxes in FEATURE pixels of a FEAT_HW map covering the kernel's edge cases."""
    h, w = FEAT_HW
    fixed = [
        [2.0, 3.0, 15.0, 12.0],  # plain interior box
        [0.0, 0.0, float(w), float(h)],  # the whole map
        [-4.0, -3.0, 6.0, 5.0],  # partly outside (top-left)
        [w - 5.0, h - 4.0, w + 6.0, h + 3.0],  # partly outside (bottom-right)
        [w + 3.0, 2.0, w + 9.0, 8.0],  # wholly outside, right
        [-9.0, -8.0, -2.5, -1.6],  # wholly outside, top-left
        [5.3, 7.1, 5.6, 7.35],  # sub-pixel
        [10.02, 4.01, 10.05, 4.04],  # tiny, far below one pixel
        [-20.0, -15.0, w + 25.0, h + 18.0],  # much larger than the map
        [-1.7, -1.45, 4.0, 3.0],  # first samples just beyond / inside -1
        [3.0, h - 2.0, 8.0, h + 1.35],  # last samples near y = H
        [w - 3.0, 1.0, w + 1.2, 6.0],  # last samples near x = W
        [w - 1.4, h - 1.3, w - 0.2, h - 0.1],  # inside the last pixel: the H-1 clamp
        [6.0, 6.0, 3.0, 2.0],  # inverted (x2 < x1, y2 < y1)
        [4.0, 4.0, 4.0, 9.0],  # zero width
        [0.0, 0.0, 0.0, 0.0],  # padding box
    ]
    xy = rng.uniform(-2.0, [w - 2.0, h - 2.0], (n_random, 2))
    wh = rng.uniform(0.5, [w / 2.0, h / 2.0], (n_random, 2))
    random = np.concatenate([xy, xy + wh], 1)
    return np.concatenate([np.asarray(fixed), random], 0).astype(np.float32)


def torch_roi_align(features_hwc, boxes, **kwargs):
    feats = torch.from_numpy(np.ascontiguousarray(features_hwc.transpose(2, 0, 1)))[None]
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    return roi_align(feats, rois, **kwargs).permute(0, 2, 3, 1).contiguous().numpy()


def single_level(rng, out):
    feats = rng.normal(size=(*FEAT_HW, CHANNELS)).astype(np.float32)
    out["single_features"] = feats
    for k, (scale, size, ratio, aligned, n_random) in enumerate(CASES):
        boxes = (feature_boxes(rng, n_random) / np.float32(scale)).astype(np.float32)
        out[f"case{k}_boxes"] = boxes
        out[f"case{k}_out"] = torch_roi_align(
            feats,
            boxes,
            output_size=size,
            spatial_scale=scale,
            sampling_ratio=ratio,
            aligned=aligned,
        )
        out[f"case{k}_params"] = np.array([scale, *size, ratio, float(aligned)], np.float32)

    # Gradient w.r.t. the features of sum(out * weights), weights random.
    boxes = out["case0_boxes"]
    weights = rng.normal(size=(len(boxes), 7, 7, CHANNELS)).astype(np.float32)
    feats_t = torch.from_numpy(np.ascontiguousarray(feats.transpose(2, 0, 1)))[
        None
    ].requires_grad_()
    rois = torch.cat([torch.zeros(len(boxes), 1), torch.from_numpy(boxes)], 1)
    pooled = roi_align(
        feats_t, rois, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True
    )
    (pooled.permute(0, 2, 3, 1) * torch.from_numpy(weights)).sum().backward()
    out["grad_boxes"] = boxes
    out["grad_weights"] = weights
    out["grad_features"] = feats_t.grad[0].permute(1, 2, 0).contiguous().numpy()


def multi_level(rng, out):
    image_hw = (128, 192)
    names = ["p2", "p3", "p4", "p5"]
    levels = [
        rng.normal(size=(image_hw[0] >> k, image_hw[1] >> k, CHANNELS)).astype(np.float32)
        for k in (2, 3, 4, 5)
    ]
    # Box sides spanning all four levels (thresholds at sqrt(area) = 112, 224, 448), some
    # partly outside the image, plus degenerate and padding boxes.
    sides = np.array([12, 30, 55, 57, 80, 111, 113, 150, 223, 226, 300, 447, 449, 520], np.float32)
    centres = rng.uniform([-10.0, -10.0], [image_hw[1] + 10.0, image_hw[0] + 10.0], (len(sides), 2))
    aspect = rng.uniform(0.5, 2.0, len(sides))
    half = np.stack([sides * np.sqrt(aspect), sides / np.sqrt(aspect)], 1) / 2
    boxes = np.concatenate([centres - half, centres + half], 1)
    boxes = np.concatenate([boxes, [[40.0, 30.0, 40.0, 30.0], [0.0, 0.0, 0.0, 0.0]]], 0).astype(
        np.float32
    )

    feats_t = [
        torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1)))[None].requires_grad_()
        for f in levels
    ]
    pooler = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    legacy = pooler(dict(zip(names, feats_t, strict=True)), [torch.from_numpy(boxes)], [image_hw])
    weights = rng.normal(size=(len(boxes), 7, 7, CHANNELS)).astype(np.float32)
    (legacy.permute(0, 2, 3, 1) * torch.from_numpy(weights)).sum().backward()

    mapped = LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy() + 2
    aligned = np.zeros_like(legacy.detach().permute(0, 2, 3, 1).numpy())
    for k, feats in zip((2, 3, 4, 5), levels, strict=True):
        sel = mapped == k
        if sel.any():
            aligned[sel] = torch_roi_align(
                feats,
                boxes[sel],
                output_size=7,
                spatial_scale=2.0**-k,
                sampling_ratio=2,
                aligned=True,
            )

    for name, f, ft in zip(names, levels, feats_t, strict=True):
        out[f"ms_{name}"] = f
        out[f"ms_grad_{name}"] = ft.grad[0].permute(1, 2, 0).contiguous().numpy()
    out["ms_image_hw"] = np.array(image_hw)
    out["ms_boxes"] = boxes
    out["ms_levels"] = mapped.astype(np.int32)
    out["ms_out_legacy"] = legacy.detach().permute(0, 2, 3, 1).contiguous().numpy()
    out["ms_out_aligned"] = aligned
    out["ms_grad_weights"] = weights


def level_mapping(rng, out):
    sides = np.array(
        [1, 16, 55.9, 56, 56.1, 111.9, 112, 112.1, 223.9, 224, 224.1, 447.9, 448, 448.1, 2000]
    )
    squares = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    xy = rng.uniform(0, 500, (20, 2))
    wh = rng.uniform(1, 700, (20, 2))
    boxes = np.concatenate([squares, np.concatenate([xy, xy + wh], 1)], 0).astype(np.float32)
    out["level_boxes"] = boxes
    out["level_levels"] = (LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy() + 2).astype(
        np.int32
    )


def main():
    torch.set_num_threads(1)
    rng = np.random.default_rng(1234)
    out = {}
    single_level(rng, out)
    multi_level(rng, out)
    level_mapping(rng, out)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "roi_align.npz"
    np.savez_compressed(path, **out)
    print(
        f"wrote {path} ({path.stat().st_size / 1024:.0f} KB), torchvision {torchvision.__version__}"
    )


if __name__ == "__main__":
    main()
