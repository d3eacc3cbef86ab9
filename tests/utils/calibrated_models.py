"""Random DETR models whose panoptic output is diverse and decisive (chosen classes, distinct
masks), for comparisons of two computations of the same model: uncalibrated random masks nearly tie
everywhere and a comparison would only compare float rounding. Used by the export parity tests and
the speed-equivalence tests; the calibration is the one test_checkpoint_faithfulness.py uses."""

import os

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

import detr_d2
from detr_d2.data.transforms import build_detr_test_augmentation
from tests.utils.configs import tiny_detr_cfg
from tests.utils.paths import COCO_SAMPLE, ROOT

SAMPLE_IMAGE = os.path.join(COCO_SAMPLE, "input_images", "000000142238.jpg")  # 427x640


def r50_export_cfg():
    cfg = get_cfg()
    detr_d2.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-DETR.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    d = cfg.MODEL.DETR
    d.CLASS_SLOTS, d.NUM_CLASSES = "dataset_id", 250
    d.ENC_LAYERS, d.DEC_LAYERS, d.DIM_FEEDFORWARD, d.NUM_OBJECT_QUERIES = 2, 2, 512, 20
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ("coco_2017_val_panoptic",)
    return cfg


def tiny_export_cfg():
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TEST = ("detr_quickstart_val",)
    return cfg


def sample_images(cfg, short_sides):
    """The COCO sample image (INPUT.FORMAT) resized by the test resize to each short side: (3, h, w)
    uint8."""
    image = read_image(SAMPLE_IMAGE, format=cfg.INPUT.FORMAT)
    out = []
    for side in short_sides:
        c = cfg.clone()
        c.INPUT.MIN_SIZE_TEST = side
        aug_input = T.AugInput(image.copy())
        T.AugmentationList(build_detr_test_augmentation(c))(aug_input)
        out.append(torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1))))
    return out, image.shape[:2]


def ridge_solve(design, targets, ridge):
    """(C+1, T) solution of the ridge least squares ``design @ X ~ targets`` (float64 in, float32
    out)."""
    gram = design.T @ design + ridge * torch.eye(design.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, design.T @ targets.double()).float()


def calibrate_(model, images, plans, ridge=1e-3):
    """Choose head weights (the architecture is left alone) so the random model's panoptic output is
    diverse and decisive, as test_checkpoint_faithfulness.py does: on image i query q predicts class
    slot ``plans[i][q]`` (logit 10) and the other queries no-object (``class_embed`` by ridge least
    squares on the images' decoder outputs); query q attends to its own position of image 0's
    encoder memory (``bbox_attention.q_linear``); the mask head's attention-map input is amplified
    and its image-feature inputs damped, so each query's attention decides its mask."""
    rows = []
    with torch.no_grad():
        for img in images:
            x = ((img.float() - model.pixel_mean) / model.pixel_std)[None]
            state = model.forward_detector(x, torch.zeros((1, *x.shape[-2:]), dtype=torch.bool))[1]
            rows.append(torch.cat([state["hs"][0], torch.ones(model.num_queries, 1)], 1))
            if len(rows) == 1:
                memory = state["memory"]
        design = torch.cat(rows).double()
        num_queries, no_object = model.num_queries, model.class_embed.out_features - 1
        targets = torch.zeros(len(design), no_object + 1)
        for i, plan in enumerate(plans):
            slots = list(plan) + [no_object] * (num_queries - len(plan))
            targets[torch.arange(num_queries) + i * num_queries, slots] = 10.0
        solution = ridge_solve(design, targets, ridge)
        model.class_embed.weight.copy_(solution[:-1].T)
        model.class_embed.bias.copy_(solution[-1])

        att = model.bbox_attention
        keys = torch.nn.functional.conv2d(
            memory, att.k_linear.weight[:, :, None, None], att.k_linear.bias
        )
        keys = keys[0].flatten(1)
        keys = keys - keys.mean(1, keepdim=True)
        positions = torch.linspace(0, keys.shape[1] - 1, num_queries).round().long()
        wanted = 40.0 * (keys[:, positions] / keys[:, positions].norm(dim=0, keepdim=True)).T
        solution = ridge_solve(design, wanted.repeat(len(images), 1), ridge)
        att.q_linear.weight.copy_(solution[:-1].T)
        att.q_linear.bias.copy_(solution[-1])

        head, hidden = model.mask_head, model.transformer.d_model
        head.lay1.weight[:, :hidden] *= 1e-3
        head.lay1.weight[:, hidden:] *= 300.0
        for adapter in (head.adapter1, head.adapter2, head.adapter3):
            adapter.weight *= 1e-3
