"""The training loop end to end on experiments/tiny.py (64 x 64 shapes, a tiny model).

Compilation dominates: the tiny model runs a step in well under a second but XLA takes ~20 s
to compile the step and ~15 s the initialisation on 2 CPU cores. So that the module stays in
its budget (< 90 s):
  * the module compiles with XLA's fast-compile mode (the `fast_xla` fixture, conftest);
  * every run uses one config (see `trainer_helpers.tiny_config`), so the init, step and
    evaluation programs are compiled once and later `train_and_evaluate` calls load them
    from the run's persistent compilation cache (conftest);
  * only the first run evaluates; later runs replace `_evaluate_and_log` with a no-op;
  * the 2-device worker runs in a background process started before the first test.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from msrcnn import checkpointing, sharding
from msrcnn import detector as detector_lib
from msrcnn.data import datasets
from msrcnn.label_map import LabelMap
from msrcnn.models.build import build_model
from msrcnn.predictor import Predictor
from msrcnn.training import optim, trainer
from msrcnn.training import train_step as train_step_lib
from msrcnn.training.train_state import TrainState
from tests.trainer_helpers import (
    FAST_COMPILE,
    LOSS_TERMS,
    flat_arrays,
    read_metrics,
    read_scalars,
    tiny_config,
    tiny_train_command,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARDED_TEST = "test_sharded_step_matches_single_device"
pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny shapes dataset (16 train / 8 validation images), built once."""
    path = tmp_path_factory.mktemp("tiny_shapes")
    datasets.load(tiny_config(path))
    return path


@pytest.fixture(scope="module", autouse=True)
def sharded_worker(request, data_dir, tmp_path_factory):
    """Starts the 2-device worker (tests/trainer_helpers.py) in the background when the
    sharded test is selected, so that it compiles while the other tests run."""
    if not any(item.name == SHARDED_TEST for item in request.session.items):
        yield None
        return
    out = tmp_path_factory.mktemp("sharded")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    ).strip()
    args = [str(data_dir), str(out / "workdir"), str(out / "result.npz"), str(int(FAST_COMPILE))]
    with open(out / "log.txt", "w") as log:  # a file, not a pipe nobody reads until the end
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.trainer_helpers", *args],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    yield proc, out
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture
def no_eval(monkeypatch):
    """Skips the final evaluation (covered by the first test) in later runs."""
    monkeypatch.setattr(trainer, "_evaluate_and_log", lambda *args, **kwargs: None)


class StepTraces:
    """Counts the traces of the trainer's train step: `train_step_lib.train_step` replaced by
    a wrapper that counts its calls, which happen only while JAX traces it."""

    def __init__(self, monkeypatch):
        self.count = 0
        step = train_step_lib.train_step

        def counted(*args, **kwargs):
            self.count += 1
            return step(*args, **kwargs)

        monkeypatch.setattr(train_step_lib, "train_step", counted)


@pytest.fixture(scope="module")
def two_steps(data_dir, tmp_path_factory):
    """One 2-step run with evaluation, shared by the tests that need a trained workdir. Its
    result also holds `step_traces`, how often the run traced its train step."""
    workdir = tmp_path_factory.mktemp("two_steps")
    config = tiny_config(data_dir, num_steps=2)
    config_before = config.to_json()
    with pytest.MonkeyPatch.context() as monkeypatch:
        traces = StepTraces(monkeypatch)
        result = trainer.train_and_evaluate(config, str(workdir))
    result["step_traces"] = traces.count
    result["config_before"] = config_before
    return workdir, config, result


def test_two_steps_write_logs_checkpoints_and_eval(two_steps):
    workdir, config, result = two_steps
    assert result["step"] == 2
    assert result["step_traces"] == 1  # one shape bucket: one trace for both steps
    metrics = result["metrics"]
    for term in (*LOSS_TERMS, "loss", "grad_norm"):
        assert term in metrics, term
        assert np.isfinite(metrics[term]), (term, metrics[term])
    assert metrics["finite"] == 1.0
    assert metrics["skipped_nonfinite"] == 0
    assert metrics["loss"] == pytest.approx(sum(metrics[t] for t in LOSS_TERMS), rel=1e-5)

    # metrics.jsonl: one line per logged step (log_every=1), then the evaluation at step 2.
    lines = read_metrics(workdir)
    assert [line["step"] for line in lines] == [1, 2, 2]
    for line in lines[:2]:
        assert set(LOSS_TERMS) <= set(line)
        assert all(np.isfinite(line[t]) for t in LOSS_TERMS)
    assert {k: v for k, v in lines[1].items() if k != "step"} == metrics
    assert "eval/bbox/AP" in lines[2]

    # TensorBoard holds the same scalars.
    scalars = read_scalars(workdir / "tensorboard")
    for term in LOSS_TERMS:
        assert set(scalars[term]) == {1, 2}
        assert scalars[term][2] == pytest.approx(metrics[term], rel=1e-6)
    assert 2 in scalars["eval/bbox/AP"]

    # A checkpoint per saved step (checkpoint_every=1), each complete.
    checkpoints = workdir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["1", "2"]
    for step in ("1", "2"):
        items = {p.name for p in (checkpoints / step).iterdir()}
        assert {"variables", "opt_state", "data", "config", "labels"} <= items, items
    variables, stored_config = checkpointing.load_variables(str(checkpoints))
    assert json.loads(stored_config.model.to_json()) == json.loads(config.model.to_json())
    assert "maskiou_head" in variables["params"]

    # Evaluation: the JSON file and the returned table, with its three rows.
    assert (workdir / "eval_step_2.json").is_file()
    rows = result["eval"]["table"].rows
    assert list(rows) == ["bbox", "segm (plain: cls score)", "segm (mask scoring)"]
    assert result["eval"]["num_images"] == 8


def test_training_leaves_the_config_alone_and_checkpoints_the_labels(two_steps):
    """The config is data: training writes nothing into it. The dataset's label map travels
    in the checkpoint instead, where `Predictor.from_checkpoint` finds it."""
    workdir, config, result = two_steps
    assert config.to_json() == result["config_before"]
    expected = LabelMap.of_dataset(datasets.load(config))
    assert expected != LabelMap.of_config(config)  # the config names no classes itself
    _, _, labels = checkpointing.load_checkpoint(str(workdir / "checkpoints"))
    assert labels == expected
    predictor = Predictor.from_checkpoint(str(workdir / "checkpoints"))
    assert predictor.labels == expected
    assert list(predictor.category_ids) == list(expected.category_ids)


def test_resume_matches_uninterrupted_run(two_steps, tmp_path, no_eval, monkeypatch, capsys):
    """The 2-step run continued to 3 steps equals a 3-step run bit for bit: same data order
    (the iterator position is restored), PRNG keys from (seed, step), the optimizer's step
    count (hence the warmup learning rate) and momentum restored, a deterministic CPU step."""
    workdir, config, _ = two_steps
    batches = []
    global_batch = sharding.global_batch

    def recording_global_batch(mesh, local_batch):
        batches.append(local_batch)
        return global_batch(mesh, local_batch)

    monkeypatch.setattr(sharding, "global_batch", recording_global_batch)
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    config = tiny_config(config.data.data_dir, num_steps=3, allow_config_change=True)
    result = trainer.train_and_evaluate(config, str(resumed))
    assert "resumed from step 2" in capsys.readouterr().out
    assert result["step"] == 3
    assert len(batches) == 1  # one step run, not three
    assert [line["step"] for line in read_metrics(resumed)] == [1, 2, 2, 3]

    fresh = tmp_path / "fresh"
    config.train.checkpoint_every = 100  # only the final save (no effect on the step)
    result_fresh = trainer.train_and_evaluate(config, str(fresh))
    assert result_fresh["step"] == 3
    assert len(batches) == 4
    for key, value in batches[0].items():  # the same third batch
        np.testing.assert_array_equal(value, batches[3][key], err_msg=key)

    timing = "steps_per_s"
    assert {k: v for k, v in result["metrics"].items() if k != timing} == {
        k: v for k, v in result_fresh["metrics"].items() if k != timing
    }
    for item in ("variables", "opt_state"):
        got = ocp.StandardCheckpointer().restore(resumed / "checkpoints" / "3" / item)
        want = ocp.StandardCheckpointer().restore(fresh / "checkpoints" / "3" / item)
        got, want = flat_arrays(got), flat_arrays(want)
        assert got.keys() == want.keys()
        for name, value in want.items():
            np.testing.assert_array_equal(got[name], value, err_msg=f"{item}: {name}")
    counts = {v.item() for v in want.values() if v.ndim == 0}
    assert counts == {3}  # the optimizer's step count
    # ... and the compared parameters did train.
    before = flat_arrays(checkpointing.load_variables(str(workdir / "checkpoints"), step=2)[0])
    after = flat_arrays(checkpointing.load_variables(str(fresh / "checkpoints"), step=3)[0])
    assert any(not np.array_equal(v, after[k]) for k, v in before.items())


@pytest.fixture(scope="module")
def resumed_with_evals(two_steps, tmp_path_factory):
    """The 2-step run resumed to 4 steps in this process (a fresh `train_and_evaluate`, as a
    restarted command runs it), evaluating every step: -> (step traces, what the run wrote
    to stdout and stderr together, in order). The evaluation is a stand-in that prints a
    table line (the real one is covered by the first test)."""
    workdir, config, _ = two_steps
    resumed = tmp_path_factory.mktemp("resumed_with_evals")
    shutil.copytree(workdir, resumed, dirs_exist_ok=True)
    config = tiny_config(config.data.data_dir, num_steps=4, eval_every=1, allow_config_change=True)
    output = io.StringIO()

    def evaluate(config, model, state, data, labels, writer, workdir, step):
        print(f"EVAL TABLE at step {step}")
        print("bbox AP 0.000")

    with pytest.MonkeyPatch.context() as monkeypatch:
        traces = StepTraces(monkeypatch)
        monkeypatch.setattr(trainer, "_evaluate_and_log", evaluate)
        monkeypatch.setattr(sys, "stdout", output)
        monkeypatch.setattr(sys, "stderr", output)  # the progress bar's stream
        result = trainer.train_and_evaluate(config, str(resumed))
    assert result["step"] == 4
    return traces.count, output.getvalue()


def test_resume_traces_the_step_as_often_as_a_fresh_run(two_steps, resumed_with_evals):
    """The restored state is placed as the fresh one (every leaf with the freshly
    initialised state's sharding), so the first step after a restart does not trace (and
    compile) the step a second time."""
    traces, output = resumed_with_evals
    assert "resumed from step 2" in output
    assert traces == two_steps[2]["step_traces"] == 1


def _screen_lines(text: str) -> list[str]:
    """The lines as a terminal shows them: a carriage return goes back to the line's start
    (what follows overwrites; tqdm clears a bar with spaces)."""
    lines = []
    for raw in text.split("\n"):
        screen = ""
        for part in raw.split("\r"):
            screen = part + screen[len(part) :]
        lines.append(screen.rstrip())
    return lines


def test_progress_bar_is_not_drawn_over_or_after_the_tables(resumed_with_evals):
    """The bar is closed before an evaluation prints its table (a new one continues below
    it) and before the final evaluation: no bar over a table line, none after the last."""
    _, output = resumed_with_evals
    lines = _screen_lines(output)
    tables = [i for i, line in enumerate(lines) if "EVAL TABLE" in line]
    assert len(tables) == 2, output  # at step 3 (eval_every) and the final one at step 4
    for i in tables:
        assert lines[i] in ("EVAL TABLE at step 3", "EVAL TABLE at step 4"), output
        assert lines[i + 1] == "bbox AP 0.000", output
    assert lines[tables[0]] == "EVAL TABLE at step 3"
    assert "train:" in "\n".join(lines[tables[0] + 2 : tables[1]]), output  # drawn again
    assert "train: 100%" in "\n".join(lines[: tables[1]]), output  # closed, at 4/4
    assert not any("train:" in line for line in lines[tables[1] :]), output


def test_refused_resume_closes_the_checkpointer(two_steps, tmp_path, monkeypatch):
    """A resume refused for a changed config (no allow_config_change) raises the refusal and
    closes the checkpoint manager on the way out: no orbax threads are left to fail at
    interpreter shutdown."""
    workdir, config, _ = two_steps
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
    closed = []

    class RecordingCheckpointer(checkpointing.TrainCheckpointer):
        def close(self):
            super().close()
            closed.append(self.manager)

    monkeypatch.setattr(checkpointing, "TrainCheckpointer", RecordingCheckpointer)
    config = tiny_config(config.data.data_dir, num_steps=3)
    with pytest.raises(ValueError, match="was written by a different config"):
        trainer.train_and_evaluate(config, str(resumed))
    assert len(closed) == 1


def test_refused_resume_command_ends_with_the_refusal(two_steps, tmp_path):
    """`python -m msrcnn.train` refusing to resume (experiments/tiny.py differs from the test
    config): the refusal is the last thing on stderr, no orbax error after it."""
    workdir, config, _ = two_steps
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if FAST_COMPILE:  # the programs this module compiled, from the persistent cache
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    out = subprocess.run(
        tiny_train_command(resumed, config.data.data_dir, 3),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "cannot schedule new futures" not in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]  # the user's to fix: no trace
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ConfigError: "), out.stderr[-3000:]
    assert "was written by a different config" in last
    assert "allow_config_change" in last


def test_sharded_step_matches_single_device(sharded_worker, two_steps):
    """One step on a 2-device data mesh (one image per device) equals the 1-device step of the
    2-step run. Tolerance: the gradients and the loss normalisers are sums over the batch;
    on 2 devices each device sums its image and an all-reduce adds the halves, which
    reassociates float32 sums. Observed: parameters within 4e-7 relative (a few ulp, about
    half the leaves bit-identical), losses within 3e-7, grad_norm equal."""
    proc, out = sharded_worker
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the 2-device worker did not finish in 300 s")
    assert proc.returncode == 0, (out / "log.txt").read_text()[-5000:]
    with np.load(out / "result.npz") as data:
        report = json.loads(str(data["report"]))
        sharded = {k.removeprefix("param:"): data[k] for k in data.files if k != "report"}
    assert report["mesh"] == {"data": 2}
    assert report["step"] == 1
    (shapes,) = report["shard_shapes"]
    assert shapes["images"] == [[0, [1, 64, 64, 3]], [1, [1, 64, 64, 3]]]
    assert shapes["gt_boxes"] == [[0, [1, 4, 4]], [1, [1, 4, 4]]]

    workdir = two_steps[0]
    single_vars, _ = checkpointing.load_variables(str(workdir / "checkpoints"), step=1)
    single = flat_arrays(single_vars["params"])
    assert single.keys() == sharded.keys()
    for name, value in single.items():
        np.testing.assert_allclose(sharded[name], value, rtol=1e-5, atol=1e-8, err_msg=name)
    single_losses = read_metrics(workdir)[0]
    sharded_losses = read_metrics(out / "workdir")[0]
    assert single_losses["step"] == sharded_losses["step"] == 1
    for term in (*LOSS_TERMS, "loss", "grad_norm"):
        assert sharded_losses[term] == pytest.approx(single_losses[term], rel=1e-5, abs=1e-7)


# --- the plain variant and skipping non-finite updates: one compiled step -----------------


@pytest.fixture(scope="module")
def plain_step(data_dir, two_steps):
    """tiny:plain with skip_nonfinite=True: its state (the trained tiny parameters without the
    MaskIoU head, a fresh optimizer), one batch, and its jitted train step.

    One compiled program serves the plain-variant test and the skip test; the state is taken
    from the 2-step run instead of initialising the plain model (which would compile another
    init program)."""
    config = tiny_config(data_dir, "plain", skip_nonfinite=True)
    detector = detector_lib.from_config(config)
    model = detector.model
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    )
    trained, _ = checkpointing.load_variables(str(two_steps[0] / "checkpoints"))
    params = {k: v for k, v in trained["params"].items() if k != "maskiou_head"}
    assert jax.tree.map(lambda p: (p.shape, p.dtype), params) == jax.tree.map(
        lambda a: (a.shape, a.dtype), abstract
    )
    optimizer = optim.make_optimizer(config, params)
    # Placed like the trainer's: state replicated over the data mesh, batch split along it
    # (mixing placements would make the second call compile again).
    mesh = sharding.data_mesh()
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        batch_stats={},
    )
    state = jax.device_put(state, sharding.replicated(mesh))
    batch = sharding.global_batch(mesh, next(datasets.load(config).train_iterator()))
    step_fn = jax.jit(functools.partial(train_step_lib.train_step, detector, config, optimizer))
    return model, state, batch, step_fn


def test_plain_variant_has_no_maskiou_and_trains(plain_step):
    model, state, batch, step_fn = plain_step
    assert not model.mask_scoring
    assert "maskiou_head" not in state.params
    new_state, metrics = step_fn(state, batch)
    metrics = jax.device_get(metrics)
    assert "loss_maskiou" not in metrics
    for term in LOSS_TERMS[:-1]:
        assert np.isfinite(metrics[term]), (term, metrics[term])
    assert metrics["finite"] == 1.0
    assert int(new_state.step) == 1
    before, after = flat_arrays(state.params), flat_arrays(new_state.params)
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    # Only GroupNorm scales (~1.0) may keep their value: at the first warmup step their
    # updates can be below half an ulp of 1.0.
    assert all(k.endswith("GroupNorm_0/scale") for k in unchanged), unchanged
    assert len(unchanged) < len(before) // 4, unchanged


def _poison(state: TrainState) -> TrainState:
    """A NaN in the RPN conv: every objectness logit, hence the loss, is NaN."""
    params = jax.tree.map(lambda x: x, state.params)
    params["rpn_head"]["conv"]["kernel"] = params["rpn_head"]["conv"]["kernel"].at[0].set(jnp.nan)
    return state.replace(params=params)


def test_skip_nonfinite_keeps_state(plain_step):
    _, state, batch, step_fn = plain_step
    state, _ = step_fn(state, batch)  # non-zero momentum, so that "unchanged" means something
    poisoned = _poison(state)
    new_state, metrics = step_fn(poisoned, batch)
    assert float(metrics["finite"]) == 0.0
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == int(state.step) + 1
    for part in ("params", "opt_state"):
        old = jax.tree.leaves(getattr(poisoned, part))
        new = jax.tree.leaves(getattr(new_state, part))
        assert len(old) == len(new)
        for a, b in zip(old, new, strict=True):
            np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_nonfinite_loss_raises_with_step_and_terms(two_steps, tmp_path, no_eval, monkeypatch):
    """skip_nonfinite=False: a NaN loss stops training with the step, the loss terms and the
    last good checkpoint; nothing of the NaN step is saved. The NaN comes from a poisoned
    restored state, so the run reuses the compiled programs."""
    workdir, config, _ = two_steps
    assert not config.train.skip_nonfinite
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir / "checkpoints", resumed / "checkpoints")
    restore_latest = checkpointing.TrainCheckpointer.restore_latest

    def poisoned_restore(self, target_state):
        state, iterator_state = restore_latest(self, target_state)
        return _poison(state), iterator_state

    monkeypatch.setattr(checkpointing.TrainCheckpointer, "restore_latest", poisoned_restore)
    config = tiny_config(config.data.data_dir, num_steps=3, allow_config_change=True)
    with pytest.raises(FloatingPointError) as info:
        trainer.train_and_evaluate(config, str(resumed))
    message = str(info.value)
    assert "non-finite loss at step 3" in message
    for term in (*LOSS_TERMS, "loss", "grad_norm"):
        assert f"{term}=" in message, term
    assert "loss_objectness=nan" in message
    assert "Last good checkpoint: step 2" in message
    assert "skip_nonfinite" in message
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]


def test_restore_into_different_model_names_fields(two_steps):
    workdir, config, _ = two_steps
    other = tiny_config(config.data.data_dir, "plain")
    other.model.fpn_channels = 16
    model = build_model(other)
    optimizer = optim.make_optimizer(
        other,
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]),
    )

    def init(key):
        params = model.init(key, jnp.zeros((1, 64, 64, 3)))["params"]
        return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), {})

    target = jax.eval_shape(init, jax.random.key(0))
    ckpt = checkpointing.TrainCheckpointer(str(workdir / "checkpoints"), other)
    try:
        with pytest.raises(ValueError) as info:
            ckpt.restore_latest(target)
    finally:
        ckpt.close()
    message = str(info.value)
    assert "different model" in message
    assert "fpn_channels: checkpoint 32 vs config 16" in message
    assert "mask_scoring: checkpoint True vs config False" in message
    assert "num_classes" not in message  # only the differing fields
    # The refused restore left the checkpoints as they were.
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
        "1",
        "2",
    ]


def test_init_checkpoint_with_named_reinitialisation(
    two_steps, tmp_path, no_eval, capsys, monkeypatch
):
    """A run initialised from another run's checkpoints, the class layers named for fresh
    initialisation: the run lists them; every other tensor starts as the checkpoint's. The
    loaded state is placed as a fresh one: the step traces once, as in a fresh run."""
    workdir, config, _ = two_steps
    config = tiny_config(
        config.data.data_dir,
        num_steps=2,
        checkpoint_every=100,  # the final step only
        init_checkpoint=str(workdir / "checkpoints"),
        init_reinitialize=("classes",),
        learning_rate=0.0,
        warmup_factor=0.0,
    )
    traces = StepTraces(monkeypatch)
    trainer.train_and_evaluate(config, str(tmp_path / "finetune"))
    assert traces.count == 1
    out = capsys.readouterr().out
    assert f"initialised parameters from {workdir / 'checkpoints'}" in out
    assert "re-initialised (train.init_reinitialize), 8 tensors:" in out
    assert "    box_head/cls_score/kernel\n" in out and "maskiou_head/maskiou/bias" in out
    source, _ = checkpointing.load_variables(str(workdir / "checkpoints"))
    started, _ = checkpointing.load_variables(str(tmp_path / "finetune" / "checkpoints"))
    source = checkpointing.flat_names(source["params"])
    started = checkpointing.flat_names(started["params"])
    assert started.keys() == source.keys()
    for name, value in source.items():  # a zero learning rate: the steps change nothing
        same = np.array_equal(started[name], value)
        assert same != (name.rsplit("/", 1)[0] in checkpointing.CLASS_LAYERS), name
