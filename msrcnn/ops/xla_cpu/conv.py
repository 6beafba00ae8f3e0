"""Convolution (NHWC / HWIO, square stride, symmetric padding) with its kernel gradient as
matmuls, and optionally its input gradient as forward ops: the convolution of every layer
under `conv_impl="cpu_matmul"` (msrcnn.models.layers.Conv).

Same values and gradients as `lax.conv_general_dilated` up to float rounding, formulated
differently in the backward:
  * kernel gradient: dK[i, j] = sum over output pixels of x_padded[at tap (i, j)]^T dy, one
    [C, N*H'*W'] x [N*H'*W', O] matmul per kernel tap (one matmul for a 1x1 conv); for
    inputs over 3 MiB summed in a loop over cache-sized chunks of the input (for stride 1
    and images over a chunk, bands of a channels-first copy, matmuls in standard form);
  * input gradient: XLA's own transposed convolution, or (`forward_input_grad`) the same
    arithmetic as a forward conv: dy (spread back to stride 1 with zeros) with the rotated
    kernel.

Why: XLA:CPU computes kernel gradients as convolutions whose reduction runs over the pixels,
and those run far below its matmul speed. Inside a `lax.switch` (the train step's mask
branch, `msrcnn.ops.slot_buckets`) its gradient convolutions fall off the fast path
altogether, hence the forward-op input gradient there. Timings: benchmarks/README.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, kernel, stride: int, padding: int):
    pads = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, kernel, stride: int = 1, padding: int = 0, forward_input_grad: bool = False):
    """x [N, H, W, C], kernel [kh, kw, C, O] -> [N, H', W', O] with H' = (H + 2p - kh) // s + 1.

    forward_input_grad: compute the input gradient with forward ops (needed inside a
    conditional on XLA:CPU); otherwise XLA's transposed convolution.
    """
    return _conv(x, kernel, stride, padding)


def _conv_fwd(x, kernel, stride, padding, forward_input_grad):
    return _conv(x, kernel, stride, padding), (x, kernel)


# Name scope of the backward's ops (in jaxprs and in the compiled program's op names).
BWD_SCOPE = "xla_cpu_conv_bwd"


def _conv_bwd(stride, padding, forward_input_grad, residuals, dy):
    x, kernel = residuals
    with jax.named_scope(BWD_SCOPE):
        dkernel = kernel_gradient(x, dy, kernel.shape, stride, padding).astype(kernel.dtype)
        if forward_input_grad:
            dx = _input_gradient_as_forward_ops(dy, kernel, x.shape, stride, padding)
        else:
            _, pullback = jax.vjp(lambda x: _conv(x, kernel, stride, padding), x)
            (dx,) = pullback(dy)
    return dx.astype(x.dtype), dkernel


conv.defvjp(_conv_fwd, _conv_bwd)


def _tap_window(padded, i: int, j: int, stride: int, h_out: int, w_out: int):
    """Padded input pixels that tap (i, j) of every output pixel reads: [N, H', W', C]."""
    rows = slice(i, i + stride * (h_out - 1) + 1, stride)
    cols = slice(j, j + stride * (w_out - 1) + 1, stride)
    return padded[:, rows, cols]


# Input bytes per chunk of the chunked kernel gradient: about an L2 cache's worth, so that
# each chunk's nine tap windows and its output gradient are read from cache, not memory.
CHUNK_BYTES = 3 << 19  # 1.5 MiB


def kernel_gradient(x, dy, kernel_shape, stride: int, padding: int, chunk_bytes=None):
    """dL/dK [kh, kw, C, O] (float32) of `conv` from its input x and output gradient dy.

    chunk_bytes: when x is larger than twice this (and the kernel is not 1x1), sum the
    kernel gradient over chunks of about this many input bytes in a loop (whole images, or
    bands of output rows of one image: for stride 1 from a channels-first copy, see
    `_flat_kernel_gradient_in_bands`); 0: one pass. Default: CHUNK_BYTES. Why: the per-tap
    matmuls of a large input stream x and dy from memory once per tap; chunked, they run
    from cache.
    """
    if chunk_bytes is None:
        chunk_bytes = CHUNK_BYTES
    kh, kw = kernel_shape[:2]
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    if chunk_bytes <= 0 or kh * kw == 1 or x.size * x.dtype.itemsize <= 2 * chunk_bytes:
        return _tap_products(padded, dy, kernel_shape, stride)
    return _chunked_kernel_gradient(padded, dy, kernel_shape, stride, chunk_bytes)


def _tap_products(padded, dy, kernel_shape, stride: int):
    """sum over output pixels of padded[at tap (i, j)]^T dy, per tap: [kh, kw, C, O] float32."""
    kh, kw, in_ch, out_ch = kernel_shape
    _, h_out, w_out, _ = dy.shape
    dy_rows = dy.reshape(-1, out_ch)  # [N * H' * W', O]
    taps = []
    for i in range(kh):
        for j in range(kw):
            rows = _tap_window(padded, i, j, stride, h_out, w_out).reshape(-1, in_ch)
            taps.append(jnp.dot(rows.T, dy_rows, preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(kernel_shape)


def _chunked_kernel_gradient(padded, dy, kernel_shape, stride: int, chunk_bytes: int):
    """`_tap_products` summed over chunks of ~chunk_bytes of the padded input: groups of
    whole images when an image fits, else bands of output rows of one image (stride 1:
    `_flat_kernel_gradient_in_bands`; otherwise dy padded with zero rows to a whole number
    of bands: they add nothing)."""
    kh = kernel_shape[0]
    n, hp, wp, in_ch = padded.shape
    _, h_out, w_out, out_ch = dy.shape
    itemsize = padded.dtype.itemsize
    image_bytes = hp * wp * in_ch * itemsize
    if image_bytes <= chunk_bytes:
        images = _largest_divisor_at_most(n, chunk_bytes // image_bytes)
        rows, bands = h_out, 1
    elif stride == 1:
        return _flat_kernel_gradient_in_bands(padded, dy, kernel_shape, chunk_bytes)
    else:
        images = 1
        rows = min(h_out, max(1, chunk_bytes // (stride * wp * in_ch * itemsize)))
        bands = -(-h_out // rows)
        extra = bands * rows - h_out
        dy = jnp.pad(dy, ((0, 0), (0, extra), (0, 0), (0, 0)))
        padded = jnp.pad(padded, ((0, 0), (0, stride * extra), (0, 0), (0, 0)))
    in_rows = stride * (rows - 1) + kh

    def add_chunk(index, total):
        first_image = (index // bands) * images
        first_row = (index % bands) * rows
        x_chunk = jax.lax.dynamic_slice(
            padded, (first_image, stride * first_row, 0, 0), (images, in_rows, wp, in_ch)
        )
        dy_chunk = jax.lax.dynamic_slice(
            dy, (first_image, first_row, 0, 0), (images, rows, w_out, out_ch)
        )
        return total + _tap_products(x_chunk, dy_chunk, kernel_shape, stride)

    zero = jnp.zeros(kernel_shape, jnp.float32)
    return jax.lax.fori_loop(0, (n // images) * bands, add_chunk, zero)


def _flat_kernel_gradient_in_bands(padded, dy, kernel_shape, chunk_bytes: int):
    """`_tap_products` of a stride-1 conv as standard [C, M] x [M, O] matmuls, summed over
    bands of output rows whose input rows take about chunk_bytes (images larger than that).

    The padded input is copied once channels-first with its pixels flattened, x_t [C, P]
    (P = N * block_rows * Wp), and the output gradient is zero-padded to the same pixel grid, so
    that output pixel m reads input pixel m + i * Wp + j at tap (i, j): each tap of a band is
    a contiguous column range of x_t, and no per-tap window is copied out. Why: XLA:CPU runs
    the row-contracting matmuls of `_tap_products` well below the standard form's speed; the
    zero columns cost Wp / W' more work. Whole small images (the mask head's 14 x 14) would
    pay Hp * Wp / (H' * W') = 1.31x and lose.
    """
    kh, kw, in_ch, out_ch = kernel_shape
    n, hp, wp, _ = padded.shape
    _, h_out, w_out, _ = dy.shape
    rows = min(h_out, max(1, chunk_bytes // (wp * in_ch * padded.dtype.itemsize)))
    bands = -(-h_out // rows)
    block_rows = max(hp, bands * rows)  # rows per image in both grids; dy's extra are zeros
    padded = jnp.pad(padded, ((0, 0), (0, block_rows - hp), (0, 0), (0, 0)))
    dy = jnp.pad(dy, ((0, 0), (0, block_rows - h_out), (0, wp - w_out), (0, 0)))
    tail = (kh - 1) * wp + (kw - 1)  # how far past its band's pixels the last tap reads
    x_t = padded.transpose(3, 0, 1, 2).reshape(in_ch, -1)
    # The barrier keeps the channels-first copy: without it XLA folds the transpose into
    # the matmuls' operand layout, back to the row-contracting form.
    x_t = lax.optimization_barrier(jnp.pad(x_t, ((0, 0), (0, tail))))
    dy_rows = dy.reshape(-1, out_ch)
    span = rows * wp

    def add_band(index, total):
        start = (index // bands) * block_rows * wp + (index % bands) * span
        x_band = lax.dynamic_slice(x_t, (0, start), (in_ch, span + tail))
        dy_band = lax.dynamic_slice(dy_rows, (start, 0), (span, out_ch))
        taps = [
            jnp.dot(
                x_band[:, i * wp + j : i * wp + j + span],
                dy_band,
                preferred_element_type=jnp.float32,
            )
            for i in range(kh)
            for j in range(kw)
        ]
        return total + jnp.stack(taps).reshape(kernel_shape)

    zero = jnp.zeros(kernel_shape, jnp.float32)
    return lax.fori_loop(0, n * bands, add_band, zero)


def _largest_divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def _input_gradient_as_forward_ops(dy, kernel, x_shape, stride: int, padding: int):
    """dL/dx of `conv` written as forward ops (XLA:CPU's transposed convolution falls off its
    fast path inside a conditional): the stride-1 convolution of dy, spread out to stride 1
    with zeros, with the kernel rotated by 180 degrees and its in / out channels swapped.

    The same arithmetic as XLA's own input gradient (a convolution with lhs dilation), so at
    top level the values agree with it exactly on XLA:CPU (checked for the heads' shapes).
    """
    kh, kw = kernel.shape[:2]
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
    if stride == 1 and kh == kw == 2 * padding + 1:  # 'same': dy is already on x's grid
        return _conv(dy, flipped, 1, padding)
    # Output pixel (h', w') reads padded input (s*h' + i, s*w' + j): dy goes back to stride
    # 1 with s - 1 zeros between pixels, framed so that a 'valid' kh x kw window lands on
    # every input pixel (input pixels no output read get zeros).
    (h, w), (h_out, w_out) = x_shape[1:3], dy.shape[1:3]
    low_h, low_w = kh - 1 - padding, kw - 1 - padding
    config = [
        (0, 0, 0),
        (low_h, h + kh - 1 - low_h - (stride * (h_out - 1) + 1), stride - 1),
        (low_w, w + kw - 1 - low_w - (stride * (w_out - 1) + 1), stride - 1),
        (0, 0, 0),
    ]
    spread = lax.pad(dy, jnp.zeros((), dy.dtype), config)
    return _conv(spread, flipped, 1, 0)
