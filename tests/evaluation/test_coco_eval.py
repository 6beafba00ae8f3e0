"""COCOeval table: perfect, empty and mask-scoring re-ranking cases on tiny ground truths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools.coco import COCO

from msrcnn.evaluation import coco_eval
from msrcnn.evaluation.coco_eval import COLUMNS, ROW_LABELS
from msrcnn.evaluation.coco_format import BBOX, SEGM, SEGM_MS, coco_results
from tests.evaluation.coco_fixtures import detections, make_gt

BBOX_ROW, PLAIN_ROW, MS_ROW = ROW_LABELS[BBOX], ROW_LABELS[SEGM], ROW_LABELS[SEGM_MS]

# Two images, non-contiguous categories, one object per COCO size range:
# small < 32^2 <= medium < 96^2 <= large (areas 400, 2500, 10000, 144).
IMAGES = [(7, 128, 160), (42, 96, 96)]
OBJECTS = [
    (7, 1, (10, 10, 30, 30)),
    (7, 90, (40, 20, 140, 120)),
    (42, 3, (20, 30, 70, 80)),
    (42, 3, (80, 80, 92, 92)),
]


def perfect_results():
    """Detections equal to the ground truth, score and mask score 1."""
    sizes = {i: (h, w) for i, h, w in IMAGES}
    items = []
    for image_id, hw in sizes.items():
        dets = [(c, box, box, 1.0, 1.0) for i, c, box in OBJECTS if i == image_id]
        items.append((image_id, detections(hw, dets)))
    return coco_results(items)


def test_perfect_predictions_give_ap_one():
    table = coco_eval.evaluate(make_gt(IMAGES, OBJECTS), perfect_results())
    assert list(table.rows) == [BBOX_ROW, PLAIN_ROW, MS_ROW]
    for label, row in table.rows.items():
        assert list(row) == list(COLUMNS)
        for col, value in row.items():
            assert value == pytest.approx(1.0), (label, col)
    assert table.notes == []
    assert "Average Precision" in table.logs[BBOX_ROW]  # COCOeval's summary, captured


def test_prints_are_captured(capsys):
    coco_eval.evaluate(make_gt(IMAGES, OBJECTS), perfect_results())
    assert capsys.readouterr().out == ""


def test_empty_predictions_give_zero():
    empty = {BBOX: [], SEGM: [], SEGM_MS: []}
    table = coco_eval.evaluate(make_gt(IMAGES, OBJECTS), empty)
    for row in table.rows.values():
        # Every size range has ground truth, so every value is defined and 0.
        assert row == {col: 0.0 for col in COLUMNS}
    assert len(table.notes) == 3
    assert all("no predictions" in note for note in table.notes)


def test_empty_predictions_from_detections_and_undefined_sizes():
    # Zero detections through coco_format, and a ground truth without medium/large objects:
    # COCO's -1 ("no objects of this size") stays -1 in the data and shows as '-'.
    gt = make_gt([(1, 64, 64)], [(1, 3, (10, 10, 30, 30))])
    results = coco_results([(1, detections((64, 64), []))])
    table = coco_eval.evaluate(gt, results)
    for row in table.rows.values():
        assert row == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": -1.0, "APl": -1.0}
    text = coco_eval.format_table(table)
    assert "| bbox | 0.0 | 0.0 | 0.0 | 0.0 | - | - |" in text


def reranking_case():
    """(ground truth, results) of `test_mask_scoring_reranks_masks`."""
    hw = (64, 64)
    gt = make_gt([(5, *hw)], [(5, 90, (10, 10, 30, 30))])
    dets = detections(
        hw,
        [
            (90, (10, 10, 30, 30), (10, 10, 16, 30), 0.9, 0.9 * 0.3),
            (90, (11, 12, 30, 30), (11, 12, 30, 30), 0.8, 0.8 * 0.855),
        ],
    )
    return gt, coco_results([(5, dets)])


def test_mask_scoring_reranks_masks():
    """One 20x20 object; detection A has the higher class score but a bad mask, B a good mask.

    A: mask = 6 of the object's 20 columns -> IoU 120 / 400 = 0.3; mask score 0.9 * 0.3.
    B: mask = an 18 x 19 block inside the object -> IoU 342 / 400 = 0.855; mask score
       0.8 * 0.855. Both boxes overlap the object, A's exactly.

    Plain ranking (A, B): at IoU thresholds .50 .. .85 (8 of 10) A is a false positive and B
    the true positive, so precision is 1/2 at recall 1 -> AP 0.5; at .90 and .95 nothing
    matches -> 0. AP = 8 * 0.5 / 10 = 0.4, AP50 = AP75 = 0.5.
    Mask scoring (B, A): B comes first -> precision 1 at recall 1 at the 8 thresholds:
    AP = 0.8, AP50 = AP75 = 1.0.
    bbox: A's box is the object's box and ranks first -> 1.0 everywhere defined.
    The object is small (area 400), so APs = AP and APm = APl = -1.
    """
    table = coco_eval.evaluate(*reranking_case())
    undefined = {"APm": -1.0, "APl": -1.0}
    expected = {
        BBOX_ROW: {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, **undefined},
        PLAIN_ROW: {"AP": 0.4, "AP50": 0.5, "AP75": 0.5, "APs": 0.4, **undefined},
        MS_ROW: {"AP": 0.8, "AP50": 1.0, "AP75": 1.0, "APs": 0.8, **undefined},
    }
    for label, row in expected.items():
        assert table.rows[label] == pytest.approx(row), label
    assert table.rows[MS_ROW]["AP"] > table.rows[PLAIN_ROW]["AP"]


def test_ground_truth_forms_agree_and_inputs_stay_clean(tmp_path):
    gt = make_gt(IMAGES, OBJECTS)
    results = perfect_results()
    snapshot = json.dumps(results, sort_keys=True)
    gt_snapshot = json.dumps(gt, sort_keys=True)
    path = tmp_path / "gt.json"
    path.write_text(gt_snapshot)
    from_dict = coco_eval.evaluate(gt, results)
    from_path = coco_eval.evaluate(str(path), results)
    coco = coco_eval.load_ground_truth(gt)
    assert isinstance(coco, COCO)
    from_object = coco_eval.evaluate(coco, json.loads(snapshot))  # after a json round trip
    assert from_dict.rows == from_path.rows == from_object.rows
    # loadRes / segm evaluation write into the dicts they get; ours must not change.
    assert json.dumps(results, sort_keys=True) == snapshot
    assert json.dumps(gt, sort_keys=True) == gt_snapshot


def test_image_subset():
    # Predictions only for image 7; restricting the evaluation to it keeps AP at 1.
    results = perfect_results()
    only7 = {key: [r for r in items if r["image_id"] == 7] for key, items in results.items()}
    gt = make_gt(IMAGES, OBJECTS)
    subset = coco_eval.evaluate(gt, only7, image_ids=[7])
    assert subset.rows[BBOX_ROW]["AP"] == pytest.approx(1.0)
    everything = coco_eval.evaluate(gt, only7)
    assert everything.rows[BBOX_ROW]["AP"] < 1.0  # image 42's objects count as misses


def test_format_and_json(tmp_path):
    table = coco_eval.EvalTable(
        rows={
            BBOX_ROW: dict(zip(COLUMNS, [0.379, 0.59, 0.41, 0.2, -1.0, 0.5], strict=True)),
            MS_ROW: dict(zip(COLUMNS, [0.36, 0.56, 0.39, 0.17, 0.39, -1.0], strict=True)),
        },
        notes=["something"],
    )
    markdown = coco_eval.format_table(table).splitlines()
    assert markdown[0] == "|  | AP | AP50 | AP75 | APs | APm | APl |"
    assert markdown[2] == "| bbox | 37.9 | 59.0 | 41.0 | 20.0 | - | 50.0 |"
    assert markdown[-1] == "note: something"
    plain = coco_eval.format_table(table, markdown=False).splitlines()
    assert len({len(line) for line in plain[:3]}) == 1  # fixed width
    assert plain[2].split()[2:] == ["scoring)", "36.0", "56.0", "39.0", "17.0", "39.0", "-"]
    path = tmp_path / "out" / "eval.json"
    coco_eval.write_json(table, str(path))
    data = json.loads(path.read_text())
    assert data["columns"] == list(COLUMNS)
    assert data["rows"][BBOX_ROW]["APm"] == -1.0
    assert data["notes"] == ["something"]
    assert np.isfinite([v for row in data["rows"].values() for v in row.values()]).all()


def test_faster_coco_eval_agrees():
    pytest.importorskip("faster_coco_eval")  # optional backend, not a dependency
    cases = [
        (make_gt(IMAGES, OBJECTS), perfect_results()),
        (make_gt(IMAGES, OBJECTS), {BBOX: [], SEGM: []}),
        reranking_case(),
    ]
    for gt, results in cases:
        reference = coco_eval.evaluate(gt, results)
        faster = coco_eval.evaluate(gt, results, backend="faster_coco_eval")
        for label, row in reference.rows.items():
            assert faster.rows[label] == pytest.approx(row), label


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        coco_eval.evaluate(make_gt(IMAGES, OBJECTS), {BBOX: []}, backend="nope")
