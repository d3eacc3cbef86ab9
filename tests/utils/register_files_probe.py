"""Run in a fresh process by ``tests/test_data_register_files_everywhere.py``: build one thing from
a config whose dataset is only named in ``DATASETS.REGISTER_FILES`` (nothing registered by hand)
and print what it saw as one JSON line.

Usage: ``python -m tests.utils.register_files_probe WHAT DATASETS_YAML DATASET_NAME``.
"""

import json
import sys


def main(what: str, datasets_yaml: str, name: str) -> dict:
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    import detr_d2
    from tests.utils.configs import tiny_detr_cfg

    cfg = tiny_detr_cfg(num_classes=0)  # 0: derive it from the dataset's metadata
    cfg.MODEL.DETR.ALL_THINGS_WITHOUT_METADATA = False
    cfg.DATASETS.REGISTER_FILES = (datasets_yaml,) if datasets_yaml != "-" else ()
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 160
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 160
    cfg.INPUT.CROP.ENABLED = False
    out = {}
    try:
        for _ in range(2):  # idempotent: a second build registers nothing new, fails nothing
            if what == "model":
                model = build_model(cfg)
                out["is_thing"] = model.is_thing.tolist()
            elif what == "predictor":
                predictor = DefaultPredictor(cfg)
                out["is_thing"] = predictor.model.is_thing.tolist()
                image = torch.zeros((96, 128, 3), dtype=torch.uint8).numpy()
                out["outputs"] = sorted(predictor(image))
            elif what == "train_loader":
                batch = next(iter(detr_d2.build_detr_train_loader(cfg)))
                out["instances"] = [len(x["instances"]) for x in batch]
            elif what == "test_loader":
                batch = next(iter(detr_d2.build_detr_test_loader(cfg, name)))
                out["file_names"] = [x["file_name"].rsplit("/", 1)[-1] for x in batch]
            elif what == "evaluator":
                evaluator = detr_d2.build_detr_evaluator(cfg, name)
                evaluator.reset()
                out["evaluator"] = type(evaluator).__name__
            elif what == "visualize_data":  # the line docs/detectron2_tools.md adds to setup()
                detr_d2.register_datasets_from_config(cfg)
                from detectron2.data import DatasetCatalog

                out["dicts"] = len(DatasetCatalog.get(name))
            else:
                raise ValueError(what)
        meta = MetadataCatalog.get(name)
        if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
            is_thing = [False] * len(meta.stuff_classes)
            for c in meta.thing_dataset_id_to_contiguous_id.values():
                is_thing[c] = True
            out["metadata_is_thing"] = is_thing
    except ValueError as e:
        out["error"] = str(e)
    return out


if __name__ == "__main__":
    print("PROBE " + json.dumps(main(*sys.argv[1:4])))
