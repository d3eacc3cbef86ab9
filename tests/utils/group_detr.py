"""Group DETR test helpers: grouped configs, batches, random grouped outputs and targets, stage-1
checkpoints."""

import torch
from detectron2.modeling import build_model

from tests.utils.configs import tiny_detr_cfg
from tests.utils.model_inputs import make_input

K, Q = 3, 4


def grouped_cfg(num_groups=K, **detr):
    cfg = tiny_detr_cfg()
    cfg.MODEL.DETR.DROPOUT = 0.0
    cfg.MODEL.DETR.GROUP_DETR.NUM_QUERY_GROUPS = num_groups
    for k, v in detr.items():
        setattr(cfg.MODEL.DETR, k, v)
    return cfg


def train_batch():
    return [
        make_input(64, 80, 3, seed=1),
        make_input(48, 64, 0, seed=2),
        make_input(56, 40, 2, seed=3),
    ]


def rand_boxes(n, g):
    return torch.cat(
        [torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1
    )


def random_outputs_and_targets(seed, num_classes=3, hm=6, wm=7):
    """Outputs of K groups of Q queries (with masks and 2 auxiliary layers) and 3 images' targets: 2
    segments, none, and more segments (Q + 2) than a group has queries."""
    g = torch.Generator().manual_seed(seed)
    b, n = 3, K * Q

    def layer():
        return {
            "pred_logits": torch.randn(b, n, num_classes + 1, generator=g),
            "pred_boxes": rand_boxes(b * n, g).view(b, n, 4),
        }

    outputs = {
        **layer(),
        "pred_masks": torch.randn(b, n, hm, wm, generator=g),
        "aux_outputs": [layer(), layer()],
    }
    targets = []
    for count, (h, w) in zip(
        [2, 0, Q + 2], [(4 * hm, 4 * wm), (4 * hm - 3, 4 * wm), (4 * hm, 4 * wm - 5)]
    ):
        targets.append(
            {
                "labels": torch.randint(0, num_classes, (count,), generator=g),
                "boxes": rand_boxes(count, g),
                "masks": torch.rand(count, h, w, generator=g) > 0.5,
            }
        )
    return outputs, targets


def group_slice(outputs, k):
    sl = slice(k * Q, (k + 1) * Q)
    out = {
        key: outputs[key][:, sl]
        for key in ("pred_logits", "pred_boxes", "pred_masks")
        if key in outputs
    }
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [{key: a[key][:, sl] for key in a} for a in outputs["aux_outputs"]]
    return out


def stage1_checkpoint(path, num_groups):
    """A detection (stage 1, no mask head) checkpoint of a model with ``num_groups`` groups, as
    train_net saves it."""
    stage1 = build_model(grouped_cfg(num_groups=num_groups, MASK_ON=False))
    torch.save({"model": stage1.state_dict()}, path)
    return stage1


def stage2_cfg(path, num_groups):
    return grouped_cfg(num_groups=num_groups, FROZEN_WEIGHTS=str(path), DEEP_SUPERVISION=False)
