"""Deterministic random weights for torchvision's maskrcnn_resnet50_fpn, with numpy only.

The torchvision reproduction test (tests/test_reproduce_torchvision.py) compares msrcnn with
torchvision on the same weights. Storing 44M parameters is out of the question, so both sides
regenerate them from a seed: `tests/testdata/make_golden_maskrcnn.py` (torch) and the test
(numpy, no torch) call `state_dict(load_spec(), seed)`.

Randomly initialised detectors are useless for such a comparison: torchvision's own init
(std 0.01 RPN and predictor layers) gives every anchor objectness 0.5 and every class the same
probability, so ties decide everything and nothing passes the 0.05 score threshold. The
scales here are chosen instead so that
  * activations keep a stable magnitude through ResNet-50 (He-normal convs, BN statistics of
    unit scale, small gains on each block's last BN so the residual stream grows slowly): the
    feature standard deviation stays between 0.7 and 1.3 from the stem to C5, the FPN levels
    between 0.7 and 1.5,
  * RPN objectness logits spread over several units (distinct scores, some boxes moved across
    the image border by the regression deltas),
  * class logits spread so that several classes per RoI pass 0.05, with distinct scores,
  * mask logits vary smoothly over the 28 x 28 grid (masks are neither empty nor all 0.5).

Reproducibility: each tensor has its own generator seeded by (seed, crc32(name)), so a
tensor's values do not depend on the order or presence of others; only `Generator.random`
(the raw PCG64 stream, stable across numpy versions) is used, normals come from a Box-Muller
transform written out here rather than from numpy's ziggurat (whose stream numpy does not
promise to keep). np.log / np.cos may differ in the last float64 bit between builds, which
moves a float32 weight by one ulp at most: far below the comparison's tolerances.
"""

from __future__ import annotations

import json
import pathlib
import zlib

import numpy as np

SPEC_PATH = pathlib.Path(__file__).parent / "testdata" / "torchvision_maskrcnn_spec.json"
DEFAULT_SEED = 0

# Output spread of the heads (standard deviation of the pre-activation, in logits / deltas).
RPN_LOGIT_STD = 3.0
RPN_DELTA_STD = 0.2
CLASS_LOGIT_STD = 2.5
BOX_DELTA_STD = 1.0
MASK_LOGIT_STD = 3.0
# Measured second moment of the ReLU features entering the predictor layers.
HEAD_INPUT_MS = 3.0
# Measured mean of the box head's fc7 output (ReLU).
BOX_FEATURE_MEAN = 0.95


def load_spec(path: str | pathlib.Path = SPEC_PATH) -> list[tuple[str, tuple[int, ...], str]]:
    """The state-dict layout: [(name, shape, dtype)] in torchvision's order."""
    with open(path) as f:
        spec = json.load(f)
    return [(name, tuple(shape), dtype) for name, shape, dtype in spec["tensors"]]


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _uniform(rng: np.random.Generator, shape, low=0.0, high=1.0) -> np.ndarray:
    return low + (high - low) * rng.random(shape)


def _normal(rng: np.random.Generator, shape, std=1.0) -> np.ndarray:
    """Box-Muller normals from the raw uniform stream (numpy-version independent)."""
    size = int(np.prod(shape, dtype=np.int64))
    half = (size + 1) // 2
    u1 = 1.0 - rng.random(half)  # (0, 1]: log is finite
    u2 = rng.random(half)
    radius = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
    return std * z[:size].reshape(shape)


def _fan_in(shape) -> int:
    return int(np.prod(shape[1:]))


def _tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One tensor's values; the rules go by torchvision's naming (see the module docstring)."""
    field = name.rsplit(".", 1)[-1]
    module = name.rsplit(".", 1)[0]
    is_bn = name.startswith("backbone.body.") and (
        ".bn" in name or "downsample.1" in name or name.startswith("backbone.body.bn1")
    )
    if is_bn:
        last_bn = module.endswith("bn3")
        if field == "weight":
            # The residual branch adds a fraction of the stream's scale per block.
            return _uniform(rng, shape, 0.15, 0.35) if last_bn else _uniform(rng, shape, 0.7, 1.3)
        if field == "bias":
            return _normal(rng, shape, 0.1)
        if field == "running_mean":
            return _normal(rng, shape, 0.2)
        if field == "running_var":
            return _uniform(rng, shape, 0.5, 2.0)
        raise ValueError(f"unexpected BatchNorm tensor {name}")
    if field == "bias":
        if name == "rpn.head.cls_logits.bias":
            return _normal(rng, shape, 0.5)
        return _normal(rng, shape, 0.05)
    if field != "weight":
        raise ValueError(f"unexpected tensor {name}")
    if name == "roi_heads.mask_predictor.conv5_mask.weight":
        # ConvTranspose2d weight is (in, out, kh, kw): each input pixel feeds one output tap.
        return _normal(rng, shape, np.sqrt(2.0 / shape[0]))
    fan_in = _fan_in(shape)
    head_std = {
        "rpn.head.cls_logits.weight": RPN_LOGIT_STD,
        "rpn.head.bbox_pred.weight": RPN_DELTA_STD,
        "roi_heads.box_predictor.cls_score.weight": CLASS_LOGIT_STD,
        "roi_heads.box_predictor.bbox_pred.weight": BOX_DELTA_STD,
        "roi_heads.mask_predictor.mask_fcn_logits.weight": MASK_LOGIT_STD,
    }
    if name in head_std:
        # Predictor layers: a sum of fan_in products with inputs of second moment ~HEAD_INPUT_MS.
        return _normal(rng, shape, head_std[name] / np.sqrt(fan_in * HEAD_INPUT_MS))
    if name.startswith("backbone.fpn."):
        # kaiming_uniform(a=1) as torchvision (variance 1 / fan_in), halved for the laterals:
        # the top-down sums add up to four of them, and the backbone's ReLU outputs are not
        # zero-mean (second moment ~2).
        bound = np.sqrt(3.0 / fan_in) * (0.5 if ".inner_blocks." in name else 1.0)
        return _uniform(rng, shape, -bound, bound)
    # Convs and FCs followed by ReLU: He-normal, fan in.
    return _normal(rng, shape, np.sqrt(2.0 / fan_in))


def state_dict(
    spec: list[tuple[str, tuple[int, ...], str]] | None = None, seed: int = DEFAULT_SEED
) -> dict[str, np.ndarray]:
    """name -> array (float32, int64 for `num_batches_tracked`) for every tensor in `spec`."""
    spec = load_spec() if spec is None else spec
    out = {}
    for name, shape, dtype in spec:
        if name.endswith("num_batches_tracked"):
            out[name] = np.asarray(1000, np.dtype(dtype))  # ignored in eval mode
            continue
        out[name] = _tensor(name, shape, _rng(seed, name)).astype(np.dtype(dtype))
    cls_weight = "roi_heads.box_predictor.cls_score.weight"
    if cls_weight in out:
        # The box features are ReLU outputs with mean ~BOX_FEATURE_MEAN, so every RoI shares a
        # per-class offset mean * sum_i w_ki that would let a few classes win everywhere;
        # cancel it (and weaken the background class) so labels vary between RoIs.
        bias = out[cls_weight].sum(axis=1, dtype=np.float64) * -BOX_FEATURE_MEAN
        bias[0] -= 1.0
        out[cls_weight.replace("weight", "bias")] += bias.astype(np.float32)
    return out
