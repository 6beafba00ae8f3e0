"""Config -> the datasets a run needs: a training iterator, evaluation batches, COCO ground
truth and the category-id map. The trainer and `msrcnn.evaluate` only see this interface."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable

import jax
import ml_collections

from msrcnn.data import pipeline


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


def load(config: ml_collections.ConfigDict) -> Data:
    """Builds (if needed) and opens the dataset named by `config.data.dataset`."""
    d = config.data
    if d.dataset != "shapes":
        raise ValueError(f"unknown dataset {d.dataset!r}; available: 'shapes'")
    from msrcnn.data import shapes  # TFDS import only when a dataset is used

    s = d.shapes
    builder = shapes.build_shapes(
        d.data_dir or default_data_dir(),
        seed=s.seed,
        image_size=s.image_size,
        num_train=s.num_train,
        num_validation=s.num_validation,
        max_objects=s.max_objects,
        min_visible_pixels=s.min_visible_pixels,
    )
    train_source = builder.as_data_source("train")
    eval_source = builder.as_data_source("validation")
    names = list(shapes.CLASS_NAMES)
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
        raise ValueError(
            f"train.batch_size {config.train.batch_size} must divide among "
            f"{jax.process_count()} processes"
        )
    local_batch = config.train.batch_size // jax.process_count()

    def train_iterator():
        return pipeline.make_train_iterator(train_source, local_batch, seed=config.seed, **common)

    def eval_batches():
        return pipeline.make_eval_batches(eval_source, d.eval_batch_size, **common)

    return Data(
        train_iterator=train_iterator,
        eval_batches=eval_batches,
        coco_gt=shapes.coco_ground_truth(builder, "validation", class_names=names),
        category_ids=list(range(1, len(names) + 1)),
        class_names=names,
    )
