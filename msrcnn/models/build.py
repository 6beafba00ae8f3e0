"""The model of a config: `config.model` (architecture) and `config.geometry` (anchor count)
-> `MaskScoringRCNN`, with the backend-dependent 'auto' settings decided here, once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from msrcnn.models.layers import check_conv_impl
from msrcnn.models.ms_rcnn import MaskScoringRCNN


def compute_dtype(name: str, backend: str):
    """'auto' is bfloat16 on GPU / TPU and float32 on CPU (where bf16 convs are slow);
    parameters stay float32 either way."""
    if name == "auto":
        return jnp.dtype(jnp.float32 if backend == "cpu" else jnp.bfloat16)
    return jnp.dtype(name)


def resolve_conv_impl(name: str, backend: str) -> str:
    """config `model.conv_impl` -> the model's: 'auto' is 'cpu_matmul' on the 'cpu' backend
    and 'xla' on any other (GPU / TPU run XLA's own convolutions)."""
    if name == "auto":
        return "cpu_matmul" if backend == "cpu" else "xla"
    return check_conv_impl(name)


def build_model(config: ml_collections.ConfigDict, backend: str | None = None) -> MaskScoringRCNN:
    """The model of `config`; backend (default: JAX's default backend) decides what 'auto'
    settings become."""
    backend = backend or jax.default_backend()
    m = config.model
    return MaskScoringRCNN(
        num_classes=m.num_classes,
        depth=m.depth,
        width=m.width,
        stride_in_1x1=m.stride_in_1x1,
        norm=m.norm,
        freeze_at=m.freeze_at,
        fpn_channels=m.fpn_channels,
        box_hidden=m.box_hidden,
        mask_convs=m.mask_convs,
        mask_scoring=m.mask_scoring,
        num_anchors=len(config.geometry.aspect_ratios),
        dtype=compute_dtype(m.dtype, backend),
        conv_impl=resolve_conv_impl(m.conv_impl, backend),
    )
