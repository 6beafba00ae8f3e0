"""3x3 convolution (padding 1, stride 1 or 2) with its gradients written as forward ops.

Same values and gradients as `lax.conv_general_dilated`, formulated differently: the kernel
gradient is dK[i, j] = sum over pixels of x_padded[shifted by (i, j)]^T dy, one
[C, N*H*W] x [N*H*W, O] matmul per kernel tap; the input gradient is a forward conv with the
rotated kernel (stride 1) or nine matmuls spread back to the input grid (stride 2).

Why: the mask branch runs inside a `lax.switch` (`msrcnn.ops.slot_buckets`), and there
XLA:CPU's own gradient convolutions fall off its fast (YNNPACK) path: the kernel gradient of a
3x3 conv on [128, 14, 14, 256] takes ~130x longer than at top level, the input gradient
several times longer.
Written as above both stay as fast as at top level (kernel gradient 0.28 s inside a cond vs
0.31 s for XLA's at top level, 2 cores).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, stride):
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_NHWC
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, kernel, stride: int = 1):
    """x [N, H, W, C], kernel [3, 3, C, O] -> [N, ceil(H / s), ceil(W / s), O], padding 1."""
    return _conv(x, kernel, stride)


def _conv3x3_fwd(x, kernel, stride):
    return _conv(x, kernel, stride), (x, kernel)


def _conv3x3_bwd(stride, residuals, dy):
    x, kernel = residuals
    _, h_out, w_out, out_ch = dy.shape
    in_ch = x.shape[-1]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dy_rows = dy.reshape(-1, out_ch)  # [N * H' * W', O]
    kernel_taps = []
    for i in range(3):
        for j in range(3):
            # Input pixels that tap (i, j) of every output pixel read: [N, H', W', C].
            window = padded[:, i : i + stride * h_out : stride, j : j + stride * w_out : stride]
            rows = window.reshape(-1, in_ch)
            kernel_taps.append(jnp.dot(rows.T, dy_rows, preferred_element_type=jnp.float32))
    dkernel = jnp.stack(kernel_taps).reshape(kernel.shape).astype(kernel.dtype)
    return _input_gradient(dy, kernel, x.shape, stride), dkernel


def _input_gradient(dy, kernel, x_shape, stride):
    """dL/dx of the padding-1 3x3 conv, written as forward ops (XLA:CPU's own transposed
    convolution falls off its fast path inside a conditional)."""
    if stride == 1:
        # A stride-1 conv's input gradient is the conv of dy with the kernel rotated by 180
        # degrees and its in / out channels swapped.
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        return _conv(dy, flipped, 1).astype(dy.dtype)
    # Strided: each tap (i, j) sends dy[h, w] @ kernel[i, j].T to padded input pixel
    # (s*h + i, s*w + j); spread with interior padding, then drop the 1-pixel border.
    n, h, w, in_ch = x_shape
    h_out, w_out = dy.shape[1:3]
    zero = jnp.zeros((), jnp.float32)
    total = jnp.zeros((n, h + 2, w + 2, in_ch), jnp.float32)
    for i in range(3):
        for j in range(3):
            part = jnp.dot(dy, kernel[i, j].T, preferred_element_type=jnp.float32)
            config = [
                (0, 0, 0),
                (i, h + 2 - i - (stride * (h_out - 1) + 1), stride - 1),
                (j, w + 2 - j - (stride * (w_out - 1) + 1), stride - 1),
                (0, 0, 0),
            ]
            total = total + jax.lax.pad(part, zero, config)
    return total[:, 1 : h + 1, 1 : w + 1].astype(dy.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
):
    """`lax.conv_general_dilated`'s signature for `flax.linen.Conv(conv_general_dilated=...)`.

    Takes the `conv3x3` path for 3x3, padding 1, stride 1 or 2, NHWC / HWIO, no dilation or
    groups (every conv of the mask and MaskIoU heads), and `lax` otherwise.
    """
    plain = (
        rhs.shape[:2] == (3, 3)
        and tuple(window_strides) in ((1, 1), (2, 2))
        and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and precision is None
        and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if plain:
        return conv3x3(lhs, rhs, window_strides[0])
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
    )
