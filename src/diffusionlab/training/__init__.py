"""Training: one loop (the ``Trainer``) around an objective — a diffusion model, an autoencoder or a noise-aware
classifier — plus EMA and checkpoints (floor 5)."""

from .autoencoder import AutoencoderObjective, AutoencoderTrainer, fit_autoencoder_config
from .checkpoints import latest_checkpoint, load_training_state, save_checkpoint
from .classifier import ClassifierObjective, noisy_accuracy, train_noise_aware_classifier
from .data import TrainingData, load_training_data
from .diffusion import DiffusionObjective, fit_diffusion_config
from .ema import ema_decay_at, update_ema
from .objective import Objective
from .trainer import Trainer, lr_lambda, micro_batches

__all__ = [
    "Trainer",
    "AutoencoderTrainer",
    "Objective",
    "DiffusionObjective",
    "AutoencoderObjective",
    "ClassifierObjective",
    "fit_diffusion_config",
    "fit_autoencoder_config",
    "train_noise_aware_classifier",
    "noisy_accuracy",
    "TrainingData",
    "load_training_data",
    "lr_lambda",
    "micro_batches",
    "save_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "ema_decay_at",
    "update_ema",
]
