"""Model modules: shapes, parameter counts against torchvision, heads on hand inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.models import ms_rcnn
from msrcnn.models.fpn import upsample_nearest
from msrcnn.models.heads import MaskIoUHead
from msrcnn.models.resnet import ResNet

# torchvision maskrcnn_resnet50_fpn(num_classes=91), BN affine parameters included.
TORCHVISION_MASKRCNN_PARAMS = 44_454_513
# torchvision predicts a mask for the background class too; we predict K masks (detectron2),
# so its 1x1 mask_fcn_logits has one 256-input channel (+ bias) more than ours.
TORCHVISION_BACKGROUND_MASK_PARAMS = 256 + 1
# MaskIoU head for K = 90: convs 257->256, 3 x 256->256 (3x3), FC 12544->1024, 1024->1024,
# 1024->90, by hand: 592,384 + 3 * 590,080 + 12,846,080 + 1,049,600 + 92,250.
MASKIOU_HEAD_PARAMS_K90 = 16_350_554


def count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def param_shapes(model, size=64):
    init = lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return jax.eval_shape(init)


def test_parameter_count_matches_torchvision():
    plain = param_shapes(ms_rcnn.MaskScoringRCNN(num_classes=90, mask_scoring=False))["params"]
    assert count(plain) == TORCHVISION_MASKRCNN_PARAMS - TORCHVISION_BACKGROUND_MASK_PARAMS


def test_mask_scoring_adds_exactly_the_maskiou_head():
    full = param_shapes(ms_rcnn.MaskScoringRCNN(num_classes=90))["params"]
    assert count(full["maskiou_head"]) == MASKIOU_HEAD_PARAMS_K90
    assert full["maskiou_head"]["maskiou_fcn1"]["kernel"].shape == (3, 3, 257, 256)


def test_plain_variant_has_no_maskiou_parameters():
    plain = param_shapes(ms_rcnn.MaskScoringRCNN(num_classes=3, mask_scoring=False))["params"]
    assert "maskiou_head" not in plain


def test_resnet101_depth():
    r50 = param_shapes(ResNet(depth=50))["params"]
    r101 = param_shapes(ResNet(depth=101))["params"]
    assert sum(k.startswith("layer3_") for k in r50) == 6
    assert sum(k.startswith("layer3_") for k in r101) == 23


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_backbone_feature_shapes_and_norms(norm):
    model = ResNet(depth=50, norm=norm)
    images = jnp.zeros((2, 800, 1216, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    out = jax.eval_shape(lambda v: model.apply(v, images), variables)
    expected = {"C2": (200, 304, 256), "C3": (100, 152, 512), "C4": (50, 76, 1024)}
    expected["C5"] = (25, 38, 2048)
    assert {k: v.shape[1:] for k, v in out.items()} == expected
    assert ("batch_stats" in variables) == (norm == "bn")


def test_pyramid_shapes_for_unaligned_input():
    model = ms_rcnn.tiny(num_classes=3)
    images = jnp.zeros((1, 200, 328, 3))  # not multiples of 32: P6 is ceil(P5 / 2)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images))
    pyramid = jax.eval_shape(lambda v: model.apply(v, images, method=model.pyramid), variables)
    shapes = {k: v.shape[1:3] for k, v in pyramid.items()}
    assert shapes == {"P2": (50, 82), "P3": (25, 41), "P4": (13, 21), "P5": (7, 11), "P6": (4, 6)}


def test_upsample_nearest_matches_pytorch_rule():
    x = jnp.arange(3 * 5, dtype=jnp.float32).reshape(1, 3, 5, 1)
    out = upsample_nearest(x, (7, 10))[0, ..., 0]
    # PyTorch 'nearest': src = floor(dst * in / out).
    rows = np.floor(np.arange(7) * 3 / 7).astype(int)
    cols = np.floor(np.arange(10) * 5 / 10).astype(int)
    np.testing.assert_array_equal(out, np.asarray(x)[0, rows][:, cols, 0])


def test_frozen_stages_get_no_gradient():
    model = ResNet(depth=18, width=8, freeze_at=2)
    images = jax.random.normal(jax.random.key(1), (1, 64, 64, 3))
    variables = model.init(jax.random.key(0), images)
    grads = jax.grad(lambda p: model.apply({"params": p}, images)["C5"].sum())(variables["params"])
    assert count_nonzero(grads["conv1"]) == 0
    assert count_nonzero(grads["layer1_0"]) == 0
    assert count_nonzero(grads["layer2_0"]) > 0


def count_nonzero(tree) -> int:
    return int(sum(jnp.count_nonzero(x) for x in jax.tree.leaves(tree)))


def test_maskiou_head_uses_2x2_max_pool_of_soft_mask():
    head = MaskIoUHead(num_classes=4, channels=16, hidden=32)
    feats = jax.random.normal(jax.random.key(0), (2, 14, 14, 8))
    probs = jnp.zeros((2, 28, 28))
    variables = head.init(jax.random.key(1), feats, probs)
    # One soft value per 2x2 block, placed at different corners: same max-pool, same output.
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 0.9, (2, 14, 14)).astype(np.float32)
    top_left = np.zeros((2, 28, 28), np.float32)
    top_left[:, ::2, ::2] = values
    bottom_right = np.zeros((2, 28, 28), np.float32)
    bottom_right[:, 1::2, 1::2] = values
    a = head.apply(variables, feats, top_left)
    b = head.apply(variables, feats, bottom_right)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert a.shape == (2, 4) and a.dtype == jnp.float32
    # ... and the mask channel matters: other soft values give another prediction.
    c = head.apply(variables, feats, top_left * 0.5)
    assert not np.allclose(a, c)


def test_heads_output_float32_under_bfloat16():
    model = ms_rcnn.tiny(num_classes=3, dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables["params"]))
    out = model.apply(variables, jnp.zeros((1, 64, 64, 3)))
    assert out["box"][0].dtype == jnp.float32 and out["mask"].dtype == jnp.float32
    assert out["maskiou"].dtype == jnp.float32


def test_mask_head_class_selection_equals_the_full_logits_channel():
    """MaskHead(x, classes) is channel c - 1 of MaskHead(x) (class 0, padding, reads channel 0),
    in value and in the gradients of a loss on those channels."""
    from msrcnn.models.heads import MaskHead

    head = MaskHead(num_classes=5, channels=8, num_convs=2)
    x = jax.random.normal(jax.random.key(0), (6, 14, 14, 8))
    classes = jnp.array([1, 5, 3, 0, 2, 5])
    params = head.init(jax.random.key(1), x)
    # Non-zero biases and a larger logits kernel so every channel differs.
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(2), p.shape), params)
    full = head.apply(params, x)
    assert full.shape == (6, 28, 28, 5)
    picked = jnp.take_along_axis(full, jnp.maximum(classes - 1, 0)[:, None, None, None], -1)[..., 0]
    selected = head.apply(params, x, classes)
    assert selected.shape == (6, 28, 28)
    np.testing.assert_allclose(selected, picked, rtol=1e-5, atol=1e-5)

    target = jax.random.uniform(jax.random.key(3), (6, 28, 28))

    def loss_full(p):
        logits = jnp.take_along_axis(
            head.apply(p, x), jnp.maximum(classes - 1, 0)[:, None, None, None], -1
        )[..., 0]
        return jnp.sum((logits - target) ** 2)

    def loss_selected(p):
        return jnp.sum((head.apply(p, x, classes) - target) ** 2)

    for a, b in zip(
        jax.tree.leaves(jax.grad(loss_full)(params)),
        jax.tree.leaves(jax.grad(loss_selected)(params)),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
