"""TFDS builders (array_record, no TensorFlow) of real instance-segmentation data.

    builder = build_coco(data_dir, manual_dir="/data/coco", year=2017)
    builder = build_custom(data_dir, fmt="via", class_names=["balloon"],
                           train={"annotations": ".../train/via_region_data.json",
                                  "images": ".../train"},
                           validation={...})
    source = builder.as_data_source("validation")

`coco_instances` reads COCO 2014 / 2017 from a local download (the stock TFDS `coco` has no
masks); `custom_instances` reads your own data in one of three formats: COCO json (`coco`),
VIA region json (`via`, the balloon format) or Open Images-style PNG masks (`png_masks`).
Both store the same record (the `msrcnn.data.builders.records` format, masks as RLE):

    image      JPEG (the original file when it is plain RGB) or PNG, decoded uint8 [H, W, 3]
    image_id   int64, the dataset's image id (COCO's own ids)
    file_name  str, the image file
    objects    per object: box float32 [4] xyxy, label int64 1..K, is_crowd bool,
               area float32 (mask pixels), rle str (compressed COCO RLE of an H x W mask),
               ann_id str (the source annotation, for tracing problems back)

Metadata: class_names, category_ids (the dataset's category id of labels 1..K), and per split
`image_hw` and `num_instances` (non-crowd objects) per record, so the training pipeline can
leave out images without annotations and group images by shape without decoding them, plus
`hygiene`: what the build skipped or changed, by reason: {split: {reason: number of items
(images, annotations, rows)}} (also printed at the end of the build).

Bad input (corrupt or missing images, unknown categories, malformed json, ...) stops the build
with an error naming the file and annotation, unless `skip_bad_input=True`: then it is counted
and left out. See `msrcnn.data.sources.bad_input`, `image_io` and `annotations` for every rule.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from msrcnn.data.sources.annotations import ImageAnnotation, to_record_objects
from msrcnn.data.sources.bad_input import BadInputError, BadInputPolicy
from msrcnn.data.sources.coco_json import read_coco_json
from msrcnn.data.sources.image_io import read_image
from msrcnn.data.sources.png_masks import read_png_masks
from msrcnn.data.sources.via_json import read_via_json
from msrcnn.errors import MissingInputError

_log = logging.getLogger(__name__)

FORMATS = ("coco", "via", "png_masks")
COCO_YEARS = ("2017", "2014")
SPLITS = ("train", "validation")

COCO_INSTRUCTIONS = """\
Put a COCO download in the manual folder (--config.data.coco.manual_dir=DIR):
  DIR/annotations/instances_train2017.json   DIR/train2017/*.jpg
  DIR/annotations/instances_val2017.json     DIR/val2017/*.jpg
(2014: instances_train2014.json / train2014, instances_val2014.json / val2014.)
Files: https://cocodataset.org/#download (2017 Train/Val images, 2017 Train/Val annotations).
"""


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "file_name": tfds.features.Text(),
            "objects": tfds.features.Sequence(
                {
                    "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "label": tfds.features.Scalar(np.int64),
                    "is_crowd": tfds.features.Scalar(np.bool_),
                    "area": tfds.features.Scalar(np.float32),
                    "rle": tfds.features.Text(),
                    "ann_id": tfds.features.Text(),
                }
            ),
        }
    )


class _InstanceBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared generation: annotations -> records, with hygiene and per-split metadata."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

    def __init__(self, *, skip_bad_input: bool = False, file_format="array_record", **kwargs):
        self.skip_bad_input = skip_bad_input
        super().__init__(file_format=file_format, **kwargs)

    def _read_split(self, split: str, policy: BadInputPolicy):
        """-> ([(category_id, name)] or None, [ImageAnnotation]) of one split."""
        raise NotImplementedError

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=_features(),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in SPLITS if self._has_split(split)}

    def _has_split(self, split: str) -> bool:
        return True

    def _generate_examples(self, split: str):
        policy = BadInputPolicy(skip=self.skip_bad_input)
        categories, images = self._read_split(split, policy)
        meta = self.info.metadata
        if categories is not None:
            names = [name for _, name in categories]
            if meta.get("class_names", names) != names:
                raise BadInputError(
                    f"the {split} split has categories {names}, an earlier split "
                    f"{meta['class_names']}; both splits must use the same categories"
                )
            meta["class_names"] = names
            meta["category_ids"] = [cid for cid, _ in categories]
        split_meta = {"image_hw": [], "num_instances": []}
        for image in images:
            record = self._record(image, policy)
            if record is None:
                continue
            split_meta["image_hw"].append(list(record.pop("_hw")))
            split_meta["num_instances"].append(
                int(sum(not c for c in record["objects"]["is_crowd"]))
            )
            yield len(split_meta["image_hw"]) - 1, record
        no_objects = split_meta["num_instances"].count(0)
        if no_objects:
            policy.note(
                "images without any (non-crowd) object, kept",
                f"{no_objects} of {len(split_meta['num_instances'])} images in {split}",
                count=no_objects,
            )
        meta.setdefault("splits", {})[split] = split_meta
        meta.setdefault("hygiene", {})[split] = policy.as_dict()
        print(f"{self.name} {split}: {len(split_meta['image_hw'])} images\n{policy.summary()}")

    def _record(self, image: ImageAnnotation, policy: BadInputPolicy) -> dict | None:
        loaded = read_image(
            image.path, policy, image.hw, f"image id {image.image_id} in {image.source}"
        )
        if loaded is None:
            return None
        objects = to_record_objects(image, loaded.hw, policy)
        return {
            "image": loaded.encoded,
            "image_id": image.image_id,
            "file_name": os.path.basename(image.path),
            "objects": objects,
            "_hw": loaded.hw,
        }


@dataclasses.dataclass(eq=False)
class CocoConfig(tfds.core.BuilderConfig):
    """COCO of one year from one folder. The name holds the year and a digest of the folder's
    absolute path, so another folder (the generated tiny_coco, then the real download) builds
    anew instead of reusing what the first one built.

    Attributes:
      year: '2017' or '2014'.
      manual_dir: absolute path of the folder holding annotations/ and the image folders.
    """

    name: str = ""
    year: str = "2017"
    manual_dir: str = ""

    def __post_init__(self):
        if self.year not in COCO_YEARS:
            raise ValueError(f"unknown COCO year {self.year!r}; use one of {COCO_YEARS}")
        if not self.name:
            digest = hashlib.sha1(self.manual_dir.encode()).hexdigest()[:12]
            self.name = f"{self.year}_{digest}"


class CocoInstances(_InstanceBuilder):
    """COCO 2014 / 2017 instance segmentation from a local download (see CocoConfig)."""

    name = "coco_instances"
    MANUAL_DOWNLOAD_INSTRUCTIONS = COCO_INSTRUCTIONS
    BUILDER_CONFIGS: ClassVar[list[CocoConfig]] = [CocoConfig(name="default")]

    @property
    def coco_dir(self) -> str:
        return self.builder_config.manual_dir

    def _files(self, split: str) -> tuple[str, str]:
        year = self.builder_config.year
        part = "train" if split == "train" else "val"
        return (
            os.path.join(self.coco_dir, "annotations", f"instances_{part}{year}.json"),
            os.path.join(self.coco_dir, f"{part}{year}"),
        )

    def check_manual_dir(self) -> None:
        """Raises FileNotFoundError saying what is missing and where it goes."""
        missing = [p for s in SPLITS for p in self._files(s) if not os.path.exists(p)]
        if not self.coco_dir or missing:
            raise MissingInputError(
                f"COCO {self.builder_config.year} is not in manual_dir={self.coco_dir!r}"
                + (f": missing {missing}" if self.coco_dir else "")
                + "\n"
                + COCO_INSTRUCTIONS
            )

    def _read_split(self, split, policy):
        json_path, image_dir = self._files(split)
        return read_coco_json(json_path, image_dir, policy)


@dataclasses.dataclass(eq=False)
class CustomConfig(tfds.core.BuilderConfig):
    """Your own data. The name is a digest of the fields, so new settings build anew.

    Attributes:
      format: 'coco', 'via' or 'png_masks'.
      class_names: class names in label order (coco: optional, default every category).
      train, validation: per split {"annotations": json/csv path, "images": folder,
        "masks": mask folder (png_masks only)}; an empty validation means no such split.
      class_attribute: VIA region attribute holding the class.
    """

    name: str = ""
    format: str = "coco"
    class_names: tuple[str, ...] = ()
    train: tuple[tuple[str, str], ...] = ()
    validation: tuple[tuple[str, str], ...] = ()
    class_attribute: str = "class"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown custom data format {self.format!r}; use one of {FORMATS}")
        self.class_names = tuple(self.class_names)
        self.train = tuple(sorted(dict(self.train).items()))
        self.validation = tuple(sorted(dict(self.validation).items()))
        if not self.name:
            fields = [self.format, self.class_names, self.train, self.validation]
            fields.append(self.class_attribute)
            digest = hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:12]
            self.name = f"{self.format}_{digest}"


class CustomInstances(_InstanceBuilder):
    """Your own instance data in COCO json, VIA json or PNG-mask CSV form (see CustomConfig)."""

    name = "custom_instances"
    BUILDER_CONFIGS: ClassVar[list[CustomConfig]] = [CustomConfig(name="default")]

    def _has_split(self, split: str) -> bool:
        return bool(getattr(self.builder_config, split))

    def _read_split(self, split, policy):
        cfg = self.builder_config
        paths = dict(getattr(cfg, split))
        for key in ("annotations", "images") + (("masks",) if cfg.format == "png_masks" else ()):
            if not paths.get(key):
                raise BadInputError(f"custom data: the {split} split needs a {key!r} path")
        names = list(cfg.class_names)
        if cfg.format == "coco":
            return read_coco_json(paths["annotations"], paths["images"], policy, names or None)
        if cfg.format == "via":
            images = read_via_json(
                paths["annotations"], paths["images"], names, policy, cfg.class_attribute
            )
        else:
            images = read_png_masks(
                paths["annotations"], paths["images"], paths["masks"], names, policy
            )
        return [(k + 1, n) for k, n in enumerate(names)], images


def build_coco(data_dir, manual_dir: str, year: int | str = 2017, skip_bad_input=False):
    """Builds (once per year and folder) and returns the `coco_instances` builder."""
    config = CocoConfig(
        year=str(year), manual_dir=os.path.abspath(manual_dir) if manual_dir else ""
    )
    builder = CocoInstances(
        config=config, data_dir=os.fspath(data_dir), skip_bad_input=skip_bad_input
    )
    if not builder.is_prepared():
        builder.check_manual_dir()
        builder.download_and_prepare()
    return builder


def build_custom(
    data_dir,
    fmt: str,
    class_names,
    train: dict,
    validation: dict | None = None,
    class_attribute: str = "class",
    skip_bad_input: bool = False,
):
    """Builds (once per distinct setting) and returns the `custom_instances` builder."""
    config = CustomConfig(
        format=fmt,
        class_names=tuple(class_names),
        train=tuple((train or {}).items()),
        validation=tuple((validation or {}).items()),
        class_attribute=class_attribute,
    )
    builder = CustomInstances(
        config=config, data_dir=os.fspath(data_dir), skip_bad_input=skip_bad_input
    )
    if not builder.is_prepared():
        builder.download_and_prepare()
    return builder
