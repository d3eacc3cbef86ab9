from .checkpointer import AtomicDetectionCheckpointer
from .trainer import DetrTrainer, main, setup

__all__ = ["AtomicDetectionCheckpointer", "DetrTrainer", "main", "setup"]
