"""Networks: they map (x, noise-level input, conditions) to an output and know nothing of diffusion."""

from .classifier import NoiseAwareClassifier
from .embeddings import LabelEmbedding, NoiseLevelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet2D

__all__ = ["UNet2D", "MLP", "NoiseAwareClassifier", "SinusoidalEmbedding", "NoiseLevelEmbedding", "LabelEmbedding"]
