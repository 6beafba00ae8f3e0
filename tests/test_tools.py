"""predict / show / evaluation pictures on a tiny trained checkpoint: outputs exist, have
the right sizes, decode, and the json loads into pycocotools."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from msrcnn import predict, show, visualize
from msrcnn.evaluation import runner
from msrcnn.training import trainer
from tests.data import instance_fixtures as fx
from tests.trainer_helpers import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tiny-model training: compile fast, share programs with the other modules (conftest).
pytestmark = pytest.mark.usefixtures("fast_xla")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    config = tiny_config(root / "tfds", num_steps=2, checkpoint_every=2)
    result = trainer.train_and_evaluate(config, str(root / "run"))
    return root, config, result


@pytest.fixture(scope="module")
def predictor(trained):
    root, _, _ = trained
    return predict.load_predictor(str(root / "run"), None)


def _decode(path) -> np.ndarray:
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def test_training_writes_evaluation_pictures_and_previews(trained):
    root, _, result = trained
    for name in ("eval_step_2_pr.png", "eval_step_2_calibration.png"):
        assert _decode(root / "run" / name).ndim == 3
    payload = json.loads((root / "run" / "eval_step_2.json").read_text())
    assert len(payload["pr_curves"]["segm (mask scoring)"]["recall"]) == 101
    assert len(result["eval"]["previews"]) == 4
    assert result["eval"]["previews"][0].shape == (64, 64, 3)


def test_predict_images(trained, predictor, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    fx.save_jpeg(inputs / "a.jpg", fx.random_image(1, (64, 64)))
    Image.fromarray(fx.random_image(2, (40, 72))).save(inputs / "b.png")
    # Stored 48 x 64 with EXIF orientation 6: shown (and predicted) as 64 x 48.
    (inputs / "c.jpg").write_bytes(fx.jpeg_with_exif_orientation(fx.random_image(3), 6))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    out.mkdir()
    paths = predict.expand_inputs(f"{inputs},{inputs}/a.jpg")
    assert len(paths) == 5
    summary = predict.predict_images(predictor, paths, str(out), 0.0, True, True)
    assert summary["images"] == 4 and summary["skipped"] == 1
    assert _decode(out / "a_overlay.png").shape == (64, 64, 3)
    assert _decode(out / "a_2_overlay.png").shape == (64, 64, 3)  # same name, second input
    assert _decode(out / "b_splash.png").shape == (40, 72, 3)
    assert _decode(out / "c_overlay.png").shape == (64, 48, 3)
    images = json.loads((out / "images.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    masks = sorted(p for p in os.listdir(out) if "_mask_" in p)
    assert len(masks) == summary["detections"]  # threshold 0: every detection saved
    gt = COCO()
    gt.dataset = {
        "images": [{k: im[k] for k in ("id", "height", "width", "file_name")} for im in images],
        "annotations": [],
        "categories": [{"id": i, "name": str(i)} for i in range(1, 5)],
    }
    gt.createIndex()
    if predictions:
        loaded = gt.loadRes(predictions)
        assert len(loaded.anns) == len(predictions)
        first = predictions[0]
        assert first["score"] == first["mask_score"]  # masks ranked by the mask score


def test_predict_without_detections_still_writes(predictor, tmp_path):
    image = fx.random_image(7, (64, 64))
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    predict.predict_images(predictor, [str(tmp_path / "x.png")], str(out), 1.1, True, True)
    np.testing.assert_array_equal(_decode(out / "x_overlay.png"), image)  # nothing drawn
    assert not [p for p in os.listdir(out) if "_mask_" in p]


def test_predict_video_keeps_frame_count(predictor, tmp_path):
    imageio = pytest.importorskip("imageio")
    with imageio.get_writer(tmp_path / "clip.mp4", fps=5, macro_block_size=1) as writer:
        for k in range(5):
            writer.append_data(fx.random_image(10 + k, (48, 64)))
    out = tmp_path / "out"
    out.mkdir()
    summary = predict.predict_video(predictor, str(tmp_path / "clip.mp4"), str(out), 0.5, False)
    assert summary["frames"] == 5
    with imageio.get_reader(summary["output"]) as reader:
        frames = [np.asarray(f) for f in reader]
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)


@pytest.mark.slow
def test_predict_and_show_commands(trained, tmp_path):
    root, _, _ = trained
    Image.fromarray(fx.random_image(4, (64, 64))).save(tmp_path / "x.png")
    run = str(root / "run")
    for args in (
        ["msrcnn.predict", f"--workdir={run}", f"--input={tmp_path / 'x.png'}"],
        ["msrcnn.show", "weights", f"--workdir={run}"],
    ):
        cmd = [sys.executable, "-m", *args, f"--output_dir={tmp_path / 'o'}"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "o" / "x_overlay.png").exists()
    assert (tmp_path / "o" / "weights.png").exists()


def test_show_commands(trained, predictor, tmp_path):
    _, config, _ = trained
    written = show.show_data(config, str(tmp_path), "train", 2)
    assert [os.path.basename(p) for p in written] == ["data_0.png", "data_1.png", "anchors.png"]
    assert _decode(written[0]).shape == (64, 64, 3)
    Image.fromarray(fx.random_image(5, (64, 80))).save(tmp_path / "img.png")
    panel = show.show_pipeline(predictor, str(tmp_path / "img.png"), str(tmp_path))
    assert _decode(panel).ndim == 3
    json_path, png = show.show_weights(predictor, str(tmp_path))
    rows = json.loads(pathlib.Path(json_path).read_text())
    assert _decode(png).ndim == 3
    assert all(r["non_finite"] == 0 for r in rows)
    # A dead and a broken layer are flagged.
    params = {"a": {"kernel": np.zeros((3, 3))}, "b": {"kernel": np.array([1.0, np.nan])}}
    flags_of = {r["name"]: r["flags"] for r in show.weight_statistics(params)}
    assert flags_of == {"a/kernel": ["ALL ZERO"], "b/kernel": ["NON-FINITE"]}


def test_overlay_labels_do_not_overlap():
    class Dets:
        boxes = np.array([[10, 30, 40, 60], [12, 31, 42, 62], [11, 29, 39, 59]], np.float32)
        classes = np.array([1, 2, 3])
        scores = np.array([0.9, 0.8, 0.7])
        mask_scores = scores * 0.9
        masks = np.zeros((3, 80, 80), bool)

    taken = []
    for box in Dets.boxes:
        x, y = visualize._free_position(box, (50, 12), taken, (80, 80))
        taken.append((x, y, x + 50, y + 12))
    for i in range(3):
        for j in range(i):
            a, b = taken[i], taken[j]
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    picture = visualize.draw_detections(np.zeros((80, 80, 3), np.uint8), Dets, ["a", "b", "c"])
    assert picture.shape == (80, 80, 3) and picture.any()
    splash = visualize.colour_splash(np.full((4, 4, 3), [255, 0, 0], np.uint8), np.ones((1, 4, 4)))
    assert (splash == [255, 0, 0]).all()


def test_write_results_without_mask_scoring(trained, tmp_path):
    _, _, result = trained
    plain = dict(result["eval"], calibration_arrays=None)
    written = runner.write_results(plain, str(tmp_path / "e.json"))
    assert set(written) == {"json", "pr"}
