"""Pixel normalisation on device: uint8 RGB -> float32 standardised, zero in the padding."""

from __future__ import annotations

import jax.numpy as jnp


def normalize_images(images_uint8, image_hw, mean, std):
    """uint8 [B, H, W, 3] -> float32 normalised, zero outside each image (as torchvision pads
    after normalising)."""
    x = images_uint8.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    h, w = x.shape[1], x.shape[2]
    inside = (jnp.arange(h)[None, :, None] < image_hw[:, 0, None, None]) & (
        jnp.arange(w)[None, None, :] < image_hw[:, 1, None, None]
    )
    return jnp.where(inside[..., None], x, 0.0)
