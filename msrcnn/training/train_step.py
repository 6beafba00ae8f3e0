"""The training forward pass and the jitted update: images + ground truth -> losses -> step.

Everything runs on device in one jit: normalisation, the detector's stages
(msrcnn.detector) with RPN and RoI targets between them, the losses, gradients and the optax
update. Per-image target code is vmapped with one PRNG key per image, derived from
(seed, step) so a resumed run draws the same samples.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from msrcnn.detector import Detector, proposal_settings
from msrcnn.ops import slot_buckets
from msrcnn.ops.normalize import normalize_images
from msrcnn.targets import roi as roi_targets
from msrcnn.targets import rpn as rpn_targets
from msrcnn.training import losses, optim
from msrcnn.training.train_state import TrainState

# Parameters the mask branch reads (the MaskIoU head's only with mask scoring).
MASK_BRANCH_PARAMS = ("mask_head", "maskiou_head")


def training_loss(
    detector: Detector,
    config: ml_collections.ConfigDict,
    params,
    batch_stats,
    batch: dict,
    key: jax.Array,
):
    """Forward pass in training mode -> (total loss, (named losses, new batch_stats)).

    The detector's stages (msrcnn.detector) with the training targets between them: RPN
    targets over all anchors, proposals (no gradient), sampled RoIs, box head, and the mask
    branch on the positive RoIs.

    Args:
      detector: the Detector (static); config: the full config (static).
      params, batch_stats: variables (batch_stats {} unless norm='bn').
      batch: the data pipeline's dict (see msrcnn/data/__init__.py), device arrays.
      key: PRNG key for this step (sampling of anchors and RoIs).
    """
    t = config.train
    image_hw = batch["image_hw"].astype(jnp.float32)
    images = normalize_images(
        batch["images"], batch["image_hw"], config.data.pixel_mean, config.data.pixel_std
    )
    variables = {"params": params}
    if batch_stats:
        variables["batch_stats"] = batch_stats
    pyramid, new_batch_stats = detector.features(variables, images, train=True)
    head_vars = {"params": params}

    # RPN: targets over all anchors, then proposals (no gradient).
    logits, deltas, anchors = rpn_out = detector.rpn(head_vars, pyramid)
    batch_size = images.shape[0]
    rpn_keys, roi_keys = jnp.split(jax.random.split(key, 2 * batch_size), 2)
    rpn_labels, rpn_box_targets = jax.vmap(
        functools.partial(
            rpn_targets.rpn_targets,
            anchors=jnp.asarray(np.concatenate(anchors)),
            batch_size_per_image=t.rpn_batch_size_per_image,
            positive_fraction=t.rpn_positive_fraction,
        )
    )(rpn_keys, gt_boxes=batch["gt_boxes"], gt_valid=batch["gt_valid"])
    props, _, props_valid = detector.proposals(
        rpn_out, image_hw, proposal_settings(config, "train")
    )

    # RoI heads: sample, box head on every sampled RoI, mask + MaskIoU heads on the first
    # max_positives slots (positives come first, so these hold all of them), or on at most
    # mask_rois_per_image of them when set.
    sampled = jax.vmap(
        functools.partial(
            roi_targets.sample_rois,
            num_samples=t.roi_batch_size_per_image,
            positive_fraction=t.roi_positive_fraction,
            fg_iou_threshold=t.roi_fg_iou_threshold,
        )
    )(roi_keys, props, props_valid, batch["gt_boxes"], batch["gt_classes"], batch["gt_valid"])
    class_logits, box_deltas = detector.box_head(head_vars, pyramid, sampled["rois"])

    max_pos = roi_targets.max_positives(t.roi_batch_size_per_image, t.roi_positive_fraction)
    if t.mask_rois_per_image:
        # Positives sit in the leading slots in random order, so a prefix is a random subset.
        max_pos = min(max_pos, t.mask_rois_per_image)
    pos = jax.tree.map(lambda x: x[:, :max_pos], sampled)
    # The mask branch runs on the smallest bucket of leading slots that holds every image's
    # positives (msrcnn.ops.slot_buckets); the slots past it come back as zeros, which the
    # losses mask out like any other non-positive slot.
    filled = jnp.max(jnp.sum(pos["is_positive"], axis=1))
    head_params = {name: params[name] for name in MASK_BRANCH_PARAMS if name in params}
    buckets = slot_buckets.slot_buckets(max_pos, t.mask_slot_step)

    def branch(shared, slots):
        # Padding and background slots (class 0) read class 1; the losses mask them out.
        return detector.mask_branch(
            {"params": shared["params"]},
            shared["pyramid"],
            slots["rois"],
            jnp.maximum(slots["classes"], 1),
            stop_gradient=t.maskiou_stop_gradient,
        )

    mask_out = slot_buckets.run_filled_slots(
        branch,
        {"params": head_params, "pyramid": pyramid},
        {"rois": pos["rois"], "classes": pos["classes"]},
        filled,
        buckets,
    )
    mask_logits = mask_out["mask_logits"]
    side = mask_logits.shape[-1]
    mask_targets, mask_ratio = jax.vmap(functools.partial(roi_targets.mask_targets, size=side))(
        batch["gt_masks"], batch["gt_boxes"], pos["rois"], pos["matched_gt"]
    )
    outputs = {
        "rpn_logits": logits,
        "rpn_deltas": deltas,
        "class_logits": class_logits,
        "box_deltas": box_deltas,
        "mask_logits": mask_logits,
    }
    targets = {
        "rpn_labels": rpn_labels,
        "rpn_box_targets": rpn_box_targets,
        "roi_classes": sampled["classes"],
        "roi_valid": sampled["valid"],
        "roi_box_targets": sampled["box_targets"],
        "mask_targets": mask_targets,
        "mask_classes": pos["classes"],
        "mask_positive": pos["is_positive"],
    }
    if detector.mask_scoring:
        outputs["maskiou"] = mask_out["maskiou"]
        targets["maskiou_targets"] = jax.vmap(roi_targets.maskiou_targets)(
            mask_logits, mask_targets, mask_ratio
        )

    named = losses.compute_losses(outputs, targets)
    # Optional per-loss weights, e.g. --config.train.loss_weights.loss_maskiou=0.5.
    total = sum(value * t.loss_weights.get(name, 1.0) for name, value in named.items())
    return total, (named, new_batch_stats)


def train_step(
    detector: Detector,
    config: ml_collections.ConfigDict,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    batch: dict,
):
    """One update. -> (new state, metrics dict of scalars)."""
    key = jax.random.fold_in(jax.random.key(config.seed), state.step)
    frozen = optim.frozen_mask(state.params, config)

    def loss_fn(params, *args):
        # Frozen parameters (stem, res2, frozen-BN affines) enter as constants, so autodiff
        # differentiates nothing below res3 (as torch with requires_grad=False): no kernel or
        # input gradients of the frozen convs, no affine-gradient reductions. Their gradients
        # are zeros, which the optimizer discards anyway (optim.make_optimizer).
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
        return training_loss(detector, config, params, *args)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (named, new_batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, key)
    updates, new_opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(total)
    if config.train.skip_nonfinite:
        # Keep the old state when the loss is not finite; the host counts these.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_params = keep(new_params, state.params)
        new_opt_state = keep(new_opt_state, state.opt_state)
        new_batch_stats = keep(new_batch_stats, state.batch_stats)
    new_state = state.replace(
        step=state.step + 1,
        params=new_params,
        opt_state=new_opt_state,
        batch_stats=new_batch_stats,
    )
    metrics = dict(named)
    metrics["loss"] = total
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["finite"] = finite.astype(jnp.float32)
    return new_state, metrics
