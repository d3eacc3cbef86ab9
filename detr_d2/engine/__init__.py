from .trainer import REFUSALS, DetrTrainer, main, setup

__all__ = ["REFUSALS", "DetrTrainer", "main", "setup"]
