"""The train step's losses and gradients on a fixed batch, to prove a refactor changed nothing.

    python -m benchmarks.step_fingerprint --output=bench_out/fingerprint_before.npz
    python -m benchmarks.step_fingerprint --compare=bench_out/fingerprint_before.npz

Two fixed cases, each for MS R-CNN and plain Mask R-CNN: the tiny test model (experiments/tiny.py,
GroupNorm, 64x64, fresh initialisation with seed 0) and R50-FPN at 512x512 with the seeded
torchvision weights of tests/seeded_weights.py (benchmarks.train_step's batch and settings).
Each records every named loss and every parameter's gradient (one forward and backward pass at
step 0, the step's own PRNG key). `--compare` prints, per case, whether each loss and gradient
is bitwise equal to the saved record, else the largest absolute and relative difference.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

CASES = ("tiny", "tiny:plain", "r50_512", "r50_512:plain")


def case_inputs(case: str):
    """-> (config, variables, batch) of one case."""
    import jax

    from benchmarks import train_step as bench
    from experiments import tiny
    from msrcnn.models.build import build_model
    from msrcnn.weights import torchvision as tv_weights
    from tests import seeded_weights

    name, _, variant = case.partition(":")
    if name == "tiny":
        config = tiny.get_config(variant)
        model = build_model(config)
        h, w = config.data.image_hw
        images = jax.numpy.zeros((1, h, w, 3), jax.numpy.float32)
        variables = model.init(jax.random.key(0), images)
        height, width, objects = h, w, 3
    else:
        height = width = 512
        config = bench.msrcnn_config(height, width, 1, "float32", variant != "plain")
        variables, _ = tv_weights.convert_torchvision_state_dict(
            seeded_weights.state_dict(), config
        )
        objects = 8
    t = config.train
    batch = bench.msrcnn_batch(height, width, t.batch_size, objects, t.max_instances, t.mask_size)
    if name == "tiny":
        batch["gt_classes"] = np.where(batch["gt_valid"], batch["gt_classes"] % 4 + 1, 0)
    return config, variables, batch


def fingerprint(case: str) -> dict[str, np.ndarray]:
    """Named losses ('loss/NAME') and gradients ('grad/PATH') of one case."""
    import jax

    from msrcnn import detector as detector_lib
    from msrcnn.training import optim
    from msrcnn.training import train_step as train_step_lib

    config, variables, batch = case_inputs(case)
    detector = detector_lib.from_config(config)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    frozen = optim.frozen_mask(params, config)
    key = jax.random.fold_in(jax.random.key(config.seed), 0)

    def loss_fn(params):
        params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
        return train_step_lib.training_loss(detector, config, params, batch_stats, batch, key)

    (total, (named, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    out = {"loss/total": np.asarray(total)}
    out.update({f"loss/{k}": np.asarray(v) for k, v in named.items()})
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        out["grad/" + "/".join(str(getattr(p, "key", p)) for p in path)] = np.asarray(leaf)
    return out


def compare(before: dict, after: dict) -> list[str]:
    lines = []
    if set(before) != set(after):
        lines.append(f"  different entries: {sorted(set(before) ^ set(after))[:5]}")
    equal = [k for k in before if k in after and np.array_equal(before[k], after[k])]
    lines.append(f"  bitwise equal: {len(equal)} of {len(before)}")
    for kind in ("loss", "grad"):
        keys = [k for k in before if k.startswith(kind) and k in after]
        abs_diff = max(float(np.max(np.abs(before[k] - after[k]), initial=0)) for k in keys)
        rel = max(
            float(np.max(np.abs(before[k] - after[k]), initial=0))
            / max(float(np.max(np.abs(before[k]), initial=0)), 1e-30)
            for k in keys
        )
        lines.append(f"  {kind}: max |diff| {abs_diff:.3g}, max |diff| / max |value| {rel:.3g}")
    for k in sorted(k for k in before if k.startswith("loss/")):
        lines.append(f"    {k[5:]:<18} {float(before[k]):.9g} -> {float(after.get(k, np.nan)):.9g}")
    return lines


def _of_case(record: dict, case: str) -> dict:
    return {k.split("|", 1)[1]: v for k, v in record.items() if k.startswith(case + "|")}


def _of_case(record: dict, case: str) -> dict:
    return {k.split("|", 1)[1]: v for k, v in record.items() if k.startswith(case + "|")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--output", default="bench_out/step_fingerprint.npz")
    parser.add_argument("--compare", default="", help="a saved record to compare against")
    args = parser.parse_args(argv)
    record = {}
    for case in args.cases.split(","):
        record.update({f"{case}|{k}": v for k, v in fingerprint(case).items()})
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    np.savez(args.output, **record)
    print(f"wrote {args.output}")
    if args.compare:
        saved = dict(np.load(args.compare))
        for case in args.cases.split(","):
            print(case)
            print("\n".join(compare(_of_case(saved, case), _of_case(record, case))))


if __name__ == "__main__":
    main()
