"""Detection at test time: image batch -> boxes, labels, scores, masks, mask scores.

Everything from the backbone to the MaskIoU head runs in one jitted function per padded input
shape (`detect`), with static shapes throughout: proposals, detections and masks are padded to
fixed counts with validity masks. Pasting the 28x28 masks into full-resolution images depends
on each image's original size, so it is a separate step (`msrcnn.ops.masks`).

Mask scoring (Huang et al. 2019): mask_score = class score x predicted MaskIoU of the
predicted class. Boxes keep the class score; only masks are ranked by the mask score.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from msrcnn.models.ms_rcnn import ROI_LEVELS, RPN_LEVELS, MaskScoringRCNN
from msrcnn.ops import anchors as anchor_ops
from msrcnn.ops import boxes as box_ops
from msrcnn.ops import nms as nms_ops
from msrcnn.ops import roi_align as roi_ops
from msrcnn.proposals import generate_proposals

ROI_BOX_CODER = box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Test-time settings; the defaults are torchvision's maskrcnn_resnet50_fpn.

    Attributes:
      rpn_pre_nms_top_k: anchors kept per level before the RPN NMS.
      rpn_post_nms_top_k: proposals per image.
      rpn_nms_threshold: IoU threshold of the RPN NMS (per level).
      rpn_min_size: proposals with a side below this are dropped.
      score_threshold: detections need a class score above this.
      nms_threshold: per-class NMS IoU threshold.
      detections_per_image: D, the fixed number of detection slots.
      box_min_size: detections with a side below this are dropped.
      class_nms_top_k: candidate budget of the per-class NMS (see `nms.multiclass_nms`);
        None = every (RoI, class) pair, exact in every case.
      sampling_ratio: RoIAlign samples per bin.
      aligned: RoIAlign half-pixel convention (False reproduces torchvision's weights).
      roi_canonical_scale: box size pooled from P4 in the FPN level rule
        floor(4 + log2(sqrt(wh) / scale)); 224 suits ~800 px inputs, smaller inputs need it
        scaled down or every RoI lands on P2.
      anchor_sizes: one anchor size per RPN level P2..P6.
      aspect_ratios: anchor aspect ratios (h / w).
    """

    rpn_pre_nms_top_k: int = 1000
    rpn_post_nms_top_k: int = 1000
    rpn_nms_threshold: float = 0.7
    rpn_min_size: float = 1e-3
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100
    box_min_size: float = 1e-2
    class_nms_top_k: int | None = nms_ops.DEFAULT_PRE_NMS_TOP_K
    sampling_ratio: int = 2
    aligned: bool = True
    roi_canonical_scale: float = 224.0
    anchor_sizes: tuple[float, ...] = anchor_ops.FPN_ANCHOR_SIZES
    aspect_ratios: tuple[float, ...] = anchor_ops.FPN_ASPECT_RATIOS


def level_maps(pyramid, names):
    return [pyramid[name] for name in names]


def pool_rois(pyramid, boxes, output_size: int, cfg: InferenceConfig):
    """RoIAlign of per-image boxes [B, R, 4] over P2..P5 -> [B * R, S, S, C]."""
    pool = functools.partial(
        roi_ops.multilevel_roi_align,
        output_size=output_size,
        sampling_ratio=cfg.sampling_ratio,
        aligned=cfg.aligned,
        canonical_scale=cfg.roi_canonical_scale,
    )
    pooled = jax.vmap(pool)(level_maps(pyramid, ROI_LEVELS), boxes)
    return pooled.reshape((-1, *pooled.shape[2:]))


def select_class(per_class, class_index):
    """[N, ..., K] values and [N] class columns (0-based) -> [N, ...]."""
    moved = jnp.moveaxis(per_class, -1, 1)  # [N, K, ...]
    return jnp.take_along_axis(
        moved, class_index.reshape((-1, 1) + (1,) * (moved.ndim - 2)), axis=1
    )[:, 0]


def pyramid_anchors(pyramid, cfg: InferenceConfig):
    """Anchors of every RPN level for this pyramid's (static) shapes: list of [N_l, 4]."""
    padded_hw = (pyramid["P2"].shape[1] * 4, pyramid["P2"].shape[2] * 4)
    return anchor_ops.fpn_anchors(
        padded_hw,
        levels=range(2, 2 + len(RPN_LEVELS)),
        sizes=cfg.anchor_sizes,
        aspect_ratios=cfg.aspect_ratios,
        grid_sizes=[pyramid[name].shape[1:3] for name in RPN_LEVELS],
    )


def rpn_proposals(model: MaskScoringRCNN, variables, pyramid, image_hw, cfg: InferenceConfig):
    """RPN head + proposal generation for a batch -> (boxes [B,P,4], scores [B,P], valid [B,P])."""
    logits, deltas = model.apply(variables, pyramid, method=MaskScoringRCNN.rpn)
    anchors = pyramid_anchors(pyramid, cfg)
    per_image = functools.partial(
        generate_proposals,
        anchors,
        pre_nms_top_k=cfg.rpn_pre_nms_top_k,
        post_nms_top_k=cfg.rpn_post_nms_top_k,
        nms_threshold=cfg.rpn_nms_threshold,
        min_size=cfg.rpn_min_size,
    )
    return jax.vmap(per_image)(logits, deltas, image_hw)


def postprocess_boxes(class_logits, box_deltas, proposals, proposal_valid, image_hw, cfg):
    """One image's box head outputs -> detections (torchvision `postprocess_detections`).

    Args:
      class_logits: [R, K+1]; box_deltas: [R, K+1, 4]; proposals: [R, 4]; proposal_valid: [R].
      image_hw: [2] size of the image inside the padded input.

    Returns:
      boxes [D, 4], labels [D] int32 in 1..K (0 in padding), scores [D], valid [D].
    """
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # [R, K], background dropped
    boxes = ROI_BOX_CODER.decode(box_deltas[:, 1:], proposals[:, None, :])  # [R, K, 4]
    boxes = box_ops.clip_boxes(boxes, image_hw)
    usable = proposal_valid[:, None] & box_ops.remove_small_boxes_mask(boxes, cfg.box_min_size)
    scores = jnp.where(usable, scores, -jnp.inf)
    roi, cls, det_scores, valid = nms_ops.multiclass_nms(
        boxes,
        scores,
        cfg.nms_threshold,
        cfg.detections_per_image,
        score_threshold=cfg.score_threshold,
        pre_nms_top_k=cfg.class_nms_top_k,
    )
    det_boxes = jnp.where(valid[:, None], boxes[roi, cls], 0.0)
    labels = jnp.where(valid, cls + 1, 0)
    return det_boxes, labels, jnp.where(valid, det_scores, 0.0), valid


def detect(model: MaskScoringRCNN, variables, images, image_hw, cfg: InferenceConfig):
    """Runs the detector on a normalised, padded batch.

    Args:
      model: the module (static); variables: its variables.
      images: [B, H, W, 3] normalised images, H and W multiples of 32.
      image_hw: [B, 2] size of each image inside the padding (boxes are clipped to it).
      cfg: InferenceConfig (static).

    Returns:
      dict of per-image arrays with D = cfg.detections_per_image:
        boxes [B, D, 4] xyxy in input pixels, labels [B, D] (1..K, 0 = padding),
        scores [B, D] class scores, mask_probs [B, D, 28, 28] (sigmoid of the predicted
        class's mask), maskiou [B, D] (ones when the model has no MaskIoU head),
        mask_scores [B, D] (scores x maskiou), valid [B, D];
        proposals [B, P, 4], proposal_scores [B, P] (objectness) and proposal_valid [B, P]
        for inspection.
    """
    image_hw = jnp.asarray(image_hw, jnp.float32)
    pyramid = model.apply(variables, images, method=MaskScoringRCNN.pyramid)
    proposals, proposal_scores, proposal_valid = rpn_proposals(
        model, variables, pyramid, image_hw, cfg
    )
    batch, num_props = proposals.shape[:2]

    box_features = pool_rois(pyramid, proposals, 7, cfg)
    class_logits, box_deltas = model.apply(variables, box_features, method=MaskScoringRCNN.box)
    class_logits = class_logits.reshape(batch, num_props, -1)
    box_deltas = box_deltas.reshape(batch, num_props, -1, 4)
    post = functools.partial(postprocess_boxes, cfg=cfg)
    boxes, labels, scores, valid = jax.vmap(post)(
        class_logits, box_deltas, proposals, proposal_valid, image_hw
    )

    mask_features = pool_rois(pyramid, boxes, 14, cfg)  # [B * D, 14, 14, C]
    # Only each detection's class mask is needed: the head computes just that channel.
    class_column = jnp.maximum(labels.reshape(-1) - 1, 0)
    mask_logits = model.apply(
        variables, mask_features, class_column + 1, method=MaskScoringRCNN.mask
    )
    mask_probs = jax.nn.sigmoid(mask_logits)  # [B * D, 28, 28]
    if model.mask_scoring:
        maskiou = model.apply(variables, mask_features, mask_probs, method=MaskScoringRCNN.maskiou)
        maskiou = select_class(maskiou, class_column).reshape(labels.shape)
    else:
        maskiou = jnp.ones(labels.shape, jnp.float32)
    side = mask_probs.shape[-1]
    return {
        "boxes": boxes,
        "labels": labels,
        "scores": scores,
        "mask_probs": mask_probs.reshape(batch, -1, side, side),
        "maskiou": jnp.where(valid, maskiou, 0.0),
        "mask_scores": jnp.where(valid, scores * maskiou, 0.0),
        "valid": valid,
        "proposals": proposals,
        "proposal_scores": proposal_scores,
        "proposal_valid": proposal_valid,
    }


def make_detect_fn(model: MaskScoringRCNN, cfg: InferenceConfig):
    """`detect` jitted for this model and config: one compilation per padded input shape."""
    return jax.jit(functools.partial(detect, model, cfg=cfg))
