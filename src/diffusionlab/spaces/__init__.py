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
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig, NetworkConfig, SignalInfo, SpectrogramStats
from ..data import DataError, Tokenizer, condition_channels, make_image_condition, make_tokenizer
from ..data.signals import WindowScale, draw_observed
from ..data.spectrogram import compress, decompress, griffin_lim, magnitude, stft_shape
from ..data.table import TableTensors, decode_table, table_layout, write_csv_table
from ..denoisers import ScheduledNetwork
from ..images import make_grid, save_animation, save_grid, save_png, save_scatter
from ..io import atomic_write_text
from ..networks import MLP, DiscreteTransformer, TabularMLP, UNet2D
from ..networks.autoencoder import Autoencoder, latent_scaling_factor
from ..networks.size import affine_parameters, build_within_limit
from ..processes import MonotoneLogSNR
from ..signal_outputs import plot_signals, write_signal_files

__all__ = [
    "ModelSpace",
    "PixelImageSpace",
    "LatentImageSpace",
    "PointSpace",
    "TokenSpace",
    "TableSpace",
    "SignalSpace",
    "SpectrogramSpace",
    "VideoSpace",
    "AUDIO_SPACES",
    "SPACES",
    "NETWORKS",
    "build_network",
    "network_parameters",
    "make_space",
    "space_for_data",
]


SPECTROGRAM_STD_FLOOR = 1e-5  # added to each bin's std: a silent bin is then scaled, not divided by 0


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _unet_levels(cfg: NetworkConfig) -> dict[str, Any]:
    """The settings every UNet (2-D, space-time) is built from: channels, levels, blocks, attention, classes."""
    return {
        "in_channels": cfg.in_channels,
        "base_channels": cfg.base_channels,
        "channel_mults": tuple(cfg.channel_mults),
        "num_res_blocks": cfg.num_res_blocks,
        "attention_levels": tuple(cfg.attention_levels),
        "num_heads": cfg.num_heads,
        "dropout": cfg.dropout,
        "num_classes": cfg.num_classes,
    }


def _unet(cfg: NetworkConfig) -> nn.Module:
    return UNet2D(
        **_unet_levels(cfg),
        text_dim=cfg.text_dim,
        cross_attention_levels=tuple(
            range(1, len(cfg.channel_mults)) if cfg.cross_attention_levels is None else cfg.cross_attention_levels
        ),
        cond_channels=cfg.cond_channels,
    )


def _mlp(cfg: NetworkConfig) -> nn.Module:
    return MLP(dim=cfg.dim, width=cfg.width, depth=cfg.depth, num_classes=cfg.num_classes, dropout=cfg.dropout)


def _transformer(cfg: NetworkConfig) -> nn.Module:
    if cfg.vocab_in is None or cfg.vocab_out is None or cfg.max_len is None:
        raise ValueError("a transformer needs network.vocab_in, vocab_out and max_len; they are fitted to the data.")
    return DiscreteTransformer(
        vocab_in=cfg.vocab_in,
        vocab_out=cfg.vocab_out,
        max_len=cfg.max_len,
        width=cfg.width,
        depth=cfg.depth,
        heads=cfg.num_heads,
        num_classes=cfg.num_classes,
        dropout=cfg.dropout,
        time_conditioning=cfg.time_conditioning,
        text_dim=cfg.text_dim,
    )


def _tabular(cfg: NetworkConfig) -> nn.Module:
    if cfg.num_numeric is None or cfg.cardinalities is None:
        raise ValueError("a tabular network needs network.num_numeric and cardinalities; they are fitted to the table.")
    return TabularMLP(cfg.num_numeric, cfg.cardinalities, cfg.width, cfg.depth, cfg.num_classes, cfg.dropout)


def _tabular_transformer(cfg: NetworkConfig) -> nn.Module:
    from ..networks.tabular import TabularTransformer

    if cfg.num_numeric is None or cfg.cardinalities is None:
        raise ValueError("a tabular network needs network.num_numeric and cardinalities; they are fitted to the table.")
    return TabularTransformer(
        cfg.num_numeric, cfg.cardinalities, cfg.width, cfg.depth, cfg.num_heads, cfg.num_classes, cfg.dropout
    )


def _unet1d(cfg: NetworkConfig) -> nn.Module:
    from ..networks.unet1d import UNet1D

    return UNet1D(
        in_channels=cfg.in_channels,
        base_channels=cfg.base_channels,
        channel_mults=tuple(cfg.channel_mults),
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=tuple(cfg.attention_levels),
        num_heads=cfg.num_heads,
        dropout=cfg.dropout,
        num_classes=cfg.num_classes,
        cond_channels=cfg.cond_channels,
    )


def _diffwave(cfg: NetworkConfig) -> nn.Module:
    from ..networks.diffwave import DiffWave

    if cfg.dropout:
        raise ValueError(f"network.dropout={cfg.dropout} does not apply to DiffWave, which has no dropout; use 0.")
    return DiffWave(
        in_channels=cfg.in_channels,
        residual_channels=cfg.width,
        layers=cfg.depth,
        dilation_cycle=cfg.dilation_cycle,
        num_classes=cfg.num_classes,
        cond_channels=cfg.cond_channels,
    )


def _spacetime_unet(cfg: NetworkConfig) -> nn.Module:
    from ..networks.spacetime import SpaceTimeUNet

    return SpaceTimeUNet(**_unet_levels(cfg))


NETWORKS = {
    "unet": _unet,
    "mlp": _mlp,
    "transformer": _transformer,
    "tabular": _tabular,
    "tabular_transformer": _tabular_transformer,
    "unet1d": _unet1d,
    "diffwave": _diffwave,
    "spacetime_unet": _spacetime_unet,
}
# the settings that size each network, the one its parameter count is affine in last
_SIZED_BY = {
    "unet": ("base_channels", "channel_mults", "num_res_blocks"),
    "mlp": ("dim", "width", "depth"),
    "transformer": ("width", "num_heads", "depth"),
    "tabular": ("width", "depth"),
    "tabular_transformer": ("width", "num_heads", "depth"),
    "unet1d": ("base_channels", "channel_mults", "num_res_blocks"),
    "diffwave": ("width", "dilation_cycle", "depth"),
    "spacetime_unet": ("base_channels", "channel_mults", "num_res_blocks"),
}


def build_network(cfg: NetworkConfig) -> nn.Module:
    """The network a ``NetworkConfig`` describes, freshly initialised; one with more parameters than
    ``limits().max_parameters`` is refused (naming the count and the limit) before its weights are allocated."""
    if not cfg.time_conditioning and cfg.kind != "transformer":
        raise ValueError(
            f"network.time_conditioning=false is for text transformers (MDLM's time-free denoiser); a {cfg.kind} "
            "network always sees the time."
        )
    network = build_within_limit(lambda: NETWORKS[cfg.kind](cfg), lambda: network_parameters(cfg), _describe(cfg))
    return ScheduledNetwork(network, MonotoneLogSNR()) if cfg.learned_schedule else network


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
    suffix: ClassVar[str] = ".png"  # the file its samples are written to
    family: ClassVar[str] = "gaussian"  # the process family its models take (ProcessConfig.family)
    balanced_labels: ClassVar[bool] = True  # evaluation asks for every class equally (else: the model's own mix)
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

    def augment(self, x0: Tensor, scale: float, generator: torch.Generator, observed: Tensor | None = None) -> Tensor:
        """A training batch (B, ...) in the model's space, augmented by a random gain (``train.scale_augment``) or
        normalised per window (``data.window_scaling``, over the ``observed`` elements); only signal spaces take
        them (``fit_signal`` refuses them elsewhere), so here it is the batch as it is."""
        return x0

    def to_model_space(self, data: Tensor) -> Tensor:
        """Training data as the loader gives it (the model's data range) to the space the network learns."""
        return data

    def check_fits(self, config: ModelConfig) -> None:
        """One clear ``ValueError`` when the config's samples do not have the channels its network takes
        (``network.in_channels`` for images, ``network.dim`` for points)."""
        shape, net = self.sample_shape, config.network
        takes, field = (net.in_channels, "network.in_channels") if len(shape) == 3 else (net.dim, "network.dim")
        if shape[0] is not None and shape[0] != takes:  # None: a config not yet fitted to data
            raise ValueError(
                f"the samples have {shape[0]} channels (data.channels={config.data.channels}) but the network takes "
                f"{takes} ({field})"
            )

    def texts(self, samples: Tensor) -> list[str] | None:
        """Decoded samples as text to print (text models), else None."""
        return None

    def inpaint_condition(self, data: Tensor, fill: Tensor) -> dict[str, Tensor]:
        """What the network takes beside x to fill ``data`` (as users hold it) where ``fill`` is True; nothing by
        default: inpainting then keeps the known part in the sampler (RePaint or replacement)."""
        return {}

    def training_condition(
        self, x0: Tensor, generator: torch.Generator, observed: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """The training examples x0 (in the model's space) as the network learns them, what it takes beside x,
        drawn with ``generator``, and the elements the loss counts (None: all); by default x0 as it is, nothing
        beside x, and the loss on the ``observed`` elements (those the data holds, x0's shape; None: all)."""
        return x0, {}, observed


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


class TokenSpace(ModelSpace):
    """Token sequences (L,) of a tokenizer's K classes: the data is the model's space (ids, never clipped); samples
    are decoded to text and written as a .txt file."""

    name = "tokens"
    network_kind = "transformer"
    family = "discrete"
    suffix = ".txt"

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.length, self.tokenizer_name = config.data.seq_len, config.data.tokenizer
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer the model was trained with (``data.tokenizer``), made on first use."""
        if self._tokenizer is None:
            if self.tokenizer_name is None:
                raise ValueError("this text model has no data.tokenizer; it is fitted to the training data.")
            self._tokenizer = make_tokenizer(self.tokenizer_name)
        return self._tokenizer

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.length,)

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, x: Tensor) -> Tensor:
        return x

    def texts(self, samples: Tensor) -> list[str]:
        return self.tokenizer.decode_batch(samples)

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        """One sample per paragraph (``[label]`` first when rows are labelled), the settings as a first comment."""
        texts = self.texts(samples)
        per_row = max(1, len(texts) // len(row_labels)) if row_labels else None
        blocks = [
            (f"[{row_labels[min(i // per_row, len(row_labels) - 1)]}] " if per_row else "") + text
            for i, text in enumerate(texts)
        ]
        head = ["# " + " ".join(f"{k}={v}" for k, v in metadata.items())] if metadata else []
        atomic_write_text(Path(path), "\n\n".join(head + blocks) + "\n")

    def check_fits(self, config: ModelConfig) -> None:
        net, data = config.network, config.data
        if net.kind != self.network_kind:
            raise ValueError(f"a text model's network is a transformer, not network.kind={net.kind!r}")
        if config.diffusion.process.family != "discrete":
            raise ValueError(
                f"a text model needs a discrete process, not diffusion.process={config.diffusion.process.name!r}"
            )
        if data.vocab_size is not None and net.vocab_out != data.vocab_size:
            raise ValueError(
                f"data.vocab_size={data.vocab_size} but the network predicts network.vocab_out={net.vocab_out} classes"
            )
        if net.max_len is not None and data.seq_len > net.max_len:
            raise ValueError(f"data.seq_len={data.seq_len} is longer than the network's max_len={net.max_len}")

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The transformer's vocabularies and length, the tokenizer's size and a text model's sampling defaults."""
        if data.ndim != 2 or data.is_floating_point():
            raise DataError(f"a text model needs token ids (N, L); got data of {data.dtype} {tuple(data.shape)}.")
        if config.data.tokenizer is None:
            raise DataError("the text data has no tokenizer name; load it with load_training_data.")
        k = make_tokenizer(config.data.tokenizer).vocab_size
        data_cfg = config.data.model_copy(update={"seq_len": int(data.shape[1]), "vocab_size": k})
        process = config.diffusion.process.build_for(data_cfg)
        net = config.network.model_copy(
            update={"kind": cls.network_kind, "vocab_in": process.num_states, "vocab_out": k, "max_len": data.shape[1]}
        )
        build_network(net)  # one clear error now for a width the heads do not divide
        sample = config.sample.model_copy(
            update={"sampler": "ancestral", "steps": int(data.shape[1]), "thresholding": "none", "spacing": None}
        )
        return config.model_copy(update={"network": net, "data": data_cfg, "space": cls.name, "sample": sample})


class TableSpace(ModelSpace):
    """Table rows: the numeric columns' quantile-normal scores, then one category id per categorical column (and,
    for a model conditioned on a categorical target, the row's label last), as floats. Samples are decoded by the
    table's schema (``config.data.table``) into the CSV's columns, spellings, dtypes and ranges."""

    name = "table"
    network_kind = "tabular"
    network_kinds = ("tabular", "tabular_transformer")  # the MLP over the row, or a transformer over its columns
    family = "mixed"
    suffix = ".csv"
    grid_preview = False
    balanced_labels = False  # a table's target keeps its training frequencies

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.schema, net = config.data.table, config.network
        self.num_numeric, self.cardinalities = net.num_numeric or 0, list(net.cardinalities or [])
        self.labelled = bool(net.num_classes)
        self.match_marginals = config.data.match_marginals  # sampled rows' default decoding

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.num_numeric + len(self.cardinalities) + int(self.labelled),)

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, x: Tensor) -> Tensor:
        return x

    def frame(self, samples: Tensor, match_marginals: bool | None = None) -> Any:
        """Samples (N, sample_shape) as a pandas DataFrame of the table's columns (str cells, as a CSV holds them);
        ``match_marginals``: numeric columns rank-matched to the training distribution (``decode_table``'s option;
        None: the model's ``data.match_marginals``)."""
        if self.schema is None:
            raise ValueError("this table model has no data.table schema; it is fitted to the training table.")
        n, c = self.num_numeric, len(self.cardinalities)
        tensors = TableTensors(
            samples[:, :n].float(),
            samples[:, n : n + c].round().long(),
            samples[:, n + c].round().long() if self.labelled else None,
        )
        matched = self.match_marginals if match_marginals is None else match_marginals
        return decode_table(tensors, self.schema, match_marginals=matched)

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        """The rows as a CSV file with the table's header (written atomically)."""
        write_csv_table(self.frame(samples), path)

    def check_fits(self, config: ModelConfig) -> None:
        net = config.network
        if net.kind not in self.network_kinds:
            raise ValueError(f"a table model's network is one of {self.network_kinds}, not network.kind={net.kind!r}")
        if config.data.table is None:
            raise ValueError("a table model needs data.table, the schema of its columns")
        layout = table_layout(config.data.table)
        if (net.num_numeric, net.cardinalities) != (len(layout.numeric), list(layout.cardinalities)):
            raise ValueError(
                f"data.table has {len(layout.numeric)} numeric columns and categories {list(layout.cardinalities)} "
                f"but the network takes network.num_numeric={net.num_numeric}, cardinalities={net.cardinalities}"
            )

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The tabular network's columns, the widest column's categories and a table model's sampling defaults."""
        if config.data.table is None:
            raise DataError("the table has no schema; load it with load_training_data.")
        layout = table_layout(config.data.table)
        if layout.num_classes and not config.network.num_classes:
            raise DataError(
                f"the categorical target column {config.data.table.target!r} conditions the model; train a "
                "conditional model (drop --no-conditional) or leave out --target-column."
            )
        cards = list(layout.cardinalities)
        net = config.network.model_copy(
            update={
                "kind": config.network.kind if config.network.kind in cls.network_kinds else cls.network_kind,
                "num_numeric": len(layout.numeric),
                "cardinalities": cards,
            }
        )
        data_cfg = config.data.model_copy(update={"vocab_size": max([2, *cards])})
        sample = config.sample.model_copy(
            update={"sampler": "ancestral", "steps": 100, "thresholding": "none", "spacing": None, "guidance": 1.0}
        )
        build_network(net)
        return config.model_copy(update={"network": net, "data": data_cfg, "space": cls.name, "sample": sample})


class SignalFiles:
    """What audio and series spaces write of decoded signals (C, L) described by ``self.info``: pictures and files."""

    info: SignalInfo

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        """A grid of spectrograms (audio) or line plots (series, in the data's units), one labelled row per class."""
        plot_signals(samples, self.info, path, nrow=nrow, row_labels=row_labels)

    def write_files(
        self, samples: Tensor, folder: str | os.PathLike[str], labels: Sequence[int] | None = None
    ) -> list[Path]:
        """Audio: one WAV per sample (in class sub-folders when labelled); series: one CSV of every sample."""
        return write_signal_files(samples, self.info, Path(folder), labels)


class SignalSpace(SignalFiles, ModelSpace):
    """Signals (C, L): audio clips in [-1, 1] (x0 may be clipped) or windows of time series standardised per channel
    (``config.data.signal`` holds the statistics); previews are spectrograms (audio) or line plots (series), and
    ``write_files`` writes WAV files or a CSV."""

    name = "signal"
    network_kind = "unet1d"
    network_kinds = ("unet1d", "diffwave")

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.info = config.data.signal
        if self.info is None:
            raise ValueError("this signal model has no data.signal; it is fitted to the training signals.")
        self.clip_x0 = self.info.kind == "audio"  # audio lives in [-1, 1]; standardised series have no range
        self.observes = config.data.signal_condition == "observed"  # a conditional imputation model (CSDI)
        self.per_window = config.data.window_scaling == "window"  # RevIN: each window by its own statistics

    @staticmethod
    def condition_channels(config: ModelConfig, channels: int) -> int:
        """The network's condition channels: a conditional imputation model sees each channel's observed values
        (0 where missing) and its mask, 2C in all; else none."""
        return 2 * channels if config.data.signal_condition == "observed" else 0

    @staticmethod
    def _observations(x: Tensor, keep: Tensor) -> dict[str, Tensor]:
        """CSDI's conditional observations (Tashiro et al. 2021, sec. 5): the known values (0 elsewhere) and the
        mask, (B, 2C, L), concatenated to x by the network."""
        keep = keep.expand_as(x)
        return {"cond_signal": torch.cat([torch.where(keep, x, torch.zeros_like(x)), keep.to(x.dtype)], dim=1)}

    def inpaint_condition(self, data: Tensor, fill: Tensor) -> dict[str, Tensor]:
        """A conditional imputation model's view of the observed points (``fill`` False); else nothing."""
        return self._observations(self.encode(data), ~fill) if self.observes else {}

    def training_condition(
        self, x0: Tensor, generator: torch.Generator, observed: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """A conditional imputation model learns to fill drawn masks (``data.signals.draw_observed``) from the rest:
        the observations beside x, and the loss on the missing points only (CSDI's self-supervised training). With
        gaps in the data (``observed`` False), both sides are taken among the observed points only: the gaps, filled
        by interpolation, are neither shown to the network nor scored (Tashiro et al. 2021, sec. 4.3). With
        ``data.window_scaling="window"`` each window is normalised by its drawn observed points' mean and std, as
        ``impute_series`` normalises a window by its observed points."""
        if not self.observes:
            return x0, {}, observed
        keep = draw_observed(len(x0), int(x0.shape[1]), int(x0.shape[2]), generator)
        seen, loss_mask = (keep, ~keep) if observed is None else (keep & observed, observed & ~keep)
        if self.per_window:
            x0 = self.window_scale(x0, seen).normalise(x0)
        return x0, self._observations(x0, seen), loss_mask

    def window_scale(self, x: Tensor, observed: Tensor | None = None) -> WindowScale:
        """The per-window scaling of windows x (B, C, L): their observed points' mean and std with
        ``data.window_scaling="window"`` (RevIN), else the identity (the series' own scaling only)."""
        if self.per_window:
            return WindowScale.fit(x, observed)
        ones = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
        return WindowScale(torch.zeros_like(ones), ones)

    def augment(self, x0: Tensor, scale: float, generator: torch.Generator, observed: Tensor | None = None) -> Tensor:
        """Each window (B, C, L) normalised by its own observed points (``window_scale``), then times a gain exp(u),
        u ~ U(-scale, scale) (magnitude scaling, Um et al. 2017, "Data augmentation of wearable sensor data", sec.
        3.2); audio clipped back to [-1, 1]. No draw at 0. A conditional imputation model's windows are normalised
        later, by the points drawn as observed (``training_condition``), which undoes the gain."""
        if self.per_window and not self.observes:
            x0 = self.window_scale(x0, observed).normalise(x0)
        if scale <= 0:
            return x0
        u = (2 * torch.rand(len(x0), generator=generator) - 1) * scale
        out = x0 * torch.exp(u).to(x0.dtype)[:, None, None]
        return out.clamp(-1, 1) if self.clip_x0 else out

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.info.channels, self.info.length)

    def encode(self, data: Tensor) -> Tensor:
        return data

    def decode(self, x: Tensor) -> Tensor:
        return x.clamp(-1, 1) if self.clip_x0 else x

    def check_fits(self, config: ModelConfig) -> None:
        net = config.network
        if net.kind not in self.network_kinds:
            raise ValueError(f"a signal model's network is one of {self.network_kinds}, not network.kind={net.kind!r}")
        if net.in_channels != self.info.channels:
            raise ValueError(
                f"the signals have {self.info.channels} channels (data.signal) but the network takes "
                f"network.in_channels={net.in_channels}"
            )
        want = self.condition_channels(config, self.info.channels)
        if net.cond_channels != want:
            raise ValueError(
                f"data.signal_condition={config.data.signal_condition!r} needs network.cond_channels={want}, not "
                f"{net.cond_channels}"
            )

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The network's channels and kind (unet1d unless diffwave was asked for), checked against the length."""
        info = config.data.signal
        if info is None or data.ndim != 3:
            raise DataError(f"a signal model needs signals (N, C, L); got data of shape {tuple(data.shape)}.")
        kind = config.network.kind if config.network.kind in cls.network_kinds else cls.network_kind
        channels = int(data.shape[1])
        net = config.network.model_copy(
            update={"kind": kind, "in_channels": channels, "cond_channels": cls.condition_channels(config, channels)}
        )
        network = build_network(net)
        if hasattr(network, "check_input_length"):
            network.check_input_length(int(data.shape[2]))
        thresholding = "clip" if info.kind == "audio" else "none"
        sample = config.sample.model_copy(update={"thresholding": thresholding})
        return config.model_copy(update={"network": net, "space": cls.name, "sample": sample})


class SpectrogramSpace(SignalFiles, ModelSpace):
    """Audio clips (C, L) diffused as images (C, F, T): each channel's STFT magnitude (Hann window of
    ``data.n_fft`` samples, hop ``data.hop_length``), compressed by the power law of ``diffusionlab.data.spectrogram``,
    and normalised per frequency bin by the training clips' statistics (``config.data.spectrogram``), zero-padded
    to sizes the 2-D UNet's levels take. Samples are cropped back and decoded to waveforms by fast Griffin-Lim,
    so they are written as the waveform space writes them: WAV files and a spectrogram grid."""

    name = "spectrogram"
    network_kind = "unet"

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        data = config.data
        if data.signal is None or data.spectrogram is None:
            raise ValueError("this spectrogram model has no data.signal or data.spectrogram; they are fitted to audio.")
        self.info, self.n_fft, self.hop, self.iterations = (
            data.signal,
            data.n_fft,
            data.hop_length,
            data.griffin_lim_iterations,
        )
        self.mean = torch.tensor(data.spectrogram.mean)[:, :, None]  # (C, F, 1)
        self.std = torch.tensor(data.spectrogram.std)[:, :, None]
        self.bins, self.frames = stft_shape(self.info.length, self.n_fft, self.hop)
        multiple = 2 ** (len(config.network.channel_mults) - 1)  # the UNet's size_multiple
        self.height, self.width = _round_up(self.bins, multiple), _round_up(self.frames, multiple)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.info.channels, self.height, self.width)

    def encode(self, data: Tensor) -> Tensor:
        """Clips (N, C, L) to normalised compressed magnitudes (N, C, H, W), zero beyond the (F, T) of the STFT."""
        mag = magnitude(data.float(), self.n_fft, self.hop)
        y = (compress(mag) - self.mean.to(mag.device)) / self.std.to(mag.device)
        return nn.functional.pad(y, (0, self.width - self.frames, 0, self.height - self.bins))

    def magnitudes(self, x: Tensor) -> Tensor:
        """The inverse of ``encode`` up to the phase: model-space images (N, C, H, W) to magnitudes (N, C, F, T)."""
        y = x.float()[..., : self.bins, : self.frames]
        return decompress(y * self.std.to(y.device) + self.mean.to(y.device))

    def decode(self, x: Tensor) -> Tensor:
        """Model-space images to clips (N, C, L) in [-1, 1]: ``griffin_lim`` of their magnitudes."""
        with torch.autocast(x.device.type, enabled=False):
            clips = griffin_lim(self.magnitudes(x), self.n_fft, self.hop, self.info.length, self.iterations)
        return clips.clamp(-1, 1)

    @torch.no_grad()
    def to_model_space(self, data: Tensor) -> Tensor:
        return self.encode(data)

    def check_fits(self, config: ModelConfig) -> None:
        net = config.network
        if net.kind != self.network_kind:
            raise ValueError(f"a spectrogram model's network is a {self.network_kind}, not network.kind={net.kind!r}")
        if net.in_channels != self.info.channels:
            raise ValueError(
                f"the clips have {self.info.channels} channels (data.signal) but the network takes "
                f"network.in_channels={net.in_channels}"
            )

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The UNet's channels (one per audio channel), checked against the padded STFT size, and the per-bin mean
        and std of the training clips' compressed magnitudes; a clear error for options a spectrogram cannot take."""
        info, d = config.data.signal, config.data
        if info is None or info.kind != "audio" or data.ndim != 3:
            raise DataError(f"a spectrogram model needs audio clips (N, C, L); got data of shape {tuple(data.shape)}.")
        if d.hop_length > d.n_fft:
            raise DataError(f"hop_length={d.hop_length} is longer than n_fft={d.n_fft}; expected at most n_fft.")
        if d.n_fft // 2 >= info.length:
            raise DataError(f"n_fft={d.n_fft} is too long for clips of {info.length} samples; expected at most "
                            f"{2 * info.length - 1}.")  # fmt: skip
        for option, value, fine in [
            ("signal_condition", d.signal_condition, None),
            ("scale_augment", config.train.scale_augment, 0),
        ]:
            if value != fine:
                raise DataError(f"{option}={value!r} is for waveform audio; audio_space='spectrogram' takes none.")
        if config.network.kind != cls.network_kind:
            raise DataError(
                f"a spectrogram model takes a {cls.network_kind}, not network.kind={config.network.kind!r}."
            )
        net = config.network.model_copy(update={"kind": cls.network_kind, "in_channels": int(data.shape[1])})
        with torch.no_grad():
            y = torch.cat([compress(magnitude(b.float(), d.n_fft, d.hop_length)) for b in data.split(256)])
        stats = SpectrogramStats(
            mean=y.mean(dim=(0, 3)).tolist(), std=(y.std(dim=(0, 3)) + SPECTROGRAM_STD_FLOOR).tolist()
        )
        fitted = config.model_copy(
            update={
                "network": net,
                "data": d.model_copy(update={"spectrogram": stats}),
                "space": cls.name,
                "sample": config.sample.model_copy(update={"thresholding": "none"}),  # normalised values: no range
            }
        )
        space = cls(fitted)
        build_network(net).check_input_size(space.height, space.width)
        return fitted


VIDEO_SAMPLE_STEPS = 25  # a video model's default sampler steps: a clip costs F images an evaluation


class VideoSpace(ModelSpace):
    """Video clips (F, C, H, W): users' pixels in [0, 1], the model's in [-1, 1]; x0 may be clipped. A batch is
    written as an animated GIF of the clips side by side and, beside it, a PNG strip of every clip's frames."""

    name = "video"
    suffix = ".gif"
    clip_x0 = True
    network_kind = "spacetime_unet"

    def __init__(self, config: ModelConfig, autoencoder: Autoencoder | None = None) -> None:
        self.frames, self.channels, self.size = config.data.frames, config.data.channels, config.data.image_size

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.frames, self.channels, self.size, self.size)

    def encode(self, data: Tensor) -> Tensor:
        return data * 2 - 1

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    @staticmethod
    def strip_path(path: str | os.PathLike[str]) -> Path:
        """The frame strip written beside an animation: ``samples.gif`` -> ``samples-frames.png``."""
        p = Path(path)
        return p.with_name(p.stem + "-frames.png")

    def save(self, samples, path, *, nrow=8, row_labels=None, metadata=None, reference=None):  # type: ignore[no-untyped-def]
        """The GIF (or WebP, by the suffix): frame f is the grid of every clip's frame f (``nrow`` clips a row, rows
        labelled); the strip PNG (``strip_path``): one row per clip, its frames left to right, with the metadata."""
        n, frames = samples.shape[:2]
        grids = [make_grid(samples[:, f], min(nrow, n), scale=2, row_labels=row_labels) for f in range(frames)]
        save_animation(
            torch.stack([torch.from_numpy(np.array(g)).permute(2, 0, 1) / 255 for g in grids]), path, scale=1
        )
        per_row = max(1, n // len(row_labels)) if row_labels else None
        labels = [row_labels[min(i // per_row, len(row_labels) - 1)] for i in range(n)] if per_row else None
        strip = make_grid(samples.flatten(0, 1), frames, scale=2, row_labels=labels)
        save_png(strip, self.strip_path(path), metadata)

    def check_fits(self, config: ModelConfig) -> None:
        net = config.network
        if net.kind != self.network_kind:
            raise ValueError(f"a video model's network is a {self.network_kind}, not network.kind={net.kind!r}")
        if self.channels is not None and net.in_channels != self.channels:
            raise ValueError(
                f"the clips have {self.channels} channels (data.channels) but the network takes "
                f"network.in_channels={net.in_channels}"
            )

    @classmethod
    def fit_config(cls, config: ModelConfig, data: Tensor, autoencoder: Autoencoder | None = None) -> ModelConfig:
        """The network's kind and channels, the clips' frames, channels and square size (checked against the
        network's down-sampling), and ``VIDEO_SAMPLE_STEPS`` sampler steps."""
        if data.ndim != 5:
            raise DataError(f"a video model needs clips (N, F, C, H, W); got data of shape {tuple(data.shape)}.")
        n, f, c, h, w = data.shape
        if h != w:
            raise DataError(f"training clips must have square frames, got {h}x{w}.")
        if config.latent is not None or config.data.image_condition is not None:
            raise DataError("video models are pixel models without an image condition; drop --autoencoder.")
        net = config.network.model_copy(update={"kind": cls.network_kind, "in_channels": c})
        build_network(net).check_input_size(h, w)
        data_cfg = config.data.model_copy(update={"channels": c, "image_size": h, "frames": f})
        sample = config.sample.model_copy(update={"steps": VIDEO_SAMPLE_STEPS})
        return config.model_copy(update={"network": net, "data": data_cfg, "space": cls.name, "sample": sample})


SPACES: dict[str, type[ModelSpace]] = {
    cls.name: cls
    for cls in (
        PixelImageSpace,
        LatentImageSpace,
        PointSpace,
        TokenSpace,
        TableSpace,
        SignalSpace,
        SpectrogramSpace,
        VideoSpace,
    )
}
# the space an audio model diffuses in, by ``data.audio_space`` (the one place that name becomes a class)
AUDIO_SPACES: dict[str, type[ModelSpace]] = {"waveform": SignalSpace, "spectrogram": SpectrogramSpace}


def make_space(config: ModelConfig, autoencoder: Autoencoder | None = None) -> ModelSpace:
    """The model space ``config.space`` names (the one place the name becomes an object)."""
    return SPACES[config.space](config, autoencoder)


def space_for_data(config: ModelConfig, data: Tensor) -> type[ModelSpace]:
    """The space of a fresh model on training data (N, ...): tokens for integer (N, L) data, points for (N, D)
    real data, video for clips (N, F, C, H, W), latent images when ``config.latent`` asks for an autoencoder, else
    pixel images; one clear error when the config's process is of another family than the data takes."""
    if config.data.table is not None:
        space: type[ModelSpace] = TableSpace
    elif config.data.signal is not None:
        space = AUDIO_SPACES[config.data.audio_space] if config.data.signal.kind == "audio" else SignalSpace
    elif data.ndim == 2:
        space = PointSpace if data.is_floating_point() else TokenSpace
    elif data.ndim == 5:
        space = VideoSpace
    else:
        space = LatentImageSpace if config.latent is not None else PixelImageSpace
    process = config.diffusion.process
    if process.family != space.family:
        expected = {
            "discrete": "--process absorbing (masked diffusion, MDLM) or uniform",
            "gaussian": "a Gaussian process such as --process ddpm, vp, edm or flow",
            "mixed": "--process mixed (Gaussian numbers, masked categories)",
        }[space.family]
        raise DataError(
            f"{ {'discrete': 'text', 'mixed': 'table'}.get(space.family, space.name) } data needs {expected}, not "
            f"process={process.name!r}."
        )
    return space
