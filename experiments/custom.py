"""Your own instance-segmentation data: COCO json, VIA json or Open Images-style PNG masks.

The `:` argument picks the format (`coco`, `via` or `png_masks`); paths and class names are
overrides. The dataset is built once into data_dir (array_record; a new path or class list
builds anew), then training and evaluation run as for any dataset.

The balloon dataset (VIA 2 json, one class, no region attribute), from a ResNet-50 converted
from torchvision's COCO Mask R-CNN (the class-specific layers start fresh for 1 class):

    python -m msrcnn.convert --from=torchvision --num_classes=1 \\
        --checkpoint=maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output=/data/mrcnn_r50_1class
    python -m msrcnn.train --config=experiments/custom.py:via --workdir=/runs/balloon \\
        --config.data.custom.class_names='("balloon",)' --config.model.num_classes=1 \\
        --config.data.custom.train.annotations=/data/balloon/train/via_region_data.json \\
        --config.data.custom.train.images=/data/balloon/train \\
        --config.data.custom.validation.annotations=/data/balloon/val/via_region_data.json \\
        --config.data.custom.validation.images=/data/balloon/val \\
        --config.train.init_checkpoint=/data/mrcnn_r50_1class

COCO json: `:coco`, train/validation `annotations` = the json, `images` = the image folder;
class_names optional (default: every category, in increasing id; a list picks and orders
categories by name). PNG masks: `:png_masks`, `annotations` = the CSV (MaskPath, ImageID,
LabelName, optional BoxXMin/BoxXMax/BoxYMin/BoxYMax), `images` = folder of <ImageID>.jpg,
`masks` = folder of the mask PNGs, class_names = the LabelName values (Open Images MIDs).
VIA: `:via`, class_names in label order, `class_attribute` = the region attribute holding
the class (default "class"; not needed with one class).

Every field takes `--config.x=y`; tuples as a quoted Python tuple, e.g. several classes
`--config.data.custom.class_names='("balloon", "kite")'`. Images are padded to the shape
buckets 800x1344 (landscape) and 1344x800 (portrait), resized by `min_size` / `max_size`; for
smaller images choose smaller ones, e.g. for photos of about 1024x768:

    python -m msrcnn.train --config=experiments/custom.py:via --workdir=/runs/balloon_small \\
        --config.data.custom.class_names='("balloon",)' --config.model.num_classes=1 \\
        --config.data.custom.train.annotations=/data/balloon/train/via_region_data.json \\
        --config.data.custom.train.images=/data/balloon/train \\
        --config.data.custom.validation.annotations=/data/balloon/val/via_region_data.json \\
        --config.data.custom.validation.images=/data/balloon/val \\
        --config.data.min_size=512 --config.data.max_size=768 \\
        --config.data.image_hw='(512, 768)' \\
        --config.data.image_hw_buckets='((512, 768), (768, 512))' \\
        --config.train.init_checkpoint=/data/mrcnn_r50_1class

Bad input stops the build with an error naming the file and annotation; add
`--config.data.skip_bad_input=True` to leave such input out instead (counted and summarised
at the end of the build, and stored in the dataset's metadata).

Model and schedule: R-50-FPN MS R-CNN at 800 / 1333 with the 1x recipe's per-image settings,
batch 8 and lr 0.01 (the linear scaling rule from batch 16 / 0.02), 12k steps with x0.1 at 8k
and 10.7k; set --config.train.num_steps for your data's size (the decay points follow it).
"""

from msrcnn import config_lib


def get_config(arg: str = "coco"):
    formats = ("coco", "via", "png_masks")
    if arg not in formats:
        raise ValueError(f"experiments/custom.py:FORMAT takes one of {formats}, got {arg!r}")
    config = config_lib.base_config()
    config.model.num_classes = 1
    config.model.dtype = "auto"
    d = config.data
    d.dataset = "custom"
    d.custom.format = arg
    d.image_hw = (800, 1344)
    d.image_hw_buckets = ((800, 1344), (1344, 800))
    t = config.train
    t.batch_size = 8
    t.learning_rate = 0.01
    t.num_steps = 12_000
    t.warmup_steps = 500
    t.checkpoint_every = 1000
    return config
