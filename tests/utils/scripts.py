"""Import the repository's command-line scripts (``tools/*.py``, ``datasets/*.py``) in tests."""

import importlib.util
import os
from types import ModuleType
from typing import List

from tests.utils.paths import COCO_SAMPLE_CATEGORIES_JSON, COCO_SAMPLE_DETECTION_JSON, ROOT


def load_script(name: str, folder: str = "tools") -> ModuleType:
    """The module ``<folder>/<name>.py`` (a fresh import of a command-line script)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def detection_to_panoptic_argv(
    output_json: str, output_root: str, detection_json: str = COCO_SAMPLE_DETECTION_JSON
) -> List[str]:
    """Arguments of ``tools/convert_detection_to_panoptic.py``: ``detection_json`` (default: the
    COCO sample) with the sample's categories, written to ``output_json`` / ``output_root``."""
    return [
        "--detection-json",
        str(detection_json),
        "--categories-json",
        COCO_SAMPLE_CATEGORIES_JSON,
        "--output-json",
        str(output_json),
        "--output-root",
        str(output_root),
    ]
