"""A function's jaxpr replayed with a few primitives restated for converters (ONNX).

`replay(fn, *specs)` traces `fn` and returns a function that evaluates its jaxpr primitive by
primitive, recursing into the bodies of `while`, `cond`, `pjit` and custom-derivative calls
(only the primal computation is kept: exports need no gradients). On the way it restates,
with the same values bit for bit:

* gathers and scatters with batching dimensions. `vmap` turns a gather or scatter whose
  operand and indices are both batched into one with `operand_batching_dims`: the batched
  dynamic slices of the NMS loops, the per-image RoIAlign reads, the NMS output writes.
  jax2onnx's gather lowering matches a set of index patterns and has none for these. They
  become the older, equivalent form: each batching dimension one more indexed dimension
  (collapsed, like any other size-1 window dimension) whose index is the batch position, an
  iota appended to the indices. Output layout, clamping and out-of-bounds behaviour are
  unchanged (a batch position is always in bounds).
* max pooling over NHWC (`reduce_window_max` with window 1 on N and C): jax2onnx makes it a
  MaxPool over all four dims, and onnxruntime pools over at most three. N and C are merged
  into one leading dim, the pool runs over [N * C, H, W].

Nothing is read from the environment: the rewritten function is again traceable by any
converter (jax2onnx traces it like any JAX function).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_GATHER = lax.gather_p
_SCATTERS = {
    lax.scatter_p,
    lax.scatter_add_p,
    lax.scatter_mul_p,
    lax.scatter_min_p,
    lax.scatter_max_p,
}


def _with_batch_positions(indices, batching_dims):
    """Indices [..., K] -> [..., K + len(batching_dims)]: each batching dim's position."""
    batch_shape = indices.shape[:-1]
    positions = [
        lax.broadcasted_iota(indices.dtype, (*batch_shape, 1), dim) for dim in batching_dims
    ]
    return jnp.concatenate([indices, *positions], axis=-1)


def _unbatched_gather(operand, indices, *, dimension_numbers, **params):
    dn = dimension_numbers
    if not dn.operand_batching_dims:
        return _GATHER.bind(operand, indices, dimension_numbers=dn, **params)
    indices = _with_batch_positions(indices, dn.start_indices_batching_dims)
    dn = lax.GatherDimensionNumbers(
        offset_dims=dn.offset_dims,
        collapsed_slice_dims=tuple(sorted((*dn.collapsed_slice_dims, *dn.operand_batching_dims))),
        start_index_map=(*dn.start_index_map, *dn.operand_batching_dims),
    )
    return _GATHER.bind(operand, indices, dimension_numbers=dn, **params)


def _unbatched_scatter(primitive, operand, indices, updates, *, dimension_numbers, **params):
    dn = dimension_numbers
    if not dn.operand_batching_dims:
        return primitive.bind(operand, indices, updates, dimension_numbers=dn, **params)
    indices = _with_batch_positions(indices, dn.scatter_indices_batching_dims)
    dn = lax.ScatterDimensionNumbers(
        update_window_dims=dn.update_window_dims,
        inserted_window_dims=tuple(sorted((*dn.inserted_window_dims, *dn.operand_batching_dims))),
        scatter_dims_to_operand_dims=(
            *dn.scatter_dims_to_operand_dims,
            *dn.operand_batching_dims,
        ),
    )
    return primitive.bind(operand, indices, updates, dimension_numbers=dn, **params)


def _pooled_dims_last(operand, **params):
    """reduce_window_max with its trivial dims (window 1, stride 1, no padding) merged into one
    leading dim: NHWC max pooling becomes a pool over [N * C, H, W]. jax2onnx lowers the op
    to a MaxPool over every dim of the operand, and onnxruntime pools at most 3 of them."""
    window = params["window_dimensions"]
    trivial = [
        d
        for d in range(operand.ndim)
        if window[d] == 1
        and params["window_strides"][d] == 1
        and tuple(params["padding"][d]) == (0, 0)
        and params["base_dilation"][d] == 1
        and params["window_dilation"][d] == 1
    ]
    pooled = [d for d in range(operand.ndim) if d not in trivial]
    if operand.ndim <= 3 or not trivial or len(pooled) > 2:
        return lax.reduce_window_max_p.bind(operand, **params)
    order = trivial + pooled
    moved = jnp.transpose(operand, order)
    lead = moved.shape[: len(trivial)]
    merged = moved.reshape((-1, *moved.shape[len(trivial) :]))
    pick = lambda name: (1, *(params[name][d] for d in pooled))
    out = lax.reduce_window_max_p.bind(
        merged,
        window_dimensions=pick("window_dimensions"),
        window_strides=pick("window_strides"),
        padding=((0, 0), *(tuple(params["padding"][d]) for d in pooled)),
        base_dilation=pick("base_dilation"),
        window_dilation=pick("window_dilation"),
    )
    out = out.reshape((*lead, *out.shape[1:]))
    return jnp.transpose(out, [order.index(d) for d in range(operand.ndim)])


def _closed(jaxpr):
    """(Jaxpr, consts) of a ClosedJaxpr or an open Jaxpr."""
    if hasattr(jaxpr, "consts"):
        return jaxpr.jaxpr, list(jaxpr.consts)
    return jaxpr, []


def _call(jaxpr, *args):
    inner, consts = _closed(jaxpr)
    return _eval(inner, consts, list(args))


def _retraced(jaxpr, avals):
    """A closed jaxpr replayed (rewritten) and traced again at the same input types."""
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return jax.make_jaxpr(lambda *args: _call(jaxpr, *args))(*specs)


def _while(eqn, args):
    # Bound directly (not through lax.while_loop): a batched loop's condition may return a
    # batched predicate, which only the primitive accepts.
    p = eqn.params
    avals = [v.aval for v in eqn.invars]
    nc, nb = p["cond_nconsts"], p["body_nconsts"]
    cond = _retraced(p["cond_jaxpr"], avals[:nc] + avals[nc + nb :])
    body = _retraced(p["body_jaxpr"], avals[nc:])
    # Constants the retracing hoisted become leading loop constants.
    return lax.while_p.bind(
        *cond.consts,
        *args[:nc],
        *body.consts,
        *args[nc:],
        cond_jaxpr=_hoisted(cond),
        body_jaxpr=_hoisted(body),
        cond_nconsts=nc + len(cond.consts),
        body_nconsts=nb + len(body.consts),
    )


def _hoisted(closed):
    """ClosedJaxpr with consts -> ClosedJaxpr without, taking them as leading inputs."""
    jaxpr = closed.jaxpr
    if not closed.consts:
        return closed
    opened = jaxpr.replace(invars=[*jaxpr.constvars, *jaxpr.invars], constvars=[])
    return jax.extend.core.ClosedJaxpr(opened, [])


def _cond(eqn, args):
    index, operands = args[0], args[1:]
    branches = [
        (lambda *ops, branch=branch: tuple(_call(branch, *ops)))
        for branch in eqn.params["branches"]
    ]
    return list(lax.switch(index, branches, *operands))


def _primal_call(eqn, args):
    for name in ("call_jaxpr", "fun_jaxpr", "jaxpr"):
        if name in eqn.params:
            return _call(eqn.params[name], *args)
    raise NotImplementedError(f"no body found in {eqn.primitive.name}")


_HIGHER_ORDER = {
    "while": _while,
    "cond": _cond,
    "pjit": _primal_call,
    "jit": _primal_call,
    "closed_call": _primal_call,
    "core_call": _primal_call,
    "custom_jvp_call": _primal_call,
    "custom_vjp_call": _primal_call,
    "custom_vjp_call_jaxpr": _primal_call,
    "remat": _primal_call,
    "checkpoint": _primal_call,
}


def _eval(jaxpr, consts, args):
    env = {}

    def read(var):
        return var.val if isinstance(var, jax.extend.core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if eqn.primitive is _GATHER:
            outvals = [_unbatched_gather(*invals, **eqn.params)]
        elif eqn.primitive is lax.reduce_window_max_p:
            outvals = [_pooled_dims_last(*invals, **eqn.params)]
        elif eqn.primitive in _SCATTERS:
            outvals = [_unbatched_scatter(eqn.primitive, *invals, **eqn.params)]
        elif name in _HIGHER_ORDER:
            outvals = _HIGHER_ORDER[name](eqn, invals)
        else:
            if any(hasattr(v, "jaxpr") for v in eqn.params.values()):
                raise NotImplementedError(f"cannot replay higher-order primitive {name}")
            outvals = eqn.primitive.bind(*invals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outvals = [outvals]
        for var, value in zip(eqn.outvars, outvals, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def replay(fn, *specs):
    """`fn` traced at `specs` (ShapeDtypeStructs) -> a function of the same arguments that
    replays its primitives, gathers and scatters without batching dimensions. Returns a
    flat list of outputs."""
    closed = jax.make_jaxpr(fn)(*specs)
    return lambda *args: _eval(closed.jaxpr, list(closed.consts), list(args))
