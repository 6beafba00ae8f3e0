"""`shapes`: a synthetic instance-segmentation dataset, as a TFDS builder written to array_record.

Images show circles, squares, triangles and stars (K = 4 classes, labels 1..4, names in
`info.metadata["class_names"]`) in random colours and sizes on textured backgrounds, with
overlaps: later shapes occlude earlier ones and each instance's mask is its visible part (see
`msrcnn.data.sources.shapes_render`). Everything is a function of the config's seed: image `i` of a
split is drawn from `np.random.default_rng([seed, split_code, i])`, so it does not depend on
generation order or on the other images. Image `i` with `i % 16 == 3` has no objects, so every
split of at least 4 images holds an empty image.

    builder = build_shapes(data_dir, seed=0, image_size=128, num_train=2000, num_validation=200)
    source = builder.as_data_source("train")      # random access, decoded with numpy/PIL
    record = source[0]

No TensorFlow anywhere: TFDS serialises the tf.Example protos with its own bundled proto
classes, `file_format="array_record"` avoids TFRecord, and images and masks are given to the
`tfds.features.Image` features as PNG bytes encoded here with PIL (TFDS encodes numpy arrays
with `tf.image.encode_png`, which would import TensorFlow; bytes are stored as they are, and
decoding in `as_data_source` uses PIL or OpenCV). `tests/data/test_shapes.py` checks that
building and reading leaves `tensorflow` out of `sys.modules`.

A record from `as_data_source(split)` (the record format `msrcnn.data.pipeline.pipeline` reads):

    image     uint8 [H, W, 3]
    image_id  int   1-based index of the image in its split (record i has id i + 1)
    objects   dict of per-instance lists, in drawing order (empty lists for no objects):
      box     float32 [4] each: xyxy tight box of the visible mask, pixel-edge coordinates
              (a mask on columns 3..7 has x1 = 3, x2 = 8)
      label   int64 each: class 1..K
      mask    uint8 [H, W, 1] each: 1 on the instance's visible pixels, else 0 (PNG, mode L)

Records are stored in generation order (`disable_shuffling`), so record i is image i.
The default (128 x 128, 2000 + 200 images) takes ~75 MB.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from msrcnn.data.builders.coco_gt import coco_ground_truth
from msrcnn.data.sources.image_io import encode_png
from msrcnn.data.sources.shapes_render import CLASS_NAMES, render_example

__all__ = [
    "CLASS_NAMES",
    "Shapes",
    "ShapesConfig",
    "build_shapes",
    "coco_ground_truth",
]

# Image i of a split has no objects when i % EMPTY_EVERY == EMPTY_INDEX.
EMPTY_EVERY = 16
EMPTY_INDEX = 3
# Part of each image's seed, so train and validation images differ.
_SPLIT_CODES = {"train": 0, "validation": 1}


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Generation parameters. The name (TFDS' data directory) is derived from them if empty.

    Attributes:
      seed: the dataset's seed.
      image_size: (height, width) of every image (an int means square).
      num_train, num_validation: images per split.
      max_objects: non-empty images draw 1..max_objects shapes (uniformly); occluded ones may
        then be dropped.
      min_visible_pixels: instances with fewer visible pixels are dropped.
      min_radius_frac: smallest shape radius, as a fraction of the shorter image side.
      min_visible_fraction: occlusion bound: no shape loses more than 1 - this of its area
        to later ones (0 = unbounded); see `shapes_render.render_example`.
    """

    name: str = ""
    seed: int = 0
    image_size: tuple[int, int] = (128, 128)
    num_train: int = 2000
    num_validation: int = 200
    max_objects: int = 5
    min_visible_pixels: int = 12
    min_radius_frac: float = 0.04
    min_visible_fraction: float = 0.0

    def __post_init__(self):
        if isinstance(self.image_size, int):
            self.image_size = (self.image_size, self.image_size)
        self.image_size = tuple(int(s) for s in self.image_size)
        h, w = self.image_size
        if not self.name:
            self.name = (
                f"seed{self.seed}_{h}x{w}_train{self.num_train}_val{self.num_validation}"
                f"_obj{self.max_objects}_px{self.min_visible_pixels}"
                f"_r{self.min_radius_frac:g}_vis{self.min_visible_fraction:g}"
            )
        if not self.description:
            self.description = (
                f"seed {self.seed}, {h}x{w} images, {self.num_train} train / "
                f"{self.num_validation} validation, up to {self.max_objects} shapes, "
                f"instances of < {self.min_visible_pixels} visible pixels dropped, radius >= "
                f"{self.min_radius_frac:g} of the short side, >= "
                f"{self.min_visible_fraction:g} of each shape visible"
            )


class Shapes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder of the `shapes` dataset (see the module docstring).

    `Shapes(config=ShapesConfig(...), data_dir=...)`; the file format is array_record unless
    told otherwise (anything else needs TensorFlow to read).
    """

    name = "shapes"
    VERSION = tfds.core.Version("1.0.0")
    # TFDS reads these class attributes.
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS: ClassVar[list[ShapesConfig]] = [ShapesConfig()]

    def __init__(self, *, config=None, file_format="array_record", **kwargs):
        # TFDS refuses a config object that is not the registered one but has its name; a
        # fresh ShapesConfig() with default values is such an object, so pass its name.
        registered = {c.name: c for c in self.BUILDER_CONFIGS}
        if isinstance(config, ShapesConfig) and config.name in registered:
            if dataclasses.asdict(config) != dataclasses.asdict(registered[config.name]):
                raise ValueError(f"config {config} reuses the name of a registered config")
            config = config.name
        super().__init__(config=config, file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
                    "image_id": tfds.features.Scalar(np.int64),
                    "objects": tfds.features.Sequence(
                        {
                            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "label": tfds.features.Scalar(np.int64),
                            "mask": tfds.features.Image(shape=(h, w, 1), encoding_format="png"),
                        }
                    ),
                }
            ),
            metadata=tfds.core.MetadataDict(class_names=list(CLASS_NAMES)),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
        }

    def _generate_examples(self, split: str, num_images: int):
        cfg = self.builder_config
        for index in range(num_images):
            rng = np.random.default_rng([cfg.seed, _SPLIT_CODES[split], index])
            empty = index % EMPTY_EVERY == EMPTY_INDEX
            num_shapes = 0 if empty else int(rng.integers(1, cfg.max_objects + 1))
            ex = render_example(
                rng,
                cfg.image_size,
                num_shapes,
                cfg.min_visible_pixels,
                min_radius_frac=cfg.min_radius_frac,
                min_visible_fraction=cfg.min_visible_fraction,
            )
            yield (
                index,
                {
                    "image": encode_png(ex["image"]),
                    "image_id": index + 1,
                    "objects": {
                        "box": ex["boxes"],
                        "label": ex["labels"],
                        "mask": [encode_png(m.astype(np.uint8)) for m in ex["masks"]],
                    },
                },
            )


def build_shapes(
    data_dir: str | os.PathLike,
    *,
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    num_train: int = 2000,
    num_validation: int = 200,
    max_objects: int = 5,
    min_visible_pixels: int = 12,
    min_radius_frac: float = 0.04,
    min_visible_fraction: float = 0.0,
) -> Shapes:
    """Builds (or reuses, if already built in `data_dir`) the dataset and returns its builder.

    Read it with `builder.as_data_source("train")` / `("validation")`.
    """
    config = ShapesConfig(
        seed=seed,
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        max_objects=max_objects,
        min_visible_pixels=min_visible_pixels,
        min_radius_frac=min_radius_frac,
        min_visible_fraction=min_visible_fraction,
    )
    builder = Shapes(config=config, data_dir=os.fspath(data_dir))
    builder.download_and_prepare()
    return builder
