"""Import the repository's command-line scripts (``tools/*.py``, ``datasets/*.py``) in tests."""

import importlib.util
import os
from types import ModuleType

from tests.utils.paths import ROOT


def load_script(name: str, folder: str = "tools") -> ModuleType:
    """The module ``<folder>/<name>.py`` (a fresh import of a command-line script)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
