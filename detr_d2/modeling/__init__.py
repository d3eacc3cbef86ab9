from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .meta_arch import DetrPanoptic
from .panoptic_inference import panoptic_fusion
from .transformer import Transformer

__all__ = ["DetrPanoptic", "HungarianMatcher", "SetCriterion", "Transformer", "panoptic_fusion"]
