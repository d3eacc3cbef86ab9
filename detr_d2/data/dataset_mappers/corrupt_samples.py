"""Skip-and-count policy for corrupt training samples (``DATALOADER.SKIP_CORRUPT_SAMPLES``).

A mapper that may skip samples holds one :class:`CorruptSampleCounter`. Each data-loader process has
its own copy of the mapper (Detectron2 forks or pickles it into every worker), so counts are per
process: the samples this process read and the ones it skipped. A corrupt file counts each time it
is drawn. Training stops (an error naming the last file) once a process has skipped more than
``max_fraction * max(reads, MIN_READS)`` samples: up to ``max_fraction * 1000`` corrupt samples are
tolerated at the start, then ``max_fraction`` of everything read.
"""

import logging
from typing import Hashable, Optional, Set

import torch

__all__ = ["CorruptSampleCounter", "TooManyCorruptSamplesError"]

logger = logging.getLogger(__name__)


class TooManyCorruptSamplesError(RuntimeError):
    """More corrupt samples than ``DATALOADER.MAX_CORRUPT_FRACTION`` allows."""


def _process_name() -> str:
    info = torch.utils.data.get_worker_info()
    return "the main data-loading process" if info is None else f"data-loader worker {info.id}"


class CorruptSampleCounter:
    """Counts the samples one process read and the corrupt ones it skipped (see the module
    docstring).

    Call :meth:`read` for every sample, :meth:`skip` for each corrupt one (it logs a warning naming
    the sample, puts ``data/corrupt_samples`` into the current ``EventStorage`` when the mapper runs
    in the training process, and raises :class:`TooManyCorruptSamplesError` past the limit).
    """

    MIN_READS = 1000

    def __init__(self, max_fraction: float, dataset_size: Optional[int] = None):
        if not 0.0 <= max_fraction < 1.0:
            raise ValueError(
                f"DATALOADER.MAX_CORRUPT_FRACTION must be in [0, 1), got {max_fraction}"
            )
        self.max_fraction = float(max_fraction)
        # Samples of the dataset: when every one of them is corrupt, Detectron2's MapDataset
        # has nothing left to draw ("ValueError: Sample larger than population"); we stop first.
        self.dataset_size = dataset_size
        self.reads = 0
        self.corrupt = 0
        self._corrupt_keys: Set[Hashable] = set()

    def read(self) -> None:
        self.reads += 1

    def skip(self, error: BaseException, key: Hashable = None) -> None:
        """Count one corrupt sample (``error`` names its file, ``key`` identifies the sample);
        raise past the limit, or when all ``dataset_size`` samples have been found corrupt."""
        self.corrupt += 1
        if key is not None:
            self._corrupt_keys.add(key)
        if self.dataset_size is not None and len(self._corrupt_keys) >= self.dataset_size:
            raise TooManyCorruptSamplesError(
                f"all {self.dataset_size} training samples are corrupt (found by "
                f"{_process_name()}); nothing is left to train on. Last one: {error}"
            ) from error
        allowed = self.max_fraction * max(self.reads, self.MIN_READS)
        counts = f"{self.corrupt} corrupt of {self.reads} samples read by {_process_name()}"
        if self.corrupt > allowed:
            raise TooManyCorruptSamplesError(
                f"too many corrupt training samples: {counts}, more than "
                "DATALOADER.MAX_CORRUPT_FRACTION "
                f"{self.max_fraction} x max({self.reads}, {self.MIN_READS}); last one: {error}"
            ) from error
        logger.warning(f"skipped a corrupt training sample ({counts}): {error}")
        if torch.utils.data.get_worker_info() is None:
            from detectron2.utils.events import get_event_storage

            try:
                get_event_storage().put_scalar(
                    "data/corrupt_samples", self.corrupt, smoothing_hint=False
                )
            except AssertionError:  # no EventStorage: not inside a training loop
                pass
