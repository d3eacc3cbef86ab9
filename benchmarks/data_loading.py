"""The training mapper (``DetrPanopticDatasetMapper``) now against its computations since issue 25
began (``tests.utils.mapper_oracles``), same images, same random augmentation on all sides, passes
alternating (ABCD DCBA ...), outputs checked equal:

* ``before``: before issue 25 (the integrity check sorting every pixel, the targets from a loop over
  the segments with Detectron2's ``BitMasks.get_bounding_boxes``, Detectron2's same-size resize);
* ``loop``: the new check, the old targets and resize;
* ``resize``: the new check and targets, Detectron2's same-size ``ResizeTransform`` (a PIL copy);
* ``now``: with the same-size resize a ``NoOpTransform``.

Datasets: the quickstart's synthetic images (128x128, its config's augmentation) and the two real
COCO sample images at DETR's training sizes (``configs/Base-DETR.yaml``: random flip, resize to a
short side of 480-800, crop with probability 0.5), each image mapped ``--repeats`` times with other
random augmentations.

Example::

    python -m benchmarks.data_loading --images 200 --passes 5
"""

import argparse
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch
from detectron2.data import DatasetCatalog

from benchmarks.training import QUICKSTART_CONFIG
from benchmarks.utils import REPO_ROOT
from detr_d2.config import get_detr_cfg
from detr_d2.data import DetrPanopticDatasetMapper
from tests.utils.evaluation import register_coco_sample
from tests.utils.mapper_oracles import instances_differences, old_mapper_computation
from tests.utils.quickstart_data import quickstart_dicts

BASE_CONFIG = "configs/Base-DETR.yaml"
# side -> which old computations it runs (``old_mapper_computation``'s arguments; none: the mapper)
SIDES = {
    "before": {"check": True, "targets": True, "resize": True},
    "loop": {"check": False, "targets": True, "resize": True},
    "resize": {"check": False, "targets": False, "resize": True},
    "now": {},
}


def _config(config: str):
    return get_detr_cfg(os.path.join(REPO_ROOT, config))


def _datasets(folder: str, num_images: int, repeats: int) -> Dict[str, tuple]:
    """name -> (mapper, dataset dicts)."""
    quickstart_cfg = _config(QUICKSTART_CONFIG)
    quickstart = quickstart_dicts(quickstart_cfg, folder, num_images, seed=0)
    coco = DatasetCatalog.get(register_coco_sample())
    return {
        f"quickstart 128x128, {len(quickstart)} images": (
            DetrPanopticDatasetMapper(quickstart_cfg, is_train=True),
            quickstart,
        ),
        f"COCO sample, 2 images x {repeats}": (
            DetrPanopticDatasetMapper(_config(BASE_CONFIG), is_train=True),
            coco * repeats,
        ),
    }


def _map_all(mapper: Callable, dicts: List[dict], seed: int) -> List[dict]:
    np.random.seed(seed)  # the augmentations' random draws: the same on both sides
    return [mapper(d) for d in dicts]


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and not instances_differences(
        a["instances"], b["instances"]
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=200, help="quickstart images (default 200)")
    p.add_argument("--repeats", type=int, default=10, help="passes over the 2 COCO images")
    p.add_argument("--passes", type=int, default=5, help="timed passes per side (default 5)")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, numpy {np.__version__}, load {os.getloadavg()[0]:.1f}")
    columns = "".join(f"{k + ' ms/img':>15s}" for k in SIDES) + "".join(
        f"{k + '/now':>12s}" for k in SIDES if k != "now"
    )
    print(f"{'dataset':34s}{columns}")
    with tempfile.TemporaryDirectory() as folder:
        for name, (mapper, dicts) in _datasets(folder, args.images, args.repeats).items():
            sides = {
                k: _with_old(mapper, **which) if which else mapper for k, which in SIDES.items()
            }
            outputs = {k: _map_all(f, dicts, 0) for k, f in sides.items()}  # warm-up, the check
            for k in sides:
                if not all(_same(a, b) for a, b in zip(outputs["now"], outputs[k])):
                    raise AssertionError(f"{name}: the mapper's outputs differ from {k!r}")
            times = {k: [] for k in sides}
            for i in range(args.passes):
                for k in list(sides) if i % 2 == 0 else list(sides)[::-1]:
                    t = time.perf_counter()
                    _map_all(sides[k], dicts, i + 1)
                    times[k].append((time.perf_counter() - t) / len(dicts))
            ms = {k: statistics.median(times[k]) * 1e3 for k in sides}
            row = "".join(f"{ms[k]:15.2f}" for k in sides) + "".join(
                f"{ms[k] / ms['now']:12.2f}" for k in sides if k != "now"
            )
            print(f"{name:34s}{row}")
    print(
        "medians over the passes; before = before issue 25, loop = the new check with the old "
        "targets and resize, resize = Detectron2's same-size resize; identical images and targets "
        "on all sides"
    )


def _with_old(mapper: Callable, **which) -> Callable:
    """``mapper`` run with ``old_mapper_computation(**which)`` at each call."""

    def run(d):
        with old_mapper_computation(**which):
            return mapper(d)

    return run


if __name__ == "__main__":
    main()
