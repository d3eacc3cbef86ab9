"""Paths of the checkout used by the tests and benchmarks."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COCO_SAMPLE = os.path.join(ROOT, "tests", "data", "coco_panoptic_sample")
# the name conftest's ``sample_cfg`` fixture registers the COCO sample under
SAMPLE_DATASET = "_detr_test_coco_sample_demo"
# the COCO sample's segments in COCO detection format and its categories (the inputs of
# tools/convert_detection_to_panoptic.py; the panoptic ground truth it must reproduce)
COCO_SAMPLE_DETECTION_JSON = os.path.join(COCO_SAMPLE, "panoptic_coco_detection_format.json")
COCO_SAMPLE_CATEGORIES_JSON = os.path.join(COCO_SAMPLE, "panoptic_coco_categories.json")
