from .trainer import DetrTrainer, main, setup

__all__ = ["DetrTrainer", "main", "setup"]
