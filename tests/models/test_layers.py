"""msrcnn.models.layers.Conv: nn.Conv's parameters, values and gradients under either
implementation; "xla" never reaches msrcnn.ops.xla_cpu, "cpu_matmul" always does."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn.models import ms_rcnn
from msrcnn.models.layers import Conv
from msrcnn.ops.xla_cpu import conv as xla_cpu_conv

# (kernel, stride, bias): every kind of conv in the model (stem 7x7 s2, 3x3 s1 / s2, 1x1
# laterals and shortcuts, heads with bias).
KINDS = [(7, 2, False), (3, 1, True), (3, 2, True), (1, 1, False), (1, 2, False)]
IMPLS = [("xla", False), ("cpu_matmul", False), ("cpu_matmul", True)]


def _reference(features, kernel, stride, use_bias):
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=use_bias,
    )


@pytest.mark.parametrize("impl, forward_input_grad", IMPLS)
@pytest.mark.parametrize("kernel, stride, use_bias", KINDS)
def test_matches_flax_conv(kernel, stride, use_bias, impl, forward_input_grad, monkeypatch):
    calls = []
    original = xla_cpu_conv.conv
    monkeypatch.setattr(xla_cpu_conv, "conv", lambda *a: calls.append(a) or original(*a))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 5)), jnp.float32)
    reference = _reference(4, kernel, stride, use_bias)
    ours = Conv(4, kernel, stride, use_bias, impl=impl, forward_input_grad=forward_input_grad)
    variables = reference.init(jax.random.key(0), x)
    # Same parameter names, shapes and initial values for the same key.
    mine = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(mine) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(
        ours.apply(variables, x), reference.apply(variables, x), rtol=1e-6, atol=1e-5
    )
    want = jax.grad(loss(reference), (0, 1))(variables, x)
    got = jax.grad(loss(ours), (0, 1))(variables, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)
    if impl == "xla":
        assert not calls
    else:
        assert calls and all(c[4] == forward_input_grad for c in calls)


def test_unknown_impl_is_an_error():
    with pytest.raises(ValueError, match="conv_impl"):
        Conv(4, 3, impl="auto").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="conv_impl"):
        ms_rcnn.tiny(num_classes=2, conv_impl="auto").init(
            jax.random.key(0), jnp.zeros((1, 64, 64, 3))
        )


def test_model_parameters_do_not_depend_on_the_implementation():
    images = jnp.zeros((1, 64, 64, 3))
    xla = ms_rcnn.tiny(num_classes=3, conv_impl="xla").init(jax.random.key(0), images)
    cpu = ms_rcnn.tiny(num_classes=3, conv_impl="cpu_matmul").init(jax.random.key(0), images)
    assert jax.tree.structure(xla) == jax.tree.structure(cpu)
    for a, b in zip(jax.tree.leaves(xla), jax.tree.leaves(cpu), strict=True):
        np.testing.assert_array_equal(a, b)
