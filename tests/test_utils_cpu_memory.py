"""``CPU_REUSE_FREED_MEMORY`` (detr_d2/utils/cpu_memory.py): freed tensor memory is reused without
page faults, and the tools apply it from the config (CPU only)."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from detr_d2.utils import cpu_memory
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import ROOT
from tests.utils.scripts import load_script

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A fresh process allocates, fills and frees a 64 MiB tensor 15 times and prints the minor page
# faults of the last 7. The first ones also place the interpreter's and torch's own small objects
# around the block, so the heap may grow once more while it settles: up to the 4th allocation on
# torch 2.14 (measured), the 2nd on torch 2.3. argv[1] == "on": with the setting.
_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from detr_d2.utils.cpu_memory import reuse_freed_cpu_memory
    if sys.argv[1] == "on":
        assert reuse_freed_cpu_memory()
    def once():
        t = torch.empty(16 * 2**20)  # 64 MiB of float32
        t.fill_(1.0)
        del t
    for _ in range(8):
        once()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(7):
        once()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(setting: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, setting],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's (Linux)")
def test_freed_memory_is_reused_without_page_faults():
    pages = 7 * 64 * 2**20 // 4096  # 7 x 16384 pages of 4 KiB
    off, on = _faults("off"), _faults("on")
    assert off > 0.9 * pages  # by default every 64 MiB tensor is a fresh mmap, faulted in again
    assert on < 0.05 * pages  # with the setting its memory stays in the heap: no faults


def test_applied_only_on_the_cpu_and_when_the_key_is_true(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_memory, "_applied", False)
    monkeypatch.setattr(cpu_memory, "reuse_freed_cpu_memory", lambda: calls.append(1) or True)
    cfg = tiny_detr_cfg()
    assert cfg.CPU_REUSE_FREED_MEMORY is True  # the default
    cfg.MODEL.DEVICE = "cuda:0"
    assert cpu_memory.apply_cpu_memory_setting(cfg) is False and not calls
    cfg.MODEL.DEVICE, cfg.CPU_REUSE_FREED_MEMORY = "cpu", False
    assert cpu_memory.apply_cpu_memory_setting(cfg) is False and not calls
    cfg.CPU_REUSE_FREED_MEMORY = True
    assert cpu_memory.apply_cpu_memory_setting(cfg) is True and calls == [1]


def test_train_net_setup_and_the_predictor_apply_it(monkeypatch, tmp_path):
    from detr_d2.engine import setup
    from detr_d2.engine import trainer as trainer_module
    from detr_d2.predictor import DetrPanopticPredictor
    from detr_d2.utils.output_dir import release_output_dir

    seen = []
    record = seen.append
    monkeypatch.setattr(trainer_module, "apply_cpu_memory_setting", record)
    monkeypatch.setattr("detr_d2.predictor.apply_cpu_memory_setting", record)
    cfg = tiny_detr_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    args = load_script("train_net").build_parser().parse_args(["--config-file", str(config)])
    cfg = setup(args)
    release_output_dir(cfg.OUTPUT_DIR)
    DetrPanopticPredictor(cfg)
    assert len(seen) == 2 and all(
        c.CPU_REUSE_FREED_MEMORY and c.MODEL.DEVICE == "cpu" for c in seen
    )
