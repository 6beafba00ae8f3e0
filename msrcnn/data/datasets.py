"""Config -> the datasets a run needs: a training iterator, evaluation batches, COCO ground
truth and the category-id map. The trainer and `msrcnn.evaluate` only see this interface."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable

import jax
import ml_collections

from msrcnn.data.builders.coco_gt import coco_ground_truth
from msrcnn.data.pipeline import buckets as buckets_lib
from msrcnn.data.pipeline import pipeline
from msrcnn.errors import ConfigError

DATASETS = ("shapes", "coco", "custom")


@dataclasses.dataclass
class Data:
    """What training and evaluation read.

    Attributes:
      train_iterator: () -> checkpointable iterator of training batches (get_state/set_state).
      eval_batches: () -> one pass over the validation split, in batches (padded at the end).
      coco_gt: COCO-format ground truth dict of the validation split (None without one).
      category_ids: dataset category id of each model class 1..K.
      class_names: names of the K classes.
    """

    train_iterator: Callable[[], object]
    eval_batches: Callable[[], Iterable[dict]]
    coco_gt: dict | None
    category_ids: list[int]
    class_names: list[str]

    @property
    def has_eval(self) -> bool:
        return self.coco_gt is not None


def default_data_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "msrcnn", "tensorflow_datasets")


class _Subset:
    """Random access to chosen records of a data source (training without empty images)."""

    def __init__(self, source, indices):
        self.source, self.indices = source, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[self.indices[i]]


def _open_builder(config: ml_collections.ConfigDict):
    """-> (TFDS builder, class names, category ids) of `config.data.dataset`."""
    d = config.data
    data_dir = d.data_dir or default_data_dir()
    if d.dataset == "shapes":
        from msrcnn.data.builders import shapes  # TFDS import only when a dataset is used

        s = d.shapes
        builder = shapes.build_shapes(
            data_dir,
            seed=s.seed,
            image_size=s.image_size,
            num_train=s.num_train,
            num_validation=s.num_validation,
            max_objects=s.max_objects,
            min_visible_pixels=s.min_visible_pixels,
            min_radius_frac=s.min_radius_frac,
            min_visible_fraction=s.min_visible_fraction,
        )
        names = list(shapes.CLASS_NAMES)
        return builder, names, list(range(1, len(names) + 1))
    from msrcnn.data.builders import instances

    if d.dataset == "coco":
        builder = instances.build_coco(
            data_dir, d.coco.manual_dir, d.coco.year, skip_bad_input=d.skip_bad_input
        )
    elif d.dataset == "custom":
        c = d.custom
        builder = instances.build_custom(
            data_dir,
            c.format,
            list(c.class_names),
            train=dict(c.train),
            validation=dict(c.validation) if c.validation.annotations else None,
            class_attribute=c.class_attribute,
            skip_bad_input=d.skip_bad_input,
        )
    else:
        raise ConfigError(f"unknown dataset {d.dataset!r}; available: {DATASETS}")
    meta = builder.info.metadata
    return builder, list(meta["class_names"]), [int(i) for i in meta["category_ids"]]


def _check_num_classes(config, names: list[str]) -> None:
    if config.model.num_classes != len(names):
        raise ConfigError(
            f"the dataset has {len(names)} classes {names[:10]}{'...' if len(names) > 10 else ''}"
            f" but model.num_classes = {config.model.num_classes}; set "
            f"--config.model.num_classes={len(names)}"
        )


def load(config: ml_collections.ConfigDict) -> Data:
    """Builds (if needed) and opens the dataset named by `config.data.dataset`."""
    d = config.data
    builder, names, category_ids = _open_builder(config)
    _check_num_classes(config, names)
    train_source = builder.as_data_source("train")
    has_eval = "validation" in builder.info.splits
    eval_source = builder.as_data_source("validation") if has_eval else None
    splits_meta = builder.info.metadata.get("splits", {}) if d.dataset != "shapes" else {}
    train_hw = None
    if d.train_skip_empty and "train" in splits_meta:
        # Images without a (non-crowd) object teach only background; detectron2 leaves them
        # out of training by default. Evaluation keeps every image.
        counts = splits_meta["train"]["num_instances"]
        keep = [i for i, n in enumerate(counts) if n > 0]
        if len(keep) < len(counts):
            print(f"training leaves out {len(counts) - len(keep)} images without objects")
        train_source = _Subset(train_source, keep)
        train_hw = [splits_meta["train"]["image_hw"][i] for i in keep]
    elif "train" in splits_meta:
        train_hw = splits_meta["train"]["image_hw"]
    common = dict(
        image_hw=tuple(d.image_hw),
        max_instances=config.train.max_instances,
        mask_size=config.train.mask_size,
        min_size=d.min_size,
        max_size=d.max_size,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
    )
    if config.train.batch_size % jax.process_count():
        raise ConfigError(
            f"train.batch_size {config.train.batch_size} must divide among "
            f"{jax.process_count()} processes"
        )
    local_batch = config.train.batch_size // jax.process_count()

    train_min_sizes = tuple(int(v) for v in d.train_min_sizes)
    buckets = [tuple(b) for b in d.image_hw_buckets]
    if len(buckets) > 1:
        if not splits_meta:
            raise ValueError(f"dataset {d.dataset!r} has no record sizes for image_hw_buckets")
        eval_hw = splits_meta.get("validation", {}).get("image_hw")
        bucket_args = dict(common, buckets=buckets)
        del bucket_args["image_hw"]

        def train_iterator():
            return iter(
                buckets_lib.make_bucketed_train_dataset(
                    train_source,
                    train_hw,
                    config.train.batch_size,
                    seed=config.seed,
                    train_min_sizes=train_min_sizes,
                    **bucket_args,
                )
            )

        def eval_batches():
            return buckets_lib.make_bucketed_eval_batches(
                eval_source, eval_hw, d.eval_batch_size, **bucket_args
            )

    else:

        def train_iterator():
            return pipeline.make_train_iterator(
                train_source,
                local_batch,
                seed=config.seed,
                train_min_sizes=train_min_sizes,
                **common,
            )

        def eval_batches():
            return pipeline.make_eval_batches(eval_source, d.eval_batch_size, **common)

    coco_gt = None
    if has_eval:
        coco_gt = coco_ground_truth(eval_source, class_names=names, category_ids=category_ids)
    return Data(
        train_iterator=train_iterator,
        eval_batches=eval_batches,
        coco_gt=coco_gt,
        category_ids=category_ids,
        class_names=names,
    )
