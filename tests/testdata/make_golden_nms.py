"""Golden values for msrcnn.ops.nms from torchvision.

Run in a throwaway venv with torch 2.13 (CUDA build, runs on CPU) and torchvision 0.28:
    python tests/testdata/make_golden_nms.py
Writes tests/testdata/golden/nms.npz (inputs included). Every input comes from a numpy seed;
torchvision's CPU kernels (stable descending sort, IoU > threshold) give the reference order.
"""

import pathlib

import numpy as np
import torch
import torchvision
from torchvision.ops import boxes as box_ops

OUT = pathlib.Path(__file__).parent / "golden"
THRESHOLDS = (0.3, 0.5, 0.7)


def random_boxes(rng, n, size=800.0):
    """Uniformly placed boxes of very different sizes: mostly light overlaps."""
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(2, size / 4, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def clustered_boxes(rng, n, clusters, size=800.0):
    """Jittered copies of a few boxes: heavy overlaps and long suppression chains."""
    centre = rng.uniform(50, size - 50, (clusters, 2))
    extent = rng.uniform(20, 200, (clusters, 2))
    label = rng.integers(0, clusters, n)
    ctr = centre[label] + rng.normal(0, 0.12, (n, 2)) * extent[label]
    wh = extent[label] * np.exp(rng.normal(0, 0.15, (n, 2)))
    return np.concatenate([ctr - wh / 2, ctr + wh / 2], 1).astype(np.float32)


def distinct_scores(rng, n):
    """Pairwise-distinct float32 scores in [0, 1), so the NMS order is unambiguous."""
    scores = (rng.permutation(n) + rng.uniform(0.1, 0.9, n)) / n
    scores = scores.astype(np.float32)
    assert len(np.unique(scores)) == n
    return scores


def tv_nms(boxes, scores, thr):
    return torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()


def tv_batched(boxes, scores, labels, thr):
    b, s, lab = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels)
    keep = torchvision.ops.batched_nms(b, s, lab, thr)
    # The public function picks the coordinate trick for small inputs; it must agree with the
    # per-class loop, else the float32 offsets flipped an IoU and the fixture would be ambiguous.
    vanilla = box_ops._batched_nms_vanilla(b, s, lab, thr)
    assert torch.equal(keep, vanilla), "coordinate trick and per-class NMS disagree"
    return keep.numpy()


def tv_postprocess(boxes, scores, iou_thr, score_thr, max_out):
    """RoIHeads.postprocess_detections without clipping / small-box removal: flat (r, k)."""
    r, k = scores.shape
    flat_scores = scores.reshape(-1)
    flat_boxes = boxes.reshape(-1, 4)
    labels = np.tile(np.arange(k), r)
    idx = np.nonzero(flat_scores > score_thr)[0]
    keep = tv_batched(flat_boxes[idx], flat_scores[idx], labels[idx], iou_thr)[:max_out]
    return idx[keep].astype(np.int32)


def main():
    rng = np.random.default_rng(2024)
    out = {}

    # Single-class NMS: random and clustered, N = 2000, three thresholds.
    rand = random_boxes(rng, 2000)
    rand[:6] = [
        [5, 5, 5, 30],
        [5, 5, 5, 30],
        [40, 40, 40, 40],
        [0, 0, 0, 0],
        [7, 7, 9, 7],
        [1, 2, 3, 2],
    ]
    clus = clustered_boxes(rng, 2000, clusters=12)
    for name, boxes in (("random", rand), ("clustered", clus)):
        scores = distinct_scores(rng, len(boxes))
        out[f"{name}_boxes"], out[f"{name}_scores"] = boxes, scores
        for thr in THRESHOLDS:
            out[f"{name}_keep_{int(thr * 10)}"] = tv_nms(boxes, scores, thr).astype(np.int32)

    # Equal scores (quantised to 16 levels) on a small clustered set: stable-sort tie-break.
    ties = clustered_boxes(rng, 300, clusters=6)
    tie_scores = (rng.integers(0, 16, 300) / 16).astype(np.float32)
    out.update(ties_boxes=ties, ties_scores=tie_scores)
    out["ties_keep_5"] = tv_nms(ties, tie_scores, 0.5).astype(np.int32)

    # Class-aware NMS: 800 clustered boxes spread over 7 classes.
    bb = clustered_boxes(rng, 800, clusters=10)
    bs = distinct_scores(rng, 800)
    bl = rng.integers(0, 7, 800).astype(np.int64)
    out.update(batched_boxes=bb, batched_scores=bs, batched_labels=bl.astype(np.int32))
    for thr in (0.5, 0.7):
        out[f"batched_keep_{int(thr * 10)}"] = tv_batched(bb, bs, bl, thr).astype(np.int32)

    # Detection post-processing: 300 RoIs x 10 classes, class-specific boxes.
    roi_count, num_classes = 300, 10
    base = clustered_boxes(rng, roi_count, clusters=15)
    mc_boxes = base[:, None, :] + rng.normal(0, 4, (roi_count, num_classes, 4))
    mc_boxes[..., 2:] = np.maximum(mc_boxes[..., 2:], mc_boxes[..., :2] + 1)
    logits = rng.normal(0, 1.5, (roi_count, num_classes + 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    mc_scores = probs[:, 1:].astype(np.float32)  # background column dropped
    assert len(np.unique(mc_scores)) == mc_scores.size
    out.update(mc_boxes=mc_boxes.astype(np.float32), mc_scores=mc_scores)
    # Enough survivors to fill 100 slots, and a high score threshold that leaves fewer.
    out["mc_keep_full"] = tv_postprocess(out["mc_boxes"], mc_scores, 0.5, 0.05, 100)
    out["mc_keep_sparse"] = tv_postprocess(out["mc_boxes"], mc_scores, 0.5, 0.6, 100)
    assert len(out["mc_keep_full"]) == 100 and len(out["mc_keep_sparse"]) < 100

    np.savez_compressed(OUT / "nms.npz", **out)
    for key, value in out.items():
        print(f"{key:24s} {value.shape}")


if __name__ == "__main__":
    main()
