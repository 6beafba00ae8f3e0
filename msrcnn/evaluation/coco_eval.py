"""COCOeval for bbox and segm (plain and mask scoring) -> one table.

    table = evaluate(coco_gt, coco_format.coco_results(items))
    print(format_table(table))       # markdown, AP in percent
    write_json(table, "eval.json")

Table values are COCOeval's `stats[:6]` as fractions in [0, 1]: AP (IoU .50:.95), AP50,
AP75, APs, APm, APl, all at maxDets=100. COCO reports -1 where a value is undefined: no
ground truth in that size range (or no ground truth at all). The table keeps -1 in its data
and JSON, and `format_table` shows it as '-'.

A result list that is empty (no detections at all) cannot go through pycocotools'
`loadRes` (it reads `anns[0]` and raises IndexError). Such a row is evaluated against an
empty detection set instead, which gives what COCO defines for it: 0 where ground truth
exists, -1 where it does not; the table's `notes` say which rows were empty.

COCOeval's prints are captured into `EvalTable.logs` (its summary lines per row).
pycocotools is the reference backend; `backend="faster_coco_eval"` uses faster-coco-eval's
C++ COCOeval when that optional package is installed (not a dependency).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterable, Mapping

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msrcnn.evaluation.coco_format import BBOX, SEGM, SEGM_MS

log = logging.getLogger(__name__)

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
ROW_LABELS = {
    BBOX: "bbox",
    SEGM: "segm (plain: cls score)",
    SEGM_MS: "segm (mask scoring)",
}
IOU_TYPES = {BBOX: "bbox", SEGM: "segm", SEGM_MS: "segm"}
UNDEFINED = -1.0  # COCO's value for "no ground truth of this size"


@dataclasses.dataclass
class EvalTable:
    """COCO AP table.

    Attributes:
      rows: row label (ROW_LABELS values) -> column (COLUMNS) -> value in [0, 1], or -1
        where COCO leaves it undefined.
      notes: remarks on how the rows were produced (e.g. empty predictions).
      logs: row label -> COCOeval's captured output.
      curves: row label -> precision-recall curves (`pr_curves`), for plots.
    """

    rows: dict[str, dict[str, float]]
    notes: list[str] = dataclasses.field(default_factory=list)
    logs: dict[str, str] = dataclasses.field(default_factory=dict)
    curves: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "columns": list(COLUMNS),
            "rows": self.rows,
            "units": "fraction in [0, 1]; -1 = undefined (no ground truth of that size)",
            "notes": self.notes,
        }


def _quiet(fn, *args, **kwargs):
    """Calls fn with stdout captured (pycocotools prints progress) -> (result, text)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args, **kwargs)
    return result, buffer.getvalue()


def load_ground_truth(gt: COCO | Mapping | str, backend: str = "pycocotools") -> COCO:
    """The backend's COCO object from a COCO object, a dataset dict, or a json path.

    A COCO object of the backend's class is returned as is (segm evaluation then converts
    its polygons to RLE in place, as pycocotools always does); one of the other backend is
    rebuilt from its dataset. A dict is copied one level deep per annotation, so that the
    in-place conversion does not leak into the caller's dict.
    """
    coco_cls, _ = _evaluator(backend)
    if isinstance(gt, coco_cls):
        return gt
    if hasattr(gt, "dataset"):
        gt = gt.dataset
    elif isinstance(gt, str | os.PathLike):
        with open(gt) as f:
            gt = json.load(f)
    dataset = dict(gt)
    dataset["annotations"] = [dict(ann) for ann in gt.get("annotations", [])]
    dataset.setdefault("categories", [])
    coco = coco_cls()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _empty_results(coco_gt: COCO, coco_cls=COCO) -> COCO:
    """A detections COCO object with no annotations (what loadRes([]) would be)."""
    coco_dt = coco_cls()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset["images"]),
        "categories": copy.deepcopy(coco_gt.dataset["categories"]),
        "annotations": [],
    }
    _quiet(coco_dt.createIndex)
    return coco_dt


def _evaluator(backend: str):
    if backend == "pycocotools":
        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval
        except ImportError as e:
            raise ImportError(
                "backend='faster_coco_eval' needs `pip install faster-coco-eval`"
            ) from e
        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    raise ValueError(f"unknown backend {backend!r}; use 'pycocotools' or 'faster_coco_eval'")


def pr_curves(evaluator) -> dict[str, list[float]]:
    """Precision at COCO's 101 recall points, averaged over classes that have ground truth,
    for all areas and 100 detections: at IoU 0.5, at 0.75 and averaged over 0.5:0.95."""
    precision = np.asarray(evaluator.eval["precision"])[:, :, :, 0, -1]  # [T, R, K]
    valid = precision > -1

    def mean_over_classes(p, v):
        total, count = np.where(v, p, 0.0).sum(-1), v.sum(-1)
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)

    thresholds = np.asarray(evaluator.params.iouThrs)
    per_iou = mean_over_classes(precision, valid)  # [T, R]
    at = lambda iou: per_iou[int(np.argmin(np.abs(thresholds - iou)))].tolist()
    return {
        "recall": np.asarray(evaluator.params.recThrs).tolist(),
        "precision@0.5": at(0.5),
        "precision@0.75": at(0.75),
        "precision@0.5:0.95": per_iou.mean(0).tolist(),
    }


def evaluate_results(
    coco_gt: COCO,
    results: list[dict],
    iou_type: str,
    image_ids: Iterable[int] | None = None,
    backend: str = "pycocotools",
    curves_out: dict | None = None,
) -> tuple[np.ndarray, str]:
    """Runs COCOeval on one result list -> (stats [12], captured output).

    Args:
      coco_gt: ground truth, ideally `load_ground_truth(..., backend)`.
      results: COCO results-format dicts (`coco_format`); empty is allowed.
      iou_type: "bbox" or "segm".
      image_ids: evaluate only these images (e.g. a subset that was run); default all.
      backend: "pycocotools" or "faster_coco_eval".
      curves_out: if given, filled with `pr_curves` of this evaluation.

    Returns:
      COCOeval's 12 summary stats (AP x 6, AR x 6; -1 where undefined) and its output.
    """
    coco_cls, eval_cls = _evaluator(backend)
    coco_gt = load_ground_truth(coco_gt, backend)  # as is unless of the other backend
    if results:
        # loadRes adds id/area/iscrowd (and for boxes a polygon) to the dicts it gets; copy
        # them so the caller's lists stay clean results json.
        coco_dt, text = _quiet(coco_gt.loadRes, [dict(r) for r in results])
    else:
        coco_dt, text = _empty_results(coco_gt, coco_cls), "no predictions\n"
    evaluator = eval_cls(coco_gt, coco_dt, iou_type)
    if image_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    # COCOeval prints progress and the summary; faster-coco-eval logs instead.
    _, eval_text = _quiet(
        lambda: (evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize())
    )
    if curves_out is not None and getattr(evaluator, "eval", None):
        curves_out.update(pr_curves(evaluator))
    return np.asarray(evaluator.stats, np.float64), text + eval_text


def evaluate(
    gt: COCO | Mapping | str,
    results: Mapping[str, list[dict]],
    image_ids: Iterable[int] | None = None,
    backend: str = "pycocotools",
) -> EvalTable:
    """bbox, plain segm and mask-scoring segm AP of one set of results.

    Args:
      gt: ground truth: COCO object, dataset dict, or path to its json.
      results: {"bbox": [...], "segm": [...], "segm_ms": [...]} from `coco_format`; keys
        that are missing are left out of the table.
      image_ids: evaluate only these images; default all ground-truth images.
      backend: "pycocotools" (reference) or "faster_coco_eval" (optional package).

    Returns:
      EvalTable with one row per key present, in ROW_LABELS order.
    """
    coco_gt = load_ground_truth(gt, backend)  # once for all rows
    if image_ids is not None:
        image_ids = list(image_ids)
    table = EvalTable(rows={})
    for key, label in ROW_LABELS.items():
        if key not in results:
            continue
        curves: dict = {}
        stats, text = evaluate_results(
            coco_gt, results[key], IOU_TYPES[key], image_ids, backend, curves
        )
        if curves:
            table.curves[label] = curves
        table.rows[label] = {
            col: float(v) for col, v in zip(COLUMNS, stats[: len(COLUMNS)], strict=True)
        }
        table.logs[label] = text
        if not results[key]:
            note = f"{label}: no predictions; AP is 0 where ground truth exists (-1 where none)"
            table.notes.append(note)
            log.warning(note)
    return table


def _cell(value: float) -> str:
    return "-" if value < 0 else f"{100.0 * value:.1f}"


def format_table(table: EvalTable, markdown: bool = True) -> str:
    """The table as text: AP in percent with one decimal, '-' where COCO gives -1.

    markdown=True gives a GitHub markdown table, otherwise fixed-width columns. Notes follow
    the table, one per line.
    """
    header = ("", *COLUMNS)
    body = [(label, *(_cell(row[col]) for col in COLUMNS)) for label, row in table.rows.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    else:
        first = max([len(cells[0]) for cells in body] + [0])
        width = 6

        def line(cells):
            return cells[0].ljust(first) + "".join(c.rjust(width) for c in cells[1:])

        lines = [line(header)] + [line(cells) for cells in body]
    lines += [f"note: {note}" for note in table.notes]
    return "\n".join(lines)


def write_json(table: EvalTable, path: str) -> None:
    """Writes `table.to_dict()` (fractions, -1 kept) as json."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(table.to_dict(), f, indent=2)
