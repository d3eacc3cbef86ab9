"""What ``add_stuff_from_model`` reports: the pixel shares of each output image (annotated things,
model stuff, void) and their summary over the dataset."""

from dataclasses import dataclass, field
from typing import Any, List

import numpy as np

from .detection_to_panoptic import ConversionReport

__all__ = ["ImageCoverage", "StuffFromModelSummary", "summarise"]


@dataclass
class ImageCoverage:
    """Pixel shares of one output image (percent of its pixels)."""

    image_id: Any
    file_name: str
    pixels: int
    things: float  # annotated thing segments
    stuff: float  # the model's (mapped) stuff
    void: float  # everything else:
    void_model_thing: float  # ... of which the model calls a thing that no annotation covers
    void_other: float  # ... of which the model leaves void or gives an unmapped stuff class


@dataclass
class StuffFromModelSummary:
    """What :func:`add_stuff_from_model` wrote, and the pixel shares over all images (percent)."""

    images: int = 0
    segments: int = 0
    things: float = 0.0
    stuff: float = 0.0
    void: float = 0.0
    void_model_thing: float = 0.0
    void_other: float = 0.0
    coverage: List[ImageCoverage] = field(default_factory=list)
    report: ConversionReport = field(default_factory=ConversionReport)

    def text(self, worst: int = 5) -> str:
        lines = [
            f"{self.images} images, {self.segments} segments; pixels: annotated things "
            f"{self.things:.1f}%, "
            f"model stuff {self.stuff:.1f}%, void {self.void:.1f}% (model thing without annotation "
            f"{self.void_model_thing:.1f}%, model void or unmapped stuff {self.void_other:.1f}%)"
        ]
        if self.coverage:
            voids = np.array([c.void for c in self.coverage])
            lines.append(
                f"void per image: min {voids.min():.1f}%, mean {voids.mean():.1f}%, max "
                f"{voids.max():.1f}%"
            )
            for c in sorted(self.coverage, key=lambda c: -c.void)[:worst]:
                lines.append(
                    f"  {c.file_name}: things {c.things:.1f}%, stuff {c.stuff:.1f}%, void "
                    f"{c.void:.1f}% "
                    f"(model thing {c.void_model_thing:.1f}%)"
                )
        if self.report.images_with_overlap or self.report.dropped:
            lines.append("annotations: " + self.report.summary())
        return "\n".join(lines)


def summarise(summary: StuffFromModelSummary) -> None:
    cov = summary.coverage
    total = sum(c.pixels for c in cov) or 1
    summary.images = len(cov)
    summary.segments = summary.report.segments

    def share(key: str) -> float:
        return round(sum(getattr(c, key) * c.pixels for c in cov) / total, 3)

    for key in ("things", "stuff", "void", "void_model_thing", "void_other"):
        setattr(summary, key, share(key))
