"""Register COCO-panoptic datasets listed in a YAML file, with the checks of
``register_panoptic_dataset``.

The config key ``DATASETS.REGISTER_FILES`` lists such files; :func:`register_datasets_from_config`
registers them before a model is built (``detr_d2.engine.setup`` for ``tools/train_net.py``,
``DetrPanopticPredictor`` for ``tools/demo.py``), so the model and the visualiser see the classes.
``tools/train_net.py --register-dataset NAME IMAGE_ROOT PANOPTIC_ROOT PANOPTIC_JSON`` writes its
datasets into such a file in ``OUTPUT_DIR`` (:func:`add_command_line_datasets`), so the
``config.yaml`` saved with the run registers them again for evaluation and the demo.

File format: a YAML list, one entry per dataset, whose fields are the arguments of
:func:`~detr_d2.data.datasets.register_panoptic_dataset`. Relative paths are relative to the
folder of the YAML file::

    - name: site_train
      image_root: site/images/train          # the images (any extension)
      panoptic_root: site/panoptic/train     # the panoptic PNGs
      panoptic_json: site/panoptic_train.json
      json_file: site/instances_train.json   # optional: COCO instances JSON of the things (box AP)
      missing: error                         # optional: error (default) or skip missing images/PNGs

Registering a name that is already registered with the same files does nothing (a second
``setup`` in one process); with other files it is an error. Errors name the YAML file, the entry
and the field.
"""

import logging
import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog

from ...utils.atomic_io import atomic_write_bytes
from .register_panoptic import register_panoptic_dataset

__all__ = [
    "DatasetEntry",
    "read_dataset_file",
    "register_dataset_file",
    "register_datasets_from_config",
    "write_dataset_file",
    "add_command_line_datasets",
    "COMMAND_LINE_DATASETS_FILE",
]

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("name", "image_root", "panoptic_root", "panoptic_json")
OPTIONAL_FIELDS = ("json_file", "missing")
PATH_FIELDS = ("image_root", "panoptic_root", "panoptic_json", "json_file")
# File written in OUTPUT_DIR by add_command_line_datasets (tools/train_net.py --register-dataset).
COMMAND_LINE_DATASETS_FILE = "registered_datasets.yaml"


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a file: the arguments of ``register_panoptic_dataset`` (paths resolved)."""

    name: str
    image_root: str
    panoptic_root: str
    panoptic_json: str
    json_file: Optional[str] = None
    missing: str = "error"
    where: str = ""  # "<file>: entry <i> (<name>)", for error messages

    def as_yaml(self) -> dict:
        out = {f: getattr(self, f) for f in REQUIRED_FIELDS}
        if self.json_file:
            out["json_file"] = self.json_file
        if self.missing != "error":
            out["missing"] = self.missing
        return out


def _parse_entry(raw: Any, where: str, base: str) -> DatasetEntry:
    """Check one entry (``where`` names it in errors); relative paths are joined to ``base``."""
    if not isinstance(raw, dict):
        raise ValueError(
            f"{where}: expected a mapping with fields {list(REQUIRED_FIELDS)}, got "
            f"{type(raw).__name__} {raw!r:.80}"
        )
    if isinstance(raw.get("name"), str):
        where += f" ({raw['name']})"
    unknown = sorted(str(k) for k in raw if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown}; the fields are {list(REQUIRED_FIELDS)} "
            "and optionally "
            f"{list(OPTIONAL_FIELDS)}"
        )
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing} (needs {list(REQUIRED_FIELDS)})")
    values = {}
    for field in REQUIRED_FIELDS + OPTIONAL_FIELDS:
        value = raw.get(field)
        if value is None and field in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field '{field}' must be a non-empty string, got {value!r}")
        values[field] = (
            os.path.normpath(os.path.join(base, value)) if field in PATH_FIELDS else value
        )
    if values.get("missing", "error") not in ("error", "skip"):
        raise ValueError(
            f"{where}: field 'missing' must be 'error' or 'skip', got {values['missing']!r}"
        )
    return DatasetEntry(where=where, **values)


def read_dataset_file(path: str) -> List[DatasetEntry]:
    """Parse and check a dataset YAML file (format in the module docstring); nothing is registered.

    Relative paths in it are resolved against the file's folder. Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file, the entry and the field.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot be parsed as YAML: {e}") from e
    if not isinstance(data, list) or not data:
        raise ValueError(
            f"{path}: expected a non-empty YAML list of datasets (each with "
            f"{list(REQUIRED_FIELDS)}), "
            f"got {data!r:.80}"
        )
    base = os.path.dirname(os.path.abspath(path))
    entries = [_parse_entry(raw, f"{path}: entry {i}", base) for i, raw in enumerate(data)]
    seen = {}
    for e in entries:
        if e.name in seen:
            raise ValueError(f"{e.where}: name {e.name!r} is also used by {seen[e.name]}")
        seen[e.name] = e.where
    return entries


def _same_registration(meta: Any, entry: DatasetEntry) -> bool:
    def same(a: Optional[str], b: Optional[str]) -> bool:
        return (a is None and b is None) or (
            a is not None and b is not None and os.path.abspath(a) == os.path.abspath(b)
        )

    return (
        same(getattr(meta, "image_root", None), entry.image_root)
        and same(getattr(meta, "panoptic_root", None), entry.panoptic_root)
        and same(getattr(meta, "panoptic_json", None), entry.panoptic_json)
        and same(getattr(meta, "json_file", None), entry.json_file)
    )


def _register(entry: DatasetEntry) -> bool:
    """Register one entry; False when the same dataset is already registered."""
    if entry.name in DatasetCatalog.list():
        meta = MetadataCatalog.get(entry.name)
        if _same_registration(meta, entry):
            return False
        raise ValueError(
            f"{entry.where}: dataset {entry.name!r} is already registered with other files "
            f"(panoptic_json {getattr(meta, 'panoptic_json', None)!r}, image_root "
            f"{getattr(meta, 'image_root', None)!r}); pick another name"
        )
    try:
        register_panoptic_dataset(
            entry.name,
            entry.image_root,
            entry.panoptic_root,
            entry.panoptic_json,
            json_file=entry.json_file,
            missing=entry.missing,
        )
    except (ValueError, OSError) as e:
        raise type(e)(f"{entry.where}: {e}") from e
    return True


def register_dataset_file(path: str) -> List[str]:
    """Register every dataset of the YAML file ``path``; returns their names (in file order).

    All or nothing: when an entry fails, the datasets this call registered are removed again.
    """
    entries = read_dataset_file(path)
    new: List[str] = []
    try:
        for e in entries:
            if _register(e):
                new.append(e.name)
    except BaseException:
        for name in new:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        raise
    if new:
        logger.info("Registered dataset(s) %s from %s", new, path)
    return [e.name for e in entries]


def register_datasets_from_config(cfg: Any) -> List[str]:
    """Register the datasets of the files in ``cfg.DATASETS.REGISTER_FILES`` (paths relative to the
    working directory); returns all their names. Call before building the model."""
    files = cfg.DATASETS.get("REGISTER_FILES", ()) or ()
    if isinstance(files, str):
        raise ValueError(
            f"DATASETS.REGISTER_FILES must be a list of YAML files, got the string {files!r}; "
            f"write it as ('{files}',) on the command line or [{files}] in a config file"
        )
    names: List[str] = []
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"DATASETS.REGISTER_FILES: dataset file not found: {path}")
        names += register_dataset_file(path)
    return names


def write_dataset_file(path: str, entries: Sequence[DatasetEntry]) -> None:
    """Write ``entries`` as a dataset YAML file (atomically), with absolute paths."""
    rows = []
    for e in entries:
        row = e.as_yaml()
        for field in PATH_FIELDS:
            if row.get(field):
                row[field] = os.path.abspath(row[field])
        rows.append(row)
    text = "# written by detr_d2 (tools/train_net.py --register-dataset); format: see\n"
    text += "# detr_d2/data/datasets/register_from_file.py\n"
    text += yaml.safe_dump(rows, sort_keys=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def add_command_line_datasets(cfg: Any, datasets: Sequence[Sequence[str]]) -> Optional[str]:
    """``--register-dataset NAME IMAGE_ROOT PANOPTIC_ROOT PANOPTIC_JSON`` (each a 4-tuple; paths
    relative to the working directory): check them, write them to
    ``OUTPUT_DIR/registered_datasets.yaml`` and append that file to ``cfg.DATASETS.REGISTER_FILES``
    (``cfg`` must not be frozen). Returns the file, or None when ``datasets`` is empty. The run's
    saved ``config.yaml`` then registers them again."""
    if not datasets:
        return None
    entries = []
    for i, values in enumerate(datasets):
        where = f"--register-dataset #{i + 1}"
        if len(values) != len(REQUIRED_FIELDS):
            raise ValueError(
                f"{where}: expected {' '.join(f.upper() for f in REQUIRED_FIELDS)}, got "
                f"{list(values)}"
            )
        entries.append(_parse_entry(dict(zip(REQUIRED_FIELDS, values)), where, os.getcwd()))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"--register-dataset: the same name is given twice: {names}")
    path = os.path.abspath(os.path.join(cfg.OUTPUT_DIR, COMMAND_LINE_DATASETS_FILE))
    write_dataset_file(path, entries)
    files = [f for f in cfg.DATASETS.REGISTER_FILES if os.path.abspath(f) != path]
    cfg.DATASETS.REGISTER_FILES = tuple(files) + (path,)
    return path
