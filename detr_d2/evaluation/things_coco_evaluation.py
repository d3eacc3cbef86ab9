"""Box / mask AP of the things of a panoptic dataset with Detectron2's ``COCOEvaluator``.

Detectron2's ``COCOEvaluator`` expects detection metadata: thing contiguous ids 0..T-1 and T names
in ``thing_classes``. A panoptic dataset's *standard* metadata (detr_d2's and Detectron2's
``coco_2017_*_panoptic``) numbers things and stuff together and lists all K names in
``thing_classes``, so ``COCOEvaluator`` fails on it (``assert len(class_names) ==
precisions.shape[2]``, or the contiguous-id assertion when a stuff id precedes a thing id).
:class:`PanopticThingsCOCOEvaluator` gives it the things' view: the thing names in contiguous order
and the predicted classes renumbered 0..T-1.
"""

from typing import Dict, List

import torch
from detectron2.data.catalog import Metadata
from detectron2.evaluation import COCOEvaluator

__all__ = ["PanopticThingsCOCOEvaluator"]


class PanopticThingsCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` (same arguments) for a dataset with standard panoptic metadata and a
    ``json_file`` (COCO instances JSON of the things). Predicted ``instances.pred_classes`` are
    contiguous ids over all classes, as DETR outputs them; predictions of non-thing classes are
    ignored."""

    def __init__(self, dataset_name: str, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        meta = self._metadata
        order = sorted(meta.thing_dataset_id_to_contiguous_id.items(), key=lambda kv: kv[1])
        num_contiguous = max(len(meta.thing_classes), max(c for _, c in order) + 1)
        self._thing_index = torch.full((num_contiguous,), -1, dtype=torch.int64)
        for i, (_, contiguous) in enumerate(order):
            self._thing_index[contiguous] = i
        things = Metadata(name=meta.name)
        things.set(
            thing_classes=[meta.thing_classes[c] for _, c in order],
            thing_dataset_id_to_contiguous_id={
                dataset_id: i for i, (dataset_id, _) in enumerate(order)
            },
        )
        if hasattr(meta, "json_file"):
            things.set(json_file=meta.json_file)
        self._metadata = things

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        mapped = []
        for output in outputs:
            if "instances" in output:
                instances = output["instances"]
                index = self._thing_index.to(instances.pred_classes.device)[instances.pred_classes]
                instances = instances[index >= 0]
                instances.pred_classes = index[index >= 0]
                output = dict(output, instances=instances)
            mapped.append(output)
        super().process(inputs, mapped)
