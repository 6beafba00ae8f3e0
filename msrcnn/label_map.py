"""`LabelMap`: the name and dataset category id of each model class 1..K.

The trainer takes it from the dataset and stores it with every checkpoint (as JSON, beside
the config), so a checkpoint names its classes and writes the dataset's category ids without
the dataset at hand. The config is never written to: `data.class_names` and
`data.category_ids` are inputs, the fallback for checkpoints that carry no label map (written
before it was stored, or converted from other frameworks) and for variables without one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

from msrcnn.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LabelMap:
    """Model class k (1..K) is `class_names[k - 1]`, dataset category `category_ids[k - 1]`."""

    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]

    def __post_init__(self):
        # Plain tuples of str and int whatever came in (lists, numpy integers): hashable,
        # comparable and JSON-serialisable.
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))
        object.__setattr__(self, "category_ids", tuple(int(i) for i in self.category_ids))
        if len(self.class_names) != len(self.category_ids):
            raise ConfigError(
                f"{len(self.class_names)} class names {list(self.class_names)} for "
                f"{len(self.category_ids)} category ids {list(self.category_ids)}: give one "
                "name per category id"
            )

    @classmethod
    def of_dataset(cls, data) -> LabelMap:
        """The map of a `datasets.Data` (its `class_names` and `category_ids`)."""
        return cls(data.class_names, data.category_ids)

    @classmethod
    def of_config(cls, config: ml_collections.ConfigDict) -> LabelMap:
        """What the config says: `data.class_names` and `data.category_ids` where set (one
        given, the other's length), else "class k" and the model's own ids 1..K."""
        names: Sequence[str] = tuple(config.data.get("class_names", ()))
        ids: Sequence[int] = tuple(config.data.get("category_ids", ()))
        count = len(names) or len(ids) or int(config.model.num_classes)
        return cls(
            names or [f"class {k}" for k in range(1, count + 1)],
            ids or range(1, count + 1),
        )

    @staticmethod
    def set_in(config: ml_collections.ConfigDict) -> bool:
        """Whether the config names classes or category ids itself."""
        return bool(config.data.get("class_names") or config.data.get("category_ids"))

    def to_json(self) -> dict:
        return {"class_names": list(self.class_names), "category_ids": list(self.category_ids)}

    @classmethod
    def from_json(cls, payload: dict) -> LabelMap:
        return cls(payload["class_names"], payload["category_ids"])


def given_or_config(labels: LabelMap | None, config: ml_collections.ConfigDict) -> LabelMap:
    """`labels` where given, else the config's (`LabelMap.of_config`)."""
    return LabelMap.of_config(config) if labels is None else labels
