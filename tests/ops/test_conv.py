"""msrcnn.ops.conv: the RoI heads' 3x3 conv equals lax's in values and both gradients, at top
level and inside lax.cond, and slots into flax's nn.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.ops import conv


def _lax_conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _inputs(h, w, in_ch=5, out_ch=4, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, h, w, in_ch)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, in_ch, out_ch)), jnp.float32)
    return x, kernel


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [(14, 14), (9, 7), (1, 2)])
def test_values_and_gradients_match_lax(stride, hw):
    x, kernel = _inputs(*hw)
    # A non-linear read-out so that every output pixel gets its own cotangent.
    readout = jnp.asarray(np.random.default_rng(1).normal(size=_lax_conv(x, kernel, stride).shape))

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(fn(x, k, stride)) * readout)

    np.testing.assert_allclose(conv.conv3x3(x, kernel, stride), _lax_conv(x, kernel, stride))
    want = jax.grad(loss(_lax_conv), (0, 1))(x, kernel)
    got = jax.jit(jax.grad(loss(conv.conv3x3), (0, 1)))(x, kernel)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_gradients_inside_cond_match_top_level(stride):
    x, kernel = _inputs(14, 14)

    def loss(x, k):
        return jnp.sum(jnp.tanh(conv.conv3x3(x, k, stride)))

    grad = jax.grad(loss, (0, 1))
    in_cond = jax.jit(
        lambda x, k: jax.lax.cond(x[0, 0, 0, 0] < 100, grad, lambda x, k: grad(2 * x, k), x, k)
    )
    for g, w in zip(in_cond(x, kernel), jax.jit(grad)(x, kernel), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_bfloat16_gradients_keep_dtypes():
    x, kernel = _inputs(14, 14)
    x16, k16 = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    dx, dk = jax.grad(lambda x, k: jnp.sum(conv.conv3x3(x, k).astype(jnp.float32)), (0, 1))(
        x16, k16
    )
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.bfloat16
    want = jax.grad(lambda k: jnp.sum(_lax_conv(x16, k, 1).astype(jnp.float32)))(k16)
    np.testing.assert_allclose(
        np.asarray(dk, np.float32), np.asarray(want, np.float32), rtol=2e-2, atol=0.5
    )


@pytest.mark.parametrize(
    "kwargs, uses_custom",
    [
        (dict(kernel_size=(3, 3), padding=((1, 1), (1, 1))), True),
        (dict(kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))), True),
        (dict(kernel_size=(1, 1)), False),
        (dict(kernel_size=(3, 3), padding="VALID"), False),
    ],
)
def test_flax_conv_adapter(kwargs, uses_custom, monkeypatch):
    calls = []
    original = conv.conv3x3
    monkeypatch.setattr(conv, "conv3x3", lambda *a: calls.append(1) or original(*a))
    x, _ = _inputs(14, 14)
    reference = nn.Conv(4, **kwargs)
    custom = nn.Conv(4, conv_general_dilated=conv.conv_general_dilated, **kwargs)
    variables = reference.init(jax.random.key(0), x)
    want = jax.grad(lambda v: jnp.sum(reference.apply(v, x) ** 2))(variables)
    got = jax.grad(lambda v: jnp.sum(custom.apply(v, x) ** 2))(variables)
    assert bool(calls) == uses_custom
    np.testing.assert_allclose(custom.apply(variables, x), reference.apply(variables, x), atol=1e-5)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
