"""Greedy non-maximum suppression with static shapes: single-class, per-class and multi-class.

All three functions produce exactly the result of torchvision's CPU `nms` / `batched_nms`:
boxes are visited in descending score order and a box is dropped when its IoU with an
already-kept box of the same class is strictly greater than `iou_threshold`. Equal scores are
visited in ascending original index (torchvision sorts with a stable descending sort, so this
matches it too). Invalid boxes (`valid` False, or a NaN score) are never kept and never
suppress anything.

Algorithm (exact, tile-wise greedy; the idea of TF's `non_max_suppression_padded`):
  1. Sort the boxes once by (invalid, -score, index).
  2. Walk the sorted list in tiles of `_TILE` boxes, inside a `lax.while_loop`. For each tile:
     a. drop every box whose IoU with an already-kept box exceeds the threshold. The kept boxes
        sit compactly in the output buffer, so this is one [tile, tile] IoU block per filled
        block of the buffer (ceil(kept / tile) of them), not a pass over all earlier boxes;
     b. resolve suppression inside the tile by iterating
            keep = candidate & ~any_i(keep[i] & iou[i, j] > thr for i before j)
        to a fixed point. Suppression only flows from earlier (higher-scored) to later boxes, so
        after k iterations the first k entries already hold the greedy answer; the fixed point is
        unique and reached after (longest suppression chain in the tile + 1) iterations, which is
        usually a handful, never more than tile + 1;
     c. append the kept boxes to the output buffer.
     The loop stops as soon as `max_output_size` boxes are kept or the valid boxes run out, so
     the tiles after that point cost nothing.
Work is at most N * (max_output_size + tile) IoUs instead of the N^2 of a full matrix, memory
is O(tile^2 + max_output_size), and the number of sequential steps is about
(tiles visited) x (kept blocks + fixed-point iterations) instead of N.

Everything is pure jnp with static shapes, safe under jit and vmap. No gradient flows through
the selection (the inputs are wrapped in stop_gradient), so callers may differentiate through
boxes / scores gathered with the returned indices. Under vmap the while loops run until every
batch element is done, each element keeping its own result.
"""

from __future__ import annotations

import numbers

import jax.numpy as jnp
import numpy as np
from jax import lax

from msrcnn.ops.boxes import pairwise_iou

# Boxes resolved per while-loop step. Larger tiles mean fewer sequential steps (GPU launch
# overhead, CPU loop overhead) but more wasted IoUs past the early exit and a bigger [tile, tile]
# matrix per fixed-point iteration; 256 was the fastest on CPU for the RPN and detection cases.
_TILE = 256

# Default candidate budget of `multiclass_nms`; see its docstring.
DEFAULT_PRE_NMS_TOP_K = 4096


def _threshold_f32(iou_threshold):
    """Largest float32 t with (iou > t) == (iou > iou_threshold) for every float32 iou.

    torchvision's CPU kernel compares the float32 IoU against the threshold as a double, so a
    threshold not representable in float32 (0.3, 0.7) must be rounded *down*, not to nearest:
    for float32 x and a double strictly between float32 neighbours lo < t < hi, x > t <=> x > lo.
    """
    if isinstance(iou_threshold, numbers.Real):
        t = float(iou_threshold)
        t32 = np.float32(t)
        if float(t32) > t:
            t32 = np.nextafter(t32, np.float32(-np.inf))
        return t32
    # A traced threshold cannot be rounded in Python; nearest rounding is within one ulp.
    return jnp.asarray(iou_threshold, jnp.float32)


def _empty_result(max_output_size):
    return jnp.zeros((max_output_size,), jnp.int32), jnp.zeros((max_output_size,), bool)


def _sort_by_score(scores, valid):
    """Permutation visiting valid boxes by descending score, ties by ascending index, invalid last.

    Returns (order int32 [N], valid_sorted bool [N]).
    """
    n = scores.shape[0]
    invalid = (~valid).astype(jnp.int32)
    # 0 - s turns -0.0 into +0.0, so 0.0 and -0.0 scores tie (XLA sorts floats in total order).
    neg = jnp.where(valid, 0.0 - scores, 0.0)
    iota = jnp.arange(n, dtype=jnp.int32)
    # The index is the last key, so the order is fully determined (no reliance on sort stability).
    _, _, order = lax.sort((invalid, neg, iota), num_keys=3)
    return order, valid[order]


def _greedy_sorted(boxes, valid, class_ids, threshold, max_output_size):
    """Tile-wise exact greedy NMS over boxes already sorted by descending score.

    Args:
      boxes: [N, 4] float32 xyxy, in visiting order.
      valid: [N] bool; all valid entries precede all invalid ones.
      class_ids: [N] int32 or None; boxes of different classes never suppress each other.
      threshold: float32 scalar; suppress when IoU > threshold.
      max_output_size: static int > 0.

    Returns:
      (positions int32 [max_output_size] into the sorted list, valid bool [max_output_size]).
    """
    n = boxes.shape[0]
    tile = min(_TILE, n)
    num_tiles = -(-n // tile)
    pad = num_tiles * tile - n
    if pad:
        boxes = jnp.pad(boxes, ((0, pad), (0, 0)))
        valid = jnp.pad(valid, (0, pad))
        if class_ids is not None:
            class_ids = jnp.pad(class_ids, (0, pad))
    # Valid boxes come first, so tiles past this count hold nothing to keep.
    num_valid = jnp.sum(valid, dtype=jnp.int32)

    tile_iota = jnp.arange(tile, dtype=jnp.int32)
    slot_iota = jnp.arange(max_output_size, dtype=jnp.int32)
    # Only an earlier box of the tile can suppress a later one: strict upper triangle [i < j].
    earlier = tile_iota[:, None] < tile_iota[None, :]

    def cond(state):
        t, count = state[0], state[1]
        return (count < max_output_size) & (t * tile < num_valid)

    def body(state):
        t, count, out_pos, out_boxes, out_cls = state
        start = t * tile
        tboxes = lax.dynamic_slice_in_dim(boxes, start, tile)
        cand = lax.dynamic_slice_in_dim(valid, start, tile)

        # Without classes, tcls / out_cls are unused placeholders.
        if class_ids is not None:
            tcls = lax.dynamic_slice_in_dim(class_ids, start, tile)
        else:
            tcls = jnp.zeros((tile,), jnp.int32)

        def suppressors(other_boxes, other_cls):
            # [tile, tile] bool: (i, j) -> other box j may suppress tile box i.
            hit = pairwise_iou(tboxes, other_boxes) > threshold
            if class_ids is not None:
                hit &= tcls[:, None] == other_cls[None, :]
            return hit

        # (a) Suppression by the boxes kept in earlier tiles. They sit compactly in the output
        # buffer, so only its ceil(count / tile) filled blocks are visited.
        def block_body(b, suppressed):
            bstart = b * tile
            bboxes = lax.dynamic_slice_in_dim(out_boxes, bstart, tile)
            bcls = lax.dynamic_slice_in_dim(out_cls, bstart, tile)
            hit = suppressors(bboxes, bcls) & (bstart + tile_iota < count)[None, :]
            return suppressed | jnp.any(hit, axis=1)

        num_blocks = (count + tile - 1) // tile
        suppressed = lax.fori_loop(0, num_blocks, block_body, jnp.zeros((tile,), bool))
        cand &= ~suppressed
        # (b) Pairwise suppression inside the tile, earlier -> later only: self_hit[i, j] means
        # earlier box i suppresses later box j if i is kept.
        self_hit = suppressors(tboxes, tcls) & earlier

        def fp_step(keep):
            return cand & ~jnp.any(self_hit & keep[:, None], axis=0)

        def fp_cond(carry):
            keep, prev = carry
            return jnp.any(keep != prev)

        def fp_body(carry):
            keep, _ = carry
            return fp_step(keep), keep

        keep, _ = lax.while_loop(fp_cond, fp_body, (fp_step(cand), cand))

        # (c) Append the kept boxes in order; slots past max_output_size are dropped.
        # Exclusive prefix count of kept boxes as one masked reduction (a cumsum lowers to a chain
        # of reduce-windows on CPU, which is slower to compile and no faster at this size).
        rank = jnp.sum(keep[:, None] & earlier, axis=0, dtype=jnp.int32)
        dest = jnp.where(keep, count + rank, buf)
        dest = jnp.where(dest < max_output_size, dest, buf)
        out_pos = out_pos.at[dest].set(start + tile_iota, mode="drop")
        out_boxes = out_boxes.at[dest].set(tboxes, mode="drop")
        if class_ids is not None:
            out_cls = out_cls.at[dest].set(tcls, mode="drop")
        count = jnp.minimum(count + jnp.sum(keep, dtype=jnp.int32), max_output_size)
        return t + 1, count, out_pos, out_boxes, out_cls

    # The buffer is rounded up to whole blocks for step (a); slots >= max_output_size stay empty.
    buf = -(-max_output_size // tile) * tile
    init = (
        jnp.int32(0),
        jnp.int32(0),
        jnp.zeros((buf,), jnp.int32),
        jnp.zeros((buf, 4), jnp.float32),
        jnp.zeros((buf,), jnp.int32),
    )
    _, count, out_pos, _, _ = lax.while_loop(cond, body, init)
    return out_pos[:max_output_size], slot_iota < count


def _nms_impl(boxes, scores, class_ids, iou_threshold, max_output_size, valid):
    # The selection is piecewise constant: stopping gradients here keeps autodiff of callers
    # (which gather boxes / scores with the indices) from pushing tangents through the loops.
    boxes = lax.stop_gradient(jnp.asarray(boxes, jnp.float32))
    scores = lax.stop_gradient(jnp.asarray(scores, jnp.float32))
    n = boxes.shape[0]
    if boxes.shape != (n, 4) or scores.shape != (n,):
        raise ValueError(f"expected boxes [N, 4] and scores [N], got {boxes.shape}, {scores.shape}")
    max_output_size = int(max_output_size)
    if n == 0 or max_output_size == 0:
        return _empty_result(max_output_size)
    ok = ~jnp.isnan(scores)
    if valid is not None:
        ok &= jnp.asarray(valid, bool)
    order, ok_sorted = _sort_by_score(scores, ok)
    cls_sorted = None if class_ids is None else jnp.asarray(class_ids, jnp.int32)[order]
    pos, keep_valid = _greedy_sorted(
        boxes[order], ok_sorted, cls_sorted, _threshold_f32(iou_threshold), max_output_size
    )
    indices = jnp.where(keep_valid, order[pos], 0)
    return indices, keep_valid


def nms(boxes, scores, iou_threshold, max_output_size, valid=None):
    """Greedy NMS, identical to torchvision.ops.nms up to `max_output_size` kept boxes.

    Boxes are visited by descending score (equal scores: lower original index first); a box is
    dropped when its IoU with an already-kept box is strictly greater than `iou_threshold`.
    Degenerate boxes (zero or negative width/height) have area 0, and a pair with an empty
    union has IoU 0, so they never suppress nor get suppressed by another degenerate box.

    Args:
      boxes: [N, 4] xyxy, absolute pixels (computed in float32).
      scores: [N]. NaN scores count as invalid.
      iou_threshold: static Python float.
      max_output_size: static Python int, the output length.
      valid: optional [N] bool; False entries are never kept and never suppress. None: all valid.

    Returns:
      indices: int32 [max_output_size], kept indices into `boxes` in descending score order;
        padding slots hold 0.
      valid: bool [max_output_size], True for the kept slots (a prefix).
    """
    return _nms_impl(boxes, scores, None, iou_threshold, max_output_size, valid)


def batched_nms(boxes, scores, class_ids, iou_threshold, max_output_size, valid=None):
    """NMS independently per class, in one greedy pass (torchvision.ops.batched_nms).

    torchvision shifts every class into its own coordinate range so that one NMS pass never
    lets two classes overlap. Here the same effect is had by masking the suppression test with
    `class_ids[i] == class_ids[j]`, which is equivalent but exact: large float32 offsets would
    round the shifted coordinates (about 0.01 px at 1e5) and could flip IoUs near the threshold.
    The result equals running `nms` per class and merging the kept boxes by descending score.

    Args:
      boxes: [N, 4] xyxy, absolute pixels.
      scores: [N]. NaN scores count as invalid.
      class_ids: [N] integer class of each box.
      iou_threshold: static Python float.
      max_output_size: static Python int.
      valid: optional [N] bool. None: all valid.

    Returns:
      (indices int32 [max_output_size], valid bool [max_output_size]) as for `nms`.
    """
    class_ids = jnp.asarray(class_ids)
    if class_ids.shape != jnp.shape(scores):
        raise ValueError(f"class_ids shape {class_ids.shape} != scores shape {jnp.shape(scores)}")
    return _nms_impl(boxes, scores, class_ids, iou_threshold, max_output_size, valid)


def multiclass_nms(
    boxes,
    scores,
    iou_threshold,
    max_output_size,
    score_threshold=0.05,
    pre_nms_top_k=DEFAULT_PRE_NMS_TOP_K,
):
    """Detection post-processing: score threshold, per-class NMS, top `max_output_size`.

    Every (RoI r, class k) pair with score > `score_threshold` is a candidate carrying the
    class-specific box `boxes[r, k]`; candidates of the same class suppress each other
    (`batched_nms`); the first `max_output_size` survivors by descending score are returned
    (torchvision's RoIHeads.postprocess_detections, without its small-box filter).

    Static candidate count: only the `pre_nms_top_k` highest-scored candidates enter NMS
    (flattened index r * K + k breaks ties, lower first). This is exactly the unrestricted
    result whenever either
      * at most `pre_nms_top_k` candidates are above `score_threshold` (nothing was cut), or
      * at least `max_output_size` boxes survive NMS among the preselected ones:
        greedy NMS only lets a box suppress lower-scored boxes, so whether a candidate is kept
        depends only on the candidates ranked before it; the first `max_output_size` kept boxes
        of the full list are therefore the same as those of any prefix containing them.
    Only when fewer than `max_output_size` detections survive among the top `pre_nms_top_k`
    while lower-ranked candidates exist can the output be shorter than the unrestricted one
    (it is still a correct prefix of it). The default 4096 covers the typical test-time case
    (1000 RoIs x 80 classes -> 100 at IoU 0.5): reaching 100 survivors needs far fewer than
    4096 of the highest scores unless each class cluster contributes ~40 overlapping RoIs for
    every kept box. The cost of a larger budget is mostly the selection (top-k) and the
    memory of the candidate list; the greedy loop itself stops after `max_output_size` kept.
    Pass `pre_nms_top_k=None` to keep all R*K candidates (exact in every case; a full sort).

    Args:
      boxes: [R, K, 4] class-specific boxes, xyxy absolute pixels.
      scores: [R, K] class scores, background column already removed.
      iou_threshold: static Python float.
      max_output_size: static Python int.
      score_threshold: candidates need score > score_threshold (NaN never qualifies); a Python
        float or a traced scalar.
      pre_nms_top_k: static int or None, the candidate budget (clipped to R*K).

    Returns:
      box_indices: int32 [max_output_size], RoI index r of each detection (0 in padding).
      class_ids: int32 [max_output_size], class column k (0 in padding).
      scores: float32 [max_output_size], detection scores (0 in padding).
      valid: bool [max_output_size], True for real detections (a prefix), descending score.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    r, k = scores.shape
    if boxes.shape != (r, k, 4):
        raise ValueError(
            f"expected boxes [R, K, 4] matching scores {scores.shape}, got {boxes.shape}"
        )
    max_output_size = int(max_output_size)
    total = r * k
    if total == 0 or max_output_size == 0:
        z = jnp.zeros((max_output_size,), jnp.int32)
        return z, z, jnp.zeros((max_output_size,), jnp.float32), jnp.zeros_like(z, bool)

    flat_scores = scores.reshape(total)
    flat_boxes = boxes.reshape(total, 4)
    # NaN > threshold is False, so NaN scores drop out here.
    above = flat_scores > score_threshold
    ranked = jnp.where(above, flat_scores, -jnp.inf)
    budget = total if pre_nms_top_k is None else min(int(pre_nms_top_k), total)
    if budget < total:
        # lax.top_k returns equal values lower index first, matching the NMS tie-break.
        _, cand = lax.top_k(ranked, budget)
    else:
        cand = jnp.arange(total, dtype=jnp.int32)
    cand = cand.astype(jnp.int32)
    cand_cls = cand % k
    keep_idx, keep_valid = _nms_impl(
        flat_boxes[cand],
        flat_scores[cand],
        cand_cls,
        iou_threshold,
        max_output_size,
        above[cand],
    )
    flat = cand[keep_idx]
    box_indices = jnp.where(keep_valid, flat // k, 0)
    class_ids = jnp.where(keep_valid, flat % k, 0)
    out_scores = jnp.where(keep_valid, flat_scores[flat], 0.0)
    return box_indices, class_ids, out_scores, keep_valid


__all__ = ["DEFAULT_PRE_NMS_TOP_K", "batched_nms", "multiclass_nms", "nms"]
