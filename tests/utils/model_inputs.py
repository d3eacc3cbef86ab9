"""Model inputs for tests: Detectron2 dataset dicts with random images and box-shaped instances."""

import torch
from detectron2.structures import BitMasks, Instances


def make_input(h, w, n, num_classes=5, seed=0, crowd=None):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
    inst = Instances((h, w))
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for k in range(n):
        y0, x0 = (
            int(torch.randint(0, max(1, h // 2), (1,), generator=g)),
            int(torch.randint(0, max(1, w // 2), (1,), generator=g)),
        )
        masks[k, y0 : y0 + max(1, h // 3), x0 : x0 + max(1, w // 3)] = True
    inst.gt_masks = BitMasks(masks)
    inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
    inst.gt_classes = torch.arange(n) % num_classes
    inst.gt_is_crowd = torch.zeros(n, dtype=torch.bool) if crowd is None else torch.tensor(crowd)
    return {"image": img, "instances": inst, "height": h, "width": w}
