"""`model.conv_impl`: "auto" resolves by backend name once, in msrcnn.models.build;
"xla" keeps every convolution XLA's own (no custom VJP from msrcnn.ops.xla_cpu in the train
step), "cpu_matmul" uses msrcnn.ops.xla_cpu; both give the train step's losses and gradients
up to float rounding."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

from experiments import tiny
from msrcnn import checkpointing, config_lib
from msrcnn import detector as detector_lib
from msrcnn.models.build import build_model, resolve_conv_impl
from msrcnn.ops.xla_cpu import conv as xla_cpu_conv
from msrcnn.training import optim, train_step
from msrcnn.training.train_state import TrainState

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")

IMPLS = ("xla", "cpu_matmul")


@pytest.mark.parametrize(
    "name, backend, want",
    [
        ("auto", "cpu", "cpu_matmul"),
        ("auto", "gpu", "xla"),
        ("auto", "cuda", "xla"),
        ("auto", "rocm", "xla"),
        ("auto", "tpu", "xla"),
        ("xla", "cpu", "xla"),
        ("cpu_matmul", "gpu", "cpu_matmul"),
    ],
)
def test_auto_resolves_by_backend_name(name, backend, want):
    assert resolve_conv_impl(name, backend) == want
    config = tiny.get_config()
    config.model.conv_impl = name
    assert build_model(config, backend=backend).conv_impl == want


def test_unknown_conv_impl_is_an_error():
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("matmul", "cpu")


def test_config_without_the_setting_means_auto():
    # A checkpoint's stored config from before the setting existed.
    config = tiny.get_config()
    stored = json.loads(config.to_json())
    del stored["model"]["conv_impl"]
    config = ml_collections.ConfigDict(config_lib.upgrade_stored(stored))
    assert build_model(config, backend="cpu").conv_impl == "cpu_matmul"
    assert build_model(config, backend="tpu").conv_impl == "xla"


def test_conv_impl_is_not_part_of_the_model_identity():
    # A checkpoint trained with one implementation resumes and evaluates under another, and
    # a stored config from before the setting existed is the same model.
    stored = tiny.get_config()
    stored.model.conv_impl = "cpu_matmul"
    other = tiny.get_config()
    other.model.conv_impl = "xla"
    assert config_lib.model_identity(stored) == config_lib.model_identity(other)
    old = json.loads(tiny.get_config().to_json())
    del old["model"]["conv_impl"]
    old = ml_collections.ConfigDict(config_lib.upgrade_stored(old))
    assert config_lib.model_identity(old) == config_lib.model_identity(other)
    assert checkpointing.check_config_drift(json.loads(stored.to_json()), other, "W") == []
    other.model.mask_convs = 3
    assert config_lib.model_identity(stored) != config_lib.model_identity(other)


def _config(conv_impl):
    config = tiny.get_config()
    # 64 sampled RoIs at 25%: 16 slots that can hold positives, in buckets of 3: the mask
    # branch runs inside the switch, where "cpu_matmul" takes forward-op input gradients.
    config.train.roi_batch_size_per_image = 64
    config.train.mask_slot_step = 3
    config.model.conv_impl = conv_impl
    return config


def _batch(size=64, max_instances=4, mask_size=28, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        "images": rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8),
        "image_hw": np.array([[size, size], [size, 48]], np.int32),
        "gt_boxes": np.zeros((2, max_instances, 4), np.float32),
        "gt_classes": np.zeros((2, max_instances), np.int32),
        "gt_masks": np.zeros((2, max_instances, mask_size, mask_size), np.uint8),
        "gt_valid": np.zeros((2, max_instances), bool),
    }
    for i in range(2):
        for j in range(3 - i):
            x0, y0 = rng.uniform(0, 24, 2)
            w, h = rng.uniform(12, 22, 2)
            batch["gt_boxes"][i, j] = [x0, y0, x0 + w, y0 + h]
            batch["gt_classes"][i, j] = rng.integers(1, 5)
            batch["gt_masks"][i, j] = rng.integers(0, 2, (mask_size, mask_size)) * 255
            batch["gt_valid"][i, j] = True
    return batch


def _setup(conv_impl):
    config = _config(conv_impl)
    detector = detector_lib.from_config(config)
    assert detector.model.conv_impl == conv_impl
    variables = detector.model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return config, detector, variables["params"]


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (jit, switch, loops, VJPs)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for sub in jaxprs_in_params(eqn.params):
            yield from _eqns(sub)


@pytest.mark.parametrize("conv_impl", IMPLS)
def test_train_step_program_uses_xla_cpu_conv_only_with_cpu_matmul(conv_impl):
    config, model, params = _setup(conv_impl)
    batch, key = _batch(), jax.random.key(5)
    # The loss as the train step differentiates it: the conv op's custom VJP (a call whose
    # body is one convolution) appears only with "cpu_matmul".
    loss_jaxpr = jax.make_jaxpr(functools.partial(train_step.training_loss, model, config))(
        params, {}, batch, key
    )
    conv_vjps = [
        eqn
        for eqn in _eqns(loss_jaxpr.jaxpr)
        if eqn.primitive.name == "custom_vjp_call"
        and [e.primitive.name for e in eqn.params["call_jaxpr"].eqns] == ["conv_general_dilated"]
    ]
    # The whole train step (after differentiation, where custom VJPs are inlined): the conv
    # op's backward ops (its name scope) appear only with "cpu_matmul".
    optimizer = optim.make_optimizer(config, params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        batch_stats={},
    )
    step_jaxpr = jax.make_jaxpr(functools.partial(train_step.train_step, model, config, optimizer))(
        state, batch
    )
    backward_ops = [
        eqn
        for eqn in _eqns(step_jaxpr.jaxpr)
        if xla_cpu_conv.BWD_SCOPE in str(eqn.source_info.name_stack)
    ]
    if conv_impl == "xla":
        assert not conv_vjps and not backward_ops
    else:
        assert conv_vjps and backward_ops


@pytest.fixture(scope="module")
def losses_and_grads():
    """conv_impl -> (named losses, gradients) of the train step's loss on one batch."""
    results = {}
    for conv_impl in IMPLS:
        config, model, params = _setup(conv_impl)
        fn = jax.jit(
            jax.value_and_grad(
                functools.partial(train_step.training_loss, model, config), has_aux=True
            )
        )
        (_, (named, _)), grads = fn(params, {}, _batch(), jax.random.key(5))
        results[conv_impl] = jax.device_get((named, grads))
    return results


@pytest.mark.slow  # two train-step gradients compiled (one per implementation): slow step
def test_same_losses_and_gradients_with_either_impl(losses_and_grads):
    # Forward convolutions are the same XLA op either way: the losses (and every discrete
    # choice: proposals, samples, buckets) agree. The gradients differ only in float
    # summation order (kernel gradients as per-tap matmuls summed over pixels and chunks vs
    # XLA's gradient convolutions), ~1e-7 relative per conv, compounded through the
    # backward: 1e-4 of each tensor's largest entry is far above that and far below any
    # real difference.
    want_named, want_grads = losses_and_grads["xla"]
    named, grads = losses_and_grads["cpu_matmul"]
    assert named["loss_mask"] > 0 and named["loss_maskiou"] > 0
    for name, value in want_named.items():
        np.testing.assert_allclose(named[name], value, rtol=1e-6, err_msg=name)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    assert len(flat) == len(jax.tree.leaves(want_grads))
    for (path, got), want in zip(flat, jax.tree.leaves(want_grads), strict=True):
        scale = float(np.max(np.abs(want))) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=str(path))
    assert np.abs(grads["mask_head"]["mask_fcn1"]["kernel"]).max() > 0
