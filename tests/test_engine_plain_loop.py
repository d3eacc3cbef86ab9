"""The plain training loop of docs/training.md ("Your own training loop": Detectron2's
``tools/plain_train_net.py`` with detr_d2's builders), run exactly as written there in a fresh
process: a few iterations on a tiny synthetic dataset registered only through
``DATASETS.REGISTER_FILES``, a checkpoint, then evaluation (PQ)."""

import os
import re
import subprocess
import sys

import yaml

from detr_d2.data.datasets.quickstart import generate_quickstart_dataset
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import ROOT

MARKER = "<!-- plain-loop -->\n```python\n"


def docs_loop() -> str:
    """The script of docs/training.md, verbatim."""
    with open(os.path.join(ROOT, "docs", "training.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(MARKER) + len(MARKER)
    return text[start : text.index("```\n", start)]


def test_docs_loop_trains_and_evaluates(tmp_path):
    data = tmp_path / "data"
    for split, n, seed in (("train", 6, 0), ("val", 2, 1)):
        generate_quickstart_dataset(
            str(data), split, num_images=n, image_size=64, seed=seed, workers=1
        )
    datasets = tmp_path / "datasets.yaml"
    datasets.write_text(
        yaml.safe_dump(
            [
                {
                    "name": f"plain_loop_{split}",
                    "image_root": str(data / split),
                    "panoptic_root": str(data / f"panoptic_{split}"),
                    "panoptic_json": str(data / f"panoptic_{split}.json"),
                }
                for split in ("train", "val")
            ]
        )
    )
    cfg = tiny_detr_cfg(num_classes=0)  # 0: the classes come from the registered metadata
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = False
    cfg.DATASETS.REGISTER_FILES = (str(datasets),)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("plain_loop_train",), ("plain_loop_val",)
    cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT = "BN", 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.INPUT.CROP.ENABLED = False
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 2, 3, (2,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.OBJECT_MASK_THRESHOLD = 0.0  # an untrained model: keep queries so PQ is computed
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    config = tmp_path / "config.yaml"
    config.write_text(cfg.dump())
    script = tmp_path / "my_train_net.py"
    script.write_text(docs_loop())
    proc = subprocess.run(
        [sys.executable, str(script), "--config-file", str(config)],
        cwd=str(tmp_path),
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Starting training from iteration 0" in log
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")
    assert os.path.isfile(tmp_path / "out" / "model_0000001.pth")
    # Detectron2's print_csv_format of the PQ evaluator's results
    assert re.search(r"copypaste: Task: panoptic_seg", log), log[-3000:]
    assert re.search(r"copypaste: PQ,SQ,RQ", log), log[-3000:]
