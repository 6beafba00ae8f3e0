"""msrcnn.ops.xla_cpu.conv: equals lax's convolution in values and both gradients (kernel
gradient as matmuls, input gradient from XLA or as forward ops), at top level and inside
lax.cond. (The layer that uses it, msrcnn.models.layers.Conv: tests/models/test_layers.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops.xla_cpu import conv


def _lax_conv(x, kernel, stride, padding):
    pads = ((padding, padding), (padding, padding))
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _inputs(h, w, size=3, in_ch=5, out_ch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, h, w, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(size, size, in_ch, out_ch)), jnp.float32)
    return x, kernel


# (kernel size, padding): the model's 1x1 / 3x3 / 7x7 'same' convs, and a 'valid' one.
KERNELS = [(1, 0), (3, 1), (7, 3), (3, 0)]


@pytest.mark.parametrize("forward_input_grad", [False, True])
@pytest.mark.parametrize("size, padding", KERNELS)
@pytest.mark.parametrize("stride", [1, 2])
def test_values_and_gradients_match_lax(stride, size, padding, forward_input_grad):
    x, kernel = _inputs(9, 7, size=size)  # odd, unequal sides: strided windows end early
    out = _lax_conv(x, kernel, stride, padding)
    # A non-linear read-out so that every output pixel gets its own cotangent.
    readout = jnp.asarray(np.random.default_rng(1).normal(size=out.shape))
    ours = lambda x, k: conv.conv(x, k, stride, padding, forward_input_grad)
    theirs = lambda x, k: _lax_conv(x, k, stride, padding)

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * readout)

    np.testing.assert_allclose(ours(x, kernel), out, rtol=1e-6, atol=1e-5)
    want = jax.grad(loss(theirs), (0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss(ours), (0, 1)))(x, kernel)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_kernel_gradient_by_hand():
    # One input channel of ones on a 2x2 image, 3x3 kernel, padding 1, dy = 1 everywhere:
    # tap (i, j) sees as many in-image pixels as output pixels whose shifted window is inside.
    x = jnp.ones((1, 2, 2, 1))
    dy = jnp.ones((1, 2, 2, 1))
    got = conv.kernel_gradient(x, dy, (3, 3, 1, 1), 1, 1)[..., 0, 0]
    np.testing.assert_array_equal(got, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


@pytest.mark.parametrize("stride", [1, 2])
def test_forward_input_gradients_inside_cond_match_top_level(stride):
    x, kernel = _inputs(14, 14)

    def loss(x, k):
        return jnp.sum(jnp.tanh(conv.conv(x, k, stride, 1, True)))

    grad = jax.grad(loss, (0, 1))
    in_cond = jax.jit(
        lambda x, k: jax.lax.cond(x[0, 0, 0, 0] < 100, grad, lambda x, k: grad(2 * x, k), x, k)
    )
    for g, w in zip(in_cond(x, kernel), jax.jit(grad)(x, kernel), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("forward_input_grad", [False, True])
def test_bfloat16_gradients_keep_dtypes(forward_input_grad):
    x, kernel = _inputs(14, 14)
    x16, k16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)

    def loss(x, k):
        return jnp.sum(conv.conv(x, k, 1, 1, forward_input_grad).astype(jnp.float32))

    dx, dk = jax.grad(loss, (0, 1))(x16, k16)
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.bfloat16
    want = jax.grad(lambda k: jnp.sum(_lax_conv(x16, k, 1, 1).astype(jnp.float32)))(k16)
    np.testing.assert_allclose(
        np.asarray(dk, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=0.5
    )


@pytest.mark.parametrize("forward_input_grad", [False, True])
def test_empty_batch_gives_zero_kernel_gradient(forward_input_grad):
    # No RoIs in a bucket / batch: the kernel gradient is a sum over nothing.
    x = jnp.zeros((0, 14, 14, 5))
    kernel = jnp.ones((3, 3, 5, 4))
    dx, dk = jax.grad(lambda x, k: jnp.sum(conv.conv(x, k, 1, 1, forward_input_grad) ** 2), (0, 1))(
        x, kernel
    )
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dk, np.zeros(kernel.shape))


# (kernel size, padding, stride, chunk bytes): chunks of whole images (a 5-channel 9x7
# float32 image padded is <= 1 KiB) and bands of rows, bands not dividing the output rows
# (zero-padded), strided bands, a 'valid' conv, a 7x7 kernel.
# (kernel size, padding, stride, chunk bytes, input shape): bands of rows (stride 1: of the
# flattened channels-first copy, for several images, bands that do not divide the output;
# stride 2: windows per tap), a 'valid' conv, 7x7 kernels, whole-image chunks of one image
# and of two.
CHUNKS = [
    (3, 1, 1, 1500, (6, 9, 7, 5)),
    (3, 1, 1, 700, (6, 9, 7, 5)),
    (3, 1, 2, 300, (6, 9, 7, 5)),
    (3, 0, 1, 150, (6, 9, 7, 5)),
    (7, 3, 1, 400, (6, 9, 7, 5)),
    (7, 3, 2, 1000, (6, 9, 7, 5)),
    (3, 1, 1, 3000, (6, 9, 7, 5)),
    (5, 2, 1, 3500, (6, 9, 7, 5)),
    (3, 1, 1, 1500, (12, 4, 4, 5)),
    (3, 1, 2, 1500, (12, 4, 4, 5)),
]


@pytest.mark.parametrize("size, padding, stride, chunk_bytes, shape", CHUNKS)
def test_chunked_kernel_gradient_matches_lax(size, padding, stride, chunk_bytes, shape):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel_shape = (size, size, 5, 4)
    assert x.size * 4 > 2 * chunk_bytes  # the chunked path, not the plain one
    out_shape = _lax_conv(x, jnp.zeros(kernel_shape), stride, padding).shape
    dy = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    _, pullback = jax.vjp(lambda k: _lax_conv(x, k, stride, padding), jnp.zeros(kernel_shape))
    (want,) = pullback(dy)
    got = jax.jit(
        lambda x, dy: conv.kernel_gradient(x, dy, kernel_shape, stride, padding, chunk_bytes)
    )(x, dy)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_gradient_chunks_large_inputs_only(monkeypatch):
    # conv's backward takes the chunked kernel gradient (a loop) for inputs over twice
    # CHUNK_BYTES (on any backend: the module is chosen for CPU), never for 1x1 kernels, and
    # with the same values.
    x, kernel = _inputs(9, 7)  # 2520 bytes

    def grads(k, x):  # a new function each time: no trace cached across CHUNK_BYTES values
        loss = lambda k: jnp.sum(jnp.sin(conv.conv(x, k, 1, k.shape[0] // 2)))
        return jax.jit(jax.grad(loss))(k)

    def has_loop(k, x):
        jaxpr = str(jax.make_jaxpr(lambda k, x: grads(k, x))(k, x))
        return "scan" in jaxpr or "while" in jaxpr

    monkeypatch.setattr(conv, "CHUNK_BYTES", 1000)
    assert has_loop(kernel, x)
    assert not has_loop(kernel, x[:, :4])  # 1120 bytes: one pass
    assert not has_loop(jnp.ones((1, 1, 5, 4)), x)
    chunked = grads(kernel, x)
    monkeypatch.setattr(conv, "CHUNK_BYTES", 0)
    assert not has_loop(kernel, x)
    np.testing.assert_allclose(chunked, grads(kernel, x), rtol=1e-5, atol=1e-5)
