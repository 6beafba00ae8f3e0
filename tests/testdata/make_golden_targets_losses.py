"""Golden values for msrcnn.targets.rpn, msrcnn.targets.roi and msrcnn.training.losses from
torchvision.

Run in the reference venv (torch 2.13, torchvision 0.28; see DESIGN.md's field notes):
    /work/tvenv/bin/python tests/testdata/make_golden_targets_losses.py
Writes tests/testdata/golden/targets_losses.npz (inputs included), two images:
  rpn_*: `RegionProposalNetwork.assign_targets_to_anchors` labels (1 / 0 / -1 before
    sampling) and `box_coder.encode` targets for A anchors, then `compute_loss` on random
    objectness logits and deltas. The anchors and boxes are small enough (A = 60) that the
    256 / 0.5 sampler keeps every labelled anchor, so the loss does not depend on its RNG.
  roi_*: `RoIHeads.select_training_samples` (GT boxes appended, IoU 0.5, 512 at 25%, again
    keeping every candidate), then `fastrcnn_loss` on random logits / deltas and
    `maskrcnn_loss` on random 14 x 14 mask logits of the positives, with the mask targets it
    computes (`project_masks_on_boxes`) saved so the loss itself can be compared.
Ground truth is padded to M = 4 per image (`*_gt_valid`); torchvision sees only the valid rows.
"""

import pathlib

import numpy as np
import torch
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_loss,
    project_masks_on_boxes,
)
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork

OUT = pathlib.Path(__file__).parent / "golden"
NUM_CLASSES = 3  # K; logits have K + 1 entries
MAX_GT = 4
IMAGE = 64
MASK = 14  # mask-head resolution of the fixture (28 in the model; the loss takes any size)


def random_boxes(rng, n, lo=2.0, hi=62.0, min_side=4.0, max_side=30.0):
    x1 = rng.uniform(lo, hi - min_side, n)
    y1 = rng.uniform(lo, hi - min_side, n)
    w = rng.uniform(min_side, max_side, n)
    h = rng.uniform(min_side, max_side, n)
    return np.stack([x1, y1, np.minimum(x1 + w, hi), np.minimum(y1 + h, hi)], 1).astype(np.float32)


def jitter(rng, boxes, n, scale):
    """n boxes near the given ones (random centre and size perturbations)."""
    src = boxes[rng.integers(0, len(boxes), n)]
    w, h = src[:, 2] - src[:, 0], src[:, 3] - src[:, 1]
    d = rng.normal(0, scale, (n, 4)) * np.stack([w, h, w, h], 1)
    out = src + d
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1.0)
    return out.astype(np.float32)


def ellipse_masks(rng, boxes):
    """One full-image binary mask per box: an ellipse inscribed in (most of) the box."""
    yy, xx = np.mgrid[0:IMAGE, 0:IMAGE] + 0.5
    masks = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / 2 + rng.uniform(-1, 1), (y1 + y2) / 2 + rng.uniform(-1, 1)
        rx, ry = (x2 - x1) / 2 * 0.9, (y2 - y1) / 2 * 0.9
        masks.append(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0)
    return np.asarray(masks, np.uint8)


def pad_gt(boxes, classes):
    n = len(boxes)
    pb = np.zeros((MAX_GT, 4), np.float32)
    pc = np.zeros((MAX_GT,), np.int32)
    valid = np.zeros((MAX_GT,), bool)
    pb[:n], pc[:n], valid[:n] = boxes, classes, True
    return pb, pc, valid


def main():
    rng = np.random.default_rng(20261121)
    torch.manual_seed(0)
    out = {}

    gt_boxes = [random_boxes(rng, 3), random_boxes(rng, 2)]
    gt_classes = [np.array([1, 3, 2], np.int64), np.array([2, 2], np.int64)]
    padded = [pad_gt(b, c) for b, c in zip(gt_boxes, gt_classes, strict=True)]
    out["gt_boxes"] = np.stack([p[0] for p in padded])
    out["gt_classes"] = np.stack([p[1] for p in padded])
    out["gt_valid"] = np.stack([p[2] for p in padded])
    targets = [
        {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(c)}
        for b, c in zip(gt_boxes, gt_classes, strict=True)
    ]

    # ---- RPN: the same 60 anchors for both images, some near every ground truth (so each GT
    # has an overlapping anchor: torchvision's low-quality rule misbehaves otherwise).
    all_gt = np.concatenate(gt_boxes)
    anchors = np.concatenate([random_boxes(rng, 30), jitter(rng, all_gt, 30, 0.15)]).astype(
        np.float32
    )
    rpn = RegionProposalNetwork(
        AnchorGenerator(((32,),), ((1.0,),)),
        torch.nn.Identity(),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n={"training": 10, "testing": 10},
        post_nms_top_n={"training": 10, "testing": 10},
        nms_thresh=0.7,
    )
    anchors_t = [torch.from_numpy(anchors)] * 2
    labels, matched = rpn.assign_targets_to_anchors(anchors_t, targets)
    reg_targets = rpn.box_coder.encode(matched, anchors_t)
    num_anchors = len(anchors)
    objectness = torch.randn(2 * num_anchors)
    deltas = torch.randn(2 * num_anchors, 4) * 0.3
    obj_loss, rpn_box_loss = rpn.compute_loss(objectness, deltas, labels, list(reg_targets))
    out["rpn_anchors"] = anchors
    out["rpn_labels"] = torch.stack(labels).numpy().astype(np.int32)
    out["rpn_box_targets"] = torch.stack(list(reg_targets)).numpy()
    out["rpn_logits"] = objectness.reshape(2, num_anchors).numpy()
    out["rpn_deltas"] = deltas.reshape(2, num_anchors, 4).numpy()
    out["rpn_loss_objectness"] = np.float32(obj_loss.item())
    out["rpn_loss_box"] = np.float32(rpn_box_loss.item())

    # ---- RoI sampling: 40 proposals per image, half near the ground truth.
    num_props = 40
    proposals = [
        np.concatenate([jitter(rng, b, num_props // 2, 0.12), random_boxes(rng, num_props // 2)])
        for b in gt_boxes
    ]
    heads = RoIHeads(
        None,
        None,
        None,
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=512,
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
    )
    sampled, matched_idxs, roi_labels, roi_reg = heads.select_training_samples(
        [torch.from_numpy(p) for p in proposals], targets
    )
    counts = [len(s) for s in sampled]
    assert counts == [num_props + len(b) for b in gt_boxes], counts  # everything sampled
    out["roi_proposals"] = np.stack(proposals)
    # Sampled in candidate order (proposals, then GT): pad each image to P + M rows.
    rows = num_props + MAX_GT
    for name, values, fill in [
        ("roi_sampled_boxes", sampled, 0.0),
        ("roi_matched_idxs", matched_idxs, 0),
        ("roi_labels", roi_labels, 0),
        ("roi_box_targets", roi_reg, 0.0),
    ]:
        arrs = []
        for v in values:
            v = v.numpy()
            pad = np.full((rows - len(v), *v.shape[1:]), fill, v.dtype)
            arrs.append(np.concatenate([v, pad]))
        out[name] = np.stack(arrs)
    out["roi_count"] = np.asarray(counts, np.int32)

    labels_cat = torch.cat(roi_labels)
    n = len(labels_cat)
    class_logits = torch.randn(n, NUM_CLASSES + 1)
    box_regression = torch.randn(n, (NUM_CLASSES + 1) * 4) * 0.3
    cls_loss, box_loss = fastrcnn_loss(class_logits, box_regression, roi_labels, list(roi_reg))
    out["box_class_logits"] = class_logits.numpy()  # [N, K + 1], images concatenated
    out["box_deltas"] = box_regression.reshape(n, NUM_CLASSES + 1, 4).numpy()
    out["box_loss_classifier"] = np.float32(cls_loss.item())
    out["box_loss_box_reg"] = np.float32(box_loss.item())

    # ---- Mask loss on the positives.
    gt_masks = [torch.from_numpy(ellipse_masks(rng, b)) for b in gt_boxes]
    pos = [torch.where(lab > 0)[0] for lab in roi_labels]
    pos_props = [s[p] for s, p in zip(sampled, pos, strict=True)]
    pos_matched = [m[p] for m, p in zip(matched_idxs, pos, strict=True)]
    num_pos = sum(len(p) for p in pos)
    # Multiples of 1/8 (exact in float32) keep the fixture compressible.
    mask_logits = torch.round(torch.randn(num_pos, NUM_CLASSES + 1, MASK, MASK) * 16.0) / 8.0
    m_loss = maskrcnn_loss(
        mask_logits, pos_props, gt_masks, [t["labels"] for t in targets], pos_matched
    )
    mask_targets = torch.cat(
        [
            project_masks_on_boxes(m, p, i, MASK)
            for m, p, i in zip(gt_masks, pos_props, pos_matched, strict=True)
        ]
    )
    pos_labels = torch.cat([t["labels"][i] for t, i in zip(targets, pos_matched, strict=True)])
    out["mask_logits"] = mask_logits.numpy()  # [Npos, K + 1, MASK, MASK] torchvision layout
    out["mask_targets"] = mask_targets.numpy()
    out["mask_labels"] = pos_labels.numpy().astype(np.int32)
    out["mask_loss"] = np.float32(m_loss.item())

    OUT.mkdir(exist_ok=True)
    path = OUT / "targets_losses.npz"
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes); {num_pos} positive RoIs, counts {counts}")


if __name__ == "__main__":
    main()
