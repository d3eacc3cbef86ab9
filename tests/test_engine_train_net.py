"""tools/train_net.py end to end on a tiny quickstart-format dataset: train, checkpoints, resume
after a kill, eval-only through the panoptic evaluator, and 2 CPU processes with gloo through
``launch``."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from detectron2.engine import HookBase, default_argument_parser

from detr_d2.engine import DetrTrainer, main
from detr_d2.engine.training_curves import load_metrics
from tests.utils.paths import ROOT
from tests.utils.tiny_training import VAL, make_tiny_data, tiny_train_cfg, write_cfg


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny_quickstart")))


_cfg, _write = tiny_train_cfg, write_cfg


def _args(argv):
    return default_argument_parser().parse_args(argv)


class _Kill(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated kill")


def test_train_kill_resume_then_eval_only(tiny_data, tmp_path):
    cfg = _cfg(tmp_path / "run", max_iter=6, period=3)
    trainer = DetrTrainer(cfg)
    trainer.register_hooks([_Kill(at=4)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert os.path.exists(tmp_path / "run" / "model_0000002.pth")
    assert not os.path.exists(tmp_path / "run" / "model_final.pth")
    saved = torch.load(tmp_path / "run" / "model_0000002.pth", map_location="cpu")
    assert saved["iteration"] == 2

    # --resume continues from the last checkpoint with the same iteration count
    resumed = DetrTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    for k, v in saved["model"].items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v)
    assert saved["trainer"]["_trainer"]["optimizer"]["state"], "optimizer state is checkpointed"
    resumed.train()
    assert resumed.iter == 6  # Detectron2 leaves iter at max_iter after the loop
    assert os.path.exists(tmp_path / "run" / "model_final.pth")
    # the training curves are drawn at the end, the killed and the resumed part as one run
    assert os.path.exists(tmp_path / "run" / "training_curves.png")
    iterations = [r["iteration"] for r in load_metrics(str(tmp_path / "run" / "metrics.json"))]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 6  # trainer.iter at the end

    # eval-only through tools/train_net's main(): PQ table, per-class JSON + chart
    yaml = _write(cfg, tmp_path / "cfg.yaml")
    res = main(
        _args(
            [
                "--config-file",
                yaml,
                "--eval-only",
                "MODEL.WEIGHTS",
                str(tmp_path / "run" / "model_final.pth"),
                "TEST.PANOPTIC_ERROR_ANALYSIS",
                "True",
                "TEST.PANOPTIC_ERROR_WORST_IMAGES",
                "1",
            ]
        )
    )
    pq = res["panoptic_seg"]
    assert set(pq) >= {"PQ", "SQ", "RQ", "PQ_th", "PQ_st"}
    assert 0.0 <= pq["PQ"] <= 100.0
    out = tmp_path / "run" / "inference" / VAL
    assert (out / "panoptic_per_class.json").exists() and (
        out / "panoptic_per_class_pq.png"
    ).exists()
    errors = json.loads((out / "panoptic_errors.json").read_text())  # the error analysis
    assert errors["images"] == 3 and (out / "panoptic_errors_pq_lost.png").exists()

    # the evaluator options reach the evaluator
    from detr_d2.evaluation import COCOPanopticEvaluatorWithPerClass, FastCOCOPanopticEvaluator

    cfg.TEST.PANOPTIC_EVAL_WORKERS = 0
    evaluator = DetrTrainer.build_evaluator(cfg, VAL)
    assert isinstance(evaluator, FastCOCOPanopticEvaluator) and evaluator._num_workers == 0
    cfg.TEST.PANOPTIC_EVALUATOR = "panopticapi"
    assert isinstance(DetrTrainer.build_evaluator(cfg, VAL), COCOPanopticEvaluatorWithPerClass)


def test_train_net_cli_with_overrides(tiny_data, tmp_path):
    yaml = _write(_cfg(tmp_path / "cli"), tmp_path / "cfg.yaml")
    main(_args(["--config-file", yaml, "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)"]))
    assert os.path.exists(tmp_path / "cli" / "model_final.pth")
    assert os.path.exists(tmp_path / "cli" / "config.yaml")
    assert torch.load(tmp_path / "cli" / "model_final.pth", map_location="cpu")["iteration"] == 1


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_launch_two_cpu_processes_gloo(tiny_data, tmp_path):
    """``--num-gpus 2`` on a CPU-only machine: 2 processes, gloo, DDP without device_ids."""
    yaml = _write(_cfg(tmp_path / "ddp", max_iter=2, period=100), tmp_path / "cfg.yaml")
    script = tmp_path / "run_train_net.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from tests.utils.tiny_training import register_tiny_data
        register_tiny_data({tiny_data!r})  # module level: re-run in each spawned worker
        if __name__ == "__main__":
            sys.path.insert(0, {os.path.join(ROOT, "tools")!r})
            import train_net
            train_net.cli(sys.argv[1:])
    """)
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--config-file",
            yaml,
            "--num-gpus",
            "2",
            "--dist-url",
            f"tcp://127.0.0.1:{_free_port()}",
            "SOLVER.IMS_PER_BATCH",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "world_size=2" in proc.stdout + proc.stderr
        or "Rank of current process: 0. World size: 2" in proc.stdout + proc.stderr
    )
    assert os.path.exists(tmp_path / "ddp" / "model_final.pth")
