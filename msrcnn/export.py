"""`python -m msrcnn.export`: the whole detector as one file that serves without msrcnn.

    python -m msrcnn.export --workdir=/tmp/msrcnn_tiny --format=onnx \
        --output=/tmp/msrcnn_tiny.onnx
    python -m msrcnn.export --checkpoint=/tmp/maskrcnn_coco --format=stablehlo \
        --output=/tmp/maskrcnn_800.stablehlo --image_size=800x800 [--batch=2] \
        [--platforms=cpu,cuda]
    python -m msrcnn.export --workdir=/tmp/msrcnn_tiny --format=saved_model \
        --output=/tmp/msrcnn_tiny_saved_model [--nopaste_masks]

One artifact holds everything `Predictor` does for an image of the exported size: the
resize and normalisation (`predictor.preprocess_images`), backbone, RPN, proposal NMS, box
head, per-class NMS, mask and MaskIoU heads and mask scoring (`inference.detect`), boxes scaled
back to the input pixels, masks pasted into the input size and thresholded
(`predictor.paste_masks`). Shapes are static: the batch size and the image size are fixed at
export (`--batch`, `--image_size`, default the config's `data.image_hw`); an input of another
size must be exported again. Inside, an image is resized and padded exactly as `Predictor`
does it (shorter side to data.min_size unless the longer passes data.max_size, padding to a
multiple of 32), so an image of the exported size gives `Predictor`'s detections.

Signature (N = --batch, H x W = --image_size, D = inference.detections_per_image):
  input  `images`          uint8   [N, H, W, 3]  RGB
  output `boxes`           float32 [N, D, 4]     xyxy in input pixels
         `labels`          int32   [N, D]        dataset category ids
         `scores`          float32 [N, D]        class scores (rank boxes by these)
         `mask_scores`     float32 [N, D]        class score x predicted MaskIoU (rank masks)
         `masks`           bool    [N, D, H, W]  the pasted masks (prob >= mask_threshold)
         `num_detections`  int32   [N]
With `--nopaste_masks`, `masks` is replaced by `mask_probs` float32 [N, D, 28, 28]: the mask
head's probabilities inside each box, to paste as torchvision's `paste_masks_in_image` does
(`msrcnn.ops.masks.paste_masks_in_image`); the masks output is D x H x W per image.
Detections fill the first num_detections slots of each image, by descending class score; the
other slots are zeros (masks all False, labels 0).

Formats (`pip install -e ".[export]"` for onnx and saved_model):
  onnx         one .onnx file (opset 23, weights inside) converted by jax2onnx from the
               detector's primitives (`export_rewrite`); the greedy NMS loops become ONNX Loop
               nodes. Run it with onnxruntime. Converting takes minutes (jax2onnx).
  stablehlo    `jax.export` serialisation (weights inside): bytes that
               `jax.export.deserialize(data).call(images)` runs in any process with jax and
               jaxlib, without msrcnn. Compatibility window: README, Deploy.
  saved_model  a TensorFlow SavedModel directory with a `serving_default` signature: the same
               StableHLO in TF's XlaCallModule op (what jax2tf emits), weights as tf.Variables;
               `tf.saved_model.load(PATH).signatures["serving_default"](images=...)`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from msrcnn import detector as detector_lib
from msrcnn import export_rewrite
from msrcnn import predictor as predictor_lib
from msrcnn.label_map import LabelMap, given_or_config

FORMATS = ("onnx", "stablehlo", "saved_model")
INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "labels", "scores", "mask_scores", "masks", "num_detections")
UNPASTED_OUTPUT_NAMES = (
    "boxes",
    "labels",
    "scores",
    "mask_scores",
    "mask_probs",
    "num_detections",
)


def output_names(paste_masks: bool = True) -> tuple[str, ...]:
    return OUTPUT_NAMES if paste_masks else UNPASTED_OUTPUT_NAMES


def serving_fn(
    config, image_hw: tuple[int, int], paste_masks: bool = True, labels: LabelMap | None = None
):
    """fn(variables, images uint8 [N, H, W, 3]) -> tuple of `output_names(paste_masks)`.

    Pure and traceable: preprocessing, `detect` and the paste are the functions `Predictor`
    runs, so an image of size `image_hw` gives `Predictor`'s detections (padded to D slots).
    `labels` gives the category ids of the `labels` output (default: the config's).
    """
    detector = detector_lib.from_config(config)
    settings = detector_lib.inference_settings(config)
    category_ids = given_or_config(labels, config).category_ids
    threshold = float(config.inference.mask_threshold)
    image_hw = tuple(int(s) for s in image_hw)

    def serve(variables, images):
        if tuple(images.shape[1:]) != (*image_hw, 3):
            raise ValueError(f"expected images [N, {image_hw[0]}, {image_hw[1]}, 3]")
        batch, resized = predictor_lib.preprocess_images(images, config.data)
        sizes = np.tile(np.asarray([resized], np.float32), (images.shape[0], 1))
        outputs = detector_lib.detect(detector, variables, batch, sizes, settings)
        valid = outputs["valid"]
        boxes = predictor_lib.scale_boxes(outputs["boxes"], resized, image_hw)
        labels = predictor_lib.category_labels(outputs["labels"], category_ids)
        if paste_masks:
            paste = functools.partial(
                predictor_lib.paste_masks, image_hw=image_hw, threshold=threshold
            )
            masks = jax.vmap(paste)(outputs["mask_probs"], boxes)
            masks = masks & valid[:, :, None, None]
        else:
            masks = jnp.where(valid[:, :, None, None], outputs["mask_probs"], 0.0)
        return (
            boxes,
            labels.astype(jnp.int32),
            outputs["scores"],
            outputs["mask_scores"],
            masks,
            jnp.sum(valid, axis=1, dtype=jnp.int32),
        )

    return serve


def parse_size(text: str) -> tuple[int, int]:
    """'800x800' -> (800, 800)."""
    try:
        h, w = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"image size must be HxW (e.g. 800x800), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {text!r}")
    return h, w


def input_spec(batch: int, image_hw: tuple[int, int]) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, *image_hw, 3), jnp.uint8)


# ---- the formats ---------------------------------------------------------------------------


def _bool_where_as_logic(graph, bool_values: set[str]) -> int:
    """Replaces Where nodes that select booleans by And / Or / Not (also in subgraphs).

    jax2onnx lowers a loop of a vmapped while_loop with per-element `Where(done, new, old)`
    updates of the carried state; onnxruntime's CPU Where has no bool kernel. Returns how
    many were replaced.
    """
    import onnx

    replaced = 0
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                replaced += _bool_where_as_logic(attribute.g, bool_values)
            for subgraph in attribute.graphs:
                replaced += _bool_where_as_logic(subgraph, bool_values)
        if node.op_type == "Where" and node.output[0] in bool_values:
            cond, x, y = node.input
            name = node.name or node.output[0]
            t, n, f = (f"{name}__{part}" for part in ("then", "not", "else"))
            nodes += [
                onnx.helper.make_node("And", [cond, x], [t], name=t),
                onnx.helper.make_node("Not", [cond], [n], name=n),
                onnx.helper.make_node("And", [n, y], [f], name=f),
                onnx.helper.make_node("Or", [t, f], list(node.output), name=name),
            ]
            replaced += 1
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return replaced


def _bool_values(graph) -> set[str]:
    """Names of every bool value of a graph and its subgraphs (declared types)."""
    import onnx

    names = set()
    for info in [*graph.value_info, *graph.input, *graph.output]:
        if info.type.tensor_type.elem_type == onnx.TensorProto.BOOL:
            names.add(info.name)
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph.node:
                    names |= _bool_values(subgraph)
    return names


def _uniform_initializers_as_expand(graph, min_size: int = 4096) -> int:
    """Initializers whose elements are all equal -> a scalar expanded at run time.

    jax2onnx folds broadcasts of constants (zeros of RoIAlign's accumulators, the divisors
    of the preprocessing) into full tensors: ~150 MB of repeated values for R-50 at 800x800.
    Returns the number of bytes saved (also in Loop bodies).
    """
    import onnx
    from onnx import numpy_helper

    saved = 0
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph.node:
                    saved += _uniform_initializers_as_expand(subgraph, min_size)
    kept, expands = [], []
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        values = numpy_helper.to_array(tensor) if size >= min_size else None
        if values is None or not np.all(values.reshape(-1) == values.reshape(-1)[0]):
            kept.append(tensor)
            continue
        scalar = numpy_helper.from_array(values.reshape(-1)[:1], f"{tensor.name}__value")
        shape = numpy_helper.from_array(np.asarray(values.shape, np.int64), f"{tensor.name}__shape")
        kept += [scalar, shape]
        expands.append(onnx.helper.make_node("Expand", [scalar.name, shape.name], [tensor.name]))
        saved += values.nbytes
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*expands, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return saved


def _subgraphs(graph):
    for node in graph.node:
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                if subgraph.node or subgraph.output:
                    yield subgraph


def _names_read(graph) -> set[str]:
    """Every value name a graph's nodes (and their subgraphs') read or it outputs."""
    names = {output.name for output in graph.output}
    for node in graph.node:
        names.update(node.input)
    for subgraph in _subgraphs(graph):
        names |= _names_read(subgraph)
    return names


def _drop_unused_initializers(graph) -> int:
    """Removes initializers nothing reads (jax2onnx leaves some in Loop bodies, and
    onnxruntime warns about each one when it loads the model). Returns how many."""
    read = _names_read(graph)
    kept = [tensor for tensor in graph.initializer if tensor.name in read]
    dropped = len(graph.initializer) - len(kept)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return dropped + sum(_drop_unused_initializers(g) for g in _subgraphs(graph))


def export_onnx(serve, variables, spec, path: str, names) -> None:
    """ONNX through jax2onnx, weights as initializers.

    The converter gets the detector's jaxpr replayed by `export_rewrite.replay`: lax
    primitives only (jax2onnx's stand-ins for Flax's max_pool take neither a positional
    window nor explicit padding pairs, which the ResNet stem uses), with gathers and scatters
    in a form its lowering handles. Then boolean Where nodes become logic ops (onnxruntime
    runs them), constant-valued tensors a scalar expanded at run time (the file holds the
    weights, not ~150 MB of repeated zeros for R-50), and unused initializers are dropped.
    """
    import onnx
    from jax2onnx import to_onnx

    model = to_onnx(
        export_rewrite.replay(functools.partial(serve, variables), spec),
        [spec],
        model_name="msrcnn",
        input_names=[INPUT_NAME],
        output_names=list(names),
    )
    inferred = onnx.shape_inference.infer_shapes(model)
    _bool_where_as_logic(model.graph, _bool_values(inferred.graph) | _bool_values(model.graph))
    _uniform_initializers_as_expand(model.graph)
    _drop_unused_initializers(model.graph)
    onnx.save(model, path)


def exported_program(serve, variables, spec, platforms=("cpu",)):
    """`jax.export` of the detector with the weights as constants."""
    fn = jax.jit(functools.partial(serve, variables))
    return jax.export.export(fn, platforms=platforms)(spec)


def export_stablehlo(serve, variables, spec, path: str, platforms=("cpu",)) -> None:
    """`jax.export` serialisation (StableHLO portable artifact plus the calling convention)."""
    with open(path, "wb") as f:
        f.write(exported_program(serve, variables, spec, platforms).serialize())


def tf_module(fn, variables, inputs: dict, output_names, platforms=("cpu",)):
    """A tf.Module whose `serving_default` runs `fn(variables, *inputs)` (one XlaCallModule op).

    `inputs` maps input names to ShapeDtypeStructs; the weights are tf.Variables of the
    module. This is what jax2tf builds, with one difference: jax2tf passes on jax's StableHLO
    bytes, written for consumers at most 4 weeks older than jax (StableHLO 1.15.0 for jax
    0.10.2), and TensorFlow 2.21 reads up to 1.13.7 ("failed to deserialize portable
    artifact"). Here TensorFlow's own StableHLO library serialises the module at the version
    it reads.
    """
    import tensorflow as tf
    from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
    from tensorflow.compiler.tf2xla.python import xla as tfxla

    leaves, treedef = jax.tree.flatten(variables)
    weights_spec = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    flat_fn = jax.jit(lambda flat, *args: fn(jax.tree.unflatten(treedef, flat), *args))
    exported = jax.export.export(flat_fn, platforms=platforms)(weights_spec, *inputs.values())
    if exported.calling_convention_version > tfxla.call_module_maximum_supported_version():
        raise RuntimeError(
            f"this TensorFlow runs XlaCallModule up to calling convention "
            f"{tfxla.call_module_maximum_supported_version()}, the export needs "
            f"{exported.calling_convention_version} (JAX_EXPORT_CALLING_CONVENTION_VERSION)"
        )
    module_bytes = tf_stablehlo.serialize_portable_artifact_str(
        exported.mlir_module(), tf_stablehlo.get_current_version()
    )

    holder = tf.Module()
    holder.weights = [tf.Variable(np.asarray(leaf), trainable=False) for leaf in leaves]
    signature = [
        tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=name)
        for name, spec in inputs.items()
    ]

    @tf.function(input_signature=signature, autograph=False)
    def serving_default(*args):
        args = [*holder.weights, *args]
        outputs = tfxla.call_module(
            [args[i] for i in exported.module_kept_var_idx],
            version=exported.calling_convention_version,
            module=module_bytes,
            Tout=[tf.as_dtype(aval.dtype) for aval in exported.out_avals],
            Sout=[aval.shape for aval in exported.out_avals],
            platforms=[platform.upper() for platform in exported.platforms],
            use_shardy_partitioner=bool(jax.config.jax_use_shardy_partitioner),
        )
        return dict(zip(output_names, outputs, strict=True))

    holder.serving_default = serving_default
    return holder


def export_saved_model(serve, variables, spec, path: str, names, platforms=("cpu",)) -> None:
    """A TF SavedModel (see `tf_module`) with one `serving_default` signature."""
    import tensorflow as tf

    holder = tf_module(serve, variables, {INPUT_NAME: spec}, names, platforms)
    tf.saved_model.save(holder, path, signatures={"serving_default": holder.serving_default})


def export(
    config,
    variables,
    fmt: str,
    path: str,
    image_hw: tuple[int, int] | None = None,
    batch: int = 1,
    paste_masks: bool = True,
    platforms: tuple[str, ...] = ("cpu",),
    labels: LabelMap | None = None,
) -> str:
    """Writes the detector for `batch` images of `image_hw` (default data.image_hw) as `fmt`;
    its `labels` output holds `labels`' category ids (default: the config's)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    image_hw = tuple(image_hw or config.data.image_hw)
    # Export computes in float32 whatever the checkpoint trained in ('auto' is bf16 on GPU).
    config = config.copy_and_resolve_references()
    config.model.dtype = "float32"
    serve = serving_fn(config, image_hw, paste_masks, labels)
    spec = input_spec(batch, image_hw)
    names = output_names(paste_masks)
    variables = jax.tree.map(jnp.asarray, variables)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    if fmt == "onnx":
        export_onnx(serve, variables, spec, path, names)
    elif fmt == "stablehlo":
        export_stablehlo(serve, variables, spec, path, platforms)
    else:
        export_saved_model(serve, variables, spec, path, names, platforms)
    return path


def main(argv) -> None:
    from absl import app, flags

    from msrcnn.predict import load_predictor

    del argv
    flags_ = flags.FLAGS
    if not flags_.format or not flags_.output:
        raise app.UsageError("need --format and --output")
    predictor = load_predictor(flags_.workdir, flags_.checkpoint)
    image_hw = parse_size(flags_.image_size) if flags_.image_size else None
    path = export(
        predictor.config,
        predictor.variables,
        flags_.format,
        flags_.output,
        image_hw=image_hw,
        batch=flags_.batch,
        paste_masks=flags_.paste_masks,
        platforms=tuple(flags_.platforms),
        labels=predictor.labels,
    )
    hw = image_hw or tuple(predictor.config.data.image_hw)
    print(f"{flags_.format}: images uint8 [{flags_.batch}, {hw[0]}, {hw[1]}, 3] -> {path}")


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "training directory (its latest checkpoint)")
    flags.DEFINE_string("checkpoint", None, "checkpoint directory (e.g. from convert)")
    flags.DEFINE_enum("format", None, list(FORMATS), "artifact format")
    flags.DEFINE_string("output", None, "file (onnx, stablehlo) or directory (saved_model)")
    flags.DEFINE_string("image_size", None, "HxW of the input images (default data.image_hw)")
    flags.DEFINE_integer("batch", 1, "images per call")
    flags.DEFINE_bool("paste_masks", True, "paste masks into the image (else mask_probs)")
    flags.DEFINE_list(
        "platforms", ["cpu"], "stablehlo / saved_model: platforms to lower for (cpu, cuda, tpu)"
    )


if __name__ == "__main__":
    from msrcnn import cli

    define_flags()
    cli.run(main)
