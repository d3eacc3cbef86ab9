"""COCO-panoptic ground truth for in-process evaluation: the JSON index and cached GT id maps.

Each GT PNG is decoded once (``R + 256 G + 256^2 B``, like panopticapi's ``rgb2id``) and kept in a
process-wide LRU cache in run-length form (~40 kB for a COCO image), keyed by the file's path, size
and modification time, so periodic evaluations during training do not decode it again.
"""

import json
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from detectron2.utils.file_io import PathManager

from ..data.panoptic_io import check_segment_ids, check_unique, join_under, read_panoptic_ids
from .panoptic_quality import RunLengthIdMap, categories_by_id

__all__ = ["GroundTruthCache", "PanopticGroundTruth", "GROUND_TRUTH_CACHE"]

logger = logging.getLogger(__name__)


def _file_key(path: str) -> Tuple[str, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


class GroundTruthCache:
    """LRU cache of decoded GT id maps (:class:`RunLengthIdMap`) bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[Tuple[str, int, int], RunLengthIdMap]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def get(self, path: str) -> RunLengthIdMap:
        """The run-length id map of the panoptic PNG at ``path`` (decoded on a miss)."""
        key = _file_key(path)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item
        item = RunLengthIdMap.from_id_map(read_panoptic_ids(path))
        with self._lock:
            self.misses += 1
            if item.nbytes <= self.max_bytes and key not in self._items:
                self._items[key] = item
                self._bytes += item.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return item


# Shared by all evaluators of the process (1 GiB holds COCO val2017 several times over).
GROUND_TRUTH_CACHE = GroundTruthCache()

_JSON_CACHE: "OrderedDict[Tuple[str, int, int], PanopticGroundTruth]" = OrderedDict()
_JSON_CACHE_SIZE = 4


class PanopticGroundTruth:
    """A COCO panoptic GT JSON + PNG folder, indexed by image id.

    Attributes: ``categories`` (``{dataset category id: category dict}``, JSON order),
    ``annotations`` (JSON order), ``by_image_id``.
    """

    def __init__(self, panoptic_json: str, panoptic_root: str, json_data: Optional[Mapping] = None):
        self.panoptic_json = panoptic_json
        self.panoptic_root = panoptic_root
        if json_data is None:
            with open(panoptic_json, "r") as f:
                json_data = json.load(f)
        for key in ("annotations", "categories"):
            if key not in json_data:
                raise ValueError(f"{panoptic_json}: missing '{key}' (not a COCO panoptic JSON)")
        self.categories = categories_by_id(json_data["categories"])
        self.annotations: List[Dict[str, Any]] = list(json_data["annotations"])
        self.by_image_id: Dict[Any, Dict[str, Any]] = {}
        for i, ann in enumerate(self.annotations):
            for key in ("image_id", "file_name", "segments_info"):
                if key not in ann:
                    raise ValueError(f"{panoptic_json}: annotations[{i}] has no '{key}'")
            if ann["image_id"] in self.by_image_id:
                raise ValueError(
                    f"{panoptic_json}: image_id {ann['image_id']} has several annotations "
                    f"(annotations[{i}] repeats it)"
                )
            check_unique(
                [seg["id"] for seg in ann["segments_info"]],
                lambda j, i=i, ann=ann: (
                    f"{panoptic_json}: annotations[{i}] (image_id {ann['image_id']!r}): "
                    f"segments_info[{j}]"
                ),
                "segment id",
            )
            self.by_image_id[ann["image_id"]] = ann

    @classmethod
    def from_metadata(cls, metadata: Any, dataset_name: str = "") -> "PanopticGroundTruth":
        """Load (or reuse, if the JSON file is unchanged) the GT named by a dataset's metadata."""
        for key in ("panoptic_json", "panoptic_root"):
            if not hasattr(metadata, key):
                raise ValueError(
                    f"dataset {dataset_name!r}: metadata has no '{key}'; panoptic evaluation needs "
                    "'panoptic_json' and 'panoptic_root' (register it with register_coco_panoptic)"
                )
        panoptic_json = PathManager.get_local_path(metadata.panoptic_json)
        panoptic_root = PathManager.get_local_path(metadata.panoptic_root)
        if not os.path.isfile(panoptic_json):
            raise FileNotFoundError(
                f"dataset {dataset_name!r}: panoptic_json not found: {panoptic_json}"
            )
        if not os.path.isdir(panoptic_root):
            raise FileNotFoundError(
                f"dataset {dataset_name!r}: panoptic_root not found: {panoptic_root}"
            )
        key = _file_key(panoptic_json)
        gt = _JSON_CACHE.get(key)
        if gt is None or gt.panoptic_root != panoptic_root:
            gt = cls(panoptic_json, panoptic_root)
            _JSON_CACHE[key] = gt
            while len(_JSON_CACHE) > _JSON_CACHE_SIZE:
                _JSON_CACHE.popitem(last=False)
        return gt

    def png_path(self, annotation: Mapping[str, Any]) -> str:
        """The GT PNG of ``annotation``; a ``file_name`` leaving ``panoptic_root`` is refused."""
        where = f"{self.panoptic_json}: annotation of image_id {annotation['image_id']!r}"
        return join_under(self.panoptic_root, annotation["file_name"], where)

    def unpredicted_images(self, predicted: Iterable[Any], dataset_name: str) -> List[Any]:
        """Image ids of the GT annotations that have no prediction and whose GT PNG is missing:
        images a dataset registered with ``missing="skip"`` leaves out, so the model never saw them.
        They are left out of the evaluation with a warning. A GT image with its PNG but no
        prediction is an error (as in ``pq_compute``), raised here."""
        predicted = set(predicted)
        unpredicted = [a for a in self.annotations if a["image_id"] not in predicted]
        skipped = [a["image_id"] for a in unpredicted if not os.path.isfile(self.png_path(a))]
        if len(skipped) < len(unpredicted):
            missing = [a["image_id"] for a in unpredicted if os.path.isfile(self.png_path(a))]
            raise ValueError(
                f"no prediction for {len(missing)} of the {len(self.annotations)} images of "
                f"{self.panoptic_json} (e.g. image ids {missing[:5]}); pq_compute needs one per "
                f"ground-truth image (dataset {dataset_name!r})"
            )
        if skipped:
            logger.warning(
                f"{len(skipped)} of the {len(self.annotations)} ground-truth images of "
                f"{self.panoptic_json} have no "
                f"panoptic PNG under {self.panoptic_root} (dataset {dataset_name!r} skips "
                "them, e.g. image ids "
                f"{skipped[:5]}): PQ is computed on the other "
                f"{len(self.annotations) - len(skipped)}"
            )
        return skipped

    def id_map(
        self, annotation: Mapping[str, Any], cache: Optional[GroundTruthCache]
    ) -> RunLengthIdMap:
        """Run-length GT id map of one annotation (through ``cache`` unless None); its ids must be
        those of the annotation's ``segments_info`` (an error names the PNG and the ids)."""
        path = self.png_path(annotation)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ground-truth panoptic PNG of image {annotation['image_id']} not found: {path} "
                f"(file_name {annotation['file_name']!r} of {self.panoptic_json})"
            )
        if cache is None:
            item = RunLengthIdMap.from_id_map(read_panoptic_ids(path))
        else:
            item = cache.get(path)
        check_segment_ids(
            item.ids.tolist(),
            annotation["segments_info"],
            path,
            annotation["image_id"],
            self.panoptic_json,
        )
        return item
