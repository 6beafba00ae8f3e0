"""Tests for msrcnn.training.losses: numpy references, torchvision golden values, empty / padded
batches (finite values and gradients), the assembled dict, jit once per shape."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.training import losses
from tests.conftest import load_golden

BETA = 1.0 / 9.0


# ---- numpy references (float64)


def np_smooth_l1(x, beta):
    x = np.abs(x)
    return np.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta) if beta >= 1e-5 else x


def np_bce(x, t):
    p = 1.0 / (1.0 + np.exp(-x))
    return -(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_rpn(logits, deltas, labels, targets, beta=BETA):
    sampled, pos = labels >= 0, labels == 1
    n = max(sampled.sum(), 1)
    obj = np_bce(logits[sampled], pos[sampled].astype(float)).sum() / n
    box = np_smooth_l1(deltas[pos] - targets[pos], beta).sum() / n
    return obj, box


def np_box(logits, deltas, classes, valid, targets, beta=BETA):
    n = max(valid.sum(), 1)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, classes[..., None], -1)[..., 0]
    cls = ce[valid].sum() / n
    pos = valid & (classes > 0)
    d = np.take_along_axis(deltas, classes[..., None, None], -2)[..., 0, :]
    box = np_smooth_l1(d[pos] - targets[pos], beta).sum() / n
    return cls, box


def np_mask(logits, targets, classes, positive):
    sel = np.take_along_axis(logits, np.maximum(classes - 1, 0)[..., None, None, None], -1)[..., 0]
    if positive.sum() == 0:
        return 0.0
    return np_bce(sel[positive], targets[positive]).mean()


def np_maskiou(pred, targets, classes, positive):
    sel = np.take_along_axis(pred, np.maximum(classes - 1, 0)[..., None], -1)[..., 0]
    if positive.sum() == 0:
        return 0.0
    return (0.5 * (sel[positive] - targets[positive]) ** 2).mean()


def random_batch(seed, b=2, a=50, r=12, p=4, k=3, s=6, per_class_masks=False):
    """Random outputs and targets. mask_logits: [b, p, s, s] logits of each slot's target
    class, as the train step computes them (compute_losses' input); per_class_masks=True: all
    k classes [b, p, s, s, k] (mask_loss's input)."""
    rng = np.random.default_rng(seed)
    rpn_labels = rng.choice([-1, 0, 1], (b, a), p=[0.5, 0.35, 0.15]).astype(np.int32)
    classes = rng.integers(0, k + 1, (b, r)).astype(np.int32)
    valid = rng.random((b, r)) < 0.8
    mask_classes = rng.integers(1, k + 1, (b, p)).astype(np.int32)
    mask_positive = rng.random((b, p)) < 0.7
    outputs = {
        "rpn_logits": rng.normal(0, 2, (b, a)).astype(np.float32),
        "rpn_deltas": rng.normal(0, 0.3, (b, a, 4)).astype(np.float32),
        "class_logits": rng.normal(0, 2, (b, r, k + 1)).astype(np.float32),
        "box_deltas": rng.normal(0, 0.3, (b, r, k + 1, 4)).astype(np.float32),
        "mask_logits": rng.normal(0, 2, (b, p, s, s, k)).astype(np.float32),
        "maskiou": rng.random((b, p, k)).astype(np.float32),
    }
    if not per_class_masks:
        column = (mask_classes - 1)[..., None, None, None]
        outputs["mask_logits"] = np.take_along_axis(outputs["mask_logits"], column, -1)[..., 0]
    targets = {
        "rpn_labels": rpn_labels,
        "rpn_box_targets": rng.normal(0, 0.3, (b, a, 4)).astype(np.float32),
        "roi_classes": classes,
        "roi_valid": valid,
        "roi_box_targets": rng.normal(0, 0.3, (b, r, 4)).astype(np.float32),
        "mask_targets": rng.random((b, p, s, s)).astype(np.float32),
        "mask_classes": mask_classes,
        "mask_positive": mask_positive,
        "maskiou_targets": rng.random((b, p)).astype(np.float32),
    }
    return outputs, targets


def test_smooth_l1_and_bce_elementwise():
    x = np.linspace(-1, 1, 41).astype(np.float32)
    np.testing.assert_allclose(losses.smooth_l1(x, BETA), np_smooth_l1(x, BETA), atol=1e-7)
    np.testing.assert_allclose(losses.smooth_l1(x, 0.0), np.abs(x))
    logits = np.array([-100.0, -3.0, 0.0, 2.5, 100.0], np.float32)
    t = np.array([0.0, 1.0, 0.3, 0.0, 1.0], np.float32)
    out = np.asarray(losses.sigmoid_bce_with_logits(logits, t))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1:4], np_bce(logits[1:4].astype(float), t[1:4]), rtol=1e-6)
    np.testing.assert_allclose(out[[0, 4]], [0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_losses_match_numpy(seed):
    o, t = random_batch(seed, per_class_masks=True)
    f64 = lambda x: np.asarray(x, np.float64)
    got = losses.rpn_losses(o["rpn_logits"], o["rpn_deltas"], t["rpn_labels"], t["rpn_box_targets"])
    want = np_rpn(
        f64(o["rpn_logits"]), f64(o["rpn_deltas"]), t["rpn_labels"], f64(t["rpn_box_targets"])
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for beta in (BETA, 0.0):
        got = losses.box_losses(
            o["class_logits"],
            o["box_deltas"],
            t["roi_classes"],
            t["roi_valid"],
            t["roi_box_targets"],
            beta=beta,
        )
        want = np_box(
            f64(o["class_logits"]),
            f64(o["box_deltas"]),
            t["roi_classes"],
            t["roi_valid"],
            f64(t["roi_box_targets"]),
            beta,
        )
        np.testing.assert_allclose(got, want, rtol=1e-5)
    got = losses.mask_loss(
        o["mask_logits"], t["mask_targets"], t["mask_classes"], t["mask_positive"]
    )
    want = np_mask(
        f64(o["mask_logits"]), f64(t["mask_targets"]), t["mask_classes"], t["mask_positive"]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = losses.mask_loss(
        o["mask_logits"],
        t["mask_targets"],
        t["mask_classes"],
        t["mask_positive"],
        target_threshold=0.5,
    )
    want = np_mask(
        f64(o["mask_logits"]),
        (t["mask_targets"] >= 0.5).astype(float),
        t["mask_classes"],
        t["mask_positive"],
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = losses.maskiou_loss(
        o["maskiou"], t["maskiou_targets"], t["mask_classes"], t["mask_positive"]
    )
    want = np_maskiou(
        f64(o["maskiou"]), f64(t["maskiou_targets"]), t["mask_classes"], t["mask_positive"]
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_maskiou_loss_only_nonzero_targets():
    pred = np.array([[0.2, 0.9], [0.5, 0.1], [0.7, 0.7]], np.float32)
    target = np.array([0.0, 0.4, 0.6], np.float32)
    classes = np.array([2, 1, 2])
    positive = np.array([True, True, True])
    all_pos = losses.maskiou_loss(pred, target, classes, positive)
    np.testing.assert_allclose(all_pos, 0.5 * (0.81 + 0.01 + 0.01) / 3, rtol=1e-6)
    nonzero = losses.maskiou_loss(pred, target, classes, positive, only_nonzero_targets=True)
    np.testing.assert_allclose(nonzero, 0.5 * (0.01 + 0.01) / 2, rtol=1e-6)


def _grads(fn, *args):
    value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(*args)
    return value, grads


def test_zero_positives_give_zero_and_finite_gradients():
    o, t = random_batch(2)
    t["rpn_labels"] = np.where(t["rpn_labels"] == 1, 0, t["rpn_labels"])  # negatives only
    t["roi_classes"] = np.zeros_like(t["roi_classes"])
    t["mask_positive"] = np.zeros_like(t["mask_positive"])
    value, grads = _grads(
        lambda x, d: jnp.stack(
            losses.rpn_losses(x, d, t["rpn_labels"], t["rpn_box_targets"])
        ).sum(),
        o["rpn_logits"],
        o["rpn_deltas"],
    )
    assert np.isfinite(value) and value > 0
    assert np.all(grads[1] == 0) and all(np.all(np.isfinite(g)) for g in grads)
    box = losses.box_losses(
        o["class_logits"], o["box_deltas"], t["roi_classes"], t["roi_valid"], t["roi_box_targets"]
    )
    assert np.isfinite(box[0]) and box[1] == 0
    value, grads = _grads(
        lambda m, q: (
            losses.class_mask_loss(m, t["mask_targets"], t["mask_positive"])
            + losses.maskiou_loss(q, t["maskiou_targets"], t["mask_classes"], t["mask_positive"])
        ),
        o["mask_logits"],
        o["maskiou"],
    )
    assert value == 0 and all(np.all(g == 0) for g in grads)


def test_all_padding_with_non_finite_values_is_finite():
    o, t = random_batch(3)
    # Nothing sampled anywhere, and garbage (NaN / inf) in every padded output.
    t["rpn_labels"] = np.full_like(t["rpn_labels"], -1)
    t["roi_valid"] = np.zeros_like(t["roi_valid"])
    t["mask_positive"] = np.zeros_like(t["mask_positive"])
    o = {
        k: np.full_like(v, np.nan) if k != "maskiou" else np.full_like(v, np.inf)
        for k, v in o.items()
    }
    value, grads = _grads(lambda o: sum(losses.compute_losses(o, t).values()), o)
    assert value == 0
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_non_finite_padding_does_not_leak_into_real_samples():
    o, t = random_batch(4)
    clean = losses.compute_losses(o, t)
    dirty = {k: np.array(v) for k, v in o.items()}
    dirty["rpn_logits"][t["rpn_labels"] < 0] = np.nan
    dirty["rpn_deltas"][t["rpn_labels"] != 1] = np.inf
    dirty["class_logits"][~t["roi_valid"]] = np.nan
    not_pos = ~(t["roi_valid"] & (t["roi_classes"] > 0))
    dirty["box_deltas"][not_pos] = np.nan
    dirty["mask_logits"][~t["mask_positive"]] = np.nan
    dirty["maskiou"][~t["mask_positive"]] = np.nan
    got = losses.compute_losses(dirty, t)
    for name in clean:
        np.testing.assert_allclose(got[name], clean[name], rtol=1e-6, err_msg=name)
    grads = jax.grad(lambda o: sum(losses.compute_losses(o, t).values()))(dirty)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_compute_losses_per_level_lists_and_jit_once(trace_counter):
    o, t = random_batch(5)
    ref = losses.compute_losses(o, t)
    assert set(ref) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_maskiou",
    }
    # The RPN outputs as two levels of 20 and 30 anchors.
    levels = dict(o)
    levels["rpn_logits"] = [o["rpn_logits"][:, :20], o["rpn_logits"][:, 20:]]
    levels["rpn_deltas"] = [o["rpn_deltas"][:, :20], o["rpn_deltas"][:, 20:]]
    fn = trace_counter(lambda o, t: losses.compute_losses(o, t, maskiou_weight=2.0))
    got = fn(levels, t)
    for name in ref:
        scale = 2.0 if name == "loss_maskiou" else 1.0
        np.testing.assert_allclose(got[name], scale * ref[name], rtol=1e-6)
        assert got[name].dtype == jnp.float32 and got[name].shape == ()
    o2, t2 = random_batch(6)
    o2["rpn_logits"] = [o2["rpn_logits"][:, :20], o2["rpn_logits"][:, 20:]]
    o2["rpn_deltas"] = [o2["rpn_deltas"][:, :20], o2["rpn_deltas"][:, 20:]]
    fn(o2, t2)
    assert fn.count == 1
    # Plain Mask R-CNN: no MaskIoU head, no MaskIoU loss.
    plain = losses.compute_losses({k: v for k, v in o.items() if k != "maskiou"}, t)
    assert "loss_maskiou" not in plain


def test_bfloat16_outputs_give_float32_losses():
    o, t = random_batch(7)
    o16 = {k: jnp.asarray(v, jnp.bfloat16) for k, v in o.items()}
    got = losses.compute_losses(o16, t)
    ref = losses.compute_losses({k: np.asarray(v.astype(jnp.float32)) for k, v in o16.items()}, t)
    for name in ref:
        assert got[name].dtype == jnp.float32
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-6)


# ---- torchvision golden values (tests/testdata/make_golden_targets_losses.py)


def test_rpn_losses_match_torchvision():
    g = load_golden("targets_losses")
    obj, box = losses.rpn_losses(
        g["rpn_logits"], g["rpn_deltas"], g["rpn_labels"], g["rpn_box_targets"]
    )
    np.testing.assert_allclose(obj, g["rpn_loss_objectness"], rtol=1e-5)
    np.testing.assert_allclose(box, g["rpn_loss_box"], rtol=1e-5)


def test_box_losses_match_torchvision_fastrcnn_loss():
    g = load_golden("targets_losses")
    counts = g["roi_count"]
    rows = g["roi_labels"].shape[1]
    # Re-pad the concatenated [N, ...] outputs into [B, rows, ...] with a validity mask.
    logits = np.zeros((2, rows, 4), np.float32)
    deltas = np.zeros((2, rows, 4, 4), np.float32)
    valid = np.zeros((2, rows), bool)
    start = 0
    for i, n in enumerate(counts):
        logits[i, :n] = g["box_class_logits"][start : start + n]
        deltas[i, :n] = g["box_deltas"][start : start + n]
        valid[i, :n] = True
        start += n
    cls, box = losses.box_losses(logits, deltas, g["roi_labels"], valid, g["roi_box_targets"])
    np.testing.assert_allclose(cls, g["box_loss_classifier"], rtol=1e-5)
    np.testing.assert_allclose(box, g["box_loss_box_reg"], rtol=1e-5)


def test_mask_loss_matches_torchvision_maskrcnn_loss():
    g = load_golden("targets_losses")
    # torchvision [N, K + 1, H, W] (index = label) -> ours [N, H, W, K] (index = label - 1);
    # plus two padded rows that must not count.
    logits = np.transpose(g["mask_logits"], (0, 2, 3, 1))[..., 1:]
    n, h, w, k = logits.shape
    logits = np.concatenate([logits, np.full((2, h, w, k), 50.0, np.float32)])
    targets = np.concatenate([g["mask_targets"], np.zeros((2, h, w), np.float32)])
    classes = np.concatenate([g["mask_labels"], [1, 1]])
    positive = np.arange(n + 2) < n
    got = losses.mask_loss(logits, targets, classes, positive)
    np.testing.assert_allclose(got, g["mask_loss"], rtol=1e-5)
