"""The training loop: state from eval_shape, one jitted step, checkpoints, logs, evaluation.

`train_and_evaluate(config, workdir)` is what `python -m msrcnn.train` runs; tests call it
directly. Restarting with the same workdir resumes from the latest checkpoint (parameters,
optimizer, step and the data iterator's position).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from msrcnn import checkpointing, sharding
from msrcnn import detector as detector_lib
from msrcnn.data import datasets
from msrcnn.label_map import LabelMap
from msrcnn.training import optim
from msrcnn.training import train_step as train_step_lib
from msrcnn.training.train_state import TrainState


def init_state(model, config, optimizer, mesh, image_hw) -> TrainState:
    """Initialises parameters directly into their (replicated) shardings."""

    def init(key):
        variables = model.init(key, jnp.zeros((1, *image_hw, 3), jnp.float32))
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            batch_stats=variables.get("batch_stats", {}),
        )

    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
    return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))


class MetricsWriter:
    """JSONL + TensorBoard event files, written by process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
        from tensorboardX import SummaryWriter  # heavy import, only where it writes

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)

    def write_images(self, step: int, images: dict) -> None:
        """uint8 [H, W, 3] images as TensorBoard image summaries."""
        if not self.enabled:
            return
        for name, image in images.items():
            self.tb.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def _track_nonfinite(tracked, step, metrics):
    """(count, first step, first metrics) updated with one step's metrics; jitted once."""
    count, first_step, first_metrics = tracked
    bad = metrics["finite"] < 1.0
    first = bad & (count == 0)
    first_metrics = jax.tree.map(
        lambda old, new: jnp.where(first, new, old), first_metrics, metrics
    )
    return count + bad.astype(jnp.int32), jnp.where(first, step, first_step), first_metrics


class NonFiniteTracker:
    """Watches every step's `finite` metric without a host sync per step.

    On device (one small jitted update per step, dispatched asynchronously) it counts
    non-finite steps and keeps the first one's step and metrics; the host reads them only when
    it logs or saves. So a NaN at any step is reported with its own step and loss terms, and a
    checkpoint is never written after one (unless updates are skipped, in which case the
    parameters never saw it).
    """

    _update = staticmethod(jax.jit(_track_nonfinite))

    def __init__(self):
        self.tracked = None

    def update(self, step: int, metrics) -> None:
        if self.tracked is None:
            zero = jnp.zeros((), jnp.int32)
            self.tracked = (zero, zero, jax.tree.map(jnp.zeros_like, metrics))
        self.tracked = self._update(self.tracked, jnp.int32(step), metrics)

    def check(self, config, last_saved: int | None) -> int:
        """Raises FloatingPointError (unless skipping is on); returns the count so far."""
        if self.tracked is None:
            return 0
        count, first_step, first_metrics = jax.device_get(self.tracked)
        count = int(count)
        if count and not config.train.skip_nonfinite:
            metrics = {k: float(v) for k, v in first_metrics.items()}
            terms = ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k != "finite")
            raise FloatingPointError(
                f"non-finite loss at step {int(first_step)}: {terms}. Last good "
                f"checkpoint: {'step ' + str(last_saved) if last_saved is not None else 'none'}"
                " (no checkpoint is written after a non-finite step). Set "
                "--config.train.skip_nonfinite=True to skip such updates instead."
            )
        return count


class PreemptionFlag:
    """Set by SIGTERM (cluster preemption, `kill`): the loop saves and stops at the next step.

    With several processes the flag is agreed among all of them (any one set stops all), so
    every process saves the same step; processes compare flags at logging steps.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        import signal

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def stop_now(self, step: int, every: int) -> bool:
        """Whether to save and stop after `step`. With several processes the flags are agreed
        (a collective) only every `every` steps, to keep the loop free of per-step syncs."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), then evaluates.

    Returns:
      {'step': final step, 'metrics': last logged training metrics, 'eval': the evaluation
      table (None if the config has no validation split)}.
    """
    mesh = sharding.data_mesh()
    detector = detector_lib.from_config(config)
    model = detector.model
    data = datasets.load(config)
    # Checkpoints carry the label map (the config is not written to), so a Predictor or
    # `msrcnn.predict` names classes and writes the dataset's category ids without the data.
    labels = LabelMap.of_dataset(data)
    image_hw = tuple(config.data.image_hw)

    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)))["params"]
    )
    optimizer = optim.make_optimizer(config, abstract_params)
    state = init_state(model, config, optimizer, mesh, image_hw)
    train_iter = data.train_iterator()

    # Everything opened from here on is closed on every way out (a refused resume, a
    # non-finite loss, Ctrl-C): an orbax manager left open fails noisily at interpreter
    # shutdown, after the real error.
    with contextlib.ExitStack() as cleanup:
        ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"), config, labels)
        cleanup.callback(ckpt.close)
        restored = ckpt.restore_latest(state)
        if restored is not None:
            state, iterator_state = restored
            train_iter.set_state(iterator_state)
            print(f"resumed from step {int(state.step)} in {workdir}")
            for change in ckpt.changed_settings:
                print(f"  with a changed setting (allow_config_change): {change}")
        last_saved = int(state.step) if restored is not None else None
        if restored is None and config.train.init_checkpoint:
            state = _init_from_checkpoint(config, optimizer, state)

        repl, batch_sh = sharding.replicated(mesh), sharding.batch_sharded(mesh)
        state_sh = jax.tree.map(lambda _: repl, state)
        step_fn = jax.jit(
            functools.partial(train_step_lib.train_step, detector, config, optimizer),
            in_shardings=(state_sh, batch_sh),
            out_shardings=(state_sh, repl),
            donate_argnums=(0,),
        )

        writer = MetricsWriter(workdir)
        cleanup.callback(writer.close)
        num_steps = config.train.num_steps
        first = int(state.step)
        logged: dict[str, float] = {}
        losses = None  # the bar's postfix
        bar = _progress_bar(num_steps, first)
        cleanup.callback(lambda: bar.close())  # the bar of the moment (see eval_every)
        start = time.time()
        nonfinite = NonFiniteTracker()
        preemption = cleanup.enter_context(PreemptionFlag())
        for step in range(first + 1, num_steps + 1):
            batch = sharding.global_batch(mesh, next(train_iter))
            state, metrics = step_fn(state, batch)
            nonfinite.update(step, metrics)
            bar.update(1)
            if step % config.train.log_every == 0 or step == num_steps:
                logged = {k: float(v) for k, v in jax.device_get(metrics).items()}
                skipped = nonfinite.check(config, last_saved)
                logged["skipped_nonfinite"] = skipped
                logged["steps_per_s"] = (step - first) / max(time.time() - start, 1e-9)
                writer.write(step, logged)
                losses = {
                    k.removeprefix("loss_"): f"{v:.3f}"
                    for k, v in logged.items()
                    if k.startswith("loss")
                }
                bar.set_postfix(losses, refresh=False)
            stop = preemption.stop_now(step, config.train.log_every)
            if step % config.train.checkpoint_every == 0 or step == num_steps or stop:
                nonfinite.check(config, last_saved)  # never save after a non-finite step
                ckpt.save(step, state, train_iter.get_state())
                last_saved = step
            if stop:
                ckpt.close()  # waits for the save to be complete on disk
                print(f"stopped by SIGTERM after step {step}; checkpoint saved, rerun to resume")
                return {"step": step, "metrics": logged, "eval": None, "preempted": True}
            every = config.train.eval_every
            if every and step % every == 0 and step != num_steps:
                # The table goes below the bar's last state, never under a bar that redraws
                # itself over it; a new bar continues below (its rate without the evaluation).
                bar.close()
                _evaluate_and_log(config, detector, state, data, labels, writer, workdir, step)
                bar = _progress_bar(num_steps, step, postfix=losses)
        bar.close()  # its last state, before the table (closing again does nothing)
        eval_table = _evaluate_and_log(
            config, detector, state, data, labels, writer, workdir, num_steps
        )
    return {"step": int(state.step), "metrics": logged, "eval": eval_table}


def _progress_bar(num_steps: int, initial: int, postfix: dict | None = None) -> tqdm.tqdm:
    return tqdm.tqdm(
        total=num_steps,
        initial=initial,
        desc="train",
        # As set_postfix writes it, in this order (a dict here would be sorted).
        postfix=", ".join(f"{k}={v}" for k, v in postfix.items()) if postfix else None,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
        # Redirected to a file: a line every 30 s instead of a carriage-return flood.
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )


def _init_from_checkpoint(config, optimizer, state: TrainState) -> TrainState:
    """`state` with `train.init_checkpoint`'s parameters and a fresh optimizer state, every
    leaf placed as in `state` (the optimizer's step count would otherwise be unplaced, and
    the first step would compile the train step for that placement, then again)."""
    params, reinitialized = checkpointing.load_init_params(
        config.train.init_checkpoint, state.params, config.train.init_reinitialize
    )
    placed = state.replace(params=params, opt_state=optimizer.init(params))
    state = jax.device_put(placed, jax.tree.map(lambda x: x.sharding, state))
    print(f"initialised parameters from {config.train.init_checkpoint}")
    if reinitialized:
        print(f"  re-initialised (train.init_reinitialize), {len(reinitialized)} tensors:")
        print("\n".join(f"    {name}" for name in reinitialized))
    return state


def _evaluate_and_log(config, detector, state, data, labels, writer, workdir, step):
    from msrcnn.evaluation import runner  # pycocotools only when evaluating

    if not data.has_eval:
        return None
    variables = jax.device_get(state.variables())
    table = runner.evaluate_variables(config, detector, variables, data, labels=labels)
    if jax.process_index() == 0:
        print(runner.format_results(table, step))
        runner.write_results(table, os.path.join(workdir, f"eval_step_{step}.json"))
        writer.write(step, runner.flat_scalars(table))
        writer.write_images(
            step, {f"eval/predictions/{k}": img for k, img in enumerate(table["previews"])}
        )
    return table


def summarize_params(params) -> str:
    count = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    return f"{count:,} parameters"
