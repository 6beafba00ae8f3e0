"""torchvision state dicts -> msrcnn parameters: names, layouts, fresh layers, a report.

Accepted state dicts (read with `msrcnn.weights.loading.load_state_dict`):
  * torchvision `maskrcnn_resnet50_fpn` (COCO weights with FrozenBatchNorm2d buffers, or the
    `weights_backbone=None` model with BatchNorm2d incl. `num_batches_tracked`), including the
    pre-0.13 names (`rpn.head.conv.weight`, `mask_head.mask_fcn1.weight`, FPN blocks without
    `.0`), a `module.` prefix and a reference-script checkpoint {"model": state_dict, ...};
  * torchvision ResNet-50 / ResNet-101 ImageNet classifiers: the backbone is converted, the
    FPN, RPN, box, mask and MaskIoU heads are freshly initialised from `seed`, and the
    classifier (`fc.*`) is dropped.

Each msrcnn layer with a torchvision counterpart is converted by its kind (`_Layer.kind`), with
the layout rules of `msrcnn.weights.layouts`. Beyond those:
  * fc6 reorders its 7*7*256 inputs from torch's (C, H, W) flattening to msrcnn's (H, W, C).
  * BatchNorm eps: torchvision's FrozenBatchNorm2d and BatchNorm2d default to 1e-5, but
    `maskrcnn_resnet50_fpn(weights=COCO_V1)` sets it to 0.0 (`overwrite_eps`). `bn_eps`
    unset picks 0.0 for a detection state dict with FrozenBatchNorm buffers (no
    `num_batches_tracked`), as that is how torchvision runs its COCO weights, else 1e-5.
  * Class-dependent layers: cls_score (K+1) and bbox_pred (4(K+1)) keep torchvision's
    background column; mask_fcn_logits drops its background channel 0 (msrcnn predicts K
    masks).

A `num_classes` that differs from the checkpoint's re-initialises only cls_score, bbox_pred
and mask_fcn_logits (the MaskIoU head, torchvision having none, is always fresh).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from msrcnn import checkpointing, config_lib
from msrcnn.errors import UserInputError
from msrcnn.models.build import build_model
from msrcnn.models.ms_rcnn import RPN_LEVELS, MaskScoringRCNN
from msrcnn.models.resnet import STAGE_BLOCKS, resnet_channels
from msrcnn.weights.layouts import (
    conv_kernel,
    deconv_kernel,
    dense_kernel,
    dense_kernel_chw_to_hwc,
    fold_batch_norm,
)
from msrcnn.weights.loading import load_state_dict

# COCO 2017 category names by category id; ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are
# unused ("N/A" in torchvision's 91-way COCO models, whose class k is category id k).
COCO_CATEGORIES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus",
    7: "train", 8: "truck", 9: "boat", 10: "traffic light", 11: "fire hydrant",
    13: "stop sign", 14: "parking meter", 15: "bench", 16: "bird", 17: "cat", 18: "dog",
    19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear", 24: "zebra",
    25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite",
    39: "baseball bat", 40: "baseball glove", 41: "skateboard", 42: "surfboard",
    43: "tennis racket", 44: "bottle", 46: "wine glass", 47: "cup", 48: "fork", 49: "knife",
    50: "spoon", 51: "bowl", 52: "banana", 53: "apple", 54: "sandwich", 55: "orange",
    56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut", 61: "cake",
    62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table",
    70: "toilet", 72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard",
    77: "cell phone", 78: "microwave", 79: "oven", 80: "toaster", 81: "sink",
    82: "refrigerator", 84: "book", 85: "clock", 86: "vase", 87: "scissors",
    88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}  # fmt: skip
TORCHVISION_COCO_CLASSES = 90  # foreground classes of the 91-way torchvision COCO models

MASKRCNN, RESNET = "maskrcnn", "resnet"
FROZEN_BN_EPS = 1e-5  # torchvision FrozenBatchNorm2d / BatchNorm2d default
COCO_V1_BN_EPS = 0.0  # torchvision's overwrite_eps(model, 0.0) for MaskRCNN COCO_V1
_BN_FIELDS = ("weight", "bias", "running_mean", "running_var")
# msrcnn layer -> torchvision tensor prefix of the class-dependent predictor layers.
_CLASS_LAYERS = {
    ("box_head", "cls_score"): "roi_heads.box_predictor.cls_score",
    ("box_head", "bbox_pred"): "roi_heads.box_predictor.bbox_pred",
    ("mask_head", "mask_fcn_logits"): "roi_heads.mask_predictor.mask_fcn_logits",
}
_CLS_SCORE = "roi_heads.box_predictor.cls_score.weight"


class ConversionError(UserInputError, ValueError):
    """The state dict does not fit the model: lists every missing, mismatched, extra tensor."""


# --------------------------------------------------------------------------------------------
# Names.


_LEGACY_RENAMES = (
    # torchvision < 0.13 names (its _load_from_state_dict upgrades them the same way).
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
    (re.compile(r"^rpn\.head\.conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
)
_LEGACY_MASK_FCN = re.compile(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$")


def normalize_names(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strips a DataParallel `module.` prefix and upgrades pre-0.13 torchvision names."""
    if state_dict and all(name.startswith("module.") for name in state_dict):
        state_dict = {name[len("module.") :]: v for name, v in state_dict.items()}
    out = {}
    for name, value in state_dict.items():
        new = name
        for pattern, repl in _LEGACY_RENAMES:
            new = pattern.sub(repl, new)
        match = _LEGACY_MASK_FCN.match(new)
        if match:
            new = f"roi_heads.mask_head.{int(match[1]) - 1}.0.{match[2]}"
        if new in out:
            raise ConversionError(f"both {name!r} and its upgraded name {new!r} are present")
        out[new] = value
    return out


def source_kind(state_dict: dict[str, np.ndarray]) -> str:
    """'maskrcnn' (a torchvision detection model) or 'resnet' (an ImageNet classifier)."""
    if any(name.startswith("backbone.body.") for name in state_dict):
        return MASKRCNN
    if "conv1.weight" in state_dict and any(n.startswith("layer1.") for n in state_dict):
        return RESNET
    some = ", ".join(sorted(state_dict)[:5])
    raise ConversionError(
        "not a torchvision maskrcnn_resnet50_fpn or ResNet state dict (no 'backbone.body.*' "
        f"or 'conv1.weight' + 'layer1.*' tensors); first names: {some}"
    )


def _backbone_prefix(kind: str) -> str:
    return "backbone.body." if kind == MASKRCNN else ""


def resnet_depth(state_dict: dict[str, np.ndarray], kind: str) -> int:
    """50 or 101, from the number of blocks in layer3 (6 or 23)."""
    pattern = re.compile(re.escape(_backbone_prefix(kind)) + r"layer3\.(\d+)\.")
    blocks = {int(m[1]) for name in state_dict if (m := pattern.match(name))}
    num = max(blocks) + 1 if blocks else 0
    for depth in (50, 101):
        if STAGE_BLOCKS[depth][2] == num:
            return depth
    raise ConversionError(f"layer3 has {num} blocks: not a ResNet-50 (6) or ResNet-101 (23)")


def checkpoint_num_classes(state_dict: dict[str, np.ndarray]) -> int | None:
    """K foreground classes of a detection state dict (cls_score rows - 1), else None."""
    weight = state_dict.get(_CLS_SCORE)
    return None if weight is None else int(weight.shape[0]) - 1


def default_bn_eps(state_dict: dict[str, np.ndarray], kind: str) -> float:
    """The eps torchvision runs these BatchNorm statistics with (see the module docstring)."""
    tracked = any(name.endswith("num_batches_tracked") for name in state_dict)
    return COCO_V1_BN_EPS if kind == MASKRCNN and not tracked else FROZEN_BN_EPS


def config_for_state_dict(
    state_dict: dict[str, np.ndarray], num_classes: int | None = None, mask_scoring: bool = True
) -> ml_collections.ConfigDict:
    """base_config() sized for a (normalised) torchvision state dict.

    Detection checkpoints get torchvision's test-time settings and, for the 91-way COCO
    models, category ids 1..90 (class k <-> COCO category id k) and COCO class names.
    """
    state_dict = normalize_names(state_dict)
    kind = source_kind(state_dict)
    config = config_lib.base_config()
    config.model.depth = resnet_depth(state_dict, kind)
    config.model.mask_scoring = bool(mask_scoring)
    ckpt_classes = checkpoint_num_classes(state_dict)
    if num_classes is None:
        num_classes = ckpt_classes if ckpt_classes is not None else config.model.num_classes
    config.model.num_classes = int(num_classes)
    if kind == MASKRCNN:
        config_lib.torchvision_inference_settings(config)
        if ckpt_classes == TORCHVISION_COCO_CLASSES == num_classes:
            ids = list(range(1, TORCHVISION_COCO_CLASSES + 1))
            config.data.category_ids = ids
            config.data.class_names = [COCO_CATEGORIES.get(i, "N/A") for i in ids]
    return config


# --------------------------------------------------------------------------------------------
# The name map: one entry per msrcnn layer that has a torchvision counterpart.


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One msrcnn module <- one torchvision module.

    path: msrcnn parameter path under 'params'; source: torchvision module name (tensor
    prefix); kind: 'conv', 'deconv', 'dense', 'dense_chw', 'bn' or 'mask_logits'.
    """

    path: tuple[str, ...]
    source: str
    kind: str

    def tensor_names(self, has_bias: bool) -> list[str]:
        if self.kind == "bn":
            return [f"{self.source}.{f}" for f in _BN_FIELDS]
        return [f"{self.source}.weight"] + ([f"{self.source}.bias"] if has_bias else [])


def _backbone_layers(depth: int, prefix: str) -> list[_Layer]:
    layers = [
        _Layer(("backbone", "conv1"), f"{prefix}conv1", "conv"),
        _Layer(("backbone", "bn1"), f"{prefix}bn1", "bn"),
    ]
    for stage, num_blocks in enumerate(STAGE_BLOCKS[depth], start=1):
        for block in range(num_blocks):
            ours, theirs = f"layer{stage}_{block}", f"{prefix}layer{stage}.{block}"
            for i in (1, 2, 3):
                layers.append(_Layer(("backbone", ours, f"conv{i}"), f"{theirs}.conv{i}", "conv"))
                layers.append(_Layer(("backbone", ours, f"bn{i}"), f"{theirs}.bn{i}", "bn"))
            if block == 0:
                down = ("backbone", ours, "downsample")
                layers.append(_Layer((*down, "0"), f"{theirs}.downsample.0", "conv"))
                layers.append(_Layer((*down, "1"), f"{theirs}.downsample.1", "bn"))
    return layers


def _head_layers(num_mask_convs: int) -> list[_Layer]:
    layers = []
    for i in range(4):
        fpn = "backbone.fpn"
        layers.append(_Layer(("fpn", f"inner_blocks_{i}"), f"{fpn}.inner_blocks.{i}.0", "conv"))
        layers.append(_Layer(("fpn", f"layer_blocks_{i}"), f"{fpn}.layer_blocks.{i}.0", "conv"))
    layers += [
        _Layer(("rpn_head", "conv"), "rpn.head.conv.0.0", "conv"),
        _Layer(("rpn_head", "cls_logits"), "rpn.head.cls_logits", "conv"),
        _Layer(("rpn_head", "bbox_pred"), "rpn.head.bbox_pred", "conv"),
        _Layer(("box_head", "fc6"), "roi_heads.box_head.fc6", "dense_chw"),
        _Layer(("box_head", "fc7"), "roi_heads.box_head.fc7", "dense"),
        _Layer(("box_head", "cls_score"), _CLASS_LAYERS["box_head", "cls_score"], "dense"),
        _Layer(("box_head", "bbox_pred"), _CLASS_LAYERS["box_head", "bbox_pred"], "dense"),
    ]
    for i in range(num_mask_convs):
        layers.append(
            _Layer(("mask_head", f"mask_fcn{i + 1}"), f"roi_heads.mask_head.{i}.0", "conv")
        )
    layers += [
        _Layer(("mask_head", "conv5_mask"), "roi_heads.mask_predictor.conv5_mask", "deconv"),
        _Layer(
            ("mask_head", "mask_fcn_logits"),
            _CLASS_LAYERS["mask_head", "mask_fcn_logits"],
            "mask_logits",
        ),
    ]
    return layers


def _convert_layer(layer: _Layer, tensors: dict[str, np.ndarray], eps: float, box_hwc):
    """torch tensors of one module -> {leaf name: array} in msrcnn's layout."""
    if layer.kind == "bn":
        scale, bias = fold_batch_norm(*(tensors[n] for n in layer.tensor_names(False)), eps)
        return {"scale": scale, "bias": bias}
    weight = tensors[f"{layer.source}.weight"]
    bias = tensors.get(f"{layer.source}.bias")
    if layer.kind == "conv":
        kernel = conv_kernel(weight)
    elif layer.kind == "mask_logits":
        # Drop the background mask: msrcnn predicts K masks.
        kernel = conv_kernel(weight[1:])
        bias = None if bias is None else bias[1:]
    elif layer.kind == "deconv":
        kernel = deconv_kernel(weight)
    elif layer.kind == "dense":
        kernel = dense_kernel(weight)
    elif layer.kind == "dense_chw":
        kernel = dense_kernel_chw_to_hwc(weight, box_hwc)
    else:
        raise AssertionError(layer.kind)
    leaves = {"kernel": np.ascontiguousarray(kernel, np.float32)}
    if bias is not None:
        leaves["bias"] = np.asarray(bias, np.float32)
    return leaves


# --------------------------------------------------------------------------------------------
# Conversion.


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
      kind: 'maskrcnn' or 'resnet'.
      converted: torchvision tensor names turned into msrcnn parameters.
      ignored: tensors read but not needed (`num_batches_tracked`, the ImageNet `fc.*`).
      reinitialized: msrcnn layers freshly initialised because --num_classes differs from the
        checkpoint's.
      fresh: msrcnn modules with no torchvision counterpart, freshly initialised.
      bn_eps: the eps the BatchNorm statistics were folded with.
      num_classes: (checkpoint's K or None, model's K).
      num_params: parameters in the written model.
    """

    kind: str
    converted: list[str]
    ignored: list[str]
    reinitialized: list[str]
    fresh: list[str]
    bn_eps: float
    num_classes: tuple[int | None, int]
    num_params: int

    def summary(self) -> str:
        ckpt_k, k = self.num_classes
        lines = [
            f"source: torchvision {self.kind} state dict"
            + (f" ({ckpt_k} classes)" if ckpt_k is not None else ""),
            f"converted {len(self.converted)} tensors (BatchNorm folded with eps={self.bn_eps:g})",
        ]
        counters = [n for n in self.ignored if n.endswith("num_batches_tracked")]
        others = [n for n in self.ignored if n not in counters]
        if counters:
            lines.append(f"ignored {len(counters)} BatchNorm num_batches_tracked counters")
        if others:
            lines.append(f"dropped {len(others)} unused tensors: {_abbreviate(others)}")
        if self.reinitialized:
            lines.append(
                f"re-initialised for {k} classes (checkpoint has {ckpt_k}): "
                + ", ".join(self.reinitialized)
            )
        if self.fresh:
            lines.append(
                "freshly initialised (no torchvision counterpart): " + ", ".join(self.fresh)
            )
        lines.append(f"model: {k} classes, {self.num_params:,} parameters")
        return "\n".join(lines)


def _abbreviate(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# Top-level modules that may be freshly initialised, in model order (also the report's order).
_FRESH_INIT_ORDER = ("fpn", "rpn_head", "box_head", "mask_head", "maskiou_head")


def _fresh_params(model: MaskScoringRCNN, modules: list[str], seed: int) -> dict:
    """Initialises the named top-level modules only ({name: params}).

    Each module is initialised through a method touching it alone (Flax creates a setup()
    submodule's parameters only when it is called), on tiny inputs, which is much cheaper
    than initialising the whole detector; module i uses fold_in(PRNGKey(seed), i).
    """
    channels = model.fpn_channels
    zeros = jnp.zeros
    calls = {
        "fpn": lambda m: m.fpn(
            {
                f"C{level}": zeros((1, 2 ** (6 - level), 2 ** (6 - level), c))
                for level, c in zip(range(2, 6), resnet_channels(model.width), strict=True)
            }
        ),
        "rpn_head": lambda m: m.rpn({name: zeros((1, 2, 2, channels)) for name in RPN_LEVELS}),
        "box_head": lambda m: m.box(zeros((1, 7, 7, channels))),
        "mask_head": lambda m: m.mask(zeros((1, 14, 14, channels))),
        "maskiou_head": lambda m: m.maskiou(zeros((1, 14, 14, channels)), zeros((1, 28, 28))),
    }
    key = jax.random.PRNGKey(seed)
    out = {}
    for name in modules:
        index = _FRESH_INIT_ORDER.index(name)
        params = model.init(jax.random.fold_in(key, index), method=calls[name])
        out[name] = jax.tree.map(np.asarray, params["params"][name])
    return out


def convert_torchvision_state_dict(
    state_dict: dict[str, np.ndarray],
    config: ml_collections.ConfigDict,
    seed: int = 0,
    bn_eps: float | None = None,
) -> tuple[dict, ConversionReport]:
    """torchvision state dict -> (msrcnn variables {'params': ...}, report).

    Args:
      state_dict: name -> array, as `load_state_dict` returns (legacy names are fine).
      config: the target config (e.g. from `config_for_state_dict`); its model section
        decides depth, num_classes and mask_scoring; norm must be 'frozen_bn'.
      seed: initialises the layers torchvision does not provide.
      bn_eps: BatchNorm eps to fold with; None picks torchvision's (`default_bn_eps`).

    Raises:
      ConversionError naming every missing tensor, every tensor whose shape does not fit,
      and every tensor left over.
    """
    if config.model.norm != "frozen_bn":
        raise ConversionError(
            f"converted backbones use norm='frozen_bn', not {config.model.norm!r}"
        )
    state_dict = normalize_names(state_dict)
    kind = source_kind(state_dict)
    depth = config.model.depth
    if resnet_depth(state_dict, kind) != depth:
        raise ConversionError(
            f"checkpoint is a ResNet-{resnet_depth(state_dict, kind)}, config wants {depth}"
        )
    eps = default_bn_eps(state_dict, kind) if bn_eps is None else float(bn_eps)
    model = build_model(config)
    num_classes = int(config.model.num_classes)
    ckpt_classes = checkpoint_num_classes(state_dict)
    # Expected shapes of every parameter, without computing anything.
    shapes = jax.eval_shape(
        model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3), jnp.float32)
    )["params"]

    layers = _backbone_layers(depth, _backbone_prefix(kind))
    if kind == MASKRCNN:
        layers += _head_layers(config.model.mask_convs)
    reinit_classes = kind == MASKRCNN and ckpt_classes is not None and ckpt_classes != num_classes

    params: dict = {}
    converted, missing, mismatched, consumed = [], [], [], set()
    reinitialized = []
    for layer in layers:
        target = _get(shapes, layer.path)
        has_bias = "bias" in target
        names = layer.tensor_names(has_bias)
        absent = [n for n in names if n not in state_dict]
        consumed.update(names)
        if absent:
            missing += absent
            continue
        if reinit_classes and layer.path in _CLASS_LAYERS:
            # Different K: check the old layer is the checkpoint's own size, then drop it.
            rows = state_dict[names[0]].shape[0]
            expect = (ckpt_classes + 1) * (4 if layer.path[-1] == "bbox_pred" else 1)
            if rows != expect:
                mismatched.append(f"{names[0]}: {rows} outputs, expected {expect}")
            reinitialized.append("/".join(layer.path))
            continue
        try:
            leaves = _convert_layer(layer, state_dict, eps, box_hwc=(7, 7, model.fpn_channels))
        except (ValueError, IndexError) as e:  # reshape of a wrongly sized fc6, say
            mismatched.append(f"{layer.source}: {e}")
            continue
        bad = [
            f"{layer.source} -> {'/'.join(layer.path)}/{leaf}: converted shape {v.shape}, "
            f"model expects {target[leaf].shape}"
            for leaf, v in leaves.items()
            if v.shape != target[leaf].shape
        ]
        if bad or set(leaves) != set(target):
            mismatched += bad or [
                f"{layer.source}: parameters {sorted(leaves)} != {sorted(target)}"
            ]
            continue
        _set(params, layer.path, leaves)
        converted += names

    ignored = sorted(n for n in state_dict if n.endswith("num_batches_tracked"))
    if kind == RESNET:
        ignored += sorted(n for n in ("fc.weight", "fc.bias") if n in state_dict)
    unexpected = sorted(set(state_dict) - consumed - set(ignored))
    if missing or mismatched or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} tensors: " + ", ".join(missing))
        if mismatched:
            problems.append(f"{len(mismatched)} mismatched tensors:\n  " + "\n  ".join(mismatched))
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors: " + ", ".join(unexpected))
        raise ConversionError(
            f"the {kind} state dict does not fit a ResNet-{depth} msrcnn model with "
            f"{num_classes} classes:\n" + "\n".join(problems)
        )

    order = [*_FRESH_INIT_ORDER, *sorted(set(shapes) - set(_FRESH_INIT_ORDER))]
    fresh = [name for name in order if name in shapes and name not in params]
    to_init = sorted(set(fresh) | ({p[0] for p in _CLASS_LAYERS} if reinitialized else set()))
    new = _fresh_params(model, to_init, seed)
    for name in fresh:
        params[name] = new[name]
    for path_str in reinitialized:
        path = tuple(path_str.split("/"))
        _set(params, path, _get(new, path))
    if reinitialized and "maskiou_head" in shapes:
        reinitialized.append("maskiou_head/maskiou (fresh anyway)")

    variables = {"params": params}
    report = ConversionReport(
        kind=kind,
        converted=converted,
        ignored=ignored,
        reinitialized=reinitialized,
        fresh=fresh,
        bn_eps=eps,
        num_classes=(ckpt_classes, num_classes),
        num_params=sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables)),
    )
    return variables, report


def convert_checkpoint(
    checkpoint: str,
    output: str,
    num_classes: int | None = None,
    mask_scoring: bool = True,
    seed: int = 0,
    bn_eps: float | None = None,
) -> ConversionReport:
    """Reads a torchvision checkpoint and writes an msrcnn checkpoint directory (step 0)."""
    if os.path.isdir(output) and os.listdir(output):
        raise FileExistsError(f"output directory {output!r} exists and is not empty")
    state_dict = normalize_names(load_state_dict(checkpoint))
    config = config_for_state_dict(state_dict, num_classes, mask_scoring)
    variables, report = convert_torchvision_state_dict(state_dict, config, seed, bn_eps)
    checkpointing.save_variables(output, variables, config)
    return report


__all__ = [
    "COCO_CATEGORIES",
    "ConversionError",
    "ConversionReport",
    "checkpoint_num_classes",
    "config_for_state_dict",
    "convert_checkpoint",
    "convert_torchvision_state_dict",
    "default_bn_eps",
    "normalize_names",
    "resnet_depth",
    "source_kind",
]
