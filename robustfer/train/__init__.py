"""The one trainer (see trainer.py) and its configuration."""
from robustfer.train.config import TrainConfig
from robustfer.train.trainer import train

__all__ = ["TrainConfig", "train"]
