"""Paths of the checkout used by the tests and benchmarks."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COCO_SAMPLE = os.path.join(ROOT, "tests", "data", "coco_panoptic_sample")
# the name conftest's ``sample_cfg`` fixture registers the COCO sample under
SAMPLE_DATASET = "_detr_test_coco_sample_demo"
