"""Merging a config YAML file as data only: the one way detr_d2's tools read ``--config-file``.

Detectron2's ``CfgNode.merge_from_file`` defaults to ``allow_unsafe=True``: when ``yaml.safe_load``
meets a tag it cannot build (``!!python/object/apply:os.system [...]``) it re-reads the file -- and
every ``_BASE_`` it names -- with ``yaml.unsafe_load``, which runs it (fvcore/common/config.py,
``load_yaml_with_base``). :func:`merge_config_file` passes ``allow_unsafe=False`` through the whole
``_BASE_`` chain and turns the refusal into :class:`UnsafeConfigError` naming the file, line and
tag.
"""

from __future__ import annotations

import yaml
from fvcore.common.config import CfgNode

__all__ = ["UnsafeConfigError", "merge_config_file"]


class UnsafeConfigError(ValueError):
    """A config file (or one of its ``_BASE_`` files) uses a YAML tag that builds Python
    objects."""


def merge_config_file(cfg: CfgNode, path: str) -> None:
    """``cfg.merge_from_file(path, allow_unsafe=False)``; a YAML tag that would construct Python
    objects (in ``path`` or any ``_BASE_``) raises :class:`UnsafeConfigError` naming that file."""
    try:
        cfg.merge_from_file(path, allow_unsafe=False)
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        where = f"{mark.name}, line {mark.line + 1}" if mark is not None else path
        via = f" (reached from {path} through _BASE_)" if mark and mark.name != path else ""
        raise UnsafeConfigError(
            f"{where}: refused to load this config{via}: {e.problem}. Config files are data: "
            "YAML tags that build Python objects (!!python/...) are not allowed"
        ) from None
