"""The model's one convolution layer, its implementation chosen by `conv_impl`.

Every convolution of the model (ResNet, FPN, RPN, mask and MaskIoU heads) is a `Conv`: square
kernel, square stride, PyTorch padding ((kernel - 1) // 2 on every side), NHWC / HWIO.
Parameters are those of `nn.Conv` ("kernel" [k, k, C, O] float32, "bias" [O]), so checkpoints
and `msrcnn.weights` are the same whatever the implementation:

  * "xla": XLA's convolution and its own gradients (GPU / TPU);
  * "cpu_matmul": `msrcnn.ops.xla_cpu.conv`, the same forward with the kernel gradient as
    matmuls (and, with `forward_input_grad`, the input gradient as forward ops).

The config's "auto" is resolved before the model is built (`msrcnn.models.build.resolve_conv_impl`):
the model only ever holds one of CONV_IMPLS.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from msrcnn.ops.xla_cpu import conv as xla_cpu_conv

CONV_IMPLS = ("xla", "cpu_matmul")

_NHWC = ("NHWC", "HWIO", "NHWC")


def check_conv_impl(impl: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    return impl


def conv(x, kernel, stride: int, padding: int, impl: str, forward_input_grad: bool = False):
    """x [N, H, W, C], kernel [k, k, C, O] -> [N, H', W', O] (stride and padding the same along
    H and W) as `impl` computes it; see `Conv`."""
    if check_conv_impl(impl) == "cpu_matmul":
        return xla_cpu_conv.conv(x, kernel, stride, padding, forward_input_grad)
    pads = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_NHWC)


class Conv(nn.Module):
    """A PyTorch-padded 2-D convolution: [N, H, W, C] -> [N, H', W', features].

    Attributes:
      features: output channels.
      kernel_size: k of the k x k kernel.
      strides: the same stride along H and W.
      use_bias: add a bias (parameter "bias").
      dtype: computation dtype (parameters stay float32).
      kernel_init: initializer of the kernel [k, k, C, features].
      impl: "xla" or "cpu_matmul" (see the module docstring).
      forward_input_grad: with "cpu_matmul", the input gradient as forward ops: for convs that
        run inside a conditional in training (the mask branch's `lax.switch`); same values up
        to float rounding. No effect with "xla".
    """

    features: int
    kernel_size: int
    strides: int = 1
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.linear.default_kernel_init
    impl: str = "xla"
    forward_input_grad: bool = False

    @nn.compact
    def __call__(self, x):
        k, pad = self.kernel_size, (self.kernel_size - 1) // 2
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32
        )
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = conv(x, kernel, self.strides, pad, self.impl, self.forward_input_grad)
        if bias is not None:
            y += bias.reshape((1,) * (y.ndim - 1) + bias.shape)
        return y
