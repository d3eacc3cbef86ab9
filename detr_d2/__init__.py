"""detr_d2: DETR with a panoptic mask head as a Detectron2 extension.

Importing the package registers the meta-architecture, the datasets and the evaluators with
Detectron2's registries/catalogs.
"""

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "detr_d2 requires Detectron2, which is not installed (" + str(e) + "). "
        "Install it from source (pip install 'git+https://github.com/facebookresearch/detectron2.git') "  # noqa: E501
        "or, on the verified stack (Python 3.10 + torch 2.3.1), run scripts/setup.sh which "
        "installs "
        "sal-detectron2==0.7.2 from requirements-lock.txt."
    ) from e

from . import data, evaluation, modeling  # noqa: E402,F401
from .config import add_detr_config  # noqa: E402
from .config_rules import validate_detr_config  # noqa: E402
from .data.build import (  # noqa: E402
    build_detr_mapper,
    build_detr_test_loader,
    build_detr_train_loader,
)
from .data.datasets.register_from_file import register_datasets_from_config  # noqa: E402
from .engine import DetrTrainer  # noqa: E402
from .engine.optimizer import build_detr_optimizer  # noqa: E402
from .evaluation.build import build_detr_evaluator  # noqa: E402

__all__ = [
    "add_detr_config",
    "validate_detr_config",
    "DetrTrainer",
    "build_detr_train_loader",
    "build_detr_mapper",
    "build_detr_test_loader",
    "build_detr_optimizer",
    "build_detr_evaluator",
    "register_datasets_from_config",
]
__version__ = "0.1.0"
