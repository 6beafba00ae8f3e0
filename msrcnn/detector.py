"""The detector, composed in one place: image -> backbone -> FPN -> RPN -> proposals -> RoI heads.

`MaskScoringRCNN` (msrcnn/models/ms_rcnn.py) holds the parameters and runs layers; `Detector`
strings its layers together with the pure functions between them (anchors, proposals,
RoIAlign, box decoding, NMS). Every consumer calls the same stages:

    detector.features(variables, images)             -> pyramid {'P2'..'P6'}
    detector.rpn(variables, pyramid)                 -> objectness, deltas, anchors
    detector.proposals(rpn_out, image_hw, settings)  -> proposals per image
    detector.box_head(variables, pyramid, rois)      -> class logits, class-specific deltas
    detector.mask_branch(variables, pyramid, rois, classes) -> mask logits, MaskIoU

`detect` (inference), `msrcnn.training.train_step.training_loss` (training: these stages
plus targets and losses) and the pipeline view of `python -m msrcnn.show pipeline` are
compositions of them.

Mask scoring (Huang et al. 2019): mask_score = class score x predicted MaskIoU of the
predicted class. Boxes keep the class score; only masks are ranked by the mask score.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrcnn.models.build import build_model
from msrcnn.models.ms_rcnn import ROI_LEVELS, RPN_LEVELS, MaskScoringRCNN
from msrcnn.ops import anchors as anchor_ops
from msrcnn.ops import boxes as box_ops
from msrcnn.ops import nms as nms_ops
from msrcnn.ops import roi_align as roi_ops
from msrcnn.ops.proposals import generate_proposals
from msrcnn.ops.select import select_class

BOX_POOL_SIZE = 7  # RoIAlign output of the box head
MASK_POOL_SIZE = 14  # RoIAlign output of the mask and MaskIoU heads


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where anchors sit and how RoIs are pooled; the same in training and at test time.

    Attributes:
      anchor_sizes: one anchor size per RPN level P2..P6.
      aspect_ratios: anchor aspect ratios (h / w).
      roi_canonical_scale: box size pooled from P4 in the FPN level rule
        floor(4 + log2(sqrt(wh) / scale)); 224 suits ~800 px inputs.
      sampling_ratio: RoIAlign samples per bin and axis.
      aligned: RoIAlign half-pixel convention (False reproduces torchvision's weights).
    """

    anchor_sizes: tuple[float, ...]
    aspect_ratios: tuple[float, ...]
    roi_canonical_scale: float
    sampling_ratio: int
    aligned: bool


@dataclasses.dataclass(frozen=True)
class ProposalSettings:
    """RPN outputs -> proposals (`msrcnn.ops.proposals.generate_proposals`).

    Attributes:
      pre_nms_top_k: anchors kept per level before the NMS.
      post_nms_top_k: proposals per image.
      nms_threshold: IoU threshold of the per-level NMS.
      min_size: proposals with a side below this are dropped.
    """

    pre_nms_top_k: int
    post_nms_top_k: int
    nms_threshold: float
    min_size: float


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """Box head outputs -> detections (torchvision's `postprocess_detections`).

    Attributes:
      score_threshold: detections need a class score above this.
      nms_threshold: per-class NMS IoU threshold.
      detections_per_image: D, the fixed number of detection slots.
      box_min_size: detections with a side below this are dropped.
      class_nms_top_k: candidate budget of the per-class NMS (`nms.multiclass_nms`);
        None = every (RoI, class) pair, exact in every case.
    """

    score_threshold: float
    nms_threshold: float
    detections_per_image: int
    box_min_size: float
    class_nms_top_k: int | None


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """Everything `detect` needs besides the detector: proposals and detections."""

    proposals: ProposalSettings
    detections: DetectionSettings


@dataclasses.dataclass(frozen=True)
class Detector:
    """The model's layers and the geometry that connects them. Hashable (static under jit).

    Shapes: B images, P proposals, R RoIs per image, K classes, A anchors over all levels.
    """

    model: MaskScoringRCNN
    geometry: Geometry

    @property
    def mask_scoring(self) -> bool:
        return self.model.mask_scoring

    def features(self, variables, images, train: bool = False):
        """Normalised images [B, H, W, 3] (H, W multiples of 32) -> (pyramid {'P2'..'P6'},
        updated batch_stats: new statistics when training a BatchNorm backbone, else those of
        `variables`, or {})."""
        batch_stats = variables.get("batch_stats", {})
        if train and batch_stats:
            pyramid, state = self.model.apply(
                variables, images, True, method=MaskScoringRCNN.pyramid, mutable=["batch_stats"]
            )
            return pyramid, state["batch_stats"]
        return self.model.apply(
            variables, images, train, method=MaskScoringRCNN.pyramid
        ), batch_stats

    def anchors(self, pyramid) -> list[np.ndarray]:
        """Anchors of every RPN level for this pyramid's (static) shapes: list of [N_l, 4]."""
        padded_hw = (pyramid["P2"].shape[1] * 4, pyramid["P2"].shape[2] * 4)
        return anchor_ops.fpn_anchors(
            padded_hw,
            levels=range(2, 2 + len(RPN_LEVELS)),
            sizes=self.geometry.anchor_sizes,
            aspect_ratios=self.geometry.aspect_ratios,
            grid_sizes=[pyramid[name].shape[1:3] for name in RPN_LEVELS],
        )

    def rpn(self, variables, pyramid):
        """-> (objectness logits: per level [B, N_l], deltas: per level [B, N_l, 4], anchors:
        per level [N_l, 4] numpy)."""
        logits, deltas = self.model.apply(variables, pyramid, method=MaskScoringRCNN.rpn)
        return logits, deltas, self.anchors(pyramid)

    def proposals(self, rpn_out, image_hw, settings: ProposalSettings):
        """`rpn` outputs and image sizes [B, 2] -> (boxes [B, P, 4], objectness [B, P],
        valid [B, P]), P = settings.post_nms_top_k."""
        logits, deltas, anchors = rpn_out
        per_image = functools.partial(
            generate_proposals,
            anchors,
            pre_nms_top_k=settings.pre_nms_top_k,
            post_nms_top_k=settings.post_nms_top_k,
            nms_threshold=settings.nms_threshold,
            min_size=settings.min_size,
        )
        return jax.vmap(per_image)(logits, deltas, image_hw)

    def pool(self, pyramid, boxes, output_size: int):
        """RoIAlign of per-image boxes [B, R, 4] over P2..P5 -> [B * R, S, S, C]."""
        g = self.geometry
        pool = functools.partial(
            roi_ops.multilevel_roi_align,
            output_size=output_size,
            sampling_ratio=g.sampling_ratio,
            aligned=g.aligned,
            canonical_scale=g.roi_canonical_scale,
        )
        pooled = jax.vmap(pool)([pyramid[name] for name in ROI_LEVELS], boxes)
        return pooled.reshape((-1, *pooled.shape[2:]))

    def box_head(self, variables, pyramid, rois):
        """RoIs [B, R, 4] -> (class logits [B, R, K+1], class-specific deltas [B, R, K+1, 4])."""
        batch, num_rois = rois.shape[:2]
        features = self.pool(pyramid, rois, BOX_POOL_SIZE)
        logits, deltas = self.model.apply(variables, features, method=MaskScoringRCNN.box)
        return logits.reshape(batch, num_rois, -1), deltas.reshape(batch, num_rois, -1, 4)

    def mask_branch(self, variables, pyramid, rois, classes, stop_gradient: bool = False):
        """Mask and MaskIoU heads on RoIs [B, R, 4] of classes [B, R] (1..K; 0 reads class 1).

        -> {'mask_logits' [B, R, 28, 28] of each RoI's class, and with the MaskIoU head
        'maskiou' [B, R, K]: the predicted IoU of every class's mask, from the soft mask of
        the given class}. stop_gradient: the MaskIoU head's inputs carry no gradient into the
        mask head and the features.
        """
        batch, num_rois = classes.shape
        features = self.pool(pyramid, rois, MASK_POOL_SIZE)
        # Only each RoI's own class channel: the head computes just that one.
        logits = self.model.apply(
            variables, features, classes.reshape(-1), method=MaskScoringRCNN.mask
        )
        out = {"mask_logits": logits.reshape(batch, num_rois, *logits.shape[1:])}
        if self.mask_scoring:
            probs = jax.nn.sigmoid(logits)
            if stop_gradient:
                probs = jax.lax.stop_gradient(probs)
                features = jax.lax.stop_gradient(features)
            maskiou = self.model.apply(variables, features, probs, method=MaskScoringRCNN.maskiou)
            out["maskiou"] = maskiou.reshape(batch, num_rois, -1)
        return out


def decode_class_boxes(box_deltas, rois, image_hw):
    """Class-specific deltas [..., R, K+1, 4] of RoIs [..., R, 4] -> boxes [..., R, K, 4] of
    the K foreground classes, clipped to image_hw [..., 2]."""
    boxes = box_ops.ROI_BOX_CODER.decode(box_deltas[..., 1:, :], rois[..., :, None, :])
    return box_ops.clip_boxes(boxes, image_hw)


def postprocess_boxes(class_logits, box_deltas, proposals, proposal_valid, image_hw, settings):
    """One image's box head outputs -> detections (torchvision `postprocess_detections`).

    Args:
      class_logits: [R, K+1]; box_deltas: [R, K+1, 4]; proposals: [R, 4]; proposal_valid: [R].
      image_hw: [2] size of the image inside the padded input.
      settings: DetectionSettings.

    Returns:
      boxes [D, 4], labels [D] int32 in 1..K (0 in padding), scores [D], valid [D].
    """
    scores = jax.nn.softmax(class_logits, axis=-1)[:, 1:]  # [R, K], background dropped
    boxes = decode_class_boxes(box_deltas, proposals, image_hw)  # [R, K, 4]
    usable = proposal_valid[:, None] & box_ops.remove_small_boxes_mask(boxes, settings.box_min_size)
    scores = jnp.where(usable, scores, -jnp.inf)
    roi, cls, det_scores, valid = nms_ops.multiclass_nms(
        boxes,
        scores,
        settings.nms_threshold,
        settings.detections_per_image,
        score_threshold=settings.score_threshold,
        pre_nms_top_k=settings.class_nms_top_k,
    )
    det_boxes = jnp.where(valid[:, None], boxes[roi, cls], 0.0)
    labels = jnp.where(valid, cls + 1, 0)
    return det_boxes, labels, jnp.where(valid, det_scores, 0.0), valid


def detect(detector: Detector, variables, images, image_hw, settings: InferenceSettings):
    """Runs the detector on a normalised, padded batch.

    Args:
      detector: the Detector (static); variables: the model's variables.
      images: [B, H, W, 3] normalised images, H and W multiples of 32.
      image_hw: [B, 2] size of each image inside the padding (boxes are clipped to it).
      settings: InferenceSettings (static).

    Returns:
      dict of per-image arrays with D = detections_per_image:
        boxes [B, D, 4] xyxy in input pixels, labels [B, D] (1..K, 0 = padding),
        scores [B, D] class scores, mask_probs [B, D, 28, 28] (sigmoid of the predicted
        class's mask), maskiou [B, D] (ones when the model has no MaskIoU head),
        mask_scores [B, D] (scores x maskiou), valid [B, D];
        proposals [B, P, 4], proposal_scores [B, P] (objectness) and proposal_valid [B, P]
        for inspection.
    """
    image_hw = jnp.asarray(image_hw, jnp.float32)
    pyramid, _ = detector.features(variables, images)
    rpn_out = detector.rpn(variables, pyramid)
    proposals, proposal_scores, proposal_valid = detector.proposals(
        rpn_out, image_hw, settings.proposals
    )
    class_logits, box_deltas = detector.box_head(variables, pyramid, proposals)
    post = functools.partial(postprocess_boxes, settings=settings.detections)
    boxes, labels, scores, valid = jax.vmap(post)(
        class_logits, box_deltas, proposals, proposal_valid, image_hw
    )
    # Padding slots (label 0) read class 1's mask; their outputs are zeroed below.
    heads = detector.mask_branch(variables, pyramid, boxes, jnp.maximum(labels, 1))
    mask_probs = jax.nn.sigmoid(heads["mask_logits"])  # [B, D, 28, 28]
    if detector.mask_scoring:
        maskiou = select_class(heads["maskiou"], jnp.maximum(labels - 1, 0))
    else:
        maskiou = jnp.ones(labels.shape, jnp.float32)
    return {
        "boxes": boxes,
        "labels": labels,
        "scores": scores,
        "mask_probs": mask_probs,
        "maskiou": jnp.where(valid, maskiou, 0.0),
        "mask_scores": jnp.where(valid, scores * maskiou, 0.0),
        "valid": valid,
        "proposals": proposals,
        "proposal_scores": proposal_scores,
        "proposal_valid": proposal_valid,
    }


def make_detect_fn(detector: Detector, settings: InferenceSettings):
    """`detect` jitted for this detector and settings: one compilation per padded input shape."""
    return jax.jit(functools.partial(detect, detector, settings=settings))


# ----------------------------------------------------------------------- from a config


def geometry_of(config: ml_collections.ConfigDict) -> Geometry:
    g = config.geometry
    return Geometry(
        anchor_sizes=tuple(g.anchor_sizes),
        aspect_ratios=tuple(g.aspect_ratios),
        roi_canonical_scale=g.roi_canonical_scale,
        sampling_ratio=g.roi_sampling_ratio,
        aligned=g.roi_aligned,
    )


def from_config(config: ml_collections.ConfigDict, backend: str | None = None) -> Detector:
    """The detector of `config`; backend (default: JAX's) decides its 'auto' settings."""
    return Detector(build_model(config, backend), geometry_of(config))


def proposal_settings(config: ml_collections.ConfigDict, phase: str) -> ProposalSettings:
    """Proposal settings of phase 'train' (config.train.rpn_*) or 'inference'."""
    section = config.train if phase == "train" else config.inference
    return ProposalSettings(
        pre_nms_top_k=section.rpn_pre_nms_top_k,
        post_nms_top_k=section.rpn_post_nms_top_k,
        nms_threshold=section.rpn_nms_threshold,
        min_size=section.rpn_min_size,
    )


def inference_settings(config: ml_collections.ConfigDict) -> InferenceSettings:
    i = config.inference
    return InferenceSettings(
        proposals=proposal_settings(config, "inference"),
        detections=DetectionSettings(
            score_threshold=i.score_threshold,
            nms_threshold=i.nms_threshold,
            detections_per_image=i.detections_per_image,
            box_min_size=i.box_min_size,
            class_nms_top_k=i.class_nms_top_k,
        ),
    )
