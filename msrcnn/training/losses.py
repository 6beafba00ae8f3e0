"""Training losses of (Mask Scoring) Mask R-CNN: RPN, box head, mask head, MaskIoU head.

Every loss takes the outputs and targets of the whole batch, with any leading axes (e.g.
`[B, A]` anchors, `[B, R]` RoIs), and normalises over the whole batch as torchvision does (it
concatenates the images' samples before averaging): sums over samples divided by the number of
samples in the batch. Normalisers are floored at 1, so a batch without positives (or without
any sample) gives exactly 0 with finite gradients, never NaN; masked-out entries (unsampled
anchors, padding, negatives) are replaced by zeros with `where` before any arithmetic, so
whatever they hold (even NaN or inf in padding) reaches neither the value nor the gradients.
Everything is computed in float32, whatever dtype the heads run in.

Names of the assembled dict follow torchvision (`loss_objectness`, `loss_rpn_box_reg`,
`loss_classifier`, `loss_box_reg`, `loss_mask`) plus `loss_maskiou`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from msrcnn.ops.select import select_class
from msrcnn.targets.roi import select_class_masks

__all__ = [
    "box_losses",
    "compute_losses",
    "mask_loss",
    "maskiou_loss",
    "rpn_losses",
    "sigmoid_bce_with_logits",
    "smooth_l1",
]

# torchvision's smooth-L1 beta for the RPN and the box head.
DEFAULT_BETA = 1.0 / 9.0


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def smooth_l1(diff, beta: float):
    """Elementwise smooth-L1 (Huber / beta) of `diff`: 0.5 x^2 / beta if |x| < beta, else
    |x| - 0.5 beta. `beta` < 1e-5 gives plain L1 (detectron2's box head default beta = 0),
    the cut-off of torchvision's and detectron2's `smooth_l1_loss`."""
    abs_diff = jnp.abs(_f32(diff))
    if beta < 1e-5:
        return abs_diff
    return jnp.where(abs_diff < beta, 0.5 * abs_diff**2 / beta, abs_diff - 0.5 * beta)


def sigmoid_bce_with_logits(logits, targets):
    """Elementwise binary cross-entropy of sigmoid(logits) against targets in [0, 1].

    The stable form max(x, 0) - x * t + log(1 + exp(-|x|)) of PyTorch's
    `binary_cross_entropy_with_logits`.
    """
    x, t = _f32(logits), _f32(targets)
    return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _keep(mask, x):
    """x where mask else 0, as float32. Applied to the *inputs* of a loss: masking only the
    loss values would still send 0 * (NaN or inf derivative) = NaN into the gradients of
    masked-out entries holding non-finite values."""
    return jnp.where(mask, _f32(x), 0.0)


def _masked_sum(values, mask):
    """sum(values where mask)."""
    return jnp.sum(jnp.where(mask, values, 0.0))


def _count(mask):
    """Number of True entries as float32, floored at 1 (the normaliser of an empty batch)."""
    return jnp.maximum(jnp.sum(mask, dtype=jnp.float32), 1.0)


def rpn_losses(objectness_logits, box_deltas, labels, box_targets, beta: float = DEFAULT_BETA):
    """RPN losses, torchvision's `RegionProposalNetwork.compute_loss`.

    Objectness: binary cross-entropy with logits over the sampled anchors (label 1 or 0),
    mean over them. Boxes: smooth-L1 (beta) of the deltas of the sampled positives, summed
    over anchors and coordinates, divided by the number of sampled anchors (not positives).

    Args:
      objectness_logits: [..., A] logits (anchors of all levels concatenated).
      box_deltas: [..., A, 4] predicted deltas.
      labels: [..., A] int from `rpn_targets`: 1 positive, 0 negative, -1 not sampled.
      box_targets: [..., A, 4] target deltas from `rpn_targets`.
      beta: static smooth-L1 beta (1/9 torchvision; 0 for L1 as detectron2's RPN default).

    Returns:
      (objectness_loss, box_loss): float32 scalars.
    """
    labels = jnp.asarray(labels)
    sampled = labels >= 0
    positive = labels == 1
    num_sampled = _count(sampled)
    bce = sigmoid_bce_with_logits(_keep(sampled, objectness_logits), positive)
    objectness_loss = _masked_sum(bce, sampled) / num_sampled
    pos = positive[..., None]
    reg = smooth_l1(_keep(pos, box_deltas) - _keep(pos, box_targets), beta)
    box_loss = _masked_sum(reg, pos) / num_sampled
    return objectness_loss, box_loss


def _softmax_cross_entropy(logits, classes):
    """-log softmax(logits)[class]: [..., C], [...] -> [...]."""
    return -select_class(jax.nn.log_softmax(_f32(logits), axis=-1), classes)


def box_losses(class_logits, box_deltas, classes, valid, box_targets, beta: float = DEFAULT_BETA):
    """Box-head losses, torchvision's `fastrcnn_loss`.

    Classification: softmax cross-entropy over K + 1 classes (0 background), mean over the
    sampled RoIs. Regression: smooth-L1 (beta) of the deltas of each positive's target class,
    summed over positives and coordinates, divided by the number of sampled RoIs.

    Args:
      class_logits: [..., R, K + 1] logits.
      box_deltas: [..., R, K + 1, 4] class-specific deltas.
      classes: [..., R] int target classes, 0 background.
      valid: [..., R] bool, True for sampled RoIs (False for padding).
      box_targets: [..., R, 4] target deltas (weights 10, 10, 5, 5) of the target class.
      beta: static smooth-L1 beta (1/9 torchvision; 0 for detectron2's L1).

    Returns:
      (classification_loss, box_loss): float32 scalars.
    """
    classes = jnp.asarray(classes, jnp.int32)
    valid = jnp.asarray(valid, bool)
    positive = valid & (classes > 0)
    num_sampled = _count(valid)
    ce = _softmax_cross_entropy(_keep(valid[..., None], class_logits), classes)
    classification_loss = _masked_sum(ce, valid) / num_sampled
    class_deltas = select_class(_f32(box_deltas), classes, axis=-2)  # [..., R, 4]
    pos = positive[..., None]
    reg = smooth_l1(_keep(pos, class_deltas) - _keep(pos, box_targets), beta)
    box_loss = _masked_sum(reg, pos) / num_sampled
    return classification_loss, box_loss


def mask_loss(mask_logits, mask_targets, classes, positive, target_threshold: float | None = None):
    """Mask-head loss, torchvision's `maskrcnn_loss`: per-pixel binary cross-entropy with
    logits of each positive's target-class mask, mean over all positives' pixels.

    Args:
      mask_logits: [..., P, H, W, K] mask logits (no background channel).
      mask_targets: [..., P, H, W] targets in [0, 1] (from `msrcnn.targets.roi.mask_targets`).
      classes: [..., P] int target classes 1..K (anything for non-positives).
      positive: [..., P] bool, True for positive RoIs.
      target_threshold: static; None trains on the soft targets as torchvision does (its
        RoIAlign-ed targets are not binarised); 0.5 binarises them (`>= 0.5`) as detectron2
        and the official Mask Scoring R-CNN (polygon masks) do.

    Returns:
      float32 scalar.
    """
    return class_mask_loss(
        select_class_masks(mask_logits, classes), mask_targets, positive, target_threshold
    )


def class_mask_loss(logits, mask_targets, positive, target_threshold: float | None = None):
    """`mask_loss` from each RoI's target-class logits [..., P, H, W] (already selected)."""
    positive = jnp.asarray(positive, bool)
    pos = positive[..., None, None]
    logits = _keep(pos, logits)
    targets = _keep(pos, mask_targets)
    if target_threshold is not None:
        targets = (targets >= target_threshold).astype(jnp.float32)
    pixels = logits.shape[-2] * logits.shape[-1]
    bce = sigmoid_bce_with_logits(logits, targets)
    num = jnp.maximum(jnp.sum(positive, dtype=jnp.float32) * pixels, 1.0)
    return _masked_sum(bce, pos) / num


def maskiou_loss(
    maskiou_pred, maskiou_targets, classes, positive, only_nonzero_targets: bool = False
):
    """MaskIoU-head loss: 0.5 (p - t)^2 on each positive's target-class column, mean over
    positives (DESIGN.md; weight 1 is applied by the caller).

    The official code (maskrcnn_benchmark `l2_loss`) averages only over the positives whose
    target IoU is > 0, dropping the others from the loss; `only_nonzero_targets=True`
    reproduces that. The default keeps them, as DESIGN.md specifies: a mask that misses its
    object completely should be scored 0, which the head can only learn if it is trained on it.

    Args:
      maskiou_pred: [..., P, K] predicted MaskIoU per class (no background column).
      maskiou_targets: [..., P] target IoU (from `maskiou_targets`; gradients stopped here too).
      classes: [..., P] int target classes 1..K.
      positive: [..., P] bool, True for positive RoIs.
      only_nonzero_targets: static; also drop positives whose target is 0 (official code).

    Returns:
      float32 scalar.
    """
    pred = select_class(_f32(maskiou_pred), jnp.asarray(classes, jnp.int32) - 1)
    target = jax.lax.stop_gradient(_f32(maskiou_targets))
    use = jnp.asarray(positive, bool)
    if only_nonzero_targets:
        use = use & (target > 0)
    diff = _keep(use, pred) - _keep(use, target)
    return _masked_sum(0.5 * diff**2, use) / _count(use)


def _concat_levels(x, axis):
    """Per-level outputs (a sequence) -> one array concatenated along the anchor axis."""
    if isinstance(x, Sequence) and not isinstance(x, jax.Array):
        return jnp.concatenate([_f32(v) for v in x], axis=axis)
    return x


def compute_losses(
    outputs: Mapping,
    targets: Mapping,
    *,
    rpn_beta: float = DEFAULT_BETA,
    box_beta: float = DEFAULT_BETA,
    mask_target_threshold: float | None = None,
    maskiou_weight: float = 1.0,
    maskiou_only_nonzero_targets: bool = False,
) -> dict[str, jax.Array]:
    """All losses of a batch as a dict of named float32 scalars (sum them for the total).

    Args:
      outputs: network outputs with a leading batch axis:
        rpn_logits: [B, A] or a sequence of per-level [B, N_l] (concatenated in order).
        rpn_deltas: [B, A, 4] or a sequence of per-level [B, N_l, 4].
        class_logits: [B, R, K + 1]; box_deltas: [B, R, K + 1, 4].
        mask_logits: [B, P, 28, 28] logits of each of the first P RoI slots' target class
        (`max_positives`; the mask head computes only that channel).
        maskiou (optional; absent for plain Mask R-CNN): [B, P, K].
      targets: training targets with a leading batch axis:
        rpn_labels: [B, A]; rpn_box_targets: [B, A, 4] (from `rpn_targets`).
        roi_classes, roi_valid: [B, R]; roi_box_targets: [B, R, 4] (from `RoiSample`).
        mask_targets: [B, P, 28, 28]; mask_classes, mask_positive: [B, P] (the RoiSample's
        classes / is_positive of the first P slots).
        maskiou_targets: [B, P] (needed when outputs has `maskiou`).
      rpn_beta, box_beta: static smooth-L1 betas (1/9 torchvision; 0 for L1).
      mask_target_threshold: static, see `mask_loss`.
      maskiou_weight: static weight of the MaskIoU loss (1 in the paper).
      maskiou_only_nonzero_targets: static, see `maskiou_loss`.

    Returns:
      {'loss_objectness', 'loss_rpn_box_reg', 'loss_classifier', 'loss_box_reg', 'loss_mask'}
      and 'loss_maskiou' when outputs has 'maskiou'.
    """
    rpn_logits = _concat_levels(outputs["rpn_logits"], axis=-1)
    rpn_deltas = _concat_levels(outputs["rpn_deltas"], axis=-2)
    objectness, rpn_box = rpn_losses(
        rpn_logits, rpn_deltas, targets["rpn_labels"], targets["rpn_box_targets"], rpn_beta
    )
    classifier, box_reg = box_losses(
        outputs["class_logits"],
        outputs["box_deltas"],
        targets["roi_classes"],
        targets["roi_valid"],
        targets["roi_box_targets"],
        box_beta,
    )
    losses = {
        "loss_objectness": objectness,
        "loss_rpn_box_reg": rpn_box,
        "loss_classifier": classifier,
        "loss_box_reg": box_reg,
        "loss_mask": class_mask_loss(
            outputs["mask_logits"],
            targets["mask_targets"],
            targets["mask_positive"],
            mask_target_threshold,
        ),
    }
    if outputs.get("maskiou") is not None:
        losses["loss_maskiou"] = maskiou_weight * maskiou_loss(
            outputs["maskiou"],
            targets["maskiou_targets"],
            targets["mask_classes"],
            targets["mask_positive"],
            maskiou_only_nonzero_targets,
        )
    return losses
