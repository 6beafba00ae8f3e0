"""msrcnn/training/optim.py: learning rate schedule, frozen parameters and weight decay mask.

Parameter trees come from `jax.eval_shape` of the tiny model's init (no compilation) and are
filled with random values, so every check is cheap.
"""

from __future__ import annotations

import functools
import math

import flax.traverse_util as traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import tiny
from msrcnn import config_lib
from msrcnn.models.build import build_model
from msrcnn.training import optim


def _schedule_config(**train):
    config = config_lib.base_config()
    config.train.update(
        dict(learning_rate=0.02, num_steps=90, warmup_steps=10, warmup_factor=0.001)
    )
    config.train.update(train)
    return config


def _lrs(config, steps):
    schedule = optim.learning_rate_schedule(config)
    return {s: float(schedule(jnp.asarray(s, jnp.int32))) for s in steps}


def test_step_schedule_warmup_then_decays_at_absolute_steps():
    # lr_steps (2/3, 8/9) of 90 steps: x0.1 at steps 60 and 80, counted from step 0 (not
    # from the end of the warmup), as detectron2's WarmupMultiStepLR.
    lr = _lrs(_schedule_config(), [0, 5, 9, 10, 11, 59, 60, 79, 80, 89, 90])
    # float32: optax's linear warmup computes end + (start - end) * (1 - frac), exact to a
    # few ulp of 0.02 (~2e-9), not to a relative 1e-6 of 2e-5.
    assert lr[0] == pytest.approx(0.02 * 0.001, abs=1e-8)
    assert lr[5] == pytest.approx(0.02 * (0.001 + 0.999 * 5 / 10), rel=1e-6)
    assert lr[9] < 0.02
    for s in (10, 11, 59):
        assert lr[s] == pytest.approx(0.02, rel=1e-6), s
    for s in (60, 79):
        assert lr[s] == pytest.approx(0.002, rel=1e-6), s
    for s in (80, 89, 90):
        assert lr[s] == pytest.approx(0.0002, rel=1e-6), s


def test_step_schedule_without_warmup():
    lr = _lrs(_schedule_config(warmup_steps=0, lr_gamma=0.5), [0, 59, 60, 80])
    assert lr == pytest.approx({0: 0.02, 59: 0.02, 60: 0.01, 80: 0.005}, rel=1e-6)


def test_cosine_schedule_follows_absolute_steps_and_ends_at_zero():
    config = _schedule_config(schedule="cosine")
    steps = [0, 10, 30, 45, 80, 89, 90]
    lr = _lrs(config, steps)
    assert lr[0] == pytest.approx(0.02 * 0.001, abs=1e-8)
    for s in steps[1:]:
        expected = 0.02 * 0.5 * (1 + math.cos(math.pi * s / 90))
        assert lr[s] == pytest.approx(expected, rel=1e-5, abs=1e-9), s
    assert lr[90] == pytest.approx(0.0, abs=1e-9)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        optim.learning_rate_schedule(_schedule_config(schedule="linear"))


# --- parameter masks -------------------------------------------------------------------------


def _tiny(norm: str, freeze_at: int, **train):
    config = tiny.get_config()
    config.model.norm, config.model.freeze_at = norm, freeze_at
    config.train.update(train)
    return config


@functools.cache
def _abstract_params(norm: str):
    model = build_model(_tiny(norm, 0))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    return variables["params"]


def _random_tree(abstract, seed: int):
    """Random values with |x| in [0.5, 1], so that every element of an update is visible."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        values = rng.uniform(0.5, 1.0, leaf.shape) * rng.choice([-1.0, 1.0], leaf.shape)
        return jnp.asarray(values, leaf.dtype)

    return jax.tree.map(fill, abstract)


def _norm_modules(params) -> set[tuple[str, ...]]:
    """Modules holding a `scale`: the norm layers (convs and dense layers have none)."""
    return {path[:-1] for path in traverse_util.flatten_dict(params) if path[-1] == "scale"}


def _update(config, params, grads):
    optimizer = optim.make_optimizer(config, params)

    @jax.jit
    def step(params, grads):
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        return optax.apply_updates(params, updates)

    return step(params, grads)


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_frozen_parameters_stay_bit_identical(norm):
    """freeze_at=2: the stem and res2 (`layer1_*`) do not move, nor (frozen_bn) any norm
    affine of the backbone; every other parameter does, under non-zero gradients, momentum
    and weight decay."""
    config = _tiny(norm, 2)
    abstract = _abstract_params(norm)
    params, grads = _random_tree(abstract, 0), _random_tree(abstract, 1)
    new = traverse_util.flatten_dict(_update(config, params, grads))
    old = traverse_util.flatten_dict(params)
    norms = _norm_modules(params)

    def expected_frozen(path):
        if path[0] != "backbone":
            return False
        if path[1] in ("conv1", "bn1") or path[1].startswith("layer1_"):
            return True
        return norm == "frozen_bn" and any(path[: len(m)] == m for m in norms)

    frozen = {p for p in old if expected_frozen(p)}
    assert frozen and len(frozen) < len(old)
    mask = traverse_util.flatten_dict(optim.frozen_mask(params, config))
    assert {p for p, v in mask.items() if v} == frozen
    for path, value in old.items():
        name = "/".join(path)
        if path in frozen:
            np.testing.assert_array_equal(new[path], value, err_msg=name)
        else:
            assert np.all(np.asarray(new[path]) != np.asarray(value)), name
    if norm == "gn":  # GN affines outside the frozen stages train
        assert ("backbone", "layer2_0", "bn1", "GroupNorm_0", "scale") not in frozen


@pytest.mark.parametrize("norm", ["gn", "bn", "frozen_bn"])
def test_weight_decay_mask_excludes_norm_affines(norm):
    params = _abstract_params(norm)
    norms = _norm_modules(params)
    mask = traverse_util.flatten_dict(optim.weight_decay_mask(params))
    decayed = {p for p, v in mask.items() if v}
    expected = {p for p in mask if p[:-1] not in norms}
    assert decayed == expected
    assert norms  # GroupNorm_0, norm (BN) or bn*/downsample/1 (frozen BN) modules
    assert {p[-1] for p in decayed} == {"kernel", "bias"}  # conv / dense biases decay
    assert ("fpn", "inner_blocks_0", "bias") in decayed
    assert ("box_head", "fc6", "bias") in decayed


def test_weight_decay_reaches_weights_but_not_norm_affines():
    """Zero gradients, no frozen parameters: only decay moves the parameters."""
    config = _tiny("gn", 0, weight_decay=0.1)
    abstract = _abstract_params("gn")
    params = _random_tree(abstract, 2)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new = traverse_util.flatten_dict(_update(config, params, zeros))
    norms = _norm_modules(params)
    for path, value in traverse_util.flatten_dict(params).items():
        if path[:-1] in norms:
            np.testing.assert_array_equal(new[path], value, err_msg="/".join(path))
        else:
            assert np.all(np.asarray(new[path]) != np.asarray(value)), "/".join(path)
