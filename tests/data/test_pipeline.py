"""The grain input pipeline: batch contract, flip, resize, mask crops, padding, state, eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from msrcnn.data.builders.records import decode_record
from msrcnn.data.pipeline import pipeline, transforms

# The tiny dataset's 64 x 80 images resize by 1.5 to 96 x 120 inside a 96 x 128 input.
HW = (96, 128)
RESIZE = {"min_size": 96, "max_size": 128}
M, S = 4, 28

CONTRACT = {
    "images": (np.uint8, lambda b: (b, *HW, 3)),
    "image_hw": (np.int32, lambda b: (b, 2)),
    "gt_boxes": (np.float32, lambda b: (b, M, 4)),
    "gt_classes": (np.int32, lambda b: (b, M)),
    "gt_masks": (np.uint8, lambda b: (b, M, S, S)),
    "gt_valid": (np.bool_, lambda b: (b, M)),
    "image_id": (np.int64, lambda b: (b,)),
    "orig_hw": (np.int32, lambda b: (b, 2)),
}


def _train_iter(source, seed=0, **kwargs):
    kwargs = {"shard_index": 0, "shard_count": 1, **kwargs}
    return pipeline.make_train_iterator(source, 4, HW, M, S, seed, **RESIZE, **kwargs)


def _check_contract(batch, batch_size):
    assert set(batch) == set(CONTRACT)
    for key, (dtype, shape) in CONTRACT.items():
        assert batch[key].dtype == dtype, key
        assert batch[key].shape == shape(batch_size), key


def _reference_crop(mask, box, size, ratio=2):
    """RoIAlign (aligned=True) of one mask over one box, sample by sample (torchvision's
    bilinear_interpolate written out)."""
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    bw, bh = (x2 - x1) / size, (y2 - y1) / size
    m = mask.astype(np.float64)

    def sample(y, x):
        if y < -1.0 or y > h or x < -1.0 or x > w:
            return 0.0
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        return (
            (1 - ly) * (1 - lx) * m[y0, x0]
            + (1 - ly) * lx * m[y0, x1_]
            + ly * (1 - lx) * m[y1_, x0]
            + ly * lx * m[y1_, x1_]
        )

    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            acc = 0.0
            for a in range(ratio):
                for b in range(ratio):
                    y = y1 - 0.5 + i * bh + (a + 0.5) * bh / ratio
                    x = x1 - 0.5 + j * bw + (b + 0.5) * bw / ratio
                    acc += sample(y, x)
            out[i, j] = acc / ratio**2
    return out


def test_crop_and_resize_matches_reference_and_jax_op():
    rng = np.random.default_rng(0)
    masks = rng.random((5, 20, 24)) < 0.4
    boxes = np.array(
        [
            [2, 3, 15, 17],
            [0, 0, 24, 20],
            [-2.5, -1.2, 9.3, 6.6],
            [20.2, 15.1, 26, 22],
            [7, 7, 7, 12],
        ],
        np.float32,
    )
    got = transforms.crop_and_resize_masks(masks, boxes, 7)
    want = np.stack([_reference_crop(m, b, 7) for m, b in zip(masks, boxes, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    from msrcnn.ops.masks import crop_and_resize_masks as device_crop

    np.testing.assert_allclose(got, np.asarray(device_crop(masks, boxes, 7)), atol=1e-5)


def test_resize_bilinear_matches_pil_upscaling():
    # Upscaling has no antialiasing, where PIL's bilinear equals PyTorch's align_corners=False
    # bilinear (PIL rounds its fixed-point weights: within 1).
    image = np.random.default_rng(1).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    got = transforms.resize_bilinear(image, (20, 31))
    want = np.asarray(Image.fromarray(image).resize((31, 20), Image.BILINEAR))
    assert np.abs(got.astype(int) - want).max() <= 1
    assert transforms.resize_bilinear(image, (13, 17)) is image


@pytest.mark.parametrize(
    "image_hw, min_size, max_size, scale, out_hw",
    [
        # Shorter side to min_size: 96 / 64; the longer side 120 stays under 128.
        ((64, 80), 96, 128, 1.5, (96, 120)),
        # COCO's 800 / 1333: 800 / 480, the longer side 1066.67 floors to 1066.
        ((480, 640), 800, 1333, 800 / 480, (800, 1066)),
        # max_size binds: 1333 / 1000 < 800 / 600, so the shorter side floors 799.8 -> 799.
        ((600, 1000), 800, 1333, 1.333, (799, 1333)),
        ((1000, 600), 800, 1333, 1.333, (1333, 799)),
        # A None bound is left out; both None keeps the size.
        ((64, 80), 96, None, 1.5, (96, 120)),
        ((64, 80), None, 40, 0.5, (32, 40)),
        ((64, 80), None, None, 1.0, (64, 80)),
        # A side that would floor to 0 (2 x 0.1) keeps 1 px.
        ((2, 1000), 800, 100, 0.1, (1, 100)),
    ],
)
def test_resize_rule(image_hw, min_size, max_size, scale, out_hw):
    """torchvision's rule, computed by hand: scale = min(min_size / short, max_size / long),
    output floor(size * scale) per axis (at least 1)."""
    got = transforms.resize_scale(image_hw, min_size, max_size)
    assert got == pytest.approx(scale, rel=1e-12)
    assert transforms.resized_hw(image_hw, got) == out_hw


def test_predictor_resizes_by_the_same_rule():
    """Inference uses the pipeline's function, so a training image and the same image at test
    time get the same size."""
    from msrcnn import config_lib, predictor

    assert predictor.resize_scale is transforms.resize_scale
    assert predictor.resized_hw is transforms.resized_hw
    data = config_lib.base_config().data
    data.min_size, data.max_size = 96, 128
    _, resized = predictor.preprocess(np.zeros((64, 80, 3), np.uint8), data)
    assert resized == (96, 120)


def test_train_batch_contract(train_source):
    batch = next(_train_iter(train_source))
    _check_contract(batch, 4)
    np.testing.assert_array_equal(batch["image_hw"], [[96, 120]] * 4)
    np.testing.assert_array_equal(batch["orig_hw"], [[64, 80]] * 4)
    assert (batch["images"][:, :, 120:] == 0).all()  # zero padding on the right
    assert (batch["image_id"] >= 1).all()


def test_eval_batch_contract_and_padding(val_source):
    batches = list(pipeline.make_eval_batches(val_source, 3, HW, M, S, **RESIZE, shard_count=1))
    assert len(batches) == pipeline.num_eval_batches(8, 3) == 3
    for batch in batches:
        _check_contract(batch, 3)
    last = batches[-1]
    np.testing.assert_array_equal(last["image_id"], [7, 8, -1])
    assert not last["gt_valid"][2].any() and not last["images"][2].any()
    assert not last["gt_masks"][2].any() and not last["gt_boxes"][2].any()
    np.testing.assert_array_equal(last["image_hw"][2], HW)  # finite ratios for padding
    np.testing.assert_array_equal(last["orig_hw"][2], HW)


def _expected(inst, flip):
    """The element `prepare_example` should produce, built by hand from the record."""
    image, boxes, masks = inst.image, inst.boxes, inst.masks
    if flip:
        image, boxes, masks = image[:, ::-1], boxes.copy(), masks[:, :, ::-1]
        boxes[:, [0, 2]] = 80 - inst.boxes[:, [2, 0]]
    return image, boxes, masks


@pytest.mark.parametrize("flip", [False, True])
def test_prepare_example_geometry(train_source, flip):
    spec = pipeline.InputSpec(HW, M, S, **RESIZE)
    for i in range(len(train_source)):
        inst = decode_record(train_source[i])
        out = pipeline.prepare_example(inst, spec, flip=flip)
        image, boxes, masks = _expected(inst, flip)
        n = min(len(inst.labels), M)
        np.testing.assert_array_equal(out["gt_valid"], np.arange(M) < n)
        np.testing.assert_allclose(out["gt_boxes"][:n], boxes[:n] * 1.5, rtol=1e-6)
        np.testing.assert_array_equal(out["gt_classes"][:n], inst.labels[:n])
        assert not out["gt_boxes"][n:].any() and not out["gt_classes"][n:].any()
        assert not out["gt_masks"][n:].any()
        crops = np.zeros((n, S, S))
        for k in range(n):
            crops[k] = _reference_crop(masks[k], boxes[k], S)
        assert np.abs(out["gt_masks"][:n] - np.rint(crops * 255)).max(initial=0) <= 1
        np.testing.assert_array_equal(
            out["images"][:96, :120],
            transforms.resize_bilinear(np.ascontiguousarray(image), (96, 120)),
        )


def test_flip_mirrors_image_boxes_and_masks(train_source):
    spec = pipeline.InputSpec((64, 96), M, S)  # no resize: the flip alone
    for i in range(len(train_source)):
        inst = decode_record(train_source[i])
        plain = pipeline.prepare_example(inst, spec, flip=False)
        flipped = pipeline.prepare_example(inst, spec, flip=True)
        np.testing.assert_array_equal(flipped["images"][:, :80], plain["images"][:, 79::-1])
        b = plain["gt_boxes"]
        mirrored = np.stack([80 - b[:, 2], b[:, 1], 80 - b[:, 0], b[:, 3]], 1)
        valid = plain["gt_valid"]
        np.testing.assert_allclose(flipped["gt_boxes"][valid], mirrored[valid])
        # RoIAlign's samples are symmetric within the box: the crop of the mirrored mask over
        # the mirrored box is the mirrored crop (up to uint8 rounding).
        diff = flipped["gt_masks"].astype(int) - plain["gt_masks"][:, :, ::-1]
        assert np.abs(diff).max() <= 1


def test_mask_crops_match_image_content_after_flip_and_resize(train_source):
    """Where a crop says "fully inside the instance", the resized, flipped image shows the
    instance's colour: image, boxes and masks were transformed consistently."""
    spec = pipeline.InputSpec(HW, M, S, **RESIZE)
    checked = 0
    for i in range(len(train_source)):
        inst = decode_record(train_source[i])
        out = pipeline.prepare_example(inst, spec, flip=True)
        image = out["images"].astype(np.float32)
        for k in np.flatnonzero(out["gt_valid"]):
            colour = np.median(inst.image[inst.masks[k]], axis=0)
            # The image resampled over the box at the crop's resolution, channel by channel.
            box = out["gt_boxes"][k : k + 1]
            patch = np.stack(
                [
                    transforms.crop_and_resize_masks(image[None, :, :, c], box, S)[0]
                    for c in range(3)
                ],
                -1,
            )
            inside = out["gt_masks"][k] == 255
            if inside.sum() < 4:
                continue
            err = np.abs(patch[inside] - colour).max(axis=-1)
            assert np.median(err) < 12, (i, k)
            checked += 1
    assert checked >= 10


def test_truncation_is_counted(train_source):
    spec = pipeline.InputSpec(HW, 1, S, **RESIZE)
    counter = pipeline.TruncationCounter()
    expected_images = expected_instances = 0
    for i in range(len(train_source)):
        inst = decode_record(train_source[i])
        out = pipeline.prepare_example(inst, spec, truncation=counter)
        assert out["gt_valid"].sum() == min(1, len(inst.labels))
        expected_images += len(inst.labels) > 1
        expected_instances += max(len(inst.labels) - 1, 0)
    assert expected_images > 0
    assert (counter.images, counter.instances) == (expected_images, expected_instances)


def test_iterator_state_restores_exact_batches(train_source):
    it = _train_iter(train_source, seed=3)
    for _ in range(3):  # into the second epoch (16 records / 4 per batch)
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(4)]
    restored = _train_iter(train_source, seed=3)
    restored.set_state(state)
    got = [next(restored) for _ in range(4)]
    for a, b in zip(want, got, strict=True):
        for key in CONTRACT:
            np.testing.assert_array_equal(a[key], b[key])


def test_shuffle_is_seeded_and_epochs_cover_the_shard(train_source):
    def ids(seed, n=4):
        it = _train_iter(train_source, seed=seed)
        return [next(it)["image_id"].tolist() for _ in range(n)]

    first = ids(0)
    assert first == ids(0)
    assert first != ids(1)
    assert sorted(np.concatenate(first).tolist()) == list(
        range(1, 17)
    )  # one epoch = every record once
    # Two hosts of 4 images each see the global batches of one host with 8: host i takes the
    # i-th half of every global batch, so the hosts are disjoint and together cover an epoch.
    whole = pipeline.make_train_iterator(
        train_source, 8, HW, M, S, 0, **RESIZE, shard_index=0, shard_count=1
    )
    halves = [_train_iter(train_source, seed=0, shard_index=i, shard_count=2) for i in (0, 1)]
    seen = [set(), set()]
    for _ in range(2):
        expected = next(whole)
        parts = [next(it) for it in halves]
        for key in ("image_id", "images", "gt_boxes"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), expected[key])
        for i, p in enumerate(parts):
            seen[i] |= set(p["image_id"].tolist())
    assert len(seen[0]) == len(seen[1]) == 8 and not seen[0] & seen[1]


def test_flips_are_deterministic_per_record_and_epoch(train_source):
    spec = pipeline.InputSpec(HW, M, S, **RESIZE)
    plain, mirror = {}, {}
    for i in range(len(train_source)):
        inst = decode_record(train_source[i])
        plain[inst.image_id] = pipeline.prepare_example(inst, spec)["images"]
        mirror[inst.image_id] = pipeline.prepare_example(inst, spec, flip=True)["images"]

    def flips(seed):
        it, out = _train_iter(train_source, seed=seed), []
        for _ in range(8):  # two epochs
            batch = next(it)
            for image_id, image in zip(batch["image_id"], batch["images"], strict=True):
                if np.array_equal(image, mirror[image_id]):
                    out.append((int(image_id), True))
                else:
                    np.testing.assert_array_equal(image, plain[image_id])
                    out.append((int(image_id), False))
        return out

    result = flips(0)
    assert result == flips(0)
    flipped = [f for _, f in result]
    assert 0 < sum(flipped) < len(flipped)
    by_epoch = [dict(result[:16]), dict(result[16:])]
    assert by_epoch[0] != by_epoch[1]  # a record is not flipped the same way every epoch


def test_eval_covers_every_image_once_across_hosts(val_source):
    per_host = []
    for index in range(3):
        batches = list(
            pipeline.make_eval_batches(
                val_source, 2, HW, M, S, **RESIZE, shard_index=index, shard_count=3
            )
        )
        assert len(batches) == pipeline.num_eval_batches(8, 2, 3) == 2  # same count per host
        per_host.append(np.concatenate([b["image_id"] for b in batches]))
    ids = np.concatenate(per_host)
    assert sorted(ids[ids >= 0].tolist()) == list(range(1, 9))
    assert (ids == -1).sum() == 3 * 4 - 8


def test_input_spec_and_size_errors(train_source):
    with pytest.raises(ValueError, match="multiples of 32"):
        pipeline.InputSpec((100, 128))
    spec = pipeline.InputSpec((64, 64), M, S)  # 64 x 80 images do not fit
    with pytest.raises(ValueError, match="larger than"):
        pipeline.prepare_example(decode_record(train_source[0]), spec)
