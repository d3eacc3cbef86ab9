"""tools/export_model.py: both formats end to end on the quickstart config, and its refusals.

The exports' parity with the eager model is tested in test_export.py; here the command line: config
+ weights file + sample image -> model.ts / model.onnx with the stored metadata, the tool's own
check against the eager model, no silent overwrite, and one ``error:`` line for bad input.
"""

import importlib
import json
import os
import re

import numpy as np
import pytest
import torch

from detr_d2.export import torch_export
from detr_d2.export.onnx_export import max_opset
from tests.utils.paths import COCO_SAMPLE, ROOT
from tests.utils.scripts import load_script

CONFIG = os.path.join(ROOT, "configs", "quickstart", "detr_r18_quickstart.yaml")
IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg")


@pytest.fixture(scope="module")
def tool():
    return load_script("export_model")


def _run(tool, capsys, *args):
    code = tool.main(["--config-file", CONFIG, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A quickstart checkpoint (random weights, Detectron2's {"model": state_dict} layout)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import detr_d2

    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(CONFIG)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


def test_torchscript_export_with_weights(tool, capsys, tmp_path, weights):
    out_dir = tmp_path / "export"
    args = [
        "--format",
        "torchscript",
        "--sample-image",
        IMAGE,
        "--output",
        str(out_dir),
        "--opts",
        "MODEL.WEIGHTS",
        weights,
        "TEST.OBJECT_MASK_THRESHOLD",
        "0.6",
    ]
    code, out, err = _run(tool, capsys, *args)
    assert code == 0, err
    assert (
        "identical to the eager model's panoptic output" in out
        and "(427x640 -> input 85x128)" in out
    )
    extra = {"detr_d2_export.json": ""}
    module = torch.jit.load(str(out_dir / "model.ts"), _extra_files=extra)
    meta = json.loads(extra["detr_d2_export.json"])
    assert meta["dataset_category_ids"] == [1, 2, 3, 4, 5, 6] and meta["class_names"][3] == "sky"
    assert (
        meta["min_size_test"] == module.min_size_test == 128
        and meta["object_mask_threshold"] == 0.6
    )
    result = module(torch.zeros(3, 40, 60, dtype=torch.uint8), [80, 120])
    assert result["panoptic_seg"].shape == (80, 120) and result["panoptic_seg"].dtype == torch.int32
    # no silent overwrite; --overwrite replaces
    before = os.path.getmtime(out_dir / "model.ts")
    code, _, err = _run(tool, capsys, *args)
    assert code == 1 and err.startswith("error: ") and "model.ts already exists" in err
    assert os.path.getmtime(out_dir / "model.ts") == before


def test_torch_export_format(tool, capsys, tmp_path, weights):
    """--format torch_export writes model.pt2 checked against the eager model where torch can
    (>= MIN_TORCH, the newest stack), else ends with one error line naming the torch needed."""
    args = ["--format", "torch_export", "--sample-image", IMAGE, "--output", str(tmp_path)]
    code, out, err = _run(tool, capsys, *args, "--opts", "MODEL.WEIGHTS", weights)
    if torch_export._torch_version() < torch_export.MIN_TORCH:
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(
            "error: torch.export of DetrPanoptic needs torch >= 2.14 (installed: "
        )
        assert not (tmp_path / "model.pt2").exists()
        return
    assert code == 0, err
    assert "wrote " + str(tmp_path / "model.pt2") in out
    assert (
        "identical to the eager model's panoptic output" in out
        and "(427x640 -> input 85x128)" in out
    )
    model, meta = torch_export.load_exported_program(str(tmp_path / "model.pt2"))
    assert meta["class_names"][3] == "sky" and meta["min_size_test"] == 128
    result = model(torch.zeros(3, 40, 60, dtype=torch.uint8), [80, 120])
    assert result["panoptic_seg"].shape == (80, 120) and result["panoptic_seg"].dtype == torch.int32


def test_onnx_export_keeping_no_query(tool, capsys, tmp_path):
    """A threshold of 1 keeps no query: the graph then returns no masks (ONNX Runtime crashes on
    zero-row convolutions, which the network avoids) and the post-processor an all-void map."""
    ort = pytest.importorskip("onnxruntime")
    from detr_d2.export import PanopticPostprocessor

    code, out, err = _run(
        tool,
        capsys,
        "--format",
        "onnx",
        "--output",
        str(tmp_path),
        "--opts",
        "MODEL.WEIGHTS",
        "",
        "TEST.OBJECT_MASK_THRESHOLD",
        "1.0",
    )
    assert code == 0, err
    assert (
        "0 segments (same ids and classes as the eager model), 100.000% of the pixels equal" in out
    )
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).integers(0, 256, (3, 72, 100)).astype(np.float32)
    logits, boxes, queries, masks = session.run(None, {"image": image})
    assert (
        logits.shape == (12, 7)
        and boxes.shape == (12, 4)
        and queries.shape == (0,)
        and masks.shape == (0, 18, 25)
    )
    post = PanopticPostprocessor.from_onnx_session(session)
    ids, segments = post([logits, boxes, queries, masks], (72, 100), (144, 200))
    assert ids.shape == (144, 200) and not ids.any() and segments == []


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--format", "torchscript", "--export-method", "scripting"],
            "error: --export-method scripting is not supported",
        ),
        (
            ["--format", "torchscript", "--opts", "MODEL.WEIGHTS", "/nonexistent/model_final.pth"],
            "error: MODEL.WEIGHTS: /nonexistent/model_final.pth does not exist",
        ),
        (
            ["--format", "onnx", "--sample-image", "/nonexistent/x.jpg"],
            "error: --sample-image: /nonexistent/x.jpg does not exist",
        ),
        (
            ["--format", "onnx", "--sample-image", "NOT_AN_IMAGE"],
            "error: --sample-image: cannot read",
        ),
        (
            [
                "--format",
                "torchscript",
                "--opts",
                "TEST.PANOPTIC_ON",
                "False",
                "TEST.INSTANCE_ON",
                "True",
            ],
            "TEST.PANOPTIC_ON True",
        ),
        (
            ["--format", "onnx", "--opset", str(max_opset() + 1)],
            f"error: ONNX opset {max_opset() + 1} is not supported: use 13..{max_opset()}",
        ),
    ],
)
def test_bad_input_gets_one_error_line(tool, capsys, tmp_path, args, message):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    args = [str(not_an_image) if a == "NOT_AN_IMAGE" else a for a in args]
    code, _, err = _run(
        tool, capsys, "--output", str(tmp_path / "out"), *args
    )  # --opts takes the rest
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert (
        not (tmp_path / "out" / "model.ts").exists()
        and not (tmp_path / "out" / "model.onnx").exists()
    )


def test_unknown_format_is_refused_by_the_parser(tool, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        tool.main(["--config-file", CONFIG, "--format", "foo", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    # (argparse quotes the choices up to Python 3.11, not from 3.12)
    choices = re.search(r"invalid choice: 'foo' \(choose from (.*)\)", err).group(1)
    assert e.value.code == 2 and choices.replace("'", "") == "torchscript, onnx, torch_export"


def test_benchmark_export_smoke(capsys):
    """benchmarks/export.py end to end on a tiny architecture and image (figures not
    checked)."""
    pytest.importorskip("onnxruntime")
    bench = importlib.import_module("benchmarks.export")
    code = bench.main(
        [
            "--depth",
            "18",
            "--hidden-dim",
            "128",
            "--enc-layers",
            "1",
            "--dec-layers",
            "1",
            "--dim-feedforward",
            "128",
            "--num-queries",
            "10",
            "--kept",
            "3",
            "--input-size",
            "64x96",
            "--output-size",
            "80x120",
            "--warmup",
            "0",
            "--iters",
            "1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    names = ("eager", "eager-before", "torchscript", "onnxruntime")
    rows = {r[0]: r for r in (line.split() for line in out.splitlines()) if r and r[0] in names}
    assert set(rows) == set(names) and rows["eager"][3] == "1.00" and rows["eager"][5] == "1.00"
    assert len({r[-1] for r in rows.values()}) == 1  # the same number of segments from all four
    assert "benchmark: cpu 64x96: eager" in out


def test_benchmark_profile_inference_smoke(capsys):
    """benchmarks/profile_inference.py on a tiny architecture: every part, before / after /
    onnxruntime columns, operator tables (figures not checked)."""
    pytest.importorskip("onnxruntime")
    bench = importlib.import_module("benchmarks.profile_inference")
    tiny = "--depth 18 --hidden-dim 128 --enc-layers 1 --dec-layers 1 --dim-feedforward 128"
    code = bench.main(
        tiny.split()
        + "--num-queries 10 --kept 3 --input-size 64x96 --output-size 80x120 --iters 1".split()
        + ["--top", "3"]
    )
    out = capsys.readouterr().out
    assert code == 0
    header = next(line.split() for line in out.splitlines() if line.startswith("part "))
    assert header == ["part", "before", "after", "onnxruntime"]
    for part in ("backbone", "encoder", "decoder", "mask head", "total"):
        assert any(line.startswith(part + " ") for line in out.splitlines()), part
    assert "-- onnxruntime: top operators" in out and "Conv" in out
