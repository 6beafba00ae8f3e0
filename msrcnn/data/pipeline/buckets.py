"""Shape buckets: batches of images padded to one of a few static sizes (e.g. 800x1344 for
landscape and 1344x800 for portrait COCO images), so 4:3 images waste little padding and the
jitted step compiles once per bucket.

    buckets = [(800, 1344), (1344, 800)]
    ds = make_bucketed_train_dataset(source, record_hw, global_batch=16, buckets=buckets, ...)
    it = iter(ds)                      # grain iterator: get_state() / set_state() as usual

An image goes to the first bucket its resized size fits. Training order is planned from record
sizes alone (stored in the dataset's metadata, so nothing is decoded to plan): each epoch the
records are shuffled with (seed, epoch), dealt into one queue per bucket, and every time a queue
holds a global batch it becomes the next batch (detectron2's aspect-ratio grouping); what is
left in the queues at the end of an epoch waits for no one and is dropped. The plan is the
same on every host, and each host prepares its own `global_batch / hosts` slice of every
batch, so all hosts run the same bucket at every step. One grain element is one host batch;
the iterator's state is its position, so resuming is exact.
"""

from __future__ import annotations

import threading

import grain
import numpy as np

from msrcnn.data.pipeline import transforms
from msrcnn.data.pipeline.pipeline import (
    InputSpec,
    TruncationCounter,
    prepare_eval_record,
    prepare_train_record,
)

_PLAN_STREAM = 2  # second word of the shuffling RNG's seed
# Planned epochs when training runs "forever": the positions are lazy, nothing is allocated.
_FOREVER_EPOCHS = 1_000_000


def stack_examples(examples: list[dict]) -> dict[str, np.ndarray]:
    """Batch elements -> one batch (a leading B axis on every field)."""
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def bucket_index(hw: tuple[int, int], buckets, min_size: int | None, max_size: int | None) -> int:
    """Index of the first bucket that holds the image (h, w) once resized; ValueError if none."""
    scale = transforms.resize_scale(tuple(hw), min_size, max_size)
    out_h, out_w = transforms.resized_hw(tuple(hw), scale)
    for i, (bh, bw) in enumerate(buckets):
        if out_h <= bh and out_w <= bw:
            return i
    raise ValueError(
        f"an image of {hw[0]}x{hw[1]} resizes to {out_h}x{out_w}, which fits none of the "
        f"buckets {list(buckets)}; add a bucket or lower min_size/max_size"
    )


class EpochPlan:
    """Global batches of record indices, grouped by bucket, for any epoch (cached)."""

    def __init__(self, record_buckets, num_buckets: int, global_batch: int, seed: int):
        self.record_buckets = np.asarray(record_buckets, np.int64)
        self.num_buckets, self.global_batch, self.seed = num_buckets, global_batch, seed
        self._cache: dict[int, list[tuple[int, np.ndarray]]] = {}
        self._lock = threading.Lock()
        counts = np.bincount(self.record_buckets, minlength=num_buckets)
        # Every epoch yields at least this many batches (leftovers differ by epoch).
        self.batches_per_epoch = int(sum(c // global_batch for c in counts))
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"no bucket has {global_batch} images for one batch (images per bucket: "
                f"{counts.tolist()})"
            )

    def epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(bucket, record indices [global_batch])] of one epoch, first batches_per_epoch."""
        with self._lock:
            if epoch not in self._cache:
                rng = np.random.default_rng([self.seed, _PLAN_STREAM, epoch])
                order = rng.permutation(len(self.record_buckets))
                queues: list[list[int]] = [[] for _ in range(self.num_buckets)]
                batches = []
                for record in order:
                    bucket = int(self.record_buckets[record])
                    queues[bucket].append(int(record))
                    if len(queues[bucket]) == self.global_batch:
                        batches.append((bucket, np.array(queues[bucket], np.int64)))
                        queues[bucket] = []
                # A fixed count per epoch keeps position -> (epoch, batch) arithmetic simple.
                self._cache = {epoch: batches[: self.batches_per_epoch]}
            return self._cache[epoch]


class _HostBatch:
    """Position in the planned stream -> this host's slice of that global batch, prepared."""

    def __init__(
        self, source, plan, specs, shard_index, shard_count, seed, truncation, train_min_sizes
    ):
        self.source, self.plan, self.specs = source, plan, specs
        self.train_min_sizes = tuple(train_min_sizes)
        self.index, self.count, self.seed = shard_index, shard_count, seed
        self.truncation = truncation

    def __call__(self, position: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(int(position), self.plan.batches_per_epoch)
        bucket, records = self.plan.epoch(epoch)[k]
        local = len(records) // self.count
        mine = records[self.index * local : (self.index + 1) * local]
        rest = (epoch, self.specs[bucket], self.seed, self.train_min_sizes, self.truncation)
        return stack_examples([prepare_train_record(self.source, r, *rest) for r in mine])


def make_bucketed_train_dataset(
    data_source,
    record_hw,
    global_batch: int,
    buckets,
    max_instances: int = 100,
    mask_size: int = 56,
    seed: int = 0,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    num_threads: int = 2,
    prefetch_buffer_size: int = 2,
    num_epochs: int | None = None,
    truncation: TruncationCounter | None = None,
    train_min_sizes=(),
) -> grain.MapDataset:
    """Training batches in shape buckets (see the module docstring).

    Args:
      data_source: random-access records.
      record_hw: [(h, w)] original size of every record, in record order.
      global_batch: images per step over all hosts (divisible by shard_count).
      buckets: [(H, W)] padded sizes, multiples of 32, tried in order.
      shard_index, shard_count: this host and the host count.
      Others as `pipeline.make_train_dataset`; prefetch counts host batches.

    Returns:
      A grain dataset whose iterator yields this host's batches ([global_batch / hosts, ...]).
    """
    if global_batch % shard_count:
        raise ValueError(f"global batch {global_batch} does not divide among {shard_count} hosts")
    if len(record_hw) != len(data_source):
        raise ValueError(f"{len(record_hw)} record sizes for {len(data_source)} records")
    specs = [InputSpec(b, max_instances, mask_size, min_size, max_size) for b in buckets]
    # Multi-scale: an image must fit its bucket at the largest short side it may be drawn at.
    largest = max(train_min_sizes) if train_min_sizes else min_size
    record_buckets = [bucket_index(hw, buckets, largest, max_size) for hw in record_hw]
    plan = EpochPlan(record_buckets, len(buckets), global_batch, seed)
    epochs = _FOREVER_EPOCHS if num_epochs is None else num_epochs
    positions = grain.MapDataset.range(0, epochs * plan.batches_per_epoch)
    batches = positions.map(
        _HostBatch(
            data_source,
            plan,
            specs,
            shard_index,
            shard_count,
            seed,
            truncation or TruncationCounter(),
            train_min_sizes,
        )
    )
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    return batches.to_iter_dataset(read)


def make_bucketed_eval_batches(
    data_source,
    record_hw,
    batch_size: int,
    buckets,
    max_instances: int = 100,
    mask_size: int = 56,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    truncation: TruncationCounter | None = None,
):
    """One pass over a split, each batch from one bucket, padded with padding images.

    Every host gets the same number of batches per bucket (padding batches where it has fewer
    records), so hosts stay in step under one jitted function per bucket.
    """
    specs = [InputSpec(b, max_instances, mask_size, min_size, max_size) for b in buckets]
    truncation = truncation or TruncationCounter()
    record_buckets = [bucket_index(hw, buckets, min_size, max_size) for hw in record_hw]
    for bucket, spec in enumerate(specs):
        members = [i for i, b in enumerate(record_buckets) if b == bucket]
        mine = members[shard_index::shard_count]
        per_host = -(-len(members) // shard_count)
        num_batches = -(-per_host // batch_size)
        mine += [-1] * (num_batches * batch_size - len(mine))
        for start in range(0, len(mine), batch_size):
            yield stack_examples(
                [
                    prepare_eval_record(data_source, record, spec, truncation)
                    for record in mine[start : start + batch_size]
                ]
            )
