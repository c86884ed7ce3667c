"""Networks: they map (x, noise-level input, labels) to an output of x's shape and know nothing of diffusion."""

from .embeddings import LabelEmbedding, NoiseLevelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .unet import UNet2D

__all__ = ["UNet2D", "MLP", "SinusoidalEmbedding", "NoiseLevelEmbedding", "LabelEmbedding"]
