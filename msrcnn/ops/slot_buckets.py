"""Run a per-slot computation on only the filled leading slots, with static shapes.

The mask branch has a static number of slots per image (every slot that could hold a
positive: 128 for 512 sampled RoIs at 25%), but a step often fills far fewer (figures in
benchmarks/README.md, "Figures behind design choices"). `run_filled_slots` picks, on device,
the smallest of a few static slot counts ("buckets") that holds every filled slot, runs the
computation on that prefix in a `lax.switch` (one compiled branch per bucket, one trace in
all), and pads its outputs back to the full slot count with zeros. Results equal running on
every slot wherever the caller reads them (the filled slots).

Differentiable with respect to `shared` (parameters, feature maps). Differentiating through
`lax.switch` itself would make every branch output every other branch's residuals,
zero-filled. Instead a custom VJP runs the chosen bucket under `jax.vjp` in the forward and
returns its pullback's residuals padded to the largest bucket's shapes (one set of buffers);
the backward switch slices them back and calls that bucket's pullback. Where the buckets'
residuals do not line up leaf for leaf (a computation whose structure depends on the slot
count), the backward recomputes the chosen bucket instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def slot_buckets(max_slots: int, step: int) -> tuple[int, ...]:
    """Static slot counts step, 2 * step, ... up to max_slots (which is always the last).

    step 0 (or >= max_slots) gives one bucket: every slot, no switch.
    """
    if step <= 0 or step >= max_slots:
        return (max_slots,)
    return (*range(step, max_slots, step), max_slots)


def _prefix(tree, size: int):
    return jax.tree.map(lambda x: x[:, :size], tree)


def _pad_slots(tree, size: int):
    def pad(x):
        widths = [(0, 0)] * x.ndim
        widths[1] = (0, size - x.shape[1])
        return jnp.pad(x, widths)

    return jax.tree.map(pad, tree)


def _bucket_index(buckets: Sequence[int], filled) -> jax.Array:
    """Index of the smallest bucket >= filled (the last one if none is)."""
    index = jnp.searchsorted(jnp.asarray(buckets), jnp.asarray(filled, jnp.int32), side="left")
    return jnp.minimum(index, len(buckets) - 1)


def run_filled_slots(fn: Callable, shared, per_slot, filled: jax.Array, buckets: Sequence[int]):
    """fn(shared, per_slot[:, :b]) for the smallest bucket b >= filled, padded to all slots.

    Args:
      fn: (shared, per_slot with leaves [B, b, ...]) -> outputs with leaves [B, b, ...]; must
        treat slots independently (the slots past `filled` are dropped, not computed).
      shared: pytree the outputs are differentiated with respect to (parameters, features).
      per_slot: pytree of [B, S, ...] arrays whose filled slots lead (S = buckets[-1]);
        treated as constants (no gradient flows to them).
      filled: int scalar, the most filled slots of any image.
      buckets: static increasing slot counts ending at S (`slot_buckets`).

    Returns:
      fn's outputs with leaves [B, S, ...]; slots past the chosen bucket are zero.
    """
    buckets = tuple(buckets)
    if len(buckets) == 1:
        return fn(shared, per_slot)
    layouts = _residual_layouts(fn, buckets, shared, per_slot)
    return _run(fn, buckets, layouts, shared, per_slot, filled)


def _bucket_vjp(fn, size, shared, per_slot):
    """(outputs on the first `size` slots, their pullback with respect to `shared`)."""
    return jax.vjp(lambda s: fn(s, _prefix(per_slot, size)), shared)


def _residual_layouts(fn, buckets, shared, per_slot):
    """Per bucket (pullback treedef, residual leaf shapes) and the padded shapes they share,
    or None when the buckets' residuals do not correspond leaf for leaf."""
    per_bucket = []
    for size in buckets:
        treedefs = []

        def residuals(shared, per_slot, size=size, treedefs=treedefs):
            leaves, treedef = jax.tree.flatten(_bucket_vjp(fn, size, shared, per_slot)[1])
            treedefs.append(treedef)
            return leaves

        leaves = jax.eval_shape(residuals, shared, per_slot)
        per_bucket.append(
            (treedefs[0], tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves))
        )
    signatures = {tuple((x.ndim, x.dtype) for x in leaves) for _, leaves in per_bucket}
    if len(signatures) != 1:
        return None
    padded = tuple(
        jax.ShapeDtypeStruct(
            tuple(max(dims) for dims in zip(*(x.shape for x in same), strict=True)), same[0].dtype
        )
        for same in zip(*(leaves for _, leaves in per_bucket), strict=True)
    )
    return tuple(per_bucket), padded


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _run(fn, buckets, layouts, shared, per_slot, filled):
    branches = [functools.partial(_forward_branch, fn, size, buckets[-1]) for size in buckets]
    return jax.lax.switch(_bucket_index(buckets, filled), branches, shared, per_slot)


def _forward_branch(fn, size, total, shared, per_slot):
    return _pad_slots(fn(shared, _prefix(per_slot, size)), total)


def _forward_keeping_branch(fn, size, total, padded, shared, per_slot):
    outputs, pullback = _bucket_vjp(fn, size, shared, per_slot)
    residuals = []
    for leaf, target in zip(jax.tree.leaves(pullback), padded, strict=True):
        leaf = jax.lax.convert_element_type(leaf, target.dtype)  # one weak type in all branches
        residuals.append(
            jnp.pad(leaf, [(0, t - n) for n, t in zip(leaf.shape, target.shape, strict=True)])
        )
    return _pad_slots(outputs, total), residuals


def _run_fwd(fn, buckets, layouts, shared, per_slot, filled):
    index = _bucket_index(buckets, filled)
    if layouts is None:
        return _run(fn, buckets, layouts, shared, per_slot, filled), (shared, per_slot, index)
    _, padded = layouts
    branches = [
        functools.partial(_forward_keeping_branch, fn, size, buckets[-1], padded)
        for size in buckets
    ]
    outputs, residuals = jax.lax.switch(index, branches, shared, per_slot)
    return outputs, (residuals, index)


def _recomputing_branch(fn, size, shared, per_slot, cotangent):
    (d_shared,) = _bucket_vjp(fn, size, shared, per_slot)[1](_prefix(cotangent, size))
    return d_shared


def _stored_branch(size, layout, residuals, cotangent):
    treedef, leaves = layout
    unpadded = [
        r[tuple(slice(0, n) for n in x.shape)] for r, x in zip(residuals, leaves, strict=True)
    ]
    (d_shared,) = jax.tree.unflatten(treedef, unpadded)(_prefix(cotangent, size))
    return d_shared


def _run_bwd(fn, buckets, layouts, residuals, cotangent):
    if layouts is None:
        shared, per_slot, index = residuals
        branches = [functools.partial(_recomputing_branch, fn, size) for size in buckets]
        d_shared = jax.lax.switch(index, branches, shared, per_slot, cotangent)
    else:
        stored, index = residuals
        branches = [
            functools.partial(_stored_branch, size, layout)
            for size, layout in zip(buckets, layouts[0], strict=True)
        ]
        d_shared = jax.lax.switch(index, branches, stored, cotangent)
    # per_slot and filled are constants of the computation: zero cotangents.
    return d_shared, None, None


_run.defvjp(_run_fwd, _run_bwd)
