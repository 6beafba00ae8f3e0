"""Prediction heads: RPN, box (2 FC), mask (4 conv + deconv) and MaskIoU.

Modules map arrays to arrays; losses, targets and post-processing live elsewhere. Layer names
follow torchvision where it has the layer (`conv`, `cls_logits`, `bbox_pred`, `fc6`, `fc7`,
`cls_score`, `mask_fcn1..4`, `conv5_mask`, `mask_fcn_logits`) so imported weights map by name.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from msrcnn.models.layers import Conv

_RELU_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_FC_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)


def _roi_conv3x3(features, name, dtype, impl, stride=1):
    """A 3x3 conv of the mask / MaskIoU heads. In training these run inside the mask
    branch's `lax.switch` (msrcnn.ops.slot_buckets), so with "cpu_matmul" their input
    gradients are forward ops (`msrcnn.ops.xla_cpu`)."""
    return Conv(
        features,
        3,
        stride,
        dtype=dtype,
        kernel_init=_RELU_FAN_OUT,
        impl=impl,
        forward_input_grad=True,
        name=name,
    )


class Upsample2x(nn.Module):
    """A 2x2, stride-2 transposed convolution computed as one matmul + depth-to-space.

    With kernel size equal to stride the output windows do not overlap: output pixel
    (2i + a, 2j + b) is x[i, j] @ kernel[a, b] + bias. A per-pixel matmul to 4 * out channels
    followed by a reshape computes exactly that, and on CPU its backward pass is ~5x faster
    than XLA's lhs-dilated convolution (nn.ConvTranspose) at mask-head sizes.

    The kernel is stored as (2, 2, in, out) with kernel[a, b] the weights of output offset
    (a, b); torchvision's ConvTranspose2d weight (in, out, a, b) maps to it by a transpose.
    """

    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = _RELU_FAN_OUT

    @nn.compact
    def __call__(self, x, shuffle: bool = True):
        """[N, H, W, C] -> [N, 2H, 2W, features]; shuffle=False: [N, H, W, 2, 2, features]
        with [n, i, j, a, b] the output pixel (2i + a, 2j + b), i.e. before depth-to-space
        (pointwise layers after it can run in that layout and skip moving every channel)."""
        in_ch = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (2, 2, in_ch, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        n, h, w, _ = x.shape
        # [C, a, b, out] so one matmul gives every output offset of a pixel at once.
        flat_kernel = kernel.transpose(2, 0, 1, 3).reshape(in_ch, 4 * self.features)
        y = jnp.dot(x.astype(self.dtype), flat_kernel.astype(self.dtype))  # [N, H, W, 4*out]
        y = y.reshape(n, h, w, 2, 2, self.features) + bias.astype(self.dtype)
        return depth_to_space2x(y) if shuffle else y


def depth_to_space2x(y):
    """[N, H, W, 2, 2, ...] -> [N, 2H, 2W, ...] (see Upsample2x)."""
    n, h, w = y.shape[:3]
    y = jnp.moveaxis(y, 3, 2)  # [N, H, 2, W, 2, ...]
    return y.reshape(n, 2 * h, 2 * w, *y.shape[5:])


class ClassLogits(nn.Module):
    """The mask head's 1x1 conv to K class logits, or to each RoI's own class only.

    Parameters as nn.Conv(K, (1, 1)): kernel [1, 1, C, K], bias [K]. Training needs only the
    target class's logits of each RoI (the loss reads no other channel), so `classes` selects
    one kernel column per RoI: the same values at 1/K of the work, and the other columns'
    gradients are zero as before.
    """

    num_classes: int
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.001)

    @nn.compact
    def __call__(self, x, classes=None):
        """[R, ..., C] -> [R, ..., K]; with classes [R] (1..K): [R, ...] logits of each RoI's
        class (class 0, padding, reads channel 0)."""
        in_ch = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (1, 1, in_ch, self.num_classes))
        bias = self.param("bias", nn.initializers.zeros, (self.num_classes,))
        kernel, bias = kernel[0, 0].astype(self.dtype), bias.astype(self.dtype)
        x = x.astype(self.dtype)
        if classes is None:
            return jnp.dot(x, kernel) + bias
        column = jnp.clip(jnp.asarray(classes, jnp.int32) - 1, 0, self.num_classes - 1)
        weights = kernel.T[column]  # [R, C]
        out = jnp.einsum("r...c,rc->r...", x, weights)
        return out + bias[column].reshape((-1,) + (1,) * (out.ndim - 1))


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then objectness (A) and box deltas (4A) per location.

    Applied to every pyramid level with the same weights.

    Attributes:
      num_anchors: anchors per location A (3 aspect ratios x 1 size for FPN).
      dtype: computation dtype; outputs are float32.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    num_anchors: int = 3
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, features: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        """[B, H_l, W_l, C] per level -> (logits [B, H_l*W_l*A], deltas [B, H_l*W_l*A, 4]).

        The flattening order (location-major, anchor-minor) is the anchors' order.
        """
        init = nn.initializers.normal(0.01)
        conv = lambda features, k, name: Conv(
            features, k, dtype=self.dtype, kernel_init=init, impl=self.conv_impl, name=name
        )
        shared = conv(features[0].shape[-1], 3, "conv")
        cls = conv(self.num_anchors, 1, "cls_logits")
        box = conv(4 * self.num_anchors, 1, "bbox_pred")
        logits, deltas = [], []
        for x in features:
            x = nn.relu(shared(x))
            batch = x.shape[0]
            logits.append(cls(x).astype(jnp.float32).reshape(batch, -1))
            deltas.append(box(x).astype(jnp.float32).reshape(batch, -1, 4))
        return logits, deltas


class BoxHead(nn.Module):
    """Two FC-1024 layers, then K+1 class logits and class-specific box deltas.

    Attributes:
      num_classes: K foreground classes; logits have K + 1 columns (0 is background).
      hidden: width of the two FC layers.
      dtype: computation dtype; outputs are float32.
    """

    num_classes: int
    hidden: int = 1024
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, roi_features):
        """[R, 7, 7, C] -> (class logits [R, K+1], deltas [R, K+1, 4])."""
        x = roi_features.reshape(roi_features.shape[0], -1)  # [R, 7*7*C], H,W,C order
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_FC_INIT, name="fc6")(x))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_FC_INIT, name="fc7")(x))
        logits = nn.Dense(
            self.num_classes + 1,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="cls_score",
        )(x)
        deltas = nn.Dense(
            4 * (self.num_classes + 1),
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.001),
            name="bbox_pred",
        )(x)
        deltas = deltas.reshape(x.shape[0], self.num_classes + 1, 4)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)


class MaskHead(nn.Module):
    """Four 3x3 conv-256 + ReLU, a 2x2 stride-2 deconv + ReLU, then K mask logits at 28x28.

    Attributes:
      num_classes: K foreground classes (one mask per class, no background mask).
      channels: width of the convs.
      dtype: computation dtype; logits are float32.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    num_classes: int
    channels: int = 256
    num_convs: int = 4
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, roi_features, classes=None):
        """[R, 14, 14, C] -> mask logits [R, 28, 28, K]; with classes [R] (1..K), only each
        RoI's class: [R, 28, 28] (what training reads, at a fraction of the work)."""
        x = roi_features
        for i in range(self.num_convs):
            conv = _roi_conv3x3(self.channels, f"mask_fcn{i + 1}", self.dtype, self.conv_impl)
            x = nn.relu(conv(x))
        # The upsampling's depth-to-space moves every channel; the 1x1 logits conv and the
        # ReLU are per pixel, so they run before it and only the logits are moved.
        x = nn.relu(Upsample2x(self.channels, dtype=self.dtype, name="conv5_mask")(x, False))
        logits = ClassLogits(self.num_classes, dtype=self.dtype, name="mask_fcn_logits")(x, classes)
        return depth_to_space2x(logits).astype(jnp.float32)


class MaskIoUHead(nn.Module):
    """Predicts the IoU of each predicted mask with its ground truth (Mask Scoring R-CNN).

    Input: the mask branch's RoI features [R, 14, 14, C] concatenated with a 2x2 max-pool of the
    chosen class's soft mask (sigmoid, not binarised) -> C + 1 channels. Three 3x3 conv-256 and
    one stride-2 3x3 conv-256 (14 -> 7), ReLU each; FC 1024, FC 1024, FC K (linear).

    Attributes:
      num_classes: K; one MaskIoU per foreground class, the caller picks the target / predicted
        class column.
      channels: conv width; hidden: FC width.
      dtype: computation dtype; output is float32.
      conv_impl: "xla" or "cpu_matmul" (`msrcnn.models.layers.Conv`).
    """

    num_classes: int
    channels: int = 256
    hidden: int = 1024
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, roi_features, mask_probs):
        """[R, 14, 14, C] features, [R, 28, 28] mask probabilities -> MaskIoU [R, K]."""
        pooled = nn.max_pool(mask_probs[..., None], (2, 2), strides=(2, 2))  # [R, 14, 14, 1]
        x = jnp.concatenate([roi_features.astype(self.dtype), pooled.astype(self.dtype)], -1)
        conv = lambda name, stride=1: _roi_conv3x3(
            self.channels, name, self.dtype, self.conv_impl, stride
        )
        for i in range(3):
            x = nn.relu(conv(f"maskiou_fcn{i + 1}")(x))
        x = nn.relu(conv("maskiou_fcn4", stride=2)(x))  # 7x7
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_FC_INIT, name="maskiou_fc1")(x)
        )
        x = nn.relu(
            nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_FC_INIT, name="maskiou_fc2")(x)
        )
        iou = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01),
            name="maskiou",
        )(x)
        return iou.astype(jnp.float32)
