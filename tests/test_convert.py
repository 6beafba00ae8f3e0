"""Tests for msrcnn.weights and the msrcnn.convert command: layouts against numpy versions of
torch's ops, BN folding, the name map on the real torchvision layout (seeded weights), error
reports, re-initialisation, and the .npz -> CLI -> checkpoint -> Predictor path. No torch
needed."""

from __future__ import annotations

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn import convert
from msrcnn.models.build import build_model
from msrcnn.models.heads.mask_head import Upsample2x
from msrcnn.models.ms_rcnn import RPN_LEVELS, MaskScoringRCNN
from msrcnn.predictor import Predictor
from msrcnn.weights import layouts, loading
from msrcnn.weights import torchvision as tv_weights
from tests import seeded_weights

RNG = np.random.default_rng(0)


def _randn(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


# ---- numpy versions of the torch ops (NCHW, weights in torch layout) ------------------------


def torch_conv2d(x, weight, bias=None, stride=1, padding=0):
    """torch.nn.functional.conv2d: x [N, C, H, W], weight [O, C, kh, kw] (cross-correlation)."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for a in range(kh):
        for b in range(kw):
            patch = x[:, :, a : a + stride * oh : stride, b : b + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, a, b])
    return out + (0 if bias is None else bias[None, :, None, None])


def torch_conv_transpose2d(x, weight, bias, stride):
    """torch conv_transpose2d, padding 0: each input pixel scatters weight[c, o] * x."""
    n, _, h, w = x.shape
    _, o, kh, kw = weight.shape
    out = np.zeros((n, o, (h - 1) * stride + kh, (w - 1) * stride + kw), np.float64)
    for a in range(kh):
        for b in range(kw):
            contrib = np.einsum("nchw,co->nohw", x, weight[:, :, a, b])
            out[
                :, :, a : a + stride * (h - 1) + 1 : stride, b : b + stride * (w - 1) + 1 : stride
            ] += contrib
    return out + bias[None, :, None, None]


def torch_batch_norm_eval(x, weight, bias, mean, var, eps):
    shape = (1, -1, 1, 1)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(
        shape
    ) + bias.reshape(shape)


def relu(x):
    return np.maximum(x, 0)


def nchw(x):
    return np.transpose(np.asarray(x), (0, 3, 1, 2))


def nhwc(x):
    return np.transpose(np.asarray(x), (0, 2, 3, 1))


# ---- layouts -------------------------------------------------------------------------------


def test_conv_kernel_matches_torch_conv2d():
    x = _randn(2, 3, 9, 11)
    weight, bias = _randn(5, 3, 3, 3), _randn(5)
    conv = nn.Conv(5, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    params = {"kernel": layouts.conv_kernel(weight), "bias": bias}
    ours = conv.apply({"params": params}, nhwc(x))
    expected = torch_conv2d(x, weight, bias, stride=2, padding=1)
    np.testing.assert_allclose(nchw(ours), expected, atol=1e-4)


def test_deconv_kernel_matches_torch_conv_transpose2d():
    """The mask head's 2x2 stride-2 upsampling equals torch's ConvTranspose2d."""
    x = _randn(2, 4, 5, 6)
    weight, bias = _randn(4, 3, 2, 2), _randn(3)  # torch layout (in, out, kh, kw)
    deconv = Upsample2x(3)
    expected = torch_conv_transpose2d(x, weight, bias, stride=2)
    ours = deconv.apply(
        {"params": {"kernel": layouts.deconv_kernel(weight), "bias": bias}}, nhwc(x)
    )
    np.testing.assert_allclose(nchw(ours), expected, atol=1e-4)
    # Flax's ConvTranspose (transpose_kernel=False) computes the same with a flipped kernel.
    flax_deconv = nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding="VALID")
    flipped = layouts.deconv_kernel(weight)[::-1, ::-1]
    reference = flax_deconv.apply({"params": {"kernel": flipped, "bias": bias}}, nhwc(x))
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    wrong = deconv.apply({"params": {"kernel": flipped, "bias": bias}}, nhwc(x))
    assert np.abs(nchw(wrong) - expected).max() > 0.1


def test_dense_kernels_match_torch_linear():
    x = _randn(4, 6)
    weight, bias = _randn(3, 6), _randn(3)
    dense = nn.Dense(3)
    ours = dense.apply({"params": {"kernel": layouts.dense_kernel(weight), "bias": bias}}, x)
    np.testing.assert_allclose(ours, x @ weight.T + bias, atol=1e-5)
    # fc6: torch flattens RoI features (C, H, W), msrcnn (H, W, C).
    features = _randn(4, 5, 3, 2)  # NCHW
    weight = _randn(7, 5 * 3 * 2)
    expected = features.reshape(4, -1) @ weight.T
    kernel = layouts.dense_kernel_chw_to_hwc(weight, (3, 2, 5))
    np.testing.assert_allclose(nhwc(features).reshape(4, -1) @ kernel, expected, atol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_fold_batch_norm(eps):
    x = _randn(2, 6, 3, 3)
    weight, bias, mean = _randn(6), _randn(6), _randn(6)
    var = np.abs(_randn(6)) + np.float32(1e-4)  # small variances make eps matter
    scale, shift = layouts.fold_batch_norm(weight, bias, mean, var, eps)
    assert scale.dtype == shift.dtype == np.float32
    ours = x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    expected = torch_batch_norm_eval(x, weight, bias, mean, var, eps)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


# ---- the real torchvision layout ------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict():
    """torchvision maskrcnn_resnet50_fpn (BatchNorm2d variant) with seeded weights."""
    return seeded_weights.state_dict()


@pytest.fixture(scope="module")
def converted(state_dict):
    config = tv_weights.config_for_state_dict(state_dict)
    variables, report = tv_weights.convert_torchvision_state_dict(state_dict, config)
    return config, variables, report


def test_config_for_the_coco_layout(converted):
    config, _, _ = converted
    assert config.model.num_classes == 90  # 91-way torchvision head: background + 90
    assert config.model.depth == 50 and config.model.mask_scoring
    assert list(config.data.category_ids) == list(range(1, 91))
    names = list(config.data.class_names)
    assert names[0] == "person" and names[89] == "toothbrush" and names[11] == "N/A"
    assert sum(n != "N/A" for n in names) == 80
    assert not config.geometry.roi_aligned and config.geometry.roi_sampling_ratio == 2


def test_report(converted, state_dict):
    _, variables, report = converted
    assert report.kind == "maskrcnn"
    assert len(report.converted) == 307  # 360 minus 53 num_batches_tracked
    assert len(report.ignored) == 53 and all("num_batches_tracked" in n for n in report.ignored)
    assert set(report.converted) | set(report.ignored) == set(state_dict)
    assert report.fresh == ["maskiou_head"] and report.reinitialized == []
    assert report.bn_eps == 1e-5  # BatchNorm2d buffers (num_batches_tracked present)
    count = sum(x.size for x in jax.tree.leaves(variables))
    assert report.num_params == count
    summary = report.summary()
    assert "converted 307 tensors" in summary and "maskiou_head" in summary
    assert f"{count:,} parameters" in summary


def test_converted_shapes_match_the_model(converted):
    config, variables, _ = converted
    model = build_model(config)
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    shapes = jax.tree.map(lambda x: x.shape, variables)
    assert shapes == jax.tree.map(lambda x: x.shape, expected)


def test_stem_matches_torch(converted, state_dict):
    """conv1 + bn1 + ReLU of the converted backbone against torch's ops on the same tensors."""
    _, variables, _ = converted
    p = variables["params"]["backbone"]
    x = _randn(1, 3, 16, 16)
    sd = {k.removeprefix("backbone.body."): v for k, v in state_dict.items()}
    expected = torch_conv2d(x, sd["conv1.weight"], stride=2, padding=3)
    bn = [sd[f"bn1.{f}"] for f in ("weight", "bias", "running_mean", "running_var")]
    expected = relu(torch_batch_norm_eval(expected, *bn, eps=1e-5))
    y = jax.lax.conv_general_dilated(
        nhwc(x),
        p["conv1"]["kernel"],
        (2, 2),
        ((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    ours = relu(np.asarray(y) * p["bn1"]["scale"] + p["bn1"]["bias"])
    np.testing.assert_allclose(nchw(ours), expected, rtol=1e-4, atol=1e-4)


def test_heads_match_torchvision_layers(converted, state_dict):
    """RPN, box and mask heads of the converted model against numpy versions of torchvision's
    RPNHead, TwoMLPHead + FastRCNNPredictor and MaskRCNNHeads + MaskRCNNPredictor."""
    config, variables, _ = converted
    model = build_model(config)
    sd = state_dict

    # RPN head on one pyramid level (the others share the weights).
    level = _randn(1, 256, 4, 5)
    pyramid = {name: jnp.asarray(nhwc(level)) for name in RPN_LEVELS}
    logits, deltas = model.apply(variables, pyramid, method=MaskScoringRCNN.rpn)
    t = relu(
        torch_conv2d(level, sd["rpn.head.conv.0.0.weight"], sd["rpn.head.conv.0.0.bias"], padding=1)
    )
    t_logits = torch_conv2d(t, sd["rpn.head.cls_logits.weight"], sd["rpn.head.cls_logits.bias"])
    t_deltas = torch_conv2d(t, sd["rpn.head.bbox_pred.weight"], sd["rpn.head.bbox_pred.bias"])
    # torchvision: (N, A, H, W) -> (N, H*W*A); (N, A*4, H, W) -> (N, H*W*A, 4).
    np.testing.assert_allclose(logits[0][0], nhwc(t_logits).reshape(-1), atol=2e-3)
    np.testing.assert_allclose(deltas[0][0], nhwc(t_deltas).reshape(-1, 4), atol=2e-3)

    # Box head and predictor on 3 RoIs.
    rois = _randn(3, 256, 7, 7)
    cls, box = model.apply(variables, jnp.asarray(nhwc(rois)), method=MaskScoringRCNN.box)
    h = relu(
        rois.reshape(3, -1) @ sd["roi_heads.box_head.fc6.weight"].T
        + sd["roi_heads.box_head.fc6.bias"]
    )
    h = relu(h @ sd["roi_heads.box_head.fc7.weight"].T + sd["roi_heads.box_head.fc7.bias"])
    t_cls = (
        h @ sd["roi_heads.box_predictor.cls_score.weight"].T
        + sd["roi_heads.box_predictor.cls_score.bias"]
    )
    t_box = (
        h @ sd["roi_heads.box_predictor.bbox_pred.weight"].T
        + sd["roi_heads.box_predictor.bbox_pred.bias"]
    )
    np.testing.assert_allclose(cls, t_cls, atol=2e-3)
    np.testing.assert_allclose(box, t_box.reshape(3, 91, 4), atol=2e-3)

    # Mask head and predictor on 2 RoIs; msrcnn has no background mask (torch channel 0).
    rois = _randn(2, 256, 14, 14)
    masks = model.apply(variables, jnp.asarray(nhwc(rois)), method=MaskScoringRCNN.mask)
    m = rois
    for i in range(4):
        m = relu(
            torch_conv2d(
                m,
                sd[f"roi_heads.mask_head.{i}.0.weight"],
                sd[f"roi_heads.mask_head.{i}.0.bias"],
                padding=1,
            )
        )
    p = "roi_heads.mask_predictor."
    m = relu(torch_conv_transpose2d(m, sd[p + "conv5_mask.weight"], sd[p + "conv5_mask.bias"], 2))
    m = torch_conv2d(m, sd[p + "mask_fcn_logits.weight"], sd[p + "mask_fcn_logits.bias"])
    assert masks.shape == (2, 28, 28, 90)
    np.testing.assert_allclose(masks, nhwc(m[:, 1:]), atol=2e-3)


# ---- BN eps, names ----------------------------------------------------------------------------


def test_default_bn_eps(state_dict):
    frozen = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    # FrozenBatchNorm2d buffers of a detection model: torchvision's COCO weights run eps=0.
    assert tv_weights.default_bn_eps(frozen, "maskrcnn") == 0.0
    assert tv_weights.default_bn_eps(state_dict, "maskrcnn") == 1e-5
    assert tv_weights.default_bn_eps(frozen, "resnet") == 1e-5


def test_legacy_and_prefixed_names_are_upgraded():
    old = {
        "module.backbone.fpn.inner_blocks.2.weight": 1,
        "module.backbone.fpn.layer_blocks.0.bias": 2,
        "module.rpn.head.conv.weight": 3,
        "module.roi_heads.mask_head.mask_fcn1.weight": 4,
        "module.roi_heads.mask_head.mask_fcn4.bias": 5,
        "module.backbone.body.conv1.weight": 6,
    }
    assert tv_weights.normalize_names(old) == {
        "backbone.fpn.inner_blocks.2.0.weight": 1,
        "backbone.fpn.layer_blocks.0.0.bias": 2,
        "rpn.head.conv.0.0.weight": 3,
        "roi_heads.mask_head.0.0.weight": 4,
        "roi_heads.mask_head.3.0.bias": 5,
        "backbone.body.conv1.weight": 6,
    }


def test_resnet_depth_from_names():
    names = {f"layer3.{b}.conv1.weight": 0 for b in range(23)} | {"conv1.weight": 0}
    names["layer1.0.conv1.weight"] = 0
    assert tv_weights.source_kind(names) == "resnet"
    assert tv_weights.resnet_depth(names, "resnet") == 101
    with pytest.raises(tv_weights.ConversionError, match="layer3 has 4 blocks"):
        tv_weights.resnet_depth({f"layer3.{b}.x": 0 for b in range(4)}, "resnet")


# ---- errors -----------------------------------------------------------------------------------


def _convert(state_dict, **config_kwargs):
    config = tv_weights.config_for_state_dict(state_dict, **config_kwargs)
    return tv_weights.convert_torchvision_state_dict(state_dict, config)


def test_missing_tensors_are_named(state_dict):
    broken = dict(state_dict)
    del broken["backbone.body.layer2.1.bn2.running_var"]
    del broken["roi_heads.mask_predictor.conv5_mask.bias"]
    with pytest.raises(tv_weights.ConversionError) as info:
        _convert(broken)
    message = str(info.value)
    assert "missing 2 tensors" in message
    assert "backbone.body.layer2.1.bn2.running_var" in message
    assert "roi_heads.mask_predictor.conv5_mask.bias" in message


def test_mismatched_tensors_are_named(state_dict):
    broken = dict(state_dict)
    broken["roi_heads.box_head.fc7.weight"] = np.zeros((1024, 512), np.float32)
    broken["backbone.body.layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    broken["backbone.fpn.layer_blocks.1.0.bias"] = np.zeros((128,), np.float32)
    with pytest.raises(tv_weights.ConversionError) as info:
        _convert(broken)
    message = str(info.value)
    assert "3 mismatched tensors" in message
    for name in ("roi_heads.box_head.fc7", "backbone.body.layer1.0.conv2", "layer_blocks.1.0"):
        assert name in message


def test_unexpected_tensors_are_named(state_dict):
    extra = dict(state_dict)
    extra["roi_heads.keypoint_head.0.weight"] = np.zeros((3,), np.float32)
    extra["backbone.body.fc.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(tv_weights.ConversionError) as info:
        _convert(extra)
    message = str(info.value)
    assert "2 unexpected tensors" in message
    assert "roi_heads.keypoint_head.0.weight" in message and "backbone.body.fc.weight" in message


def test_inconsistent_class_layers_are_mismatched(state_dict):
    broken = dict(state_dict)
    broken["roi_heads.mask_predictor.mask_fcn_logits.weight"] = np.zeros(
        (81, 256, 1, 1), np.float32
    )
    with pytest.raises(tv_weights.ConversionError, match="mask_fcn_logits"):
        _convert(broken)


def test_not_a_torchvision_state_dict():
    with pytest.raises(tv_weights.ConversionError, match="not a torchvision"):
        tv_weights.source_kind({"encoder.weight": np.zeros(3)})


# ---- other class counts, backbone-only checkpoints ------------------------------------------


def test_num_classes_reinitialises_only_class_layers(state_dict, converted):
    config = tv_weights.config_for_state_dict(state_dict, num_classes=5)
    assert list(config.data.category_ids) == [] and list(config.data.class_names) == []
    variables, report = tv_weights.convert_torchvision_state_dict(state_dict, config)
    assert report.num_classes == (90, 5)
    assert report.reinitialized[:3] == [
        "box_head/cls_score",
        "box_head/bbox_pred",
        "mask_head/mask_fcn_logits",
    ]
    assert "maskiou_head/maskiou" in report.reinitialized[3]
    assert "re-initialised for 5 classes (checkpoint has 90)" in report.summary()
    p = variables["params"]
    assert p["box_head"]["cls_score"]["kernel"].shape == (1024, 6)
    assert p["box_head"]["bbox_pred"]["kernel"].shape == (1024, 24)
    assert p["mask_head"]["mask_fcn_logits"]["kernel"].shape == (1, 1, 256, 5)
    assert p["maskiou_head"]["maskiou"]["kernel"].shape == (1024, 5)
    # Everything else is the checkpoint's.
    full = converted[1]["params"]
    for path in [("box_head", "fc7"), ("mask_head", "conv5_mask"), ("rpn_head", "cls_logits")]:
        a, b = p[path[0]][path[1]], full[path[0]][path[1]]
        np.testing.assert_array_equal(a["kernel"], b["kernel"])
    # 307 converted minus the 6 tensors of the three class-dependent layers.
    assert len(report.converted) == 301


def test_resnet_imagenet_backbone(state_dict, converted):
    """A torchvision ResNet-50 classifier: backbone converted, heads fresh, fc dropped."""
    resnet = {
        k.removeprefix("backbone.body."): v
        for k, v in state_dict.items()
        if k.startswith("backbone.body.")
    }
    resnet["fc.weight"] = np.zeros((1000, 2048), np.float32)
    resnet["fc.bias"] = np.zeros((1000,), np.float32)
    config = tv_weights.config_for_state_dict(resnet, num_classes=3)
    assert config.model.num_classes == 3 and config.geometry.roi_aligned  # msrcnn defaults
    variables, report = tv_weights.convert_torchvision_state_dict(resnet, config, seed=1)
    assert report.kind == "resnet"
    assert report.fresh == ["fpn", "rpn_head", "box_head", "mask_head", "maskiou_head"]
    assert report.bn_eps == 1e-5
    assert {"fc.weight", "fc.bias"} <= set(report.ignored)
    summary = report.summary()
    assert "freshly initialised" in summary and "fpn" in summary
    assert "dropped 2 unused tensors: fc.bias, fc.weight" in summary
    backbone = variables["params"]["backbone"]
    jax.tree.map(np.testing.assert_array_equal, backbone, converted[1]["params"]["backbone"])
    assert variables["params"]["box_head"]["cls_score"]["kernel"].shape == (1024, 4)


# ---- files and the command line -------------------------------------------------------------


def test_npz_through_the_cli_to_a_predictor(tmp_path, state_dict, capsys):
    path = tmp_path / "maskrcnn.npz"
    np.savez(path, **state_dict)
    output = tmp_path / "ckpt"
    argv = [
        "convert",
        "--from=torchvision",
        f"--checkpoint={path}",
        f"--output={output}",
        "--mask_scoring=false",
    ]
    convert.FLAGS(argv)
    try:
        convert.main([])
    finally:
        convert.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    assert "converted 307 tensors" in printed and "parameters" in printed
    assert "freshly initialised" not in printed  # plain Mask R-CNN: nothing fresh

    predictor = Predictor.from_checkpoint(str(output))
    assert predictor.config.model.num_classes == 90 and not predictor.config.model.mask_scoring
    assert not predictor.model.mask_scoring
    assert list(predictor.category_ids) == list(range(1, 91))
    assert predictor.config.geometry.roi_aligned is False
    expected, _ = _convert(state_dict, mask_scoring=False)
    assert "maskiou_head" not in predictor.variables["params"]
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
        predictor.variables,
        expected,
    )


def test_output_directory_must_be_empty(tmp_path):
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError):
        tv_weights.convert_checkpoint(str(tmp_path / "missing.npz"), str(tmp_path))


def test_pth_without_torch_explains_the_install(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    path.write_bytes(b"not really a checkpoint")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ImportError, match=r"pip install msrcnn\[convert\]"):
        loading.load_state_dict(str(path))


def test_unknown_file_type(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected \.pth, \.pt or \.npz"):
        loading.load_state_dict(str(path))
