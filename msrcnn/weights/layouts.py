"""PyTorch tensor layouts -> Flax ones (numpy; float32 out).

* Conv2d weight (out, in, kh, kw) -> kernel (kh, kw, in, out); both are cross-correlations.
* Linear weight (out, in) -> kernel (in, out); `dense_kernel_chw_to_hwc` also reorders the
  inputs of a Linear layer after a flatten from torch's (C, H, W) order to msrcnn's (H, W, C).
* ConvTranspose2d weight (in, out, kh, kw) -> `Upsample2x` kernel (kh, kw, in, out): both
  index the kernel by output offset, so only the axes move (no spatial flip).
* BatchNorm (weight, bias, running_mean, running_var) -> frozen affine
  scale = weight / sqrt(running_var + eps), bias = bias - running_mean * scale, in float64.
"""

from __future__ import annotations

import numpy as np


def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d weight (out, in, kh, kw) -> Flax Conv kernel (kh, kw, in, out)."""
    return np.transpose(weight, (2, 3, 1, 0))


def deconv_kernel(weight: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d weight (in, out, kh, kw) -> `mask_head.Upsample2x` kernel.

    Both index the 2x2 kernel by output offset (a, b) within each upsampled pixel block, so
    only the axes move: (in, out, a, b) -> (a, b, in, out).
    """
    return np.transpose(weight, (2, 3, 0, 1))


def dense_kernel(weight: np.ndarray) -> np.ndarray:
    """torch Linear weight (out, in) -> Flax Dense kernel (in, out)."""
    return np.transpose(weight)


def dense_kernel_chw_to_hwc(weight: np.ndarray, hwc: tuple[int, int, int]) -> np.ndarray:
    """Linear weight over a (C, H, W)-flattened input -> Dense kernel over (H, W, C) order."""
    h, w, c = hwc
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)


def fold_batch_norm(weight, bias, mean, var, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm statistics -> frozen affine (scale, bias), computed in float64."""
    scale = np.asarray(weight, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(bias, np.float64) - np.asarray(mean, np.float64) * scale
    return scale.astype(np.float32), shift.astype(np.float32)
