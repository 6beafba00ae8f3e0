"""The train step's mask branch on the smallest bucket of positive slots
(`train.mask_slot_step`) gives the losses and gradients of running it on every slot."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny
from msrcnn import detector as detector_lib
from msrcnn.ops import slot_buckets
from msrcnn.ops.xla_cpu import conv
from msrcnn.training import train_step

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")


def _batch(num_objects=3, size=64, max_instances=4, mask_size=28, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        "images": rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8),
        "image_hw": np.array([[size, size], [size, 48]], np.int32),
        "gt_boxes": np.zeros((2, max_instances, 4), np.float32),
        "gt_classes": np.zeros((2, max_instances), np.int32),
        "gt_masks": np.zeros((2, max_instances, mask_size, mask_size), np.uint8),
        "gt_valid": np.zeros((2, max_instances), bool),
    }
    for i in range(2):
        for j in range(num_objects - i):
            x0, y0 = rng.uniform(0, 24, 2)
            w, h = rng.uniform(12, 22, 2)
            batch["gt_boxes"][i, j] = [x0, y0, x0 + w, y0 + h]
            batch["gt_classes"][i, j] = rng.integers(1, 5)
            batch["gt_masks"][i, j] = rng.integers(0, 2, (mask_size, mask_size)) * 255
            batch["gt_valid"][i, j] = True
    return batch


@pytest.fixture(scope="module")
def losses_and_grads():
    """Per mask_slot_step: (named losses, gradients, chosen bucket sizes seen by the step,
    number of convs traced with forward-op input gradients)."""
    config = tiny.get_config()
    # 64 sampled RoIs at 25%: 16 slots that can hold positives.
    config.train.roi_batch_size_per_image = 64
    config.model.conv_impl = "cpu_matmul"  # what CPU runs ("auto"), on any backend
    detector = detector_lib.from_config(config)
    params = detector.model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    batch = _batch()
    results = {}
    for step in (0, 3):
        config.train.mask_slot_step = step
        buckets = slot_buckets.slot_buckets(16, step)
        chosen = []
        fn = jax.jit(
            jax.value_and_grad(
                functools.partial(train_step.training_loss, detector, config), has_aux=True
            )
        )
        original = slot_buckets._bucket_index

        def recording(buckets_, filled, original=original, chosen=chosen, buckets=buckets):
            index = original(buckets_, filled)
            jax.debug.callback(lambda i: chosen.append(buckets[int(i)]), index)
            return index

        convs = []
        original_conv = conv.conv

        def counting_conv(*args, original_conv=original_conv, convs=convs):
            convs.append(args[4])  # forward_input_grad
            return original_conv(*args)

        slot_buckets._bucket_index = recording
        conv.conv = counting_conv
        try:
            (_, (named, _)), grads = fn(params, {}, batch, jax.random.key(5))
            jax.block_until_ready(grads)
        finally:
            slot_buckets._bucket_index = original
            conv.conv = original_conv
        results[step] = (jax.device_get(named), jax.device_get(grads), chosen, sum(convs))
    return results


def test_smaller_buckets_were_used(losses_and_grads):
    # Step 3 ran on fewer than all 16 slots (recorded in forward and backward).
    for step in (3,):
        chosen = losses_and_grads[step][2]
        assert chosen and all(b < 16 for b in chosen), (step, chosen)
    assert losses_and_grads[0][2] == []  # one bucket: no switch at all
    # With "cpu_matmul" the heads' convs take forward-op input gradients whether or not they
    # run inside the switch: the model does not know about it.
    assert losses_and_grads[3][3] > 0 and losses_and_grads[0][3] > 0
    assert losses_and_grads[3][1]["mask_head"]  # the mask head got gradients


@pytest.mark.parametrize("step", [3])
def test_losses_and_gradients_equal_every_slot(losses_and_grads, step):
    want_named, want_grads, *_ = losses_and_grads[0]
    named, grads, *_ = losses_and_grads[step]
    assert named["loss_mask"] > 0 and named["loss_maskiou"] > 0
    for name, value in want_named.items():
        np.testing.assert_allclose(named[name], value, rtol=1e-5, err_msg=name)
    flat = jax.tree_util.tree_leaves_with_path(grads)
    for (path, got), want in zip(flat, jax.tree.leaves(want_grads), strict=True):
        scale = float(np.max(np.abs(want))) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=str(path))
