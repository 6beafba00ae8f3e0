"""benchmarks.conv_gradients: the conv list read from the model, the totals and ratios, and
the script end to end (msrcnn rows only, a small image)."""

from __future__ import annotations

import json

import pytest

from benchmarks import conv_gradients


def test_pyramid_convs_lists_every_conv_of_r50_fpn():
    convs = conv_gradients.pyramid_convs(64, 64)
    assert sum(count for _, count in convs) == 61  # stem 1, res2-res5 52, FPN 8
    assert sum(count for shape, count in convs if shape.trainable) == 50  # res3 on, FPN
    first, count = convs[0]
    assert (first.kernel, first.stride, first.padding, first.in_ch) == (7, 2, 3, 3)
    assert not first.trainable and count == 1
    names = {shape.name: count for shape, count in convs}
    assert names["3x3 256->256 s1 @ 16x16"] == 1  # the FPN's P2 output conv
    assert names["3x3 256->256 s2 @ 8x8"] == 1  # res4's first 3x3 (stride in the 3x3)
    assert names["1x1 1024->256 s1 @ 4x4"] == 6  # res4's five 1x1 reductions and the C4 lateral


def test_totals_sum_trainable_convs_times_count_and_ratios_pair_by_conv():
    def row(conv, count, trainable, framework, scale):
        times = zip(conv_gradients.TIMES, (1.0 * scale, 2.0 * scale, 4.0 * scale), strict=True)
        return {
            "conv": conv,
            "count": count,
            "trainable": trainable,
            "framework": framework,
            **dict(times),
        }

    rows = [
        row("a", 2, True, "msrcnn", 1.0),
        row("a", 2, True, "torchvision", 2.0),
        row("b", 3, True, "msrcnn", 1.0),
        row("b", 3, True, "torchvision", 1.0),
        row("stem", 1, False, "msrcnn", 100.0),  # frozen: not in the total
        row("stem", 1, False, "torchvision", 100.0),
    ]
    rows = conv_gradients.add_totals_and_ratios(rows)
    total = {r["framework"]: r for r in rows if r["conv"] == "total"}
    assert total["msrcnn"]["count"] == 5
    assert total["msrcnn"]["kernel_grad_ms"] == pytest.approx(2 * 2 + 3 * 2)
    assert total["torchvision"]["forward_ms"] == pytest.approx(2 * 2 + 3 * 1)
    assert total["msrcnn"]["ratio_input_grad"] == pytest.approx(20 / 28)
    assert rows[0]["ratio_forward"] == pytest.approx(0.5)
    assert "ratio_forward" not in rows[1]  # torchvision rows carry no ratio


@pytest.mark.slow
def test_main_writes_msrcnn_rows(tmp_path):
    output = tmp_path / "conv_gradients.json"
    conv_gradients.main(["--size=64x64", "--runs=1", "--no_torchvision", f"--output={output}"])
    rows = json.loads(output.read_text())["results"]
    assert len(rows) == len(conv_gradients.pyramid_convs(64, 64)) + 1  # + total
    assert rows[-1]["conv"] == "total" and rows[-1]["count"] == 50
    for row in rows:
        assert row["framework"] == "msrcnn"
        assert all(row[key] > 0 for key in conv_gradients.TIMES)
