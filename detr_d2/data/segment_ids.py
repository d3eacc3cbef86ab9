"""Segment ids with meaningful colours, as panopticapi's ``IdGenerator`` makes them (seeded).

A COCO panoptic PNG stores id ``R + 256*G + 256^2*B``. panopticapi's converters give a stuff
segment its category colour and a thing segment its category colour for the first instance in
the image, then random jitters (+-30 per channel) of it for further instances, never reusing a
colour in the image. This class does the same with its own ``numpy`` generator, so output is
reproducible (panopticapi draws from the global ``np.random`` state) and the global RNG is left
alone; colour (0, 0, 0) (void) is never produced.
"""

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from .panoptic_io import rgb2id

__all__ = ["SegmentIdGenerator"]


class SegmentIdGenerator:
    """Per-image generator of unique segment ids ``{category id: category dict}`` -> id.

    Args:
        categories: dataset category id -> dict with ``isthing`` and ``color`` (3 ints).
        seed: seed of the jitter generator (use one generator per image, seeded per image).
    """

    def __init__(self, categories: Mapping[int, Mapping[str, Any]], seed: int = 0):
        self.categories = categories
        self.rng = np.random.default_rng(seed)
        self.taken = {(0, 0, 0)}
        for cat in categories.values():
            if not cat["isthing"]:
                self.taken.add(tuple(int(c) for c in cat["color"]))

    def color(self, category_id: int) -> Tuple[int, int, int]:
        """RGB colour of a new segment of ``category_id`` (stuff: always the category colour)."""
        cat = self.categories[category_id]
        base = tuple(int(c) for c in cat["color"])
        if not cat["isthing"]:
            return base
        if base not in self.taken:
            self.taken.add(base)
            return base
        for _ in range(10000):
            jitter = self.rng.integers(-30, 31, size=3)
            color = tuple(int(c) for c in np.clip(np.asarray(base) + jitter, 0, 255))
            if color not in self.taken:
                self.taken.add(color)
                return color
        raise RuntimeError(f"no free colour left near {base} for category {category_id}")

    def new_id(self, category_id: int) -> int:
        """Id (``R + 256*G + 256^2*B`` of :meth:`color`) of a new segment of ``category_id``."""
        return rgb2id(self.color(category_id))

    @staticmethod
    def by_id(categories: Any) -> Dict[int, Mapping[str, Any]]:
        """Helper: a category list -> ``{id: category}``."""
        return {int(c["id"]): c for c in categories}
