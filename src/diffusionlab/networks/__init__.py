"""Networks: they map (x, noise-level input, conditions) to an output and know nothing of diffusion: the image UNet,
the 1-D UNet and DiffWave of signals, the space-time UNet of video clips, the MLP of points, the MLP of table rows,
the noise-aware classifier, and the token transformer of the discrete family."""

from .classifier import NoiseAwareClassifier
from .diffwave import DiffWave
from .embeddings import LabelEmbedding, NoiseLevelEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .spacetime import SpaceTimeUNet
from .tabular import TabularMLP
from .transformer import DiscreteTransformer, apply_rotary, rotary_tables
from .unet import UNet2D
from .unet1d import UNet1D

__all__ = [
    "UNet2D",
    "UNet1D",
    "SpaceTimeUNet",
    "DiffWave",
    "MLP",
    "TabularMLP",
    "DiscreteTransformer",
    "NoiseAwareClassifier",
    "SinusoidalEmbedding",
    "NoiseLevelEmbedding",
    "LabelEmbedding",
    "apply_rotary",
    "rotary_tables",
]
