"""Reads a state dict file into numpy: .npz with numpy alone, .pth / .pt with torch."""

from __future__ import annotations

import os

import numpy as np

from msrcnn.errors import MissingInputError


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a state dict: .npz with numpy, .pth / .pt with torch (CPU, weights only).

    Accepts a plain state dict or a training checkpoint holding one under "model" or
    "state_dict". Returns name -> numpy array.
    """
    if not os.path.isfile(path):
        raise MissingInputError(f"no checkpoint file {path!r}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    if not path.endswith((".pth", ".pt")):
        raise ValueError(f"unknown checkpoint format {path!r}: expected .pth, .pt or .npz")
    try:
        import torch  # optional dependency, needed only here
    except ImportError as e:
        raise ImportError(
            "reading a .pth checkpoint needs PyTorch: `pip install msrcnn[convert]` (or convert "
            "the state dict to .npz elsewhere: np.savez(f, **{k: v.numpy() for k, v in "
            "state_dict.items()}))"
        ) from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, not a state dict")
    return {name: t.detach().cpu().numpy() for name, t in obj.items() if hasattr(t, "numpy")}
