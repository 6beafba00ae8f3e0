"""Tests for msrcnn.ops.roi_align: torchvision goldens, a loop reference, hand cases, edge cases."""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops.roi_align import fpn_level_assignment, multilevel_roi_align, roi_align
from tests.conftest import load_golden

GOLDEN = load_golden("roi_align")
NUM_CASES = sum(1 for k in GOLDEN if k.endswith("_params"))
LEVELS = [GOLDEN[f"ms_p{k}"] for k in (2, 3, 4, 5)]

# Shared jitted entry points (each distinct static configuration compiles once per module).
_STATIC = ("output_size", "sampling_ratio", "aligned")
_roi_align = jax.jit(roi_align, static_argnames=_STATIC)
_multilevel = jax.jit(multilevel_roi_align, static_argnames=_STATIC)
_levels = jax.jit(fpn_level_assignment)


def _weighted_sum(features, boxes, weights, spatial_scale, output_size, sampling_ratio, aligned):
    out = roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return jnp.sum(out.astype(jnp.float32) * weights)


def _multilevel_weighted_sum(features, boxes, weights, output_size, sampling_ratio, aligned):
    out = multilevel_roi_align(features, boxes, output_size, sampling_ratio, aligned)
    return jnp.sum(out.astype(jnp.float32) * weights)


_roi_align_grad = jax.jit(jax.grad(_weighted_sum), static_argnames=_STATIC)
_multilevel_grad = jax.jit(jax.grad(_multilevel_weighted_sum), static_argnames=_STATIC)


def _case(k):
    scale, out_h, out_w, ratio, aligned = GOLDEN[f"case{k}_params"].tolist()
    kwargs = dict(output_size=(int(out_h), int(out_w)), sampling_ratio=int(ratio))
    return GOLDEN[f"case{k}_boxes"], float(scale), dict(kwargs, aligned=bool(aligned))


# ---------------------------------------------------------------------------------------------
# A loop reference written from torchvision's C++ kernel (roi_align_kernel.cpp), float32 geometry.


def _bilinear(features, y, x, stats):
    """`bilinear_interpolate` of the C++ kernel, one sample, all channels."""
    height, width = features.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        stats["outside"] += 1
        return np.zeros(features.shape[2])
    if y < 0 or x < 0:
        stats["inside_negative"] += 1
    y, x = max(y, np.float32(0)), max(x, np.float32(0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        stats["last_row"] += 1
        y_high = y_low = height - 1
        y = np.float32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        stats["last_col"] += 1
        x_high = x_low = width - 1
        x = np.float32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * features[y_low, x_low]
        + hy * lx * features[y_low, x_high]
        + ly * hx * features[y_high, x_low]
        + ly * lx * features[y_high, x_high]
    )


def np_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned):
    """Returns ([R, out_h, out_w, C] float64, Counter of the kernel's branches taken)."""
    f32 = np.float32
    out_h, out_w = (output_size, output_size) if np.isscalar(output_size) else output_size
    grid = sampling_ratio
    offset = f32(0.5 if aligned else 0.0)
    out = np.zeros((len(boxes), out_h, out_w, features.shape[2]))
    stats = collections.Counter()
    for r, box in enumerate(np.asarray(boxes, f32)):
        x1, y1, x2, y2 = (c * f32(spatial_scale) - offset for c in box)
        roi_w, roi_h = x2 - x1, y2 - y1
        if not aligned:
            roi_w, roi_h = max(roi_w, f32(1)), max(roi_h, f32(1))
        bin_h, bin_w = roi_h / f32(out_h), roi_w / f32(out_w)
        for ph in range(out_h):
            for pw in range(out_w):
                total = 0.0
                for iy in range(grid):
                    y = y1 + f32(ph) * bin_h + f32(iy + 0.5) * bin_h / f32(grid)
                    for ix in range(grid):
                        x = x1 + f32(pw) * bin_w + f32(ix + 0.5) * bin_w / f32(grid)
                        total = total + _bilinear(features, y, x, stats)
                out[r, ph, pw] = total / (grid * grid)
    return out, stats


@functools.cache
def _np_golden_case(k):
    boxes, scale, kwargs = _case(k)
    return np_roi_align(GOLDEN["single_features"], boxes, spatial_scale=scale, **kwargs)


# ---------------------------------------------------------------------------------------------
# torchvision goldens.


@pytest.mark.parametrize("k", range(NUM_CASES))
def test_matches_torchvision(k):
    boxes, scale, kwargs = _case(k)
    out = _roi_align(GOLDEN["single_features"], boxes, spatial_scale=scale, **kwargs)
    assert out.shape == GOLDEN[f"case{k}_out"].shape and out.dtype == jnp.float32
    np.testing.assert_allclose(out, GOLDEN[f"case{k}_out"], atol=1e-4, rtol=0)


def test_golden_cases_cover_the_kernel_branches():
    """The hand-built boxes do reach every branch of bilinear_interpolate, in both modes."""
    for aligned in (True, False):
        stats = collections.Counter()
        for k in range(NUM_CASES):
            if _case(k)[2]["aligned"] == aligned:
                stats += _np_golden_case(k)[1]
        for branch in ("outside", "inside_negative", "last_row", "last_col"):
            assert stats[branch] > 0, (aligned, branch, stats)
    assert {_case(k)[1] for k in range(NUM_CASES)} >= {0.25, 0.125}
    assert {_case(k)[2]["sampling_ratio"] for k in range(NUM_CASES)} >= {1, 2}
    assert {_case(k)[2]["output_size"] for k in range(NUM_CASES)} >= {(7, 7), (14, 14)}


def test_loop_reference_matches_torchvision():
    for k in range(NUM_CASES):
        np.testing.assert_allclose(_np_golden_case(k)[0], GOLDEN[f"case{k}_out"], atol=1e-4)


def test_gradient_matches_torchvision():
    grad = _roi_align_grad(
        GOLDEN["single_features"],
        GOLDEN["grad_boxes"],
        GOLDEN["grad_weights"],
        0.25,
        output_size=7,
        sampling_ratio=2,
        aligned=True,
    )
    np.testing.assert_allclose(grad, GOLDEN["grad_features"], atol=1e-4, rtol=0)


def test_level_assignment_matches_torchvision():
    np.testing.assert_array_equal(_levels(GOLDEN["level_boxes"]), GOLDEN["level_levels"])
    np.testing.assert_array_equal(_levels(GOLDEN["ms_boxes"]), GOLDEN["ms_levels"])
    assert set(GOLDEN["ms_levels"].tolist()) == {2, 3, 4, 5}
    assert _levels(GOLDEN["ms_boxes"]).dtype == jnp.int32


def test_level_assignment_hand_cases():
    sides = np.array([10.0, 111.0, 112.0, 224.0, 447.0, 448.0, 5000.0], np.float32)
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1)
    np.testing.assert_array_equal(_levels(boxes), [2, 2, 3, 4, 4, 5, 5])
    inverted = np.array([[10.0, 10.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(_levels(inverted), [2, 2])


@pytest.mark.parametrize("aligned", [False, True], ids=["multiscale_roialign", "aligned"])
def test_multilevel_matches_torchvision(aligned):
    """aligned=False is torchvision's MultiScaleRoIAlign itself; aligned=True composes
    torchvision's roi_align(aligned=True) per level with the same LevelMapper."""
    out = _multilevel(LEVELS, GOLDEN["ms_boxes"], output_size=7, sampling_ratio=2, aligned=aligned)
    key = "ms_out_aligned" if aligned else "ms_out_legacy"
    np.testing.assert_allclose(out, GOLDEN[key], atol=1e-4, rtol=0)


def test_multilevel_gradient_matches_torchvision():
    grads = _multilevel_grad(
        LEVELS,
        GOLDEN["ms_boxes"],
        GOLDEN["ms_grad_weights"],
        output_size=7,
        sampling_ratio=2,
        aligned=False,
    )
    for level, grad in zip((2, 3, 4, 5), grads, strict=True):
        np.testing.assert_allclose(grad, GOLDEN[f"ms_grad_p{level}"], atol=1e-4, rtol=0)


def test_multilevel_equals_single_level_on_assigned_level():
    boxes = GOLDEN["ms_boxes"]
    out = np.asarray(_multilevel(LEVELS, boxes, output_size=7, sampling_ratio=2, aligned=True))
    levels = np.asarray(_levels(boxes))
    for level, features in zip((2, 3, 4, 5), LEVELS, strict=True):
        ref = _roi_align(
            features,
            boxes,
            spatial_scale=2.0**-level,
            output_size=7,
            sampling_ratio=2,
            aligned=True,
        )
        np.testing.assert_array_equal(out[levels == level], np.asarray(ref)[levels == level])


# ---------------------------------------------------------------------------------------------
# Loop reference and hand-computed cases.


def test_matches_loop_reference_on_random_case():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(9, 13, 4)).astype(np.float32)
    xy = rng.uniform(-6.0, [50.0, 34.0], (10, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.1, 30.0, (10, 2))], 1).astype(np.float32)
    for aligned, ratio, size in [(True, 3, (3, 5)), (False, 2, (4, 4))]:
        kwargs = dict(output_size=size, sampling_ratio=ratio, aligned=aligned)
        ref, _ = np_roi_align(features, boxes, spatial_scale=0.25, **kwargs)
        out = _roi_align(features, boxes, spatial_scale=0.25, **kwargs)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_linear_ramp_is_sampled_exactly_at_bin_centres():
    """Bilinear interpolation of f = a*x + b*y + c is exact, so a bin's mean over its regular
    sample grid is f at the bin centre, as long as no sample is clamped."""
    height, width = 20, 30
    a, b, c = np.array([1.0, -0.5]), np.array([2.0, 0.25]), np.array([3.0, -1.0])
    yy, xx = np.mgrid[:height, :width]
    features = (xx[..., None] * a + yy[..., None] * b + c).astype(np.float32)
    boxes = np.array([[8.0, 12.0, 80.0, 60.0], [40.0, 20.0, 44.0, 70.0]], np.float32)
    scale = 0.25
    out = _roi_align(
        features, boxes, spatial_scale=scale, output_size=(3, 4), sampling_ratio=2, aligned=True
    )
    for r, (x1, y1, x2, y2) in enumerate(boxes * scale - 0.5):
        cy = y1 + (np.arange(3) + 0.5) * (y2 - y1) / 3
        cx = x1 + (np.arange(4) + 0.5) * (x2 - x1) / 4
        expected = cx[None, :, None] * a + cy[:, None, None] * b + c
        np.testing.assert_allclose(out[r], expected, atol=1e-4)


def test_constant_map_hand_cases():
    """On a constant map every inside sample reads the constant and every outside one reads 0."""
    features = np.full((10, 12, 2), 3.0, np.float32)
    boxes = np.array(
        [
            [2.0, 2.0, 6.0, 9.0],  # inside
            [-3.0, 2.0, 1.0, 4.0],  # x samples at -2 (outside) and 0 (inside): half
            [-3.0, -3.0, 1.0, 1.0],  # a quarter of the samples inside
            [20.0, 2.0, 30.0, 4.0],  # wholly outside
            [11.0, 9.0, 11.8, 9.5],  # in the last pixel (rows 9.25, 9.75): clamped, still 3
        ],
        np.float32,
    )
    out = _roi_align(
        features, boxes, spatial_scale=1.0, output_size=1, sampling_ratio=2, aligned=False
    )
    np.testing.assert_allclose(out[:, 0, 0, 0], [3.0, 1.5, 0.75, 0.0, 3.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Edge cases.


def test_zero_boxes():
    features = GOLDEN["single_features"]
    empty = np.zeros((0, 4), np.float32)
    out = _roi_align(
        features, empty, spatial_scale=0.25, output_size=7, sampling_ratio=2, aligned=True
    )
    assert out.shape == (0, 7, 7, 3)
    out = _multilevel(LEVELS, empty, output_size=(5, 6), sampling_ratio=2, aligned=True)
    assert out.shape == (0, 5, 6, 3)
    grad = _roi_align_grad(
        features, empty, np.zeros((0, 7, 7, 3)), 0.25, output_size=7, sampling_ratio=2, aligned=True
    )
    np.testing.assert_array_equal(grad, np.zeros_like(features))
    grads = _multilevel_grad(
        LEVELS, empty, np.zeros((0, 7, 7, 3)), output_size=7, sampling_ratio=2, aligned=False
    )
    assert all((np.asarray(g) == 0).all() for g in grads)


@pytest.mark.parametrize("aligned", [True, False])
def test_padding_and_degenerate_boxes_are_finite(aligned):
    features = GOLDEN["single_features"]
    boxes = np.array(
        [[0, 0, 0, 0], [0, 0, 0, 0], [30, 30, 10, 10], [5, 40, 5, 2], [8, 8, 8, 8]], np.float32
    )
    weights = np.ones((5, 7, 7, 3), np.float32)
    kwargs = dict(output_size=7, sampling_ratio=2, aligned=aligned)
    out = _roi_align(features, boxes, spatial_scale=0.25, **kwargs)
    grad = _roi_align_grad(features, boxes, weights, 0.25, **kwargs)
    assert np.isfinite(out).all() and np.isfinite(grad).all()
    ref, _ = np_roi_align(features, boxes, spatial_scale=0.25, **kwargs)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    multi = _multilevel(LEVELS, boxes, **kwargs)
    multi_grads = _multilevel_grad(LEVELS, boxes, weights, **kwargs)
    assert np.isfinite(multi).all() and all(np.isfinite(g).all() for g in multi_grads)


def test_bfloat16_features():
    boxes, scale, kwargs = _case(0)
    features = jnp.asarray(GOLDEN["single_features"], jnp.bfloat16)
    out = _roi_align(features, boxes, spatial_scale=scale, **kwargs)
    assert out.dtype == jnp.bfloat16
    # Same geometry on the bf16-rounded map; only the final rounding to bf16 differs.
    ref = _roi_align(features.astype(jnp.float32), boxes, spatial_scale=scale, **kwargs)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2, rtol=1e-2)
    grad = _roi_align_grad(features, boxes, GOLDEN["grad_weights"], scale, **kwargs)
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        grad.astype(jnp.float32), GOLDEN["grad_features"], atol=5e-2, rtol=2e-2
    )
    multi = _multilevel(
        [jnp.asarray(f, jnp.bfloat16) for f in LEVELS], GOLDEN["ms_boxes"], **kwargs
    )
    assert multi.dtype == jnp.bfloat16 and np.isfinite(multi.astype(jnp.float32)).all()


@pytest.mark.parametrize("ratio", [0, -1])
def test_adaptive_sampling_ratio_is_rejected(ratio):
    with pytest.raises(ValueError, match="static shape"):
        roi_align(GOLDEN["single_features"], GOLDEN["case0_boxes"], 7, 0.25, ratio)
    with pytest.raises(ValueError, match="static shape"):
        multilevel_roi_align(LEVELS, GOLDEN["ms_boxes"], 7, sampling_ratio=ratio)


# ---------------------------------------------------------------------------------------------
# Tracing, batching, memory.


def test_trace_counts(trace_counter):
    features = GOLDEN["single_features"]
    boxes = GOLDEN["case0_boxes"]
    tc = trace_counter(roi_align, static_argnames=_STATIC)
    for shift in range(3):
        tc(
            features,
            boxes + shift,
            spatial_scale=0.25,
            output_size=7,
            sampling_ratio=2,
            aligned=True,
        )
    assert tc.count == 1
    tc(features, boxes[:5], spatial_scale=0.25, output_size=7, sampling_ratio=2, aligned=True)
    assert tc.count == 2

    tm = trace_counter(multilevel_roi_align, static_argnames=_STATIC)
    for shift in range(3):
        tm(LEVELS, GOLDEN["ms_boxes"] + shift, output_size=7, sampling_ratio=2, aligned=True)
    assert tm.count == 1
    tm(LEVELS, GOLDEN["ms_boxes"][:3], output_size=7, sampling_ratio=2, aligned=True)
    assert tm.count == 2


def test_vmap_over_batch_equals_per_image_calls():
    kwargs = dict(output_size=7, sampling_ratio=2, aligned=False)
    levels = [np.stack([f, f[::-1, ::-1] * 2.0]) for f in LEVELS]
    boxes = np.stack([GOLDEN["ms_boxes"], GOLDEN["ms_boxes"][::-1] + 3.0])
    weights = np.stack([GOLDEN["ms_grad_weights"], GOLDEN["ms_grad_weights"][::-1]])

    @jax.jit
    def batched(levels, boxes, weights):
        out = jax.vmap(lambda f, b: multilevel_roi_align(f, b, **kwargs))(levels, boxes)
        grads = jax.grad(lambda f: jnp.sum(out_fn(f, boxes) * weights))(levels)
        return out, grads

    out_fn = jax.vmap(lambda f, b: multilevel_roi_align(f, b, **kwargs))
    out, grads = batched(levels, boxes, weights)
    for i in range(2):
        per_image = [f[i] for f in levels]
        ref = _multilevel(per_image, boxes[i], **kwargs)
        np.testing.assert_allclose(out[i], ref, atol=1e-6)
        ref_grads = _multilevel_grad(per_image, boxes[i], weights[i], **kwargs)
        for g, rg in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g[i], rg, atol=1e-5)


def test_samples_are_not_materialised():
    """The S = 16 gathered corners per bin must fuse into the weighted sum, even when the output
    feeds a reduction (XLA:CPU would otherwise materialise S output-sized arrays)."""
    features = jnp.zeros((64, 64, 32), jnp.float32)
    boxes = jnp.tile(jnp.array([[4.0, 4.0, 200.0, 150.0]]), (256, 1))
    weights = jnp.ones((256, 7, 7, 32), jnp.float32)
    loss = lambda f, b, w: _weighted_sum(f, b, w, 0.25, 7, 2, True)
    materialised_bytes = 16 * weights.size * 4
    for fn in (loss, jax.value_and_grad(loss)):
        compiled = jax.jit(fn).lower(features, boxes, weights).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < materialised_bytes / 2, (temp, materialised_bytes)
