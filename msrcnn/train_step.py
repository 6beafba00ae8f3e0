"""The training forward pass and the jitted update: images + ground truth -> losses -> step.

Everything runs on device in one jit: normalisation, backbone, RPN targets and losses,
proposals, RoI sampling, box / mask / MaskIoU targets and losses, gradients and the optax
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

from msrcnn import config_lib, inference, losses, optim, proposals
from msrcnn.models.ms_rcnn import MaskScoringRCNN
from msrcnn.ops import slot_buckets
from msrcnn.targets import roi as roi_targets
from msrcnn.targets import rpn as rpn_targets
from msrcnn.train_state import TrainState

# Parameters the mask branch reads (the MaskIoU head's only with mask scoring).
MASK_BRANCH_PARAMS = ("mask_head", "maskiou_head")


def normalize_images(images_uint8, image_hw, mean, std):
    """uint8 [B, H, W, 3] -> float32 normalised, zero outside each image (as torchvision pads
    after normalising)."""
    x = images_uint8.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    h, w = x.shape[1], x.shape[2]
    inside = (jnp.arange(h)[None, :, None] < image_hw[:, 0, None, None]) & (
        jnp.arange(w)[None, None, :] < image_hw[:, 1, None, None]
    )
    return jnp.where(inside[..., None], x, 0.0)


def training_loss(
    model: MaskScoringRCNN,
    config: ml_collections.ConfigDict,
    params,
    batch_stats,
    batch: dict,
    key: jax.Array,
):
    """Forward pass in training mode -> (total loss, (named losses, new batch_stats)).

    Args:
      model: the module; config: the full config (static).
      params, batch_stats: variables (batch_stats {} unless norm='bn').
      batch: the data pipeline's dict (see msrcnn/data/__init__.py), device arrays.
      key: PRNG key for this step (sampling of anchors and RoIs).
    """
    t, cfg = config.train, config_lib.inference_config(config)
    image_hw = batch["image_hw"].astype(jnp.float32)
    images = normalize_images(
        batch["images"], batch["image_hw"], config.data.pixel_mean, config.data.pixel_std
    )
    variables = {"params": params}
    mutable = []
    if batch_stats:
        variables["batch_stats"] = batch_stats
        mutable = ["batch_stats"]
    pyramid, new_state = model.apply(
        variables, images, True, method=MaskScoringRCNN.pyramid, mutable=mutable
    )
    new_batch_stats = new_state.get("batch_stats", batch_stats) if mutable else batch_stats
    head_vars = {"params": params}

    # RPN: targets over all anchors, then proposals (no gradient).
    logits, deltas = model.apply(head_vars, pyramid, method=MaskScoringRCNN.rpn)
    anchors = inference.pyramid_anchors(pyramid, cfg)
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
    props, _, props_valid = jax.vmap(
        functools.partial(
            proposals.generate_proposals,
            anchors,
            pre_nms_top_k=t.rpn_pre_nms_top_k,
            post_nms_top_k=t.rpn_post_nms_top_k,
            nms_threshold=cfg.rpn_nms_threshold,
            min_size=cfg.rpn_min_size,
        )
    )(logits, deltas, image_hw)

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
    num_rois = sampled["rois"].shape[1]
    box_features = inference.pool_rois(pyramid, sampled["rois"], 7, cfg)
    class_logits, box_deltas = model.apply(head_vars, box_features, method=MaskScoringRCNN.box)

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
    branch = functools.partial(_mask_branch, model, cfg, t.maskiou_stop_gradient)
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
        "class_logits": class_logits.reshape(batch_size, num_rois, -1),
        "box_deltas": box_deltas.reshape(batch_size, num_rois, -1, 4),
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
    if model.mask_scoring:
        outputs["maskiou"] = mask_out["maskiou"]
        targets["maskiou_targets"] = jax.vmap(roi_targets.maskiou_targets)(
            mask_logits, mask_targets, mask_ratio
        )

    named = losses.compute_losses(outputs, targets)
    # Optional per-loss weights, e.g. --config.train.loss_weights.loss_maskiou=0.5.
    total = sum(value * t.loss_weights.get(name, 1.0) for name, value in named.items())
    return total, (named, new_batch_stats)


def _mask_branch(model, cfg, maskiou_stop_gradient: bool, shared, slots):
    """Mask (and MaskIoU) head on the RoIs of some leading slots.

    shared: {"params": the heads' parameters, "pyramid": feature maps}; slots: {"rois"
    [B, S, 4], "classes" [B, S]} -> {"mask_logits" [B, S, 28, 28] of each RoI's target class,
    "maskiou" [B, S, K] when the model has the MaskIoU head}.
    """
    batch_size, num_slots = slots["classes"].shape
    variables = {"params": shared["params"]}
    features = inference.pool_rois(shared["pyramid"], slots["rois"], 14, cfg)
    # Only each RoI's target-class logits: the loss reads no other channel.
    logits = model.apply(
        variables, features, slots["classes"].reshape(-1), method=MaskScoringRCNN.mask
    )
    out = {"mask_logits": logits.reshape(batch_size, num_slots, *logits.shape[1:])}
    if model.mask_scoring:
        # The MaskIoU head sees the soft mask of the target class (predicted class at test).
        probs = jax.nn.sigmoid(logits)
        if maskiou_stop_gradient:
            probs = jax.lax.stop_gradient(probs)
            features = jax.lax.stop_gradient(features)
        maskiou = model.apply(variables, features, probs, method=MaskScoringRCNN.maskiou)
        out["maskiou"] = maskiou.reshape(batch_size, num_slots, -1)
    return out


def train_step(
    model: MaskScoringRCNN,
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
        return training_loss(model, config, params, *args)

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
