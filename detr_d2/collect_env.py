"""Print the environment detr_d2 runs in: ``python -m detr_d2.collect_env``.

Detectron2's own table (Python, torch, CUDA, compiler, compiled ops ...) followed by detr_d2's
additions: package versions, whether Detectron2's compiled ops and the registrations work.
"""

import importlib
import sys


def _version(mod: str) -> str:
    try:
        m = importlib.import_module(mod)
        return getattr(m, "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        return f"not available ({type(e).__name__}: {e})"


def collect_env_info() -> str:
    from detectron2.utils.collect_env import collect_env_info as d2_info
    from tabulate import tabulate

    rows = [("detr_d2", _version("detr_d2"))]
    for mod in ("fvcore", "pycocotools", "panopticapi", "scipy", "cv2", "numpy", "PIL"):
        rows.append((mod, _version(mod)))
    try:
        from detectron2 import _C  # noqa: F401

        ops = "yes"
        try:
            import torch
            from detectron2.layers import nms_rotated

            nms_rotated(torch.zeros((0, 5)), torch.zeros(0), 0.5)
        except Exception as e:  # noqa: BLE001
            ops = f"_C imports, nms_rotated fails: {e}"
    except Exception as e:  # noqa: BLE001
        ops = f"no ({e})"
    rows.append(("detectron2 compiled ops", ops))
    try:
        from detectron2.data import DatasetCatalog
        from detectron2.modeling import META_ARCH_REGISTRY

        import detr_d2  # noqa: F401

        rows.append(
            ("META_ARCH DetrPanoptic registered", str("DetrPanoptic" in META_ARCH_REGISTRY))
        )
        rows.append(
            (
                "quickstart datasets registered",
                str("detr_quickstart_train" in DatasetCatalog.list()),
            )
        )
    except Exception as e:  # noqa: BLE001
        rows.append(("detr_d2 registrations", f"failed: {e}"))
    import torch

    rows.append(("CUDA available", str(torch.cuda.is_available())))
    return d2_info() + "\n" + tabulate(rows)


def main() -> None:
    print(collect_env_info())


if __name__ == "__main__":
    sys.exit(main())
