"""The panoptic fusion once per language (issue 20 item 1): the torch fusion (eager, and the same
function under ``torch.jit.script``) and its numpy twin (``detr_d2/export/onnx_postprocess.py``)
give identical id maps and segments on the same inputs, and equal the eager fusion as it was before
they were made one (``tests/utils/legacy_fusion.py``, the oracle).

Inputs: random outputs (query counts, mask grids, output sizes above and below the input size,
padding crop on/off, duplicated stuff classes, exact mask ties, near-flat masks, removal of small
segments, a slot -> class table with unused slots) and outputs built from the real COCO panoptic
annotations in ``tests/data/coco_panoptic_sample`` (each segment a query of its real category with
its real shape as mask, at the test resize's 800-pixel input and the original output size, COCO's
133 classes in the official 250 slots).
"""

import numpy as np
import pytest
import torch

from detr_d2.export import onnx_postprocess
from detr_d2.modeling import fusion
from detr_d2.modeling.panoptic_inference import panoptic_fusion, panoptic_queries
from tests.utils import legacy_fusion
from tests.utils.fusion_inputs import coco_sample_fusion_inputs

SCRIPTED = torch.jit.script(fusion.fuse_panoptic)


def _segments(result):
    return fusion.segments_info_from_tensors({k: torch.as_tensor(v) for k, v in result.items()})


def _check_all_equal(logits, masks, image_size, output_size, is_thing, label_map, **kw):
    """Run the old fusion, the eager one, the scripted one and the numpy twin; all must agree.
    Returns the number of segments."""
    kw = {"threshold": 0.85, "min_area": 4, "crop_padding": True, **kw}
    ref_ids, ref_segs = legacy_fusion.panoptic_fusion(
        logits, masks, image_size, output_size, is_thing, label_map=label_map, **kw
    )
    ids, segs = panoptic_fusion(
        logits, masks, image_size, output_size, is_thing, label_map=label_map, **kw
    )
    assert torch.equal(ids, ref_ids) and segs == ref_segs

    kept = panoptic_queries(logits, kw["threshold"], label_map)
    table = label_map if label_map is not None else torch.arange(logits.shape[-1] - 1)
    args = (*image_size, *output_size)
    settings = (kw["min_area"], 4, kw["crop_padding"])
    scripted = SCRIPTED(logits, masks[kept], kept, *args, is_thing, table, *settings)
    assert torch.equal(scripted["panoptic_seg"], ids) and _segments(scripted) == segs

    twin = onnx_postprocess.fuse_panoptic(
        logits.numpy(), masks[kept].numpy(), kept.numpy(), *args, is_thing.numpy(), table.numpy(),
        *settings,
    )  # fmt: skip
    assert twin["panoptic_seg"].dtype == np.int32
    assert np.array_equal(twin["panoptic_seg"], ids.numpy())
    twin_segs = _segments(twin)
    # scores: numpy's softmax rounds exp once from float64, PyTorch's float32 exp may be 1 ulp off
    assert [{**s, "score": 0} for s in twin_segs] == [{**s, "score": 0} for s in segs]
    assert np.allclose([s["score"] for s in twin_segs], [s["score"] for s in segs], 0, 1e-6)
    return len(segs)


def test_torch_and_numpy_fusions_equal_the_old_one_on_random_outputs():
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    num_slots = 40
    # slots 0..29 are classes (0..19 things, 20..29 stuff, few: duplicates), 30..39 unused
    label_map = torch.tensor([s if s < 30 else -1 for s in range(num_slots)])
    is_thing = torch.arange(30) < 20
    found = {"segments": 0, "none kept": 0, "all removed": 0, "merged": 0, "removed": 0}
    for case in range(60):
        q = int(rng.integers(1, 25))
        hm, wm = (int(v) for v in rng.integers(2, 30, 2))
        crop = bool(case % 2)
        pad = (int(rng.integers(0, 12)), int(rng.integers(0, 12))) if crop else (0, 0)
        h, w = 4 * (hm - pad[0] // 4) - pad[0] % 4, 4 * (wm - pad[1] // 4) - pad[1] % 4
        h, w = max(h, 1), max(w, 1)
        oh, ow = (int(v) for v in rng.integers(1, 2 * max(h, w), 2))
        logits = torch.randn(q, num_slots + 1, generator=g)
        logits[:, num_slots] += 10
        for j in rng.choice(q, int(rng.integers(0, q + 1)), replace=False):
            logits[j, num_slots] -= 10
            logits[j, int(rng.choice([1, 5, 7, 20, 21, 22, 33]))] += 10
        masks = torch.randn(q, hm, wm, generator=g) * float(rng.choice([0.01, 1.0, 5.0]))
        if case % 3 == 0 and q > 1:
            masks[int(rng.integers(q))] = masks[int(rng.integers(q))]  # identical masks: exact ties
        min_area = int(rng.choice([0, 4, 30, 10**6]))
        use_map = label_map if case % 4 else None
        thing = is_thing if use_map is not None else torch.arange(num_slots) < 20
        n = _check_all_equal(
            logits, masks, (h, w), (oh, ow), thing, use_map, min_area=min_area, crop_padding=crop
        )
        kept = len(panoptic_queries(logits, 0.85, use_map))
        found["segments"] += n > 0
        found["none kept"] += kept == 0
        found["all removed"] += n == 0 and kept > 0
        found["removed"] += 0 < n < kept
        classes = logits[:, :num_slots].argmax(1)[panoptic_queries(logits, 0.85, use_map)]
        found["merged"] += len(classes) > len(set(classes.tolist())) and n > 0
    assert found["segments"] >= 25 and found["none kept"] >= 2 and found["all removed"] >= 2, found
    assert found["removed"] >= 10 and found["merged"] >= 10, found


@pytest.mark.parametrize("index", [0, 1])
def test_torch_and_numpy_fusions_equal_the_old_one_on_the_coco_sample(index):
    logits, masks, image_size, orig, is_thing, label_map = coco_sample_fusion_inputs(index)
    for min_area in (4, 2000):  # 2000: small real segments are removed, the argmax redone
        n = _check_all_equal(
            logits, masks, image_size, orig, is_thing, label_map, min_area=min_area
        )
        assert n >= 3
