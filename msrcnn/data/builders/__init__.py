"""Datasets on disk: TFDS builders (array_record, no TensorFlow) and the record they store.

  * `shapes`: the synthetic dataset (`Shapes`, TFDS name "shapes");
  * `instances`: COCO and custom data (`CocoInstances` "coco_instances", `CustomInstances`
    "custom_instances"), read with `msrcnn.data.sources`;
  * `records`: the record format (one image) the builders write and the pipeline decodes;
  * `coco_gt`: a split's records -> COCO-format ground truth for COCOeval;
  * `tiny_coco`: writes a small COCO-layout folder (a command) to try the COCO path.

TFDS names the datasets by the builders' `name` attributes, not by module paths, so the
folders under the data directory do not depend on where these modules live.
"""
