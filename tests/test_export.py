"""msrcnn.export on a tiny trained checkpoint: every format against `Predictor`.

StableHLO needs only jax and runs in the main suite. ONNX (jax2onnx, onnxruntime) and the
SavedModel (tensorflow) need the `export` extra, which CI does not install: those tests skip
without it (`pip install -e ".[export]"` to run them); the ONNX conversion takes minutes
(jax2onnx), so that test is also marked slow.

Tolerances: boxes 1e-3 px, scores 1e-4. Masks must be identical except at pixels whose pasted
probability lies within 1e-4 of the threshold: the 2-step tiny model's mask logits are ~0, so
its probabilities sit at 0.5 where any rounding difference (another runtime's conv order)
flips the comparison. The exported graph itself is the Predictor's computation, bit for bit
(`test_serving_fn_is_the_predictor`).
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msrcnn import config_lib, export, export_rewrite, predict
from msrcnn import predictor as predictor_lib
from msrcnn.ops import masks as mask_ops
from msrcnn.training import trainer
from tests.trainer_helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = (64, 64)
BOX_TOL, SCORE_TOL, MASK_BAND = 1e-3, 1e-4, 1e-4

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config = tiny_config(root / "tfds", num_steps=2, checkpoint_every=2)
    trainer.train_and_evaluate(config, str(root / "run"))
    return root


@pytest.fixture(scope="module")
def predictor(trained):
    return predict.load_predictor(str(trained / "run"), None)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (2, *HW, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def expected(predictor, images):
    """Predictor's detections of each image, with the pasted probabilities of its masks."""
    result = []
    for image in images:
        detections = predictor(image)
        raw, resized = predictor.raw(image)
        raw = jax.tree.map(lambda x: np.asarray(x[0]), raw)
        boxes = predictor_lib.scale_boxes(raw["boxes"], resized, HW)
        probs = mask_ops.paste_masks_in_image(raw["mask_probs"], boxes, HW)
        result.append((detections, np.asarray(probs)[: len(detections)]))
    return result


def assert_matches(outputs, expected, exact=False):
    """Named outputs of a batch against Predictor's detections of the same images."""
    assert set(outputs) == set(export.OUTPUT_NAMES)
    for i, (det, probs) in enumerate(expected):
        n = int(outputs["num_detections"][i])
        assert n == len(det)
        np.testing.assert_array_equal(outputs["labels"][i, :n], det.labels)
        box_tol, score_tol = (0.0, 0.0) if exact else (BOX_TOL, SCORE_TOL)
        np.testing.assert_allclose(outputs["boxes"][i, :n], det.boxes, rtol=0, atol=box_tol)
        np.testing.assert_allclose(outputs["scores"][i, :n], det.scores, rtol=0, atol=score_tol)
        np.testing.assert_allclose(
            outputs["mask_scores"][i, :n], det.mask_scores, rtol=0, atol=score_tol
        )
        differ = outputs["masks"][i, :n] != det.masks
        band = np.abs(probs - 0.5) <= (0.0 if exact else MASK_BAND)
        assert not np.any(differ & ~band), f"image {i}: masks differ away from the threshold"
        # Padding slots are empty.
        assert not outputs["masks"][i, n:].any() and not outputs["labels"][i, n:].any()


def test_preprocess_images_traced_equals_numpy():
    """Predictor's numpy preprocessing and the traced one agree bit for bit (resize too)."""
    data = config_lib.base_config().data
    data.min_size, data.max_size = 96, 160
    rng = np.random.default_rng(1)
    for hw in [(64, 64), (100, 150), (96, 96)]:
        batch = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
        reference, resized = predictor_lib.preprocess_images(batch, data)
        traced = jax.jit(lambda x: predictor_lib.preprocess_images(x, data)[0])(batch)
        assert resized == predictor_lib.resized_hw(
            hw, predictor_lib.resize_scale(hw, data.min_size, data.max_size)
        )
        np.testing.assert_array_equal(np.asarray(traced), reference)
        single, _ = predictor_lib.preprocess(batch[1], data)
        np.testing.assert_array_equal(single[0], reference[1])


def _replayed_eqns(fn, *args):
    replayed = export_rewrite.replay(fn, *args)
    eqns, stack = [], [jax.make_jaxpr(replayed)(*args).jaxpr]
    while stack:
        jaxpr = stack.pop()
        for eqn in jaxpr.eqns:
            eqns.append(eqn)
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else [value]:
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        stack.append(getattr(inner, "jaxpr", inner))
    return replayed, eqns


def test_replay_restates_batched_gathers_scatters_and_pools():
    import flax.linen as nn

    def fn(x, starts, idx):
        def one(row, start, i):
            window = jax.lax.dynamic_slice_in_dim(row, start, 4)  # batched dynamic slice

            def body(carry):
                k, acc = carry
                return k + 1, acc.at[k + i].set(window[k], mode="drop")  # batched scatter

            _, acc = jax.lax.while_loop(lambda c: c[0] < 4, body, (0, jnp.zeros(6)))
            return acc + row[i]  # batched gather

        pooled = nn.max_pool(x[..., None, None], (3, 1), strides=(2, 1), padding=((1, 1), (0, 0)))
        return jax.vmap(one)(x, starts, idx), pooled

    args = (
        jnp.arange(30.0).reshape(3, 10),
        jnp.array([0, 3, 6]),
        jnp.array([2, 5, 1]),
    )
    replayed, eqns = _replayed_eqns(fn, *args)
    for got, want in zip(replayed(*args), jax.tree.leaves(fn(*args)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    gathers = [e for e in eqns if e.primitive.name in ("gather", "scatter")]
    assert gathers and all(not e.params["dimension_numbers"].operand_batching_dims for e in gathers)
    pools = [e for e in eqns if e.primitive.name == "reduce_window_max"]
    assert pools and all(len(e.params["window_dimensions"]) <= 3 for e in pools)


def test_serving_fn_is_the_predictor(predictor, images, expected):
    """The exported computation, run by jax, gives Predictor's detections bit for bit."""
    serve = export.serving_fn(predictor.config, HW, labels=predictor.labels)
    variables = jax.tree.map(jnp.asarray, predictor.variables)
    for i, image in enumerate(images):
        outputs = jax.jit(serve)(variables, image[None])
        outputs = dict(zip(export.OUTPUT_NAMES, map(np.asarray, outputs), strict=True))
        assert_matches(outputs, expected[i : i + 1], exact=True)


FRESH_STABLEHLO = """
import sys
import numpy as np
from jax import export
exported = export.deserialize(open(sys.argv[1], "rb").read())
images = np.load(sys.argv[2])
outputs = [np.asarray(x) for x in exported.call(images)]
np.savez(sys.argv[3], *outputs)
assert not [m for m in sys.modules if m.startswith("msrcnn")], "msrcnn was imported"
"""


def _run(args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(kwargs.pop("env", {}))
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


def test_stablehlo_cli_and_fresh_process(trained, images, expected, tmp_path):
    """`python -m msrcnn.export --format=stablehlo`, then a process that knows only jax."""
    path = tmp_path / "tiny.stablehlo"
    _run(
        [
            sys.executable,
            "-m",
            "msrcnn.export",
            f"--workdir={trained / 'run'}",
            "--format=stablehlo",
            f"--output={path}",
            "--batch=2",
        ],
        cwd=REPO,
        env={"PYTHONPATH": REPO},
    )
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(FRESH_STABLEHLO)
    _run(
        [sys.executable, "serve.py", str(path), "images.npy", "out.npz"],
        cwd=tmp_path,
    )
    with np.load(tmp_path / "out.npz") as data:
        outputs = dict(zip(export.OUTPUT_NAMES, (data[f"arr_{i}"] for i in range(6)), strict=True))
    assert outputs["masks"].shape == (2, 8, *HW) and outputs["masks"].dtype == bool
    assert_matches(outputs, expected)


def test_unpasted_masks(predictor, images, expected):
    serve = export.serving_fn(predictor.config, HW, paste_masks=False, labels=predictor.labels)
    outputs = jax.jit(serve)(jax.tree.map(jnp.asarray, predictor.variables), images)
    named = dict(zip(export.output_names(False), map(np.asarray, outputs), strict=True))
    assert named["mask_probs"].shape == (2, 8, 28, 28)
    for i, (det, probs) in enumerate(expected):
        n = int(named["num_detections"][i])
        assert n == len(det)
        pasted = mask_ops.paste_masks_in_image(
            named["mask_probs"][i, :n], named["boxes"][i, :n], HW, threshold=0.5
        )
        differ = np.asarray(pasted) != det.masks
        assert not np.any(differ & (np.abs(probs - 0.5) > MASK_BAND))


FRESH_SAVED_MODEL = """
import sys
import numpy as np
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
outputs = serve(images=tf.constant(np.load(sys.argv[2])))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in outputs.items()})
assert not [m for m in sys.modules if m.startswith("msrcnn")], "msrcnn was imported"
"""


def test_saved_model(predictor, images, expected, tmp_path):
    pytest.importorskip("tensorflow")
    path = tmp_path / "saved_model"
    export.export(
        predictor.config,
        predictor.variables,
        "saved_model",
        str(path),
        batch=2,
        labels=predictor.labels,
    )
    np.save(tmp_path / "images.npy", images)
    (tmp_path / "serve.py").write_text(FRESH_SAVED_MODEL)
    _run([sys.executable, "serve.py", str(path), "images.npy", "out.npz"], cwd=tmp_path)
    with np.load(tmp_path / "out.npz") as data:
        assert_matches(dict(data), expected)


@pytest.mark.slow
def test_onnx(predictor, images, expected, tmp_path):
    pytest.importorskip("jax2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "tiny.onnx"
    export.export(predictor.config, predictor.variables, "onnx", str(path), batch=2)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    names = [o.name for o in session.get_outputs()]
    assert names == list(export.OUTPUT_NAMES)
    assert_matches(dict(zip(names, session.run(None, {"images": images}), strict=True)), expected)


def test_onnx_graph_fixups():
    """Bool Where -> logic ops, constant tensors -> a scalar expanded, unused initializers
    dropped; the result runs in onnxruntime."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    zeros = numpy_helper.from_array(np.zeros((64, 128), np.float32), "zeros")
    graph = helper.make_graph(
        [
            helper.make_node("Where", ["c", "a", "b"], ["picked"], name="where"),
            helper.make_node("Add", ["x", "zeros"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.BOOL, [4]) for name in ("c", "a", "b")]
        + [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, 128])],
        [
            helper.make_tensor_value_info("picked", TensorProto.BOOL, [4]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 128]),
        ],
        initializer=[zeros, numpy_helper.from_array(np.ones(3, np.float32), "unused")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    bools = export._bool_values(onnx.shape_inference.infer_shapes(model).graph)
    assert export._bool_where_as_logic(model.graph, bools) == 1
    assert export._uniform_initializers_as_expand(model.graph) == 64 * 128 * 4
    assert not [t for t in model.graph.initializer if t.name == "zeros"]
    assert export._drop_unused_initializers(model.graph) == 1
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    c, a, b = (np.array(v, bool) for v in ([1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 0]))
    x = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)
    picked, y = session.run(None, {"c": c, "a": a, "b": b, "x": x})
    np.testing.assert_array_equal(picked, np.where(c, a, b))
    np.testing.assert_array_equal(y, x)


def test_parse_size_and_format_errors(predictor):
    assert export.parse_size("800x1333") == (800, 1333)
    for bad in ("800", "axb", "0x5"):
        with pytest.raises(ValueError):
            export.parse_size(bad)
    with pytest.raises(ValueError, match="format"):
        export.export(predictor.config, predictor.variables, "tflite", "/tmp/x")


def test_documented_signature_is_the_exported_one():
    """The README's Deploy section names the input and every output."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Deploy") :]
    for name in (export.INPUT_NAME, *export.OUTPUT_NAMES, "mask_probs"):
        assert f"`{name}`" in section, name
