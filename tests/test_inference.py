"""Inference on a tiny random model: static shapes, one trace per input shape, mask scoring."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn import config_lib
from msrcnn import detector as detector_lib
from msrcnn.models import ms_rcnn
from msrcnn.ops import anchors as anchor_ops
from msrcnn.ops import boxes as box_ops
from msrcnn.ops import proposals
from msrcnn.ops import roi_align as roi_align_ops


def _settings():
    config = config_lib.base_config()
    i = config.inference
    i.rpn_pre_nms_top_k, i.rpn_post_nms_top_k = 200, 64
    i.score_threshold, i.detections_per_image = 0.0, 16
    return detector_lib.inference_settings(config)


CFG = _settings()
GEOMETRY = detector_lib.geometry_of(config_lib.base_config())


def tiny_detector_of(**fields):
    return detector_lib.Detector(ms_rcnn.tiny(**fields), GEOMETRY)


@pytest.fixture(scope="module")
def tiny_detector():
    detector = tiny_detector_of(num_classes=3)
    variables = detector.model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    calls = {"traces": 0}

    def counted(variables, images, image_hw):
        calls["traces"] += 1
        return detector_lib.detect(detector, variables, images, image_hw, CFG)

    return detector.model, variables, jax.jit(counted), calls


@pytest.fixture(scope="module")
def tiny_outputs(tiny_detector):
    _, variables, detect, _ = tiny_detector
    images = jax.random.normal(jax.random.key(1), (2, 96, 128, 3))
    return detect(variables, images, jnp.array([[96, 128], [70, 100]]))


def test_output_shapes(tiny_outputs):
    out = tiny_outputs
    assert out["boxes"].shape == (2, 16, 4)
    assert out["mask_probs"].shape == (2, 16, 28, 28)
    for key in ("labels", "scores", "maskiou", "mask_scores", "valid"):
        assert out[key].shape == (2, 16), key
    assert out["proposals"].shape == (2, 64, 4)


def test_detections_respect_image_size_and_padding(tiny_outputs):
    out = jax.tree.map(np.asarray, tiny_outputs)
    valid = out["valid"]
    assert valid.any()
    # Second image is 70 x 100 inside the 96 x 128 padding: boxes are clipped to it.
    assert (out["boxes"][1][valid[1]][:, [0, 2]] <= 100).all()
    assert (out["boxes"][1][valid[1]][:, [1, 3]] <= 70).all()
    assert (out["proposals"][1][out["proposal_valid"][1]][:, 3] <= 70).all()
    # Labels 1..K on valid slots, 0 on padding; padding carries zeros.
    assert set(np.unique(out["labels"][valid])) <= {1, 2, 3}
    assert (out["labels"][~valid] == 0).all() and (out["scores"][~valid] == 0).all()
    # Scores descend within each image.
    for i in range(2):
        s = out["scores"][i][valid[i]]
        assert (np.diff(s) <= 0).all()


def test_mask_score_is_class_score_times_maskiou(tiny_outputs):
    out = jax.tree.map(np.asarray, tiny_outputs)
    np.testing.assert_allclose(out["mask_scores"], out["scores"] * out["maskiou"], rtol=1e-6)
    assert ((out["mask_probs"] >= 0) & (out["mask_probs"] <= 1)).all()


def test_one_trace_per_input_shape(tiny_detector, tiny_outputs):
    _, variables, detect, calls = tiny_detector
    before = calls["traces"]
    images = jnp.ones((2, 96, 128, 3))
    detect(variables, images, jnp.array([[96, 128], [96, 128]]))  # same shapes, new values
    assert calls["traces"] == before
    detect(variables, jnp.ones((2, 64, 96, 3)), jnp.array([[64, 96], [64, 96]]))
    assert calls["traces"] == before + 1


def test_plain_model_scores_masks_by_class_score():
    detector = tiny_detector_of(num_classes=2, mask_scoring=False)
    variables = detector.model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert "maskiou_head" not in variables["params"]
    images = jax.random.normal(jax.random.key(2), (1, 64, 64, 3))
    out = jax.jit(lambda v, x: detector_lib.detect(detector, v, x, jnp.array([[64, 64]]), CFG))(
        variables, images
    )
    np.testing.assert_array_equal(out["mask_scores"], out["scores"])


def numpy_proposals(anchors, logits, deltas, image_hw, pre, post, thr, min_size):
    """Proposal generation from its definition, with a plain greedy NMS per level."""
    boxes, scores, levels = [], [], []
    for level, (a, lg, d) in enumerate(zip(anchors, logits, deltas, strict=True)):
        top = np.argsort(-lg, kind="stable")[:pre]
        decoded = np.asarray(box_ops.RPN_BOX_CODER.decode(d[top], a[top]))
        boxes.append(np.asarray(box_ops.clip_boxes(decoded, image_hw)))
        scores.append(1 / (1 + np.exp(-lg[top])))
        levels.append(np.full(len(top), level))
    boxes, scores, levels = map(np.concatenate, (boxes, scores, levels))
    wh = boxes[:, 2:] - boxes[:, :2]
    order = [i for i in np.argsort(-scores, kind="stable") if (wh[i] >= min_size).all()]
    iou = np.asarray(box_ops.pairwise_iou(boxes, boxes))
    kept = []
    for i in order:
        if all(not (levels[j] == levels[i] and iou[i, j] > thr) for j in kept):
            kept.append(i)
    return boxes[kept[:post]], scores[kept[:post]]


def test_proposals_match_numpy_reference():
    rng = np.random.default_rng(0)
    image_hw = (128, 160)
    grids = anchor_ops.fpn_grid_sizes(image_hw, range(2, 7))
    anchors = anchor_ops.fpn_anchors(image_hw, grid_sizes=grids)
    logits = [rng.normal(0, 2, len(a)).astype(np.float32) for a in anchors]
    deltas = [rng.normal(0, 0.3, (len(a), 4)).astype(np.float32) for a in anchors]
    fn = jax.jit(
        lambda lg, dl, hw: proposals.generate_proposals(
            anchors, lg, dl, hw, pre_nms_top_k=300, post_nms_top_k=150
        )
    )
    boxes, scores, valid = fn(logits, deltas, jnp.array([120.0, 150.0]))
    ref_boxes, ref_scores = numpy_proposals(
        anchors, logits, deltas, (120, 150), 300, 150, 0.7, 1e-3
    )
    n = int(valid.sum())
    assert n == min(150, len(ref_boxes))
    np.testing.assert_allclose(np.asarray(boxes)[:n], ref_boxes, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores)[:n], ref_scores, rtol=1e-6)


def test_roi_canonical_scale_moves_boxes_up_the_pyramid():
    """Small inputs need a smaller canonical scale, or every RoI is pooled from P2."""
    rng = np.random.default_rng(0)
    pyramid = {
        f"P{level}": jnp.asarray(rng.normal(size=(1, 128 >> level, 128 >> level, 4)), jnp.float32)
        for level in range(2, 6)
    }
    boxes = jnp.array([[[10.0, 10.0, 90.0, 90.0]]])  # 80 px: P2 at scale 224, P5 at scale 36
    detector = tiny_detector_of(num_classes=1)
    small_scale = dataclasses.replace(GEOMETRY, roi_canonical_scale=36.0)
    default = detector.pool(pyramid, boxes, 7)
    small = dataclasses.replace(detector, geometry=small_scale).pool(pyramid, boxes, 7)
    p2 = roi_align_ops.roi_align(pyramid["P2"][0], boxes[0], 7, 1 / 4, 2, True)
    p5 = roi_align_ops.roi_align(pyramid["P5"][0], boxes[0], 7, 1 / 32, 2, True)
    np.testing.assert_allclose(default, p2, atol=1e-6)
    np.testing.assert_allclose(small, p5, atol=1e-6)
