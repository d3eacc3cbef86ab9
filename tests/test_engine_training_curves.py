"""Training curves from metrics.json: a resumed run read as one run, a half-written last line
skipped, the PNG drawn by tools/plot_training.py."""

import json

import pytest
from PIL import Image

from detr_d2.engine.training_curves import CURVES_PNG, load_metrics
from tests.utils.scripts import load_script

tool = load_script("plot_training")


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def _rec(it, loss, **extra):
    return {"iteration": it, "total_loss": loss, "loss_ce": loss / 2, "lr": 1e-4, **extra}


def test_resumed_run_is_one_run(tmp_path):
    first = [_rec(19, 9.0), _rec(39, 8.0), _rec(59, 7.0), {"iteration": 59, "panoptic_seg/PQ": 1.0}]
    first.append(_rec(79, 6.0))
    # killed after 79, resumed from the checkpoint at iteration 40: 59 and 79 are done again
    second = [_rec(59, 5.0), {"iteration": 59, "panoptic_seg/PQ": 2.0}, _rec(79, 4.0)]
    second.append(_rec(99, 3.0))
    _write(tmp_path / "metrics.json", first + second, tail='{"iteration": 119, "total_lo')
    records = load_metrics(str(tmp_path / "metrics.json"))
    assert [r["iteration"] for r in records] == [19, 39, 59, 79, 99]
    assert [r["total_loss"] for r in records] == [9.0, 8.0, 5.0, 4.0, 3.0]
    assert records[2]["panoptic_seg/PQ"] == 2.0  # the resumed run's evaluation, merged


def test_malformed_line_is_named(tmp_path):
    (tmp_path / "metrics.json").write_text('{"iteration": 1}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_metrics(str(tmp_path / "metrics.json"))


def test_tool_draws_the_png(tmp_path, capsys):
    records = []
    for i in range(1, 30):
        records.append(_rec(20 * i - 1, 10.0 / i, loss_bbox=1.0 / i, loss_ce_0=3.0))
        if i % 10 == 0:
            records.append(
                {
                    "iteration": 20 * i - 1,
                    **{f"panoptic_seg/{m}Q{s}": 3.0 * i for m in "PSR" for s in ("", "_th")},
                }
            )
    _write(tmp_path / "metrics.json", records)
    assert tool.main([str(tmp_path)]) == 0
    assert CURVES_PNG in capsys.readouterr().out
    with Image.open(tmp_path / CURVES_PNG) as im:
        assert im.format == "PNG" and im.width > im.height
    assert tool.main([str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("error: no metrics.json")
