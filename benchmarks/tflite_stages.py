"""Which parts of the detector convert to TFLite (LiteRT), stage by stage.

    python -m benchmarks.tflite_stages --workdir=/tmp/msrcnn_tiny [--image_size=96x96]

Each stage of `Predictor`'s computation is built as its own TF SavedModel signature the way
`msrcnn.export --format=saved_model` builds the whole detector (`export.tf_module`: the
stage's StableHLO in one XlaCallModule op), with the inputs it gets from the stage before on
one test image, and handed to `tf.lite.TFLiteConverter` twice: TFLite builtin ops only, and
builtins plus TensorFlow ops (Flex). What converts is run by the TFLite interpreter and
compared with jax's outputs of the stage (largest absolute difference). The table says, per
stage, what converted and the converter's first error otherwise.

Needs the export extra (tensorflow). Stages: preprocess (resize, normalise, pad), backbone +
FPN, RPN head, proposals (top-k, decoding, NMS loop), RoIAlign, box head + class NMS, mask and
MaskIoU heads, mask paste, and the whole detector.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.inference import test_image
from msrcnn import detector as detector_lib
from msrcnn import export
from msrcnn import predictor as predictor_lib
from msrcnn.models.ms_rcnn import MaskScoringRCNN
from msrcnn.ops.select import select_class
from msrcnn.predict import load_predictor


def stages(config, variables, image):
    """[(name, fn(variables, *inputs) -> tuple, inputs)] with inputs from the stage before."""
    detector = detector_lib.from_config(config)
    model = detector.model
    settings = detector_lib.inference_settings(config)
    hw = image.shape[:2]
    batch, resized = predictor_lib.preprocess_images(image[None], config.data)
    sizes = np.asarray([resized], np.float32)
    apply = model.apply

    def preprocess(v, images):
        return (predictor_lib.preprocess_images(images, config.data)[0],)

    def pyramid(v, x):
        levels = apply(v, x, method=MaskScoringRCNN.pyramid)
        return tuple(levels[name] for name in sorted(levels))

    names = sorted(apply(variables, batch, method=MaskScoringRCNN.pyramid))
    as_dict = lambda levels: dict(zip(names, levels, strict=True))
    levels = jax.jit(pyramid)(variables, batch)

    def rpn_head(v, *levels):
        logits, deltas = apply(v, as_dict(levels), method=MaskScoringRCNN.rpn)
        return (*logits, *deltas)

    def proposals(v, *levels):
        return detector.proposals(detector.rpn(v, as_dict(levels)), sizes, settings.proposals)

    boxes, _, valid = jax.jit(proposals)(variables, *levels)

    def roi_align(v, boxes, *levels):
        return (detector.pool(as_dict(levels), boxes, detector_lib.BOX_POOL_SIZE),)

    (features,) = jax.jit(roi_align)(variables, boxes, *levels)

    def box_head(v, features, boxes, valid):
        logits, deltas = apply(v, features, method=MaskScoringRCNN.box)
        logits = logits.reshape(1, boxes.shape[1], -1)
        deltas = deltas.reshape(1, boxes.shape[1], -1, 4)
        post = functools.partial(detector_lib.postprocess_boxes, settings=settings.detections)
        return jax.vmap(post)(logits, deltas, boxes, valid, sizes)

    det_boxes, labels, _, _ = jax.jit(box_head)(variables, features, boxes, valid)
    pool_masks = lambda b, *levels: detector.pool(as_dict(levels), b, detector_lib.MASK_POOL_SIZE)
    mask_features = jax.jit(pool_masks)(det_boxes, *levels)

    def mask_heads(v, mask_features, labels):
        column = jnp.maximum(labels.reshape(-1) - 1, 0)
        logits = apply(v, mask_features, column + 1, method=MaskScoringRCNN.mask)
        probs = jax.nn.sigmoid(logits)
        maskiou = apply(v, mask_features, probs, method=MaskScoringRCNN.maskiou)
        return probs, select_class(maskiou, column)

    probs, _ = jax.jit(mask_heads)(variables, mask_features, labels)
    threshold = float(config.inference.mask_threshold)

    def paste(v, probs, boxes):
        boxes = predictor_lib.scale_boxes(boxes[0], resized, hw)
        return (predictor_lib.paste_masks(probs, boxes, image_hw=hw, threshold=threshold),)

    serve = export.serving_fn(config, hw)
    return [
        ("preprocess", preprocess, [image[None]]),
        ("backbone + FPN", pyramid, [batch]),
        ("RPN head", rpn_head, list(levels)),
        ("proposals (top-k, NMS loop)", proposals, list(levels)),
        ("RoIAlign", roi_align, [boxes, *levels]),
        ("box head + class NMS", box_head, [features, boxes, valid]),
        ("mask + MaskIoU heads", mask_heads, [mask_features, labels]),
        ("mask paste", paste, [probs, det_boxes]),
        ("whole detector", serve, [image[None]]),
    ]


def first_error(error: Exception) -> str:
    text = str(error)
    found = re.search(r"error: ([^\n]+)", text)
    line = found.group(1) if found else text.strip().splitlines()[-1]
    where = re.search(r"(msrcnn/[\w/]+\.py):(\d+)", text)
    return f"{line} ({where.group(1)}:{where.group(2)})" if where else line


def try_stage(fn, variables, inputs, workdir: str) -> dict:
    import tensorflow as tf

    specs = {
        f"x{i}": jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
        for i, x in enumerate(inputs)
    }
    expected = [np.asarray(x) for x in jax.tree.leaves(jax.jit(fn)(variables, *inputs))]
    names = [f"y{i}" for i in range(len(expected))]
    holder = export.tf_module(fn, variables, specs, names)
    path = os.path.join(workdir, "saved_model")
    tf.saved_model.save(holder, path, signatures={"serving_default": holder.serving_default})
    row = {}
    for label, ops in (
        ("builtins", [tf.lite.OpsSet.TFLITE_BUILTINS]),
        ("builtins + flex", [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]),
    ):
        converter = tf.lite.TFLiteConverter.from_saved_model(path)
        converter.target_spec.supported_ops = ops
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises several types
            row[label] = "no: " + first_error(error)
            continue
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
        runner = interpreter.get_signature_runner("serving_default")
        try:
            got = runner(**{k: np.asarray(x) for k, x in zip(specs, inputs, strict=True)})
        except Exception as error:
            row[label] = f"converts, fails to run: {first_error(error)}"
            continue
        diff = max(
            float(np.max(np.abs(got[n].astype(np.float64) - e.astype(np.float64))))
            if e.size
            else 0.0
            for n, e in zip(names, expected, strict=True)
        )
        row[label] = f"yes ({len(flatbuffer) / 1e6:.1f} MB), max |diff| {diff:.2g}"
    return row


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir")
    parser.add_argument("--checkpoint")
    parser.add_argument("--image_size", default="", help="HxW (default data.image_hw)")
    args = parser.parse_args(argv)
    predictor = load_predictor(args.workdir, args.checkpoint)
    config = predictor.config
    hw = export.parse_size(args.image_size) if args.image_size else tuple(config.data.image_hw)
    variables = jax.tree.map(jnp.asarray, predictor.variables)
    rows = []
    print("| stage | TFLite builtins | builtins + TF ops (Flex) |")
    print("| --- | --- | --- |")
    for name, fn, inputs in stages(config, variables, test_image(*hw)):
        with tempfile.TemporaryDirectory() as workdir:
            row = {"stage": name, **try_stage(fn, variables, inputs, workdir)}
        rows.append(row)
        print(f"| {name} | {row['builtins']} | {row['builtins + flex']} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
