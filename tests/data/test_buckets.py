"""Shape buckets: grouping by orientation, exact resume, host slices, multi-scale sizes."""

from __future__ import annotations

import numpy as np
import pytest

from msrcnn.data.pipeline import buckets, pipeline

BUCKETS = [(64, 96), (96, 64)]


def _record(i: int, hw) -> dict:
    h, w = hw
    mask = np.zeros((h, w, 1), np.uint8)
    mask[4:20, 6:30] = 1
    return {
        "image": np.full((h, w, 3), i, np.uint8),
        "image_id": i + 1,
        "objects": {"box": [np.array([6, 4, 30, 20], np.float32)], "label": [1], "mask": [mask]},
    }


def _source():
    record_hw = [(48, 64), (64, 48)] * 10 + [(48, 64)] * 3
    return [_record(i, hw) for i, hw in enumerate(record_hw)], record_hw


def test_bucket_index_takes_the_first_that_fits():
    assert buckets.bucket_index((48, 64), BUCKETS, 64, 96) == 0
    assert buckets.bucket_index((64, 48), BUCKETS, 64, 96) == 1
    with pytest.raises(ValueError, match="fits none of the buckets"):
        buckets.bucket_index((64, 48), BUCKETS[:1], 64, 96)


def test_plan_groups_by_bucket_and_reshuffles():
    _, record_hw = _source()
    bucket_of = [buckets.bucket_index(hw, BUCKETS, 64, 96) for hw in record_hw]
    plan = buckets.EpochPlan(bucket_of, 2, 4, seed=3)
    assert plan.batches_per_epoch == 13 // 4 + 10 // 4
    for epoch in (0, 1):
        for bucket, records in plan.epoch(epoch):
            assert {bucket_of[r] for r in records} == {bucket}
            assert len(set(records.tolist())) == 4
    first = [b.tolist() for _, b in plan.epoch(0)]
    assert first != [b.tolist() for _, b in plan.epoch(1)]
    assert first == [b.tolist() for _, b in plan.epoch(0)]


def _iterator(source, record_hw, **kwargs):
    return iter(
        buckets.make_bucketed_train_dataset(
            source,
            record_hw,
            4,
            BUCKETS,
            max_instances=2,
            mask_size=8,
            seed=1,
            min_size=64,
            max_size=96,
            **kwargs,
        )
    )


def test_batches_have_bucket_shapes_and_resume_exactly():
    source, record_hw = _source()
    it = _iterator(source, record_hw)
    seen = [next(it) for _ in range(3)]
    for batch in seen:
        assert batch["images"].shape[1:3] in [(64, 96), (96, 64)]
        assert batch["images"].shape[0] == 4
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses into the second epoch
    again = _iterator(source, record_hw)
    again.set_state(state)
    for want in expected:
        got = next(again)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_hosts_split_each_global_batch():
    source, record_hw = _source()
    whole = next(_iterator(source, record_hw))
    halves = [next(_iterator(source, record_hw, shard_index=i, shard_count=2)) for i in (0, 1)]
    np.testing.assert_array_equal(
        np.concatenate([h["image_id"] for h in halves]), whole["image_id"]
    )


def test_eval_batches_cover_every_record_once():
    source, record_hw = _source()
    ids = []
    for batch in buckets.make_bucketed_eval_batches(
        source, record_hw, 4, BUCKETS, max_instances=2, mask_size=8, min_size=64, max_size=96
    ):
        ids += [i for i in batch["image_id"].tolist() if i >= 0]
    assert sorted(ids) == list(range(1, len(source) + 1))


def test_multiscale_draws_sizes_per_record_and_epoch():
    spec = pipeline.InputSpec((96, 96), 2, 8, 64, 96)
    sizes = {
        pipeline.random_augmentation(spec, (32, 48, 64), 0, r, e)[1].min_size
        for r in range(20)
        for e in range(3)
    }
    assert sizes == {32, 48, 64}
    a = pipeline.random_augmentation(spec, (32, 48, 64), 0, 5, 1)
    assert a == pipeline.random_augmentation(spec, (32, 48, 64), 0, 5, 1)
    # Without sizes, the flip is what it always was and the spec is unchanged.
    flip, same = pipeline.random_augmentation(spec, (), 0, 5, 1)
    assert same is spec and flip == a[0]
