"""Training: the accelerate-driven trainer, EMA and checkpoints (floor 5)."""

from .checkpoints import latest_checkpoint, load_training_state, save_checkpoint
from .classifier import noisy_accuracy, train_noise_aware_classifier
from .ema import ema_decay_at, update_ema
from .trainer import Trainer, TrainingData, load_training_data, lr_lambda

__all__ = [
    "Trainer",
    "train_noise_aware_classifier",
    "noisy_accuracy",
    "TrainingData",
    "load_training_data",
    "lr_lambda",
    "save_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "ema_decay_at",
    "update_ema",
]
