"""A model trains on each real-data format, and the COCO code path runs end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from msrcnn.data import datasets
from msrcnn.data.builders.tiny_coco import CATEGORY_IDS, write_tiny_coco
from msrcnn.training import trainer
from tests.data import instance_fixtures as fx
from tests.trainer_helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")


def _custom_config(tmp_path, fmt, class_names, train, validation=None):
    config = tiny_config(tmp_path / "tfds", num_steps=2, checkpoint_every=2)
    config.model.num_classes = len(class_names)
    config.data.dataset = "custom"
    c = config.data.custom
    c.format = fmt
    c.class_names = list(class_names)
    c.train.update(train)
    if validation:
        c.validation.update(validation)
    return config


def _formats(tmp_path):
    coco = str(tmp_path / "coco")
    fx.coco_dataset(coco)
    split = {"annotations": f"{coco}/train.json", "images": f"{coco}/images"}
    yield "coco", ["bird", "cat", "dog"], split, split
    via = str(tmp_path / "via")
    fx.via_dataset(via)
    yield "via", ["balloon", "kite"], {"annotations": f"{via}/via.json", "images": via}, None
    oi = str(tmp_path / "oi")
    fx.png_mask_dataset(oi)
    split = {"annotations": f"{oi}/masks.csv", "images": f"{oi}/images", "masks": f"{oi}/masks"}
    yield "png_masks", ["/m/pumpkin", "/m/leaf"], split, None


def test_two_steps_on_each_format(tmp_path):
    for fmt, names, train, validation in _formats(tmp_path):
        config = _custom_config(tmp_path, fmt, names, train, validation)
        result = trainer.train_and_evaluate(config, str(tmp_path / f"run_{fmt}"))
        assert result["step"] == 2, fmt
        assert np.isfinite(result["metrics"]["loss"]), fmt
        if validation:
            # Evaluation ran against the dataset's own category ids.
            rows = result["eval"]["table"].rows
            assert set(rows) == {"bbox", "segm (plain: cls score)", "segm (mask scoring)"}


def test_num_classes_mismatch_is_explained(tmp_path):
    fmt, names, train, _ = next(_formats(tmp_path))
    config = _custom_config(tmp_path, fmt, names, train)
    config.model.num_classes = 7
    with pytest.raises(ValueError, match=r"3 classes .* model.num_classes = 7"):
        datasets.load(config)


@pytest.mark.slow
def test_coco_runlocal_cli(tmp_path):
    """`python -m msrcnn.train --config=experiments/coco.py:runlocal` on a generated
    COCO-layout folder: builds coco_instances, trains, evaluates with COCO category ids."""
    coco_dir = tmp_path / "coco"
    write_tiny_coco(str(coco_dir), num_train=8, num_val=4, size=96)
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "msrcnn.train",
        "--config=experiments/coco.py:runlocal",
        f"--workdir={workdir}",
        f"--config.data.coco.manual_dir={coco_dir}",
        f"--config.data.data_dir={tmp_path / 'tfds'}",
        "--config.train.num_steps=2",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "segm (mask scoring)" in out.stdout
    assert "coco_instances train: 8 images" in out.stdout
    assert "training leaves out 1 images without objects" in out.stdout
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f][-1]["step"] == 2
    # The built dataset keeps COCO's category and image ids for evaluation.
    from experiments import coco

    config = coco.get_config("runlocal")
    config.data.coco.manual_dir = str(coco_dir)
    config.data.data_dir = str(tmp_path / "tfds")
    data = datasets.load(config)
    assert data.category_ids == list(CATEGORY_IDS)
    assert sorted(im["id"] for im in data.coco_gt["images"]) == [1000, 1007, 1014, 1021]
