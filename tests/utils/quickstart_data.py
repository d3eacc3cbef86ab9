"""The quickstart's synthetic training images as dataset dicts, for tests and benchmarks."""

import os
from typing import Dict, List


def quickstart_dicts(cfg, root: str, num_images: int, seed: int) -> List[Dict]:
    """``num_images`` dataset dicts of the quickstart generator (written under ``root``) at the
    training size of ``cfg`` (``INPUT.MAX_SIZE_TRAIN``, at least 32), with the metadata of
    ``cfg.DATASETS.TRAIN[0]``."""
    from detectron2.data import MetadataCatalog

    from detr_d2.data.datasets.quickstart import generate_quickstart_dataset
    from detr_d2.data.datasets.register_panoptic import load_panoptic_json

    size = max(32, cfg.INPUT.MAX_SIZE_TRAIN)
    json_file = generate_quickstart_dataset(root, "train", num_images, image_size=size, seed=seed)
    return load_panoptic_json(
        json_file,
        os.path.join(root, "train"),
        os.path.join(root, "panoptic_train"),
        MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).as_dict(),
    )
