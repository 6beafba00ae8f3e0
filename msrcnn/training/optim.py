"""Optimizer: SGD with momentum (or AdamW), warmup + step (or cosine) schedule, weight decay
mask and frozen parameters, following detectron2's defaults.

Frozen parameters (the stem and res2 when `freeze_at=2`, and every frozen-BN affine) get no
update at all: their gradient is replaced by zeros before momentum and decay, so they stay
bit-identical to the imported weights.
"""

from __future__ import annotations

import re

import flax.traverse_util as traverse_util
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from lr * warmup_factor, then step decay (x gamma at each boundary) or
    cosine decay to zero over `config.num_steps`."""
    t = config.train
    if t.schedule == "step":
        boundaries = {round(f * t.num_steps): t.lr_gamma for f in t.lr_steps}
        decay = optax.piecewise_constant_schedule(t.learning_rate, boundaries)
    elif t.schedule == "cosine":
        decay = optax.cosine_decay_schedule(t.learning_rate, max(t.num_steps, 1))
    else:
        raise ValueError(f"unknown schedule {t.schedule!r}: use 'step' or 'cosine'")
    if t.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(
        t.learning_rate * t.warmup_factor, t.learning_rate, t.warmup_steps
    )
    # join_schedules hands later schedules `step - boundary`; add the warmup back so the decay
    # sees absolute steps (boundaries at lr_steps * num_steps, cosine reaching 0 at num_steps).
    return optax.join_schedules(
        [warmup, lambda step: decay(step + t.warmup_steps)], [t.warmup_steps]
    )


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def frozen_mask(params, config: ml_collections.ConfigDict):
    """True for parameters that must not change: frozen backbone stages and frozen-BN affines."""
    freeze_at = config.model.freeze_at
    frozen_stages = ["conv1", "bn1"] if freeze_at >= 1 else []
    frozen_stages += [f"layer{s - 1}_" for s in range(2, freeze_at + 1)]
    frozen_bn = config.model.norm == "frozen_bn"

    def is_frozen(path: tuple[str, ...]) -> bool:
        name = _path_str(path)
        if path[0] == "backbone":
            if any(path[1] == s or path[1].startswith(s) for s in frozen_stages if s):
                return True
            # Norm layers of a frozen-BN backbone: bn*, and downsample/1.
            if frozen_bn and re.search(r"/(bn\d|downsample/1)/", name + "/"):
                return True
        return False

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: is_frozen(k) for k in flat})


def weight_decay_mask(params):
    """Decay every weight and bias except norm affines (detectron2 WEIGHT_DECAY_NORM = 0)."""
    flat = traverse_util.flatten_dict(params)
    norm = re.compile(r"(^|/)(bn\d|downsample/1|GroupNorm_\d+|norm)(/|$)")
    return traverse_util.unflatten_dict({k: not norm.search(_path_str(k[:-1])) for k in flat})


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
    t = config.train
    chain = []
    if t.grad_clip_norm:
        chain.append(optax.clip_by_global_norm(t.grad_clip_norm))
    schedule = learning_rate_schedule(config)
    if t.optimizer == "sgd":
        chain += [
            optax.add_decayed_weights(t.weight_decay, mask=weight_decay_mask(params)),
            optax.sgd(schedule, momentum=t.momentum),
        ]
    elif t.optimizer == "adamw":
        # Decoupled decay; converges in far fewer steps than SGD when training from scratch
        # on a small budget (the embedded shapes config).
        chain.append(
            optax.adamw(schedule, weight_decay=t.weight_decay, mask=weight_decay_mask(params))
        )
    else:
        raise ValueError(f"unknown optimizer {t.optimizer!r}: use 'sgd' or 'adamw'")
    trainable = optax.chain(*chain)
    labels = traverse_util.unflatten_dict(
        {
            k: ("frozen" if v else "trainable")
            for k, v in traverse_util.flatten_dict(frozen_mask(params, config)).items()
        }
    )
    return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)
