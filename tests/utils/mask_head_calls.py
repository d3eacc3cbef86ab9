"""Counting the queries the mask head runs on, in the tests of ``query_masks`` and Group DETR."""

import torch


class MaskHeadCalls:
    """Counts the queries (rows) the FPN mask head runs on, per image: one entry per call of the
    per-image head (``forward``), one per image with rows in a call of the all-images head
    (``forward_rows``, training)."""

    def __init__(self, model):
        self.rows = []
        head = self.head = model.mask_head
        self.handle = head.register_forward_hook(lambda m, i, o: self.rows.append(o.shape[0]))
        forward_rows = head.forward_rows

        def counted(bbox_mask, fpns, projected, image_index):
            self.rows.extend(int(n) for n in torch.bincount(image_index) if n > 0)
            return forward_rows(bbox_mask, fpns, projected, image_index)

        head.forward_rows = counted

    def close(self):
        self.handle.remove()
        del self.head.forward_rows
