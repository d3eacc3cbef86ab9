"""benchmarks.error_analysis runs and prints every variant with its ratio (a smoke test)."""

import importlib


def test_error_analysis_benchmark_prints_all_variants(capsys):
    bench = importlib.import_module("benchmarks.error_analysis")
    bench.main(["--copies", "1", "--rounds", "1", "--worst", "1"])
    out = capsys.readouterr().out
    assert "2 images (427x640), best of 1 interleaved rounds" in out
    for name in ("evaluator, no files", "+ analysis, no files", "evaluator, files"):
        assert name in out
    assert "+ analysis, files" in out and "+ analysis + 1 pictures" in out
    assert out.count("x the evaluator with the same outputs") == 5
