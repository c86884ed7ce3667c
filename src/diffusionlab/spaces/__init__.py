"""Model spaces: what one sample is and how data enters and leaves the network's space (floor 4).

One class per kind of sample. A space knows the sample shape, encodes data into the model's space and decodes
samples back, says whether x0 may be clipped to a data range, writes a batch of samples for people to look at,
and fits a config to its training data before training (a pure step). Adding a data kind means adding one
class here (plus its data loader and network) and one entry in ``SPACES``; see docs/architecture.md.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import ModelConfig, NetworkConfig
from ..data import DataError, condition_channels, make_image_condition
from ..images import save_grid, save_scatter
from ..networks import MLP, UNet2D
from ..networks.autoencoder import Autoencoder, latent_scaling_factor
from ..networks.size import affine_parameters, build_within_limit

__all__ = [
    "ModelSpace",
    "PixelImageSpace",
    "LatentImageSpace",
    "PointSpace",
    "SPACES",
    "NETWORKS",
    "build_network",
    "network_parameters",
    "make_space",
    "space_for_data",
]


def _unet(cfg: NetworkConfig) -> nn.Module:
    return UNet2D(
        in_channels=cfg.in_channels,
        base_channels=cfg.base_channels,
        channel_mults=tuple(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=tuple(cfg.attention_levels),
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        num_classes=cfg.num_classes,
        text_dim=cfg.text_dim,
        cross_attention_levels=tuple(
            range(1, len(cfg.channel_mults)) if cfg.cross_attention_levels is None else cfg.cross_attention_levels
        ),
        cond_channels=cfg.cond_channels,
    )


def _mlp(cfg: NetworkConfig) -> nn.Module:
    return MLP(dim=cfg.dim, width=cfg.width, depth=cfg.depth, num_classes=cfg.num_classes, dropout=cfg.dropout)


NETWORKS = {"unet": _unet, "mlp": _mlp}
# the settings that size each network, the one its parameter count is affine in last
_SIZED_BY = {"unet": ("base_channels", "channel_mults", "num_res_blocks"), "mlp": ("dim", "width", "depth")}


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The network a ``NetworkConfig`` describes, freshly initialised; one with more parameters than
    ``limits().max_parameters`` is refused (naming the count and the limit) before its weights are allocated."""
    return build_within_limit(lambda: NETWORKS[cfg.kind](cfg), lambda: network_parameters(cfg), _describe(cfg))


def network_parameters(cfg: NetworkConfig) -> int | None:
    """The parameters of ``build_network(cfg)``, counted without allocating (None: too many to count)."""
    key = _SIZED_BY[cfg.kind][-1]  # the count is affine in the last setting (blocks per level, layers)
    return affine_parameters(lambda n: NETWORKS[cfg.kind](cfg.model_copy(update={key: n})), getattr(cfg, key))


def _describe(cfg: NetworkConfig) -> str:
    """The network as the settings that size it: ``the network of base_channels=32, ...``."""
    return "the network of " + ", ".join(f"{name}={getattr(cfg, name)}" for name in _SIZED_BY[cfg.kind])


class ModelSpace(ABC):
    """What one sample is: its shape in the model's space, how data gets there and back, how samples are shown."""

    name: ClassVar[str]
    clip_x0: ClassVar[bool] = False  # True where x0 estimates may be thresholded to the data range [-1, 1]
    network_kind: ClassVar[str]  # the network a fresh model of this space gets
    grid_preview: ClassVar[bool] = True  # previews are grids of a few samples per class (else one plot of many)

    @property
    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample in the model's space."""

    @abstractmethod
    def encode(self, data: Tensor) -> Tensor:
        """Data as users hold it (images in [0, 1], points as they are) to the model's space."""

    @abstractmethod
    def decode(self, x: Tensor) -> Tensor:
        """The model's space back to data as users hold it."""

    @abstractmethod
    def save(
        self,
        samples: Tensor,
        path: str | os.PathLike[str],
        *,
        nrow: int = 8,
        row_labels: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        reference: Tensor | None = None,
    ) -> None:
        """Write decoded samples for people to look at (a PNG grid, a scatter plot, ...), atomically."""

    @classmethod
    @abstractmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The config fitted to training data (N, ...) as the loader gives it: shapes, channels, network size."""

    def to_model_space(self, data: Tensor) -> Tensor:
        """Training data as the loader gives it (the model's data range) to the space the network learns."""
        return data


class PixelImageSpace(ModelSpace):
    """Images (C, H, W): users' pixels in [0, 1], the model's in [-1, 1]; x0 may be clipped to [-1, 1]."""

    name = "image"
    clip_x0 = True
    network_kind = "unet"

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.channels, self.size = config.data.channels, config.data.image_size

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.channels, self.size, self.size)

    def encode(self, data: Tensor) -> Tensor:
        return data * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        save_grid(samples, path, nrow=nrow, row_labels=row_labels, scale=2, metadata=metadata)

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        if data.ndim != 4:
            raise DataError(f"an image model needs images (N, C, H, W); got data of shape {tuple(data.shape)}.")
        n, c, h, w = data.shape
        if h != w:
            raise DataError(f"training images must be square, got {h}x{w}.")
        net = config.network.model_copy(update={"kind": cls.network_kind, "in_channels": c})
        if config.data.image_condition is not None:
            make_image_condition(config.data.image_condition, data[:1], config.data.superres_factor)  # check early
            net = net.model_copy(update={"cond_channels": condition_channels(config.data.image_condition, c)})
        build_network(net).check_input_size(h, h)
        data_cfg = config.data.model_copy(update={"channels": c, "image_size": h})
        return config.model_copy(update={"network": net, "data": data_cfg, "space": cls.name})


class LatentImageSpace(PixelImageSpace):
    """Images diffused in an autoencoder's latent space, scaled to unit std (Rombach et al. 2022, sec. 3-4).

    encode: pixels in [0, 1] -> posterior means times ``config.latent.scaling_factor``; decode the reverse.
    Latents have no fixed range, so x0 is never clipped.
    """

    name = "latent_image"
    clip_x0 = False

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        super().__init__(config)
        if autoencoder is None or config.latent is None or config.latent.scaling_factor is None:
            raise ValueError(
                "this latent model has no autoencoder or scaling factor yet; load it with Pipeline.load(folder)."
            )
        self.autoencoder, self.scale = autoencoder, config.latent.scaling_factor

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.autoencoder.latent_shape((self.channels, self.size, self.size))

    def encode(self, data: Tensor) -> Tensor:
        return self.autoencoder.encode(data * 2 - 1) * self.scale

    def decode(self, x: Tensor) -> Tensor:
        return super().decode(self.autoencoder.decode(x / self.scale))

    @torch.no_grad()
    def to_model_space(self, data: Tensor) -> Tensor:
        return self.autoencoder.encode(data) * self.scale

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """Also measures the latents' scaling factor on the data (unless set) and fits the network to latents."""
        if config.latent is None or autoencoder is None:
            raise ValueError("a latent model needs config.latent and its autoencoder.")
        if config.data.image_condition is not None:
            raise ValueError(f"image_condition={config.data.image_condition!r} is not supported on latent models.")
        config = super().fit_config(config, data)
        shape = autoencoder.latent_shape(tuple(data.shape[1:]))
        with torch.no_grad():
            scale = config.latent.scaling_factor or latent_scaling_factor(autoencoder.encode(data))
        net = config.network.model_copy(update={"in_channels": shape[0]})
        try:
            build_network(net).check_input_size(shape[1], shape[2])
        except ValueError as err:
            raise ValueError(f"the autoencoder's latents are {shape[1]}x{shape[2]}: {err}") from None
        update = {
            "network": net,
            "space": cls.name,
            "latent": config.latent.model_copy(update={"scaling_factor": scale}),
            "sample": config.sample.model_copy(update={"thresholding": "none"}),  # latents have no [-1, 1] range
        }
        return config.model_copy(update=update)


class PointSpace(ModelSpace):
    """Low-dimensional points (D,), e.g. the 2-D toys: the data is the model's space; shown as a scatter plot."""

    name = "points"
    network_kind = "mlp"
    grid_preview = False

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.dim = config.network.dim

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, x: Tensor) -> Tensor:
        return x

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        save_scatter(samples, path, reference=reference)

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        if data.ndim != 2:
            raise DataError(f"a point model needs points (N, D); got data of shape {tuple(data.shape)}.")
        net = config.network.model_copy(update={"kind": cls.network_kind, "dim": data.shape[1]})
        return config.model_copy(update={"network": net, "space": cls.name})


SPACES: dict[str, type[ModelSpace]] = {cls.name: cls for cls in (PixelImageSpace, LatentImageSpace, PointSpace)}


def make_space(config: ModelConfig, autoencoder: Autoencoder | None = None) -> ModelSpace:
    """The model space ``config.space`` names (the one place the name becomes an object)."""
    return SPACES[config.space](config, autoencoder)


def space_for_data(config: ModelConfig, data: Tensor) -> type[ModelSpace]:
    """The space of a fresh model on training data (N, ...): points for (N, D) data, latent images when
    ``config.latent`` asks for an autoencoder, else pixel images."""
    if data.ndim == 2:
        return PointSpace
    return LatentImageSpace if config.latent is not None else PixelImageSpace
