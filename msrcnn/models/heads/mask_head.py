"""The mask head: four 3x3 convs, a 2x2 stride-2 deconv, then per-class mask logits at 28x28.

Layer names follow torchvision (`mask_fcn1..4`, `conv5_mask`, `mask_fcn_logits`) so imported
weights map by name. The deconv (`Upsample2x`) and the logits conv (`ClassLogits`) are written
out as matmuls; their parameters are those of the layers they replace.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from msrcnn.models.heads._common import RELU_FAN_OUT, roi_conv3x3


class Upsample2x(nn.Module):
    """A 2x2, stride-2 transposed convolution computed as one matmul + depth-to-space.

    With kernel size equal to stride the output windows do not overlap: output pixel
    (2i + a, 2j + b) is x[i, j] @ kernel[a, b] + bias. A per-pixel matmul to 4 * out channels
    followed by a reshape computes exactly that, and on CPU its backward pass is much faster
    than XLA's lhs-dilated convolution (nn.ConvTranspose) at mask-head sizes.

    The kernel is stored as (2, 2, in, out) with kernel[a, b] the weights of output offset
    (a, b); torchvision's ConvTranspose2d weight (in, out, a, b) maps to it by a transpose.
    """

    features: int
    dtype: Any = jnp.float32
    kernel_init: Any = RELU_FAN_OUT

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
            conv = roi_conv3x3(self.channels, f"mask_fcn{i + 1}", self.dtype, self.conv_impl)
            x = nn.relu(conv(x))
        # The upsampling's depth-to-space moves every channel; the 1x1 logits conv and the
        # ReLU are per pixel, so they run before it and only the logits are moved.
        x = nn.relu(Upsample2x(self.channels, dtype=self.dtype, name="conv5_mask")(x, False))
        logits = ClassLogits(self.num_classes, dtype=self.dtype, name="mask_fcn_logits")(x, classes)
        return depth_to_space2x(logits).astype(jnp.float32)
