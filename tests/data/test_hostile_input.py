"""Hostile input: every documented problem gives its clear error, or a counted skip when
skip_bad_input is set; clean-ups (clipping, tiny objects, EXIF, pixel formats) are counted."""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from msrcnn.data.builders import instances
from msrcnn.data.builders.records import Instances
from msrcnn.data.pipeline import pipeline
from msrcnn.data.sources.bad_input import BadInputError, BadInputPolicy
from msrcnn.data.sources.coco_json import read_coco_json
from msrcnn.data.sources.image_io import read_image
from msrcnn.data.sources.png_masks import read_png_masks
from msrcnn.data.sources.via_json import read_via_json
from tests.data import instance_fixtures as fx

SQUARE = [[10.0, 10.0, 30.0, 10.0, 30.0, 30.0, 10.0, 30.0]]


def _image(image_id, file_name):
    return {"id": image_id, "file_name": file_name, "height": fx.H, "width": fx.W}


def _coco(root, annotations, images=None, write_images=True, raw_json=None, categories=None):
    """A COCO json with images a.jpg (id 1) and b.jpg (id 2) (or `images`, whose files it
    writes) and the given annotations."""
    os.makedirs(root, exist_ok=True)
    images = images or [_image(1, "a.jpg"), _image(2, "b.jpg")]
    if write_images:
        names = dict.fromkeys(im["file_name"] for im in images)
        for k, name in enumerate(names):
            fx.save_jpeg(os.path.join(root, name), fx.random_image(k))
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        if raw_json is not None:
            f.write(raw_json)
        else:
            json.dump(
                {
                    "images": images,
                    "annotations": annotations,
                    "categories": categories or [{"id": 1, "name": "thing"}],
                },
                f,
            )
    return path


def _ann(ann_id, image_id=1, category_id=1, segmentation=SQUARE, bbox=(10, 10, 20, 20)):
    out = {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0}
    if segmentation is not None:
        out["segmentation"] = segmentation
    if bbox is not None:
        out["bbox"] = list(bbox)
    return out


def _build(tmp_path, json_path, skip=False):
    root = os.path.dirname(json_path)
    return instances.build_custom(
        tmp_path / f"tfds_{skip}",
        "coco",
        [],
        train={"annotations": json_path, "images": root},
        skip_bad_input=skip,
    )


def _hygiene(builder):
    return builder.info.metadata["hygiene"]["train"]


PROBLEMS = {
    # name: (annotations, what to do to the files, error pattern, skip reason)
    "unknown_category": (
        [_ann(7), _ann(8, category_id=99)],
        None,
        r"annotation 8 in .*ann.json has category_id 99",
        "skipped: unknown category id",
    ),
    "unknown_image": (
        [_ann(7), _ann(8, image_id=5)],
        None,
        r"annotation 8 in .*ann.json has image_id 5",
        "skipped: annotation of an unknown image",
    ),
    "no_segmentation": (
        [_ann(7), _ann(8, segmentation=None)],
        None,
        r"annotation 8 in .*ann.json has no segmentation",
        "skipped: annotation without segmentation",
    ),
    "flat_polygon": (
        [_ann(7), _ann(8, segmentation=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])],
        None,
        r"annotation 8 of image 1 .*a.jpg.*none of: a list of polygons",
        "skipped: malformed segmentation",
    ),
    "missing_image": (
        [_ann(7)],
        lambda root: os.remove(os.path.join(root, "b.jpg")),
        r"cannot read image .*b.jpg \(image id 2 in .*ann.json\)",
        "skipped: missing or unreadable image file",
    ),
    "corrupt_image": (
        [_ann(7)],
        lambda root: pathlib.Path(root, "b.jpg").write_bytes(b"\xff\xd8 not a jpeg"),
        r"cannot decode image .*b.jpg",
        "skipped: corrupt image file",
    ),
    "truncated_image": (
        [_ann(7)],
        lambda root: _truncate(os.path.join(root, "b.jpg")),
        r"cannot decode image .*b.jpg",
        "skipped: corrupt image file",
    ),
    "size_mismatch": (
        [_ann(7)],
        lambda root: fx.save_jpeg(os.path.join(root, "b.jpg"), fx.random_image(3, (40, 64))),
        r"image .*b.jpg .* is 40x64 .* but the annotation says 48x64",
        "skipped: image size differs from the annotation",
    ),
}


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_errors_or_counted_skip(tmp_path, name):
    annotations, damage, pattern, reason = PROBLEMS[name]
    root = str(tmp_path / "src")
    json_path = _coco(root, annotations)
    if damage:
        damage(root)
    with pytest.raises(BadInputError, match=pattern) as error:
        _build(tmp_path, json_path)
    assert "skip_bad_input" in str(error.value)  # says how to skip instead
    builder = _build(tmp_path, json_path, skip=True)
    assert _hygiene(builder)[reason] == 1
    records = builder.as_data_source("train")
    # Whatever was skipped, the good annotation 7 on image 1 is there.
    assert len(records[0]["objects"]["label"]) == 1


def test_malformed_json_names_the_file(tmp_path):
    json_path = _coco(str(tmp_path / "src"), [], raw_json='{"images": [')
    with pytest.raises(BadInputError, match=r"ann.json is not valid JSON"):
        _build(tmp_path, json_path, skip=True)  # not skippable: nothing to read
    json_path = _coco(str(tmp_path / "src2"), [], raw_json='{"images": []}')
    with pytest.raises(BadInputError, match=r"missing \['annotations', 'categories'\]"):
        _build(tmp_path, json_path)


def test_cleanups_are_counted_not_fatal(tmp_path):
    annotations = [
        _ann(1),
        _ann(2, bbox=(10, 10, 0, 20)),  # zero width
        _ann(3, bbox=(50, 30, 30, 30)),  # crosses the right and bottom edges: clipped
        _ann(4, segmentation=[[1.0, 2.0, 3.0, 4.0]]),  # a 2-point polygon
        _ann(5, segmentation=[[1.0, 2.0, 3.0, 4.0], SQUARE[0]], bbox=None),  # one good polygon
    ]
    builder = _build(tmp_path, _coco(str(tmp_path / "src"), annotations))
    hygiene = _hygiene(builder)
    assert hygiene["object with a box under 1 px (after clipping) dropped"] == 1
    assert hygiene["box clipped to the image"] == 1
    assert (
        hygiene["polygon with fewer than 3 points (or odd / non-finite coordinates) dropped"] == 2
    )
    assert hygiene["object without a usable segmentation dropped"] == 1
    assert hygiene["images without any (non-crowd) object, kept"] == 1
    record = builder.as_data_source("train")[0]
    assert sorted(record["objects"]["ann_id"]) == [b"1", b"3", b"5"] or sorted(
        record["objects"]["ann_id"]
    ) == ["1", "3", "5"]
    boxes = np.asarray(record["objects"]["box"])
    assert boxes[:, 2].max() <= fx.W and boxes[:, 3].max() <= fx.H


def test_pixel_formats_become_rgb_uint8(tmp_path):
    policy = BadInputPolicy()
    grey = np.arange(fx.H * fx.W, dtype=np.uint8).reshape(fx.H, fx.W)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([fx.random_image(1), np.full((fx.H, fx.W), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    deep = (np.arange(fx.H * fx.W, dtype=np.uint16) * 16).reshape(fx.H, fx.W)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = read_image(tmp_path / "grey.png", policy).pixels
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
    out = read_image(tmp_path / "rgba.png", policy).pixels
    np.testing.assert_array_equal(out, rgba[..., :3])
    out = read_image(tmp_path / "deep.png", policy).pixels
    expect = np.clip(np.rint(deep * 255.0 / 65535.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, np.repeat(expect[..., None], 3, -1))
    for loaded in (out,):
        assert loaded.dtype == np.uint8 and loaded.shape == (fx.H, fx.W, 3)


def test_exif_orientation(tmp_path):
    pixels = fx.random_image(4)  # stored 48 x 64
    (tmp_path / "rot.jpg").write_bytes(fx.jpeg_with_exif_orientation(pixels, 6))
    policy = BadInputPolicy()
    # Orientation 6: shown rotated 90 degrees clockwise, i.e. 64 x 48.
    shown = read_image(tmp_path / "rot.jpg", policy, expected_hw=(fx.W, fx.H))
    stored = np.asarray(Image.open(tmp_path / "rot.jpg"))
    np.testing.assert_array_equal(shown.pixels, np.rot90(stored, k=-1))
    assert policy.counts["EXIF orientation applied"] == 1
    # Annotated on the stored pixels: the rotation is not applied, and that is counted.
    raw = read_image(tmp_path / "rot.jpg", policy, expected_hw=(fx.H, fx.W))
    np.testing.assert_array_equal(raw.pixels, stored)
    assert policy.counts["EXIF rotation not applied: annotations match the stored pixels"] == 1


def test_via_problems(tmp_path):
    root = tmp_path / "via"
    fx.via_dataset(str(root), num_images=1)
    data = json.loads((root / "via.json").read_text())
    entry = next(iter(data.values()))
    entry["regions"][0]["region_attributes"] = {}
    entry["regions"][1]["region_attributes"] = {"class": "zebra"}
    entry["regions"][2]["shape_attributes"] = {"name": "point", "cx": 3, "cy": 4}
    (root / "bad.json").write_text(json.dumps(data))

    def build(skip):
        return instances.build_custom(
            tmp_path / f"tfds{skip}",
            "via",
            ["balloon", "kite"],
            train={"annotations": str(root / "bad.json"), "images": str(root)},
            skip_bad_input=skip,
        )

    with pytest.raises(BadInputError, match=r"region 0 of photo0.jpg .* no region attribute"):
        build(False)
    hygiene = build(True).info.metadata["hygiene"]["train"]
    assert hygiene["skipped: VIA region without a class"] == 1
    assert hygiene["skipped: unknown class name"] == 1
    assert hygiene["skipped: malformed or unsupported VIA region"] == 1


def test_png_mask_problems(tmp_path):
    root = tmp_path / "oi"
    fx.png_mask_dataset(str(root), num_images=2)
    lines = (root / "masks.csv").read_text().splitlines()
    lines[1] = lines[1].replace("/m/pumpkin", "/m/unknown")
    os.remove(root / "masks" / lines[2].split(",")[0])
    (root / "bad.csv").write_text("\n".join(lines) + "\n")

    def build(skip):
        return instances.build_custom(
            tmp_path / f"tfds{skip}",
            "png_masks",
            ["/m/pumpkin", "/m/leaf"],
            train={
                "annotations": str(root / "bad.csv"),
                "images": str(root / "images"),
                "masks": str(root / "masks"),
            },
            skip_bad_input=skip,
        )

    with pytest.raises(BadInputError, match=r"row 2 of .*bad.csv has LabelName '/m/unknown'"):
        build(False)
    hygiene = build(True).info.metadata["hygiene"]["train"]
    assert hygiene["skipped: unknown class name"] == 1
    assert hygiene["skipped: missing or corrupt mask file"] == 1


def test_missing_coco_download_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"instances_train2017.json") as error:
        instances.build_coco(tmp_path / "tfds", manual_dir=str(tmp_path / "nothing"))
    assert "train2017/" in str(error.value) and "cocodataset.org" in str(error.value)


def test_load_time_drops_unusable_boxes_and_counts_them():
    masks = np.ones((3, 32, 32), bool)
    boxes = np.array([[2, 2, 20, 20], [5, 5, 5.5, 20], [np.nan, 1, 4, 4]], np.float32)
    inst = Instances(np.zeros((32, 32, 3), np.uint8), 9, boxes, np.array([1, 2, 3]), masks)
    counter = pipeline.TruncationCounter()
    spec = pipeline.InputSpec((32, 32), 4, 8)
    out = pipeline.prepare_example(inst, spec, truncation=counter)
    assert out["gt_valid"].tolist() == [True, False, False, False]
    assert out["gt_classes"][0] == 1
    assert (counter.unusable_images, counter.unusable_instances) == (1, 2)


# Repeated ids and entries: an error naming the id, the file and the fix, or (skip_bad_input)
# every entry of a repeated id left out and counted; never merged or overwritten silently.


def _records(builder, split="train"):
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_repeated_coco_image_id(tmp_path):
    images = [_image(1, "a.jpg"), _image(2, "b.jpg"), _image(2, "c.jpg")]
    annotations = [_ann(7), _ann(8, image_id=2), _ann(9, image_id=2)]
    json_path = _coco(str(tmp_path / "src"), annotations, images)
    with pytest.raises(BadInputError, match=r"image id 2 is used by 2 entries .* in .*ann.json"):
        _build(tmp_path, json_path)
    builder = _build(tmp_path, json_path, skip=True)
    hygiene = _hygiene(builder)
    assert hygiene["skipped: repeated image id"] == 2  # both entries
    assert hygiene["skipped: annotation of a left-out image"] == 2
    assert [int(r["image_id"]) for r in _records(builder)] == [1]


def test_repeated_coco_image_id_message(tmp_path):
    images = [_image(1, "a.jpg"), _image(2, "b.jpg"), _image(2, "c.jpg")]
    json_path = _coco(str(tmp_path / "src"), [_ann(7)], images)
    with pytest.raises(BadInputError) as error:
        read_coco_json(json_path, str(tmp_path / "src"), BadInputPolicy())
    message = str(error.value)
    assert json_path in message and "'b.jpg'" in message and "'c.jpg'" in message
    assert "remove the duplicate" in message and "--config.data.skip_bad_input=True" in message
    assert "\n" not in message


def test_repeated_coco_image_file(tmp_path):
    images = [_image(1, "a.jpg"), _image(2, "b.jpg"), _image(3, "b.jpg")]
    annotations = [_ann(7), _ann(8, image_id=2), _ann(9, image_id=3)]
    json_path = _coco(str(tmp_path / "src"), annotations, images)
    with pytest.raises(BadInputError, match=r"b.jpg is the file of image ids \[2, 3\] in .*ann"):
        _build(tmp_path, json_path)
    builder = _build(tmp_path, json_path, skip=True)
    hygiene = _hygiene(builder)
    assert hygiene["skipped: image file listed by more than one image id"] == 2
    assert hygiene["skipped: annotation of a left-out image"] == 2
    assert [int(r["image_id"]) for r in _records(builder)] == [1]


def test_repeated_coco_annotation_id(tmp_path):
    json_path = _coco(str(tmp_path / "src"), [_ann(7), _ann(8), _ann(8, image_id=2)])
    with pytest.raises(BadInputError, match=r"annotation id 8 is used by 2 annotations in .*ann"):
        _build(tmp_path, json_path)
    builder = _build(tmp_path, json_path, skip=True)
    assert _hygiene(builder)["skipped: repeated annotation id"] == 2
    records = _records(builder)
    assert [[_text(a) for a in r["objects"]["ann_id"]] for r in records] == [["7"], []]


@pytest.mark.parametrize(
    "categories, pattern",
    [
        (
            [{"id": 1, "name": "thing"}, {"id": 1, "name": "other"}],
            r"category id 1 is used by 2 categories \('thing', 'other'\) in .*ann.json",
        ),
        (
            [{"id": 1, "name": "thing"}, {"id": 2, "name": "thing"}],
            r"category name 'thing' is used by 2 categories \(ids \[1, 2\]\) in .*ann.json",
        ),
    ],
)
def test_repeated_coco_category(tmp_path, categories, pattern):
    json_path = _coco(str(tmp_path / "src"), [_ann(7)], categories=categories)
    for skip in (False, True):  # the categories are the model's classes: not skippable
        with pytest.raises(BadInputError, match=pattern):
            read_coco_json(json_path, str(tmp_path / "src"), BadInputPolicy(skip=skip))


def test_repeated_class_names(tmp_path):
    root = str(tmp_path / "src")
    json_path = _coco(root, [_ann(7)], categories=[{"id": 1, "name": "thing"}])
    pattern = r"class_names \['thing', 'thing'\] name 'thing' more than once"
    with pytest.raises(BadInputError, match=pattern):
        read_coco_json(json_path, root, BadInputPolicy(), ["thing", "thing"])
    fx.via_dataset(str(tmp_path / "via"), num_images=1)
    with pytest.raises(BadInputError, match=r"name 'balloon' more than once"):
        read_via_json(
            tmp_path / "via" / "via.json", tmp_path / "via", ["balloon"] * 2, BadInputPolicy()
        )
    fx.png_mask_dataset(str(tmp_path / "oi"), num_images=1)
    with pytest.raises(BadInputError, match=r"name '/m/leaf' more than once"):
        read_png_masks(
            tmp_path / "oi" / "masks.csv",
            tmp_path / "oi" / "images",
            tmp_path / "oi" / "masks",
            ["/m/leaf", "/m/pumpkin", "/m/leaf"],
            BadInputPolicy(),
        )


@pytest.mark.parametrize(
    "raw, pattern",
    [
        (
            '{"images": [], "annotations": [], "annotations": [], "categories": []}',
            r"key 'annotations' appears 2 times in one object \(keys \['images', 'annotations'",
        ),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "id": 2}], "annotations": [],'
            ' "categories": []}',
            r"key 'id' appears 2 times in one object \(keys \['id', 'file_name'\]",
        ),
    ],
)
def test_repeated_json_key_is_an_error(tmp_path, raw, pattern):
    # json.load keeps the last of repeated keys: part of the file would be ignored silently.
    json_path = _coco(str(tmp_path / "src"), [], write_images=False, raw_json=raw)
    for skip in (False, True):
        with pytest.raises(BadInputError, match=pattern) as error:
            read_coco_json(json_path, str(tmp_path / "src"), BadInputPolicy(skip=skip))
        assert json_path in str(error.value)


def _via_text(pairs) -> str:
    """VIA json text from (key, entry) pairs, keys possibly repeated (json.dumps cannot)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


def _build_via(tmp_path, json_path, skip):
    return instances.build_custom(
        tmp_path / f"tfds_via{skip}",
        "via",
        ["balloon", "kite"],
        train={"annotations": str(json_path), "images": os.path.dirname(json_path)},
        skip_bad_input=skip,
    )


def test_via_repeated_entry_key(tmp_path):
    root = tmp_path / "via"
    e0, e1, e2 = fx.via_dataset(str(root), num_images=3).items()
    fewer = dict(e1[1], regions=e1[1]["regions"][:1])
    (root / "dup.json").write_text(_via_text([e0, e1, (e1[0], fewer), e2]))
    with pytest.raises(BadInputError, match=r"entry key 'photo1.jpg\d+' appears 2 times in .*dup"):
        _build_via(tmp_path, root / "dup.json", False)
    builder = _build_via(tmp_path, root / "dup.json", True)
    assert _hygiene(builder)["skipped: repeated VIA entry key"] == 2
    records = _records(builder)
    assert [_text(r["file_name"]) for r in records] == ["photo0.jpg", "photo2.jpg"]
    assert [int(r["image_id"]) for r in records] == [1, 4]  # ids are places in the file


def test_via_repeated_filename(tmp_path):
    root = tmp_path / "via"
    e0, e1, e2 = fx.via_dataset(str(root), num_images=3).items()
    (root / "dup.json").write_text(_via_text([e0, e1, ("photo1.jpg999", e1[1]), e2]))
    pattern = r"photo1.jpg is the file of 2 entries \(keys 'photo1.jpg\d+', 'photo1.jpg999'\)"
    with pytest.raises(BadInputError, match=pattern):
        _build_via(tmp_path, root / "dup.json", False)
    builder = _build_via(tmp_path, root / "dup.json", True)
    assert _hygiene(builder)["skipped: VIA image file listed by more than one entry"] == 2
    assert [_text(r["file_name"]) for r in _records(builder)] == ["photo0.jpg", "photo2.jpg"]


def test_png_mask_repeated_mask_path(tmp_path):
    root = tmp_path / "oi"
    fx.png_mask_dataset(str(root), num_images=2)
    lines = (root / "masks.csv").read_text().splitlines()
    lines.append(lines[3])  # row 4 (the second image's first mask) again, as row 6
    (root / "dup.csv").write_text("\n".join(lines) + "\n")

    def build(skip):
        return instances.build_custom(
            tmp_path / f"tfds{skip}",
            "png_masks",
            ["/m/pumpkin", "/m/leaf"],
            train={
                "annotations": str(root / "dup.csv"),
                "images": str(root / "images"),
                "masks": str(root / "masks"),
            },
            skip_bad_input=skip,
        )

    with pytest.raises(BadInputError, match=r"MaskPath '\w+_0.png' is in rows \[4, 6\] of .*dup"):
        build(False)
    builder = build(True)
    assert _hygiene(builder)["skipped: repeated MaskPath"] == 2
    assert [len(r["objects"]["label"]) for r in _records(builder)] == [2, 1]


# The size check is its own message: not a decode error, no chained traceback.


def test_size_mismatch_is_one_message_not_a_decode_error(tmp_path):
    path = tmp_path / "small.jpg"
    fx.save_jpeg(path, fx.random_image(3, (40, 64)))
    with pytest.raises(BadInputError) as error:
        read_image(path, BadInputPolicy(), expected_hw=(fx.H, fx.W), context="image id 2 in a.json")
    message = str(error.value)
    assert re.search(
        r"small.jpg \(image id 2 in a.json\) is 40x64 \(height x width\) but the annotation "
        r"says 48x64",
        message,
    ), message
    assert "decode" not in message and message.count("skip_bad_input") == 1
    assert "\n" not in message
    assert error.value.__cause__ is None and error.value.__context__ is None
    policy = BadInputPolicy(skip=True)
    assert read_image(path, policy, expected_hw=(fx.H, fx.W)) is None
    assert policy.as_dict() == {"skipped: image size differs from the annotation": 1}


def test_decode_error_has_no_chained_traceback(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(BadInputError, match=r"cannot decode image .*bad.jpg") as error:
        read_image(tmp_path / "bad.jpg", BadInputPolicy())
    assert error.value.__cause__ is None and error.value.__context__ is None
    assert "\n" not in str(error.value) and "BytesIO" not in str(error.value)


# The build summary counts items (images, annotations), not notes.


def test_images_without_objects_are_counted_per_image(tmp_path, capsys):
    images = [_image(1, "a.jpg"), _image(2, "b.jpg"), _image(3, "c.jpg")]
    builder = _build(tmp_path, _coco(str(tmp_path / "src"), [_ann(7)], images))
    assert _hygiene(builder)["images without any (non-crowd) object, kept"] == 2
    assert "2 of 3 images in train" in capsys.readouterr().out


def test_policy_counts_items():
    policy = BadInputPolicy(skip=True)
    policy.note("clean-up", "five things", count=5)
    policy.problem("bad", "two things", count=2)
    assert policy.as_dict() == {"clean-up": 5, "skipped: bad": 2}
    assert "      5  clean-up" in policy.summary()
