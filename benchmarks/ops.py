"""Times the detection ops at Mask R-CNN shapes, beside torchvision.ops when it is importable.

    python -m benchmarks.ops [--quick] [--output=bench_out/ops.json]

Shapes (R50-FPN at 800x1344, batch 2): P2-P5 with C=256; 512 box RoIs/image pooled 7x7 and
128 mask RoIs/image pooled 14x14 (sampling ratio 2); RPN NMS 2000 -> 1000 at IoU 0.7; test-time
per-class NMS over 1000 RoIs x 80 classes at 0.5 -> 100; IoU matching of 50 ground-truth boxes
against all anchors (RPN) and against 2000 proposals (RoI heads).

Both sides get the same inputs; torch runs with as many threads as JAX's CPU client uses
(all cores). Times are medians of several runs after a warm-up call; msrcnn's first call
(compilation included) is reported separately.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from msrcnn.ops import anchors as anchors_lib
from msrcnn.ops import boxes as boxes_lib
from msrcnn.ops import nms as nms_lib
from msrcnn.ops import roi_align as roi_align_lib
from msrcnn.targets import matcher as matcher_lib

IMAGE_HW = (800, 1344)
LEVELS = (2, 3, 4, 5)
CHANNELS = 256
BATCH = 2


def _try_import_torch():
    try:
        import torch
        import torchvision

        torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)  # compiled ops load?
        return torch, torchvision
    except Exception:  # a missing or broken torch just drops the column
        return None, None


def random_boxes(rng, n, image_hw=IMAGE_HW, min_size=8.0, max_size=600.0):
    """Boxes with log-uniform sizes, centres anywhere in the image, clipped to it. [n, 4]."""
    h, w = image_hw
    size = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (n, 2)))
    centre = rng.uniform(0, 1, (n, 2)) * [w, h]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    return np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)


def clustered_boxes(rng, n, num_clusters=60):
    """RPN-like output: many jittered copies of a few objects. [n, 4]."""
    centres = random_boxes(rng, num_clusters, min_size=24)
    picks = centres[rng.integers(0, num_clusters, n)]
    wh = (picks[:, 2:] - picks[:, :2]).repeat(2, axis=1)
    return (picks + rng.normal(0, 0.08, (n, 4)) * wh).astype(np.float32)


class OpsBenchmark:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.torch, self.torchvision = _try_import_torch()
        self.rng = np.random.default_rng(0)
        self.rows: list[dict] = []

    def record(self, name: str, msrcnn_fn, torch_fn=None, note: str = "", grad=False) -> None:
        ours = timing.time_fn(msrcnn_fn, runs=self.runs)
        row = {
            "op": name,
            "msrcnn_ms": ours.median_s * 1e3,
            "compile_s": ours.first_call_s,
            "note": note,
        }
        if torch_fn is not None and self.torch is not None:
            with contextlib.nullcontext() if grad else self.torch.no_grad():
                theirs = timing.time_fn(torch_fn, runs=self.runs, sync=lambda x: x)
            row["torchvision_ms"] = theirs.median_s * 1e3
            row["ratio"] = ours.median_s / theirs.median_s
        self.rows.append(row)
        print(timing.format_table([row], COLUMNS).splitlines()[-1], flush=True)

    # ------------------------------------------------------------------ RoIAlign
    def roi_align(self) -> None:
        h, w = IMAGE_HW
        grids = anchors_lib.fpn_grid_sizes(IMAGE_HW, LEVELS)
        feats = [
            self.rng.standard_normal((BATCH, gh, gw, CHANNELS), np.float32) for gh, gw in grids
        ]
        feats_jax = [jnp.asarray(f) for f in feats]
        cases = [("box 512x7x7", 512, 7), ("mask 128x14x14", 128, 14)]
        for label, num_rois, size in cases:
            rois = np.stack([random_boxes(self.rng, num_rois) for _ in range(BATCH)])
            rois_jax = jnp.asarray(rois)
            pool = functools.partial(
                roi_align_lib.multilevel_roi_align,
                output_size=size,
                sampling_ratio=2,
                aligned=False,
            )
            forward = jax.jit(jax.vmap(pool))
            cotangent = jnp.asarray(
                self.rng.standard_normal((BATCH, num_rois, size, size, CHANNELS), np.float32)
            )

            @jax.jit
            def forward_backward(features, boxes, cotangent=cotangent, pool=pool):
                out, vjp = jax.vjp(lambda feats: jax.vmap(pool)(feats, boxes), features)
                return out, vjp(cotangent)[0]  # gradient w.r.t. the features

            torch_fwd = torch_fwd_bwd = None
            if self.torch is not None:
                torch, tv = self.torch, self.torchvision
                feats_t = {
                    str(i): torch.from_numpy(f).permute(0, 3, 1, 2).contiguous()
                    for i, f in enumerate(feats)
                }
                rois_t = [torch.from_numpy(r) for r in rois]
                msroi = tv.ops.MultiScaleRoIAlign(list(feats_t), size, sampling_ratio=2)
                image_shapes = [(h, w)] * BATCH
                cot_t = torch.from_numpy(np.array(cotangent)).permute(0, 1, 4, 2, 3)
                cot_t = cot_t.reshape(-1, CHANNELS, size, size).contiguous()

                def torch_fwd(feats_t=feats_t, rois_t=rois_t, msroi=msroi, shapes=image_shapes):
                    return msroi(feats_t, rois_t, shapes)

                def torch_fwd_bwd(
                    feats_t=feats_t, rois_t=rois_t, msroi=msroi, cot=cot_t, shapes=image_shapes
                ):
                    leaves = {k: v.detach().requires_grad_() for k, v in feats_t.items()}
                    out = msroi(leaves, rois_t, shapes)
                    out.backward(cot)
                    return out

            note = f"batch {BATCH}, P2-P5 of {h}x{w}, C={CHANNELS}, sampling 2"
            self.record(
                f"roi_align fwd ({label})",
                functools.partial(forward, feats_jax, rois_jax),
                torch_fwd,
                note,
            )
            self.record(
                f"roi_align fwd+bwd ({label})",
                functools.partial(forward_backward, feats_jax, rois_jax),
                torch_fwd_bwd,
                note,
                grad=True,
            )

    # ------------------------------------------------------------------ NMS
    def nms(self) -> None:
        for kind, boxes in [
            ("random", random_boxes(self.rng, 2000)),
            ("clustered", clustered_boxes(self.rng, 2000)),
        ]:
            scores = self.rng.permutation(2000).astype(np.float32) / 2000
            fn = jax.jit(functools.partial(nms_lib.nms, iou_threshold=0.7, max_output_size=1000))
            boxes_j, scores_j = jnp.asarray(boxes), jnp.asarray(scores)
            torch_fn = None
            if self.torch is not None:
                boxes_t, scores_t = self.torch.from_numpy(boxes), self.torch.from_numpy(scores)
                ops = self.torchvision.ops

                def torch_fn(b=boxes_t, s=scores_t, ops=ops):
                    return ops.nms(b, s, 0.7)[:1000]

            self.record(
                f"nms 2000->1000 @0.7 ({kind})",
                functools.partial(fn, boxes_j, scores_j),
                torch_fn,
                "1 image",
            )

        num_rois, num_classes = 1000, 80
        roi = clustered_boxes(self.rng, num_rois)
        jitter = self.rng.normal(0, 3, (num_rois, num_classes, 4)).astype(np.float32)
        boxes = roi[:, None, :] + jitter  # [R, K, 4] class-specific boxes
        # Softmax-like scores: most below the 0.05 threshold, a few confident classes per RoI.
        logits = self.rng.normal(0, 2.0, (num_rois, num_classes + 1)).astype(np.float32)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        scores = probs[:, 1:].astype(np.float32)
        fn = jax.jit(
            functools.partial(
                nms_lib.multiclass_nms, iou_threshold=0.5, max_output_size=100, score_threshold=0.05
            )
        )
        boxes_j, scores_j = jnp.asarray(boxes), jnp.asarray(scores)
        torch_fn = None
        if self.torch is not None:
            torch, ops = self.torch, self.torchvision.ops
            boxes_t = torch.from_numpy(boxes.reshape(-1, 4))
            scores_t = torch.from_numpy(scores.reshape(-1))
            labels_t = torch.arange(num_classes).repeat(num_rois)

            def torch_fn(b=boxes_t, s=scores_t, labels=labels_t):
                keep = torch.where(s > 0.05)[0]
                kept = ops.batched_nms(b[keep], s[keep], labels[keep], 0.5)[:100]
                return keep[kept]

        self.record(
            "multiclass nms 1000x80 -> 100 @0.5",
            functools.partial(fn, boxes_j, scores_j),
            torch_fn,
            f"{int((scores > 0.05).sum())} candidates above 0.05",
        )

    # ------------------------------------------------------------------ matching
    def matching(self) -> None:
        gt = random_boxes(self.rng, 50, min_size=16)
        anchors = np.concatenate(anchors_lib.fpn_anchors(IMAGE_HW))
        proposals = np.concatenate([random_boxes(self.rng, 2000), gt])
        rpn_matcher = matcher_lib.Matcher((0.3, 0.7), (0, -1, 1), allow_low_quality_matches=True)
        roi_matcher = matcher_lib.Matcher((0.5,), (0, 1), allow_low_quality_matches=False)
        for label, preds, matcher, tv_args in [
            (f"rpn: 50 gt x {len(anchors)} anchors", anchors, rpn_matcher, (0.7, 0.3, True)),
            ("roi: 50 gt x 2050 proposals", proposals, roi_matcher, (0.5, 0.5, False)),
        ]:

            @jax.jit
            def match(gt, preds, matcher=matcher):
                return matcher(boxes_lib.pairwise_iou(gt, preds))

            gt_j, preds_j = jnp.asarray(gt), jnp.asarray(preds)
            torch_fn = None
            if self.torch is not None:
                from torchvision.models.detection import _utils as det_utils

                tv_matcher = det_utils.Matcher(*tv_args)
                gt_t, preds_t = self.torch.from_numpy(gt), self.torch.from_numpy(preds)
                ops = self.torchvision.ops

                def torch_fn(gt_t=gt_t, preds_t=preds_t, m=tv_matcher, ops=ops):
                    return m(ops.box_iou(gt_t, preds_t))

            self.record(
                f"match {label}", functools.partial(match, gt_j, preds_j), torch_fn, "IoU + matcher"
            )

    def run(self) -> list[dict]:
        print(timing.format_table([], COLUMNS), flush=True)
        self.roi_align()
        self.nms()
        self.matching()
        return self.rows


COLUMNS = ["op", "msrcnn_ms", "torchvision_ms", "ratio", "compile_s", "note"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed runs")
    parser.add_argument("--output", default="bench_out/ops.json")
    args = parser.parse_args(argv)
    bench = OpsBenchmark(runs=3 if args.quick else 7, quick=args.quick)
    if bench.torch is not None:
        # XLA's CPU client uses every core; give torch the same.
        bench.torch.set_num_threads(os.cpu_count() or 1)
    timing.report(bench.run(), COLUMNS, args.output, args)


if __name__ == "__main__":
    main()
