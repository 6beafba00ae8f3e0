"""`benchmarks.run`'s bookkeeping: interleaved rounds combined into one row per case with the
paired ratios, and the huge-page tunable passed to the case processes."""

from __future__ import annotations

import pytest

from benchmarks import run


def _row(framework, model, ms, peak, note=""):
    return {
        "mode": "train",
        "size": "512x512",
        "batch": 2,
        "framework": framework,
        "model": model,
        "median_ms": ms,
        "peak_mem_gib": peak,
        "compile_s": 30.0 if framework == "msrcnn" else None,
        "note": note,
    }


def test_rounds_give_median_of_medians_and_paired_ratio_range():
    rounds = [
        [_row("msrcnn", "Mask R-CNN", 2000.0, 4.0), _row("torchvision", "Mask R-CNN", 3000.0, 2.0)],
        [_row("msrcnn", "Mask R-CNN", 2600.0, 4.5), _row("torchvision", "Mask R-CNN", 3250.0, 2.1)],
        [_row("msrcnn", "Mask R-CNN", 2100.0, 4.2), _row("torchvision", "Mask R-CNN", 3500.0, 2.0)],
    ]
    mine, theirs = run.combine_rounds(rounds)
    assert mine["rounds_ms"] == [2000.0, 2600.0, 2100.0]
    assert mine["median_ms"] == 2100.0 and theirs["median_ms"] == 3250.0
    assert mine["images_per_s"] == pytest.approx(2 * 1000 / 2100)
    assert mine["peak_mem_gib"] == 4.5  # the largest of the rounds
    assert mine["ratio"] == pytest.approx(2100 / 3250)  # medians, not paired
    # Per round: 2000/3000, 2600/3250, 2100/3500.
    assert mine["ratio_min"] == pytest.approx(0.6) and mine["ratio_max"] == pytest.approx(0.8)
    assert "ratio" not in theirs


def test_one_round_has_no_ratio_range():
    (mine, _) = run.combine_rounds(
        [[_row("msrcnn", "Mask R-CNN", 2000.0, 4.0), _row("torchvision", "Mask R-CNN", 2500.0, 2)]]
    )
    assert mine["ratio"] == pytest.approx(0.8) and "ratio_min" not in mine


def test_detector_only_rows_stay_apart_and_get_no_ratio():
    whole = _row("msrcnn", "Mask R-CNN", 900.0, 1.6, note="whole call: 12 detections")
    detector = _row("msrcnn", "Mask R-CNN", 700.0, 1.6, note="detector only: padded input")
    reference = _row("torchvision", "Mask R-CNN", 1500.0, 1.6, note="model(images)")
    rows = run.combine_rounds([[whole, detector, reference], [whole, detector, reference]])
    assert len(rows) == 3
    assert rows[0]["ratio"] == pytest.approx(0.6) and rows[0]["ratio_min"] == pytest.approx(0.6)
    assert "ratio" not in rows[1]


def test_hugepage_tunable_is_appended_to_existing_tunables(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert run.child_environment(False)["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    assert (
        run.child_environment(True)["GLIBC_TUNABLES"]
        == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    )
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert run.child_environment(True)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


def test_a_case_missing_from_a_round_pairs_only_the_rounds_where_both_ran():
    # torchvision failed in round 2 (run_case returns no rows): round 3's msrcnn time must
    # be paired with round 3's torchvision time, not round 2's.
    rounds = [
        [_row("torchvision", "Mask R-CNN", 3000.0, 2.0), _row("msrcnn", "Mask R-CNN", 1500.0, 4)],
        [_row("msrcnn", "Mask R-CNN", 9000.0, 4.0)],
        [_row("torchvision", "Mask R-CNN", 2000.0, 2.0), _row("msrcnn", "Mask R-CNN", 1600.0, 4)],
    ]
    theirs, mine = run.combine_rounds(rounds)
    assert mine["rounds_ms"] == [1500.0, 9000.0, 1600.0] and theirs["rounds_ms"] == [3000.0, 2000.0]
    assert mine["ratio_min"] == pytest.approx(0.5) and mine["ratio_max"] == pytest.approx(0.8)
    assert "_by_round" not in mine and "_by_round" not in theirs
