"""Initialisers and the 3x3 conv shared by several heads (torchvision's initialisation)."""

from __future__ import annotations

import flax.linen as nn

from msrcnn.models.layers import Conv

RELU_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
FC_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # kaiming_uniform(a=1)


def roi_conv3x3(features, name, dtype, impl, stride=1):
    """A 3x3 conv of the mask / MaskIoU heads. In training these run inside the mask
    branch's `lax.switch` (msrcnn.ops.slot_buckets), so with "cpu_matmul" their input
    gradients are forward ops (`msrcnn.ops.xla_cpu`)."""
    return Conv(
        features,
        3,
        stride,
        dtype=dtype,
        kernel_init=RELU_FAN_OUT,
        impl=impl,
        forward_input_grad=True,
        name=name,
    )
