"""grain input pipeline: records -> fixed-shape batches in the format of `msrcnn.data`.

    it = make_train_iterator(builder.as_data_source("train"), batch_size=8,
                             image_hw=(128, 128), max_instances=16, mask_size=56, seed=0,
                             min_size=128, max_size=128)
    batch = next(it)                      # dict of numpy arrays, see msrcnn/data/__init__.py
    state = it.get_state()                # save with the checkpoint; later:
    it = make_train_iterator(...same arguments...); it.set_state(state)

    for batch in make_eval_batches(builder.as_data_source("validation"), 8, (128, 128)):
        ...                               # every image once; image_id -1 marks padding

Per image (`prepare_train_record` / `prepare_eval_record`, here and in `buckets`; numpy on
the host, in grain's reader threads):
  1. decode the record (`msrcnn.data.builders.records`);
  2. training only: horizontal flip with probability 1/2, decided by
     `np.random.default_rng([seed, 1, record_index, epoch])`, so it is deterministic, the same
     on every host, and different from one epoch to the next;
  3. keep the first `max_instances` instances; extra ones are dropped and counted (a
     `TruncationCounter` logs a warning and keeps totals);
  4. mask targets: every mask resampled into its own box at S x S with RoIAlign semantics
     (aligned=True, sampling ratio 2; `transforms.crop_and_resize_masks`, numpy on the host).
     The crop
     is taken from the original-resolution mask over the original box: resizing is a
     per-axis scaling, under which the box maps to the resized box, so this samples the
     same region as cropping a resized mask over the resized box, without first
     interpolating the binary mask to the new size (which would blur it once more);
  5. resize (torchvision's rule, `transforms.resize_scale`; bilinear like PyTorch's
     interpolate) and scale the boxes by the per-axis ratio resized / original;
  6. zero-pad the image to the static `image_hw` (bottom/right) and the instances to M.

Training order: the records are shuffled with `seed` (grain reshuffles every epoch) and
repeated (`num_epochs`, default forever) into one global stream, the same on every host; each
global batch is `batch_size x hosts` consecutive stream positions, and host `index` (of
`count`, by default `jax.process_index()` of `jax.process_count()`) prepares its `batch_size`
slice of it. So a run on N hosts sees the same global batches as a run on one.

Evaluation: each host takes every `count`-th record, padded with padding images (all zero,
image_id -1, no instances, image_hw = orig_hw = the padded input size, so nothing divides
by zero downstream) to the same number of full batches on every host.

Iterators are grain `DatasetIterator`s: `get_state()` / `set_state()` restore the exact
position (a restored iterator yields the same next batches).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading

import grain
import numpy as np

from msrcnn.data.builders.records import Instances, decode_record
from msrcnn.data.pipeline import transforms

__all__ = [
    "InputSpec",
    "TruncationCounter",
    "make_eval_batches",
    "make_train_dataset",
    "make_train_iterator",
    "num_eval_batches",
    "padding_example",
    "prepare_eval_record",
    "prepare_example",
    "prepare_train_record",
]

_log = logging.getLogger(__name__)

_FLIP_STREAM = 1  # second word of the flip RNG's seed, to keep it apart from other streams
_MASK_SAMPLING_RATIO = 2


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Static shapes and resizing of the batches.

    Attributes:
      image_hw: (H, W) padded input size; multiples of 32 (the coarsest FPN stride).
      max_instances: M, instances per image after padding/truncation.
      mask_size: S, side of the per-instance mask crops.
      min_size, max_size: resize bounds (see `transforms.resize_scale`); None = no bound.
    """

    image_hw: tuple[int, int]
    max_instances: int = 100
    mask_size: int = 56
    min_size: int | None = None
    max_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "image_hw", tuple(int(s) for s in self.image_hw))
        if len(self.image_hw) != 2 or any(s <= 0 or s % 32 for s in self.image_hw):
            raise ValueError(f"image_hw must be two positive multiples of 32: {self.image_hw}")
        if self.max_instances <= 0 or self.mask_size <= 0:
            raise ValueError("max_instances and mask_size must be positive")


class TruncationCounter:
    """Counts instances dropped at load time (thread-safe): beyond M per image, or with an
    unusable box (under 1 px after clipping to the image, or non-finite).

    Logs a warning on the 1st, 2nd, 4th, 8th, ... image of each kind, with the totals so far.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.images = 0  # images that lost instances to max_instances
        self.instances = 0  # instances dropped in total to max_instances
        self.unusable_images = 0
        self.unusable_instances = 0

    def add_unusable(self, image_id: int, num_dropped: int) -> None:
        with self._lock:
            self.unusable_images += 1
            self.unusable_instances += num_dropped
            images, instances = self.unusable_images, self.unusable_instances
        if images & (images - 1) == 0:
            _log.warning(
                "image %d: %d instances with a box under 1 px or non-finite left out; "
                "so far %d instances from %d images",
                image_id,
                num_dropped,
                instances,
                images,
            )

    def add(self, image_id: int, num_instances: int, max_instances: int) -> None:
        dropped = num_instances - max_instances
        with self._lock:
            self.images += 1
            self.instances += dropped
            images, instances = self.images, self.instances
        if images & (images - 1) == 0:
            _log.warning(
                "image %d has %d instances, max_instances=%d keeps the first %d; "
                "so far %d instances dropped from %d images",
                image_id,
                num_instances,
                max_instances,
                max_instances,
                instances,
                images,
            )


def prepare_example(
    inst: Instances,
    spec: InputSpec,
    flip: bool = False,
    truncation: TruncationCounter | None = None,
) -> dict[str, np.ndarray]:
    """One decoded image -> one batch element (the batch format without the B axis).

    Returns:
      dict: images uint8 [H, W, 3], image_hw int32 [2], gt_boxes float32 [M, 4],
      gt_classes int32 [M], gt_masks uint8 [M, S, S], gt_valid bool [M], image_id int64 [],
      orig_hw int32 [2].

    Raises:
      ValueError: if the resized image does not fit in `spec.image_hw`.
    """
    image, boxes, labels, masks = inst.image, inst.boxes, inst.labels, inst.masks
    orig_hw = image.shape[:2]
    # Load-time hygiene (the builders already clean their data; this guards any source):
    # boxes clipped to the image, and instances with a box under 1 px or a non-finite
    # coordinate dropped and counted, rather than trained as background.
    h, w = orig_hw
    boxes = np.clip(np.nan_to_num(boxes, nan=-1.0), 0.0, np.array([w, h, w, h], np.float32))
    usable = (boxes[:, 2] - boxes[:, 0] >= 1.0) & (boxes[:, 3] - boxes[:, 1] >= 1.0)
    usable &= np.isfinite(inst.boxes).all(axis=1)
    if not usable.all():
        if truncation is not None:
            truncation.add_unusable(inst.image_id, int((~usable).sum()))
        boxes, labels, masks = boxes[usable], labels[usable], masks[usable]
    if flip:
        image, boxes, masks = transforms.flip_horizontal(image, boxes, masks)

    m = spec.max_instances
    num = len(labels)
    if num > m:
        if truncation is not None:
            truncation.add(inst.image_id, num, m)
        boxes, labels, masks, num = boxes[:m], labels[:m], masks[:m], m
    crops = transforms.crop_and_resize_masks(masks, boxes, spec.mask_size, _MASK_SAMPLING_RATIO)

    scale = transforms.resize_scale(orig_hw, spec.min_size, spec.max_size)
    out_h, out_w = transforms.resized_hw(orig_hw, scale)
    if out_h > spec.image_hw[0] or out_w > spec.image_hw[1]:
        raise ValueError(
            f"image {inst.image_id} of size {orig_hw} resizes to {(out_h, out_w)}, larger than "
            f"image_hw={spec.image_hw}; raise image_hw or lower min_size/max_size"
        )
    resized = transforms.resize_bilinear(image, (out_h, out_w))
    ratio = np.array([out_w / orig_hw[1], out_h / orig_hw[0]] * 2, np.float32)

    out = padding_example(spec)
    out["images"][:out_h, :out_w] = resized
    out["image_hw"][:] = (out_h, out_w)
    out["orig_hw"][:] = orig_hw
    out["image_id"] = np.int64(inst.image_id)
    out["gt_boxes"][:num] = boxes * ratio
    out["gt_classes"][:num] = labels
    out["gt_masks"][:num] = np.clip(np.rint(crops * 255.0), 0, 255).astype(np.uint8)
    out["gt_valid"][:num] = True
    return out


def padding_example(spec: InputSpec) -> dict[str, np.ndarray]:
    """A padding batch element: black image, image_id -1, no instances.

    image_hw and orig_hw are the full padded size rather than 0, so code that divides by them
    or clips to them stays finite; use image_id < 0 (or gt_valid) to recognise padding.
    """
    h, w = spec.image_hw
    m, s = spec.max_instances, spec.mask_size
    return {
        "images": np.zeros((h, w, 3), np.uint8),
        "image_hw": np.array([h, w], np.int32),
        "gt_boxes": np.zeros((m, 4), np.float32),
        "gt_classes": np.zeros((m,), np.int32),
        "gt_masks": np.zeros((m, s, s), np.uint8),
        "gt_valid": np.zeros((m,), bool),
        "image_id": np.int64(-1),
        "orig_hw": np.array([h, w], np.int32),
    }


def random_augmentation(
    spec: InputSpec, train_min_sizes, seed: int, record_index: int, epoch: int
) -> tuple[bool, InputSpec]:
    """(flip?, spec with the short side to resize to) of one record in one epoch.

    Drawn from `np.random.default_rng([seed, 1, record_index, epoch])`: a flip with
    probability 1/2, then, for multi-scale training (`train_min_sizes` non-empty), a short
    side chosen uniformly from `train_min_sizes` (detectron2's ResizeShortestEdge "choice").
    Deterministic, the same on every host, different from epoch to epoch.
    """
    rng = np.random.default_rng([seed, _FLIP_STREAM, int(record_index), int(epoch)])
    flip = bool(rng.random() < 0.5)
    if train_min_sizes:
        size = int(train_min_sizes[int(rng.integers(len(train_min_sizes)))])
        spec = dataclasses.replace(spec, min_size=size)
    return flip, spec


def prepare_train_record(
    data_source,
    record_index: int,
    epoch: int,
    spec: InputSpec,
    seed: int,
    train_min_sizes=(),
    truncation: TruncationCounter | None = None,
) -> dict[str, np.ndarray]:
    """Record `record_index` of `data_source`, seen in `epoch` -> a training batch element:
    its augmentation drawn (`random_augmentation`), the record decoded without its crowd
    regions, then `prepare_example`. The one per-image training step of every pipeline."""
    flip, spec = random_augmentation(spec, train_min_sizes, seed, record_index, epoch)
    inst = decode_record(data_source[int(record_index)]).without_crowd()
    return prepare_example(inst, spec, flip=flip, truncation=truncation)


def prepare_eval_record(
    data_source, record_index: int, spec: InputSpec, truncation: TruncationCounter | None = None
) -> dict[str, np.ndarray]:
    """Record `record_index` of `data_source` -> an evaluation batch element (no
    augmentation, crowd regions left out); a negative index -> a padding element."""
    if record_index < 0:
        return padding_example(spec)
    inst = decode_record(data_source[int(record_index)]).without_crowd()
    return prepare_example(inst, spec, truncation=truncation)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """(index, count), defaulting to this JAX process among all of them."""
    if shard_index is None or shard_count is None:
        import jax  # only when not given, so the data tests need no JAX backend

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


class _TrainExample:
    """This host's k-th example -> batch element, from the global shuffled stream.

    All hosts share one stream (the records shuffled per epoch, repeated); global batch j is
    stream positions [j * G, (j + 1) * G) and host i takes its slice [i * B, (i + 1) * B) of
    each, so the global batches are the same whatever the number of hosts.
    """

    def __init__(
        self,
        data_source,
        stream,
        spec,
        seed,
        local_batch,
        num_hosts,
        host,
        truncation,
        train_min_sizes=(),
    ):
        self.data_source, self.stream, self.spec, self.seed = data_source, stream, spec, seed
        self.local_batch, self.global_batch = local_batch, local_batch * num_hosts
        self.host, self.truncation = host, truncation
        self.epoch_len = len(data_source)
        self.train_min_sizes = tuple(train_min_sizes)

    def global_position(self, k: int) -> int:
        batch, offset = divmod(int(k), self.local_batch)
        return batch * self.global_batch + self.host * self.local_batch + offset

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        position = self.global_position(k)
        return prepare_train_record(
            self.data_source,
            int(self.stream[position]),
            position // self.epoch_len,
            self.spec,
            self.seed,
            self.train_min_sizes,
            self.truncation,
        )


def make_train_dataset(
    data_source,
    batch_size: int,
    image_hw: tuple[int, int],
    max_instances: int = 100,
    mask_size: int = 56,
    seed: int = 0,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 2,
    prefetch_buffer_size: int | None = None,
    truncation: TruncationCounter | None = None,
    train_min_sizes=(),
) -> grain.IterDataset:
    """The training pipeline as a grain `IterDataset` of batches (iterate it for batches).

    Args:
      data_source: random-access records (`len`, `__getitem__`), e.g.
        `builder.as_data_source("train")`.
      batch_size: B, images per batch on this host.
      image_hw: static padded (H, W), multiples of 32.
      max_instances, mask_size: M and S of the batch format.
      seed: shuffling and flip seed (0 <= seed < 2**32).
      min_size, max_size: resize bounds (`transforms.resize_scale`), None = unbounded.
      num_epochs: passes over the shard; None repeats forever.
      shard_index, shard_count: this host's shard; default `jax.process_index()` /
        `jax.process_count()`.
      num_threads: grain reader threads, each preparing whole images.
      prefetch_buffer_size: images prepared ahead; default 2 * batch_size.
      truncation: counter of instances dropped beyond M; a fresh one (logging only) if None.
      train_min_sizes: multi-scale training: each image's short side is drawn from these
        (see `random_augmentation`); empty = always min_size.

    Returns:
      IterDataset of dicts in the batch format, batch axis B, last partial batch dropped.
    """
    spec = InputSpec(image_hw, max_instances, mask_size, min_size, max_size)
    index, count = _shard(shard_index, shard_count)
    if len(data_source) < batch_size * count:
        raise ValueError(
            f"{len(data_source)} records cannot fill a global batch of {batch_size} x {count}"
        )
    stream = grain.MapDataset.range(len(data_source)).shuffle(seed=seed).repeat(num_epochs)
    local_len = (len(stream) // (batch_size * count)) * batch_size
    examples = grain.MapDataset.range(local_len).map(
        _TrainExample(
            data_source,
            stream,
            spec,
            seed,
            batch_size,
            count,
            index,
            truncation or TruncationCounter(),
            train_min_sizes,
        )
    )
    read = grain.ReadOptions(
        num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size or 2 * batch_size
    )
    return examples.to_iter_dataset(read).batch(batch_size, drop_remainder=True)


def make_train_iterator(*args, **kwargs) -> grain.DatasetIterator:
    """`iter(make_train_dataset(...))` (same arguments): a checkpointable iterator of
    training batches.

    `iterator.get_state()` returns a small JSON-able dict; `set_state(state)` on an iterator
    made with the same arguments resumes exactly there.
    """
    return iter(make_train_dataset(*args, **kwargs))


def num_eval_batches(num_records: int, batch_size: int, shard_count: int = 1) -> int:
    """Batches per host of `make_eval_batches`: ceil(ceil(num_records / hosts) / B)."""
    return math.ceil(math.ceil(num_records / shard_count) / batch_size)


def make_eval_batches(
    data_source,
    batch_size: int,
    image_hw: tuple[int, int],
    max_instances: int = 100,
    mask_size: int = 56,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 2,
    truncation: TruncationCounter | None = None,
) -> grain.IterDataset:
    """One pass over a split in full batches (each `iter()` is a new pass).

    This host gets records `shard_index, shard_index + shard_count, ...` in order, then
    padding images up to `num_eval_batches(len, B, shard_count)` full batches, the same count
    on every host. Arguments as `make_train_dataset`.

    Returns:
      IterDataset of batches in the batch format; padding images have image_id -1.
    """
    spec = InputSpec(image_hw, max_instances, mask_size, min_size, max_size)
    index, count = _shard(shard_index, shard_count)
    records = list(range(index, len(data_source), count))
    total = num_eval_batches(len(data_source), batch_size, count) * batch_size
    records += [-1] * (total - len(records))
    examples = grain.MapDataset.source(records).map(
        functools.partial(
            prepare_eval_record,
            data_source,
            spec=spec,
            truncation=truncation or TruncationCounter(),
        )
    )
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
    return examples.to_iter_dataset(read).batch(batch_size, drop_remainder=False)
