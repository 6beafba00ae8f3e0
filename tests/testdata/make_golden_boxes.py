"""Golden values for msrcnn.ops.boxes and msrcnn.ops.anchors from torchvision.

Run in a throwaway venv with torch 2.13 (CUDA build, runs on CPU) and torchvision 0.28:
    python tests/testdata/make_golden_boxes.py
Writes tests/testdata/golden/boxes.npz and anchors.npz (inputs included).
"""

import hashlib
import pathlib

import numpy as np
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

OUT = pathlib.Path(__file__).parent / "golden"


def random_boxes(rng, n, size=800.0):
    xy = rng.uniform(-50, size, (n, 2))
    wh = rng.uniform(0.5, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def boxes_golden():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 40), random_boxes(rng, 30)
    # Degenerate and padding boxes: zero-size, inverted, all-zero.
    b[:3] = [[10, 10, 10, 20], [30, 30, 20, 20], [0, 0, 0, 0]]
    out = {
        "a": a,
        "b": b,
        "iou": torchvision.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)[3:]).numpy(),
    }
    out["clipped"] = torchvision.ops.clip_boxes_to_image(torch.from_numpy(a), (600, 700)).numpy()

    # Box coder: proposals / ground truth pairs, encode and decode with both weight sets.
    proposals = random_boxes(rng, 64)
    targets = proposals + rng.normal(0, 20, proposals.shape).astype(np.float32)
    targets[:, 2:] = np.maximum(targets[:, 2:], targets[:, :2] + 1.0)
    deltas = rng.normal(0, 1.5, (64, 4)).astype(np.float32)
    deltas[:4, 2:] = [[8.0, 9.0], [-9.0, 7.0], [20.0, 0.0], [0.0, 30.0]]  # exercises the clamp
    out.update(proposals=proposals, targets=targets, deltas=deltas)
    for name, weights in [("w1", (1.0, 1.0, 1.0, 1.0)), ("w10", (10.0, 10.0, 5.0, 5.0))]:
        coder = BoxCoder(weights)
        enc = coder.encode_single(torch.from_numpy(targets), torch.from_numpy(proposals))
        dec = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(proposals))
        out[f"encoded_{name}"] = enc.numpy()
        out[f"decoded_{name}"] = dec.numpy()
    np.savez_compressed(OUT / "boxes.npz", **out)


def anchors_golden():
    image_hw = (800, 1216)
    grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    generator = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(1, 3, *image_hw), [image_hw])
    features = [torch.zeros(1, 256, h, w) for h, w in grids]
    per_level = generator.grid_anchors(
        grids, [[image_hw[0] // h, image_hw[1] // w] for h, w in grids]
    )
    full = generator(images, features)[0].numpy()
    assert np.array_equal(full, np.concatenate([a.numpy() for a in per_level]))
    out = {"image_hw": np.array(image_hw), "grids": np.array(grids)}
    for level, anchors in zip(range(2, 7), per_level, strict=True):
        anchors = np.ascontiguousarray(anchors.numpy().astype(np.float32))
        # The whole grid is ~4 MB; keep its digest plus a spread of rows to show where it differs.
        out[f"sha256_p{level}"] = np.frombuffer(
            hashlib.sha256(anchors.tobytes()).digest(), np.uint8
        )
        rows = np.unique(np.r_[0:24, len(anchors) - 24 : len(anchors), 0 : len(anchors) : 101])
        out[f"rows_p{level}"] = rows
        out[f"anchors_p{level}"] = anchors[rows]
        out[f"count_p{level}"] = np.array(len(anchors))
    np.savez_compressed(OUT / "anchors.npz", **out)


if __name__ == "__main__":
    boxes_golden()
    anchors_golden()
    print("wrote", OUT / "boxes.npz", OUT / "anchors.npz")
