"""Per-item class selection: each RoI's (or detection's) own class out of per-class outputs."""

from __future__ import annotations

import jax.numpy as jnp


def select_class(values, index, axis: int = -1):
    """The entry of each item's class along `axis`.

    values: [*I, ..., C, ...] with the class axis at `axis`; index: [*I] integer column per
    item (the leading shape of values). -> values without the class axis, [*I, ..., ...].
    Indices outside 0..C-1 are clipped into it: padding items read a real column, which
    callers mask out.
    """
    values = jnp.asarray(values)
    axis = axis % values.ndim
    index = jnp.clip(jnp.asarray(index, jnp.int32), 0, values.shape[axis] - 1)
    index = index.reshape(index.shape + (1,) * (values.ndim - index.ndim))
    return jnp.squeeze(jnp.take_along_axis(values, index, axis=axis), axis)
