"""FPN anchor grids, in torchvision `AnchorGenerator` order and rounding.

Anchors depend only on static shapes (input size, grid sizes), so they are computed once on the
host in numpy float32 and enter jitted code as constants. The order is what the RPN head's
NHWC outputs flatten to: location-major (row y, then column x), then the anchors of a cell
(aspect ratio outer, size inner). Matching torchvision's order and rounding exactly is what
makes imported RPN weights line up.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Mask R-CNN R50-FPN: one size per level P2..P6, three aspect ratios (h / w) everywhere.
FPN_ANCHOR_SIZES = (32, 64, 128, 256, 512)
FPN_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """Zero-centred anchors of one cell. Returns [len(aspect_ratios) * len(sizes), 4] xyxy.

    An aspect ratio is h / w; width and height are size / sqrt(ratio) and size * sqrt(ratio),
    then each coordinate is rounded half-to-even (torch.round), all in float32 as torchvision.
    """
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1.0) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2.0)
    return np.round(base).astype(np.float32)


def fpn_grid_sizes(image_hw: tuple[int, int], levels: Sequence[int]) -> list[tuple[int, int]]:
    """Feature-map sizes of a ResNet-FPN for an input of (H, W).

    Every stride-2 layer (stem conv, max-pool, stage convs, the P6 max-pool) maps n to
    ceil(n / 2), so level l has size ceil(n / 2**l) by repeated halving.
    """
    sizes = []
    for level in levels:
        h, w = image_hw
        for _ in range(level):
            h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def grid_anchors(
    image_hw: tuple[int, int], grid_hw: tuple[int, int], base_anchors: np.ndarray
) -> np.ndarray:
    """Anchors of one feature map. Returns [grid_h * grid_w * A, 4] xyxy float32.

    The stride is image size // grid size per axis, as torchvision computes it; for sizes that
    are not multiples of the level's stride this is not a power of two (e.g. P6 of 800 rows:
    13 cells, stride 61), and matching it keeps imported weights exact.
    """
    grid_h, grid_w = grid_hw
    stride_h, stride_w = image_hw[0] // grid_h, image_hw[1] // grid_w
    shift_x = np.arange(grid_w, dtype=np.int32) * stride_w
    shift_y = np.arange(grid_h, dtype=np.int32) * stride_h
    shift_y, shift_x = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
    return (shifts.astype(np.float32) + base_anchors[None]).reshape(-1, 4)


def fpn_anchors(
    image_hw: tuple[int, int],
    levels: Sequence[int] = (2, 3, 4, 5, 6),
    sizes: Sequence[float] = FPN_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = FPN_ASPECT_RATIOS,
    grid_sizes: Sequence[tuple[int, int]] | None = None,
) -> list[np.ndarray]:
    """Anchors for each FPN level, one anchor size per level.

    Args:
      image_hw: (H, W) of the padded network input.
      levels: FPN levels, P2..P6 by default.
      sizes: one anchor size per level.
      aspect_ratios: h / w ratios, shared by all levels.
      grid_sizes: feature-map sizes per level; default `fpn_grid_sizes(image_hw, levels)`.

    Returns:
      One [H_l * W_l * len(aspect_ratios), 4] float32 xyxy array per level.
    """
    if len(sizes) != len(levels):
        raise ValueError(f"need one anchor size per level: sizes={sizes}, levels={levels}")
    if grid_sizes is None:
        grid_sizes = fpn_grid_sizes(image_hw, levels)
    return [
        grid_anchors(image_hw, grid, cell_anchors([size], aspect_ratios))
        for size, grid in zip(sizes, grid_sizes, strict=True)
    ]
