"""Process families: how a model of each kind of forward process is trained and sampled (floor 4, under the pipeline).

A ``ProcessConfig`` names its family ("gaussian" or "discrete"); ``FAMILIES`` turns that name into one of the objects
here, once, when a pipeline is built. The pipeline, the trainer and the evaluation then ask the family, never the
process's type:

- ``GaussianFamily``: x_t = alpha(t) x0 + sigma(t) eps; the denoising loss (Ho et al. 2020, eq. 14, with the
  config's weighting) and every solver of ``diffusionlab.sampling``, with classifier-free and classifier guidance.
- ``DiscreteFamily``: tokens corrupted by an absorbing or uniform process; the continuous-time NELBO (MDLM, Sahoo et
  al. 2024, eq. 10-11) at stratified times, and ancestral sampling (``sample_tokens``) with classifier-free guidance
  on class labels, temperature, nucleus filtering and infilling.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .conditioning import iter_batches, network_conditioning
from .config import ModelConfig
from .denoisers import Denoiser
from .discrete.losses import nelbo, stratified_times
from .discrete.processes import DiscreteProcess
from .discrete.sampling import TOKEN_SAMPLERS, sample_tokens
from .losses import TimeSampling, Weighting, denoising_loss
from .sampling import SAMPLERS, sample
from .sampling.request import SampleRequest, precision

__all__ = ["Family", "GaussianFamily", "DiscreteFamily", "FAMILIES", "TokenModel"]


class Family(ABC):
    """How models of one kind of process draw their training noise, compute their loss and sample."""

    name: ClassVar[str]
    samplers: ClassVar[Sequence[str]]  # the sampler names its models take

    def check_sampler(self, sampler: str) -> str:
        """``sampler``, or one clear error when models of this family cannot sample with it."""
        if sampler not in self.samplers:
            raise ValueError(
                f"sampler={sampler!r} does not sample a model of the {self.name} family; expected one of "
                f"{sorted(self.samplers)}."
            )
        return sampler

    @abstractmethod
    def check_config(self, config: ModelConfig) -> None:
        """One clear error for a training setting this family cannot honour, before any work."""

    @abstractmethod
    def times(self, process: Any, n: int, time_sampling: TimeSampling, generator: torch.Generator) -> Tensor:
        """n training times (float64, on the CPU)."""

    @abstractmethod
    def noise(self, process: Any, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """The forward process's random draw for clean data x0 at times t: what ``loss`` needs besides them."""

    @abstractmethod
    def loss(
        self, pipe: Any, network: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, cond: Any, weighting: Weighting
    ) -> Tensor:
        """The mean training loss of a micro-batch under ``network``."""

    @abstractmethod
    def draw(
        self,
        pipe: Any,
        request: SampleRequest,
        n: int,
        indices: Sequence[int],
        batch_size: int,
        progress: bool = False,
        callback: Any = None,
    ) -> Tensor:
        """Samples ``indices`` of n in the model's space (on the CPU), a resolved ``request`` applied."""


class GaussianFamily(Family):
    """x_t = alpha(t) x0 + sigma(t) eps: the denoising loss and the solvers of ``diffusionlab.sampling``."""

    name = "gaussian"
    samplers = tuple(SAMPLERS)

    def check_config(self, config: ModelConfig) -> None:
        return None

    def times(self, process: Any, n: int, time_sampling: TimeSampling, generator: torch.Generator) -> Tensor:
        return time_sampling(process, n, generator=generator)

    def noise(self, process: Any, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        return torch.randn(x0.shape, generator=generator)

    def loss(
        self, pipe: Any, network: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, cond: Any, weighting: Weighting
    ) -> Tensor:
        """The weighted denoising loss (Ho et al. 2020, eq. 14, with ``config.train.weighting``)."""
        denoiser = Denoiser(network, pipe.process, pipe.parameterisation)
        return denoising_loss(denoiser, x0, cond, t=t, eps=noise, weighting=weighting)

    def draw(self, pipe, request, n, indices, batch_size, progress=False, callback=None):  # type: ignore[no-untyped-def]
        guided, cond_all = pipe.guided_denoiser(n, request)
        out = []
        with precision(request.guidance.mixed_precision):
            for idx, cond in iter_batches(indices, batch_size, cond_all, pipe.device):
                x = self._batch(pipe, guided, request, idx, cond, progress, callback)
                out.append(pipe.decode(x).cpu())  # batch by batch: a latent model's decoder runs here
        return torch.cat(out)

    @staticmethod
    def _batch(
        pipe: Any, guided: Any, request: SampleRequest, idx: list[int], cond: Any, progress: bool, callback: Any
    ) -> Tensor:
        spec = request.sampler
        return sample(
            guided,
            pipe.sample_shape,
            indices=idx,
            sampler=spec.sampler,
            steps=spec.steps,
            spacing=spec.spacing,
            seed=request.seed,
            cond=cond,
            device=pipe.device,
            progress=progress,
            callback=callback,
            **spec.options,
        )


class TokenModel:
    """A token network as the discrete samplers and losses call it: ``model(x_t, t, cond) -> logits (B, L, K)``,
    ``cond`` a dict of the network's keyword inputs (``labels``) or None."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.network(x, t, **(cond or {}))


class DiscreteFamily(Family):
    """Tokens corrupted by an absorbing or uniform process: the NELBO per token and ancestral sampling."""

    name = "discrete"
    samplers = tuple(TOKEN_SAMPLERS)

    def check_config(self, config: ModelConfig) -> None:
        """Time sampling and loss weighting are the Gaussian family's: a discrete model trains on the NELBO."""
        tc = config.train
        if tc.time_sampling != "uniform":
            raise ValueError(
                f"time_sampling={tc.time_sampling!r} is for Gaussian processes; a discrete process "
                f"({config.diffusion.process.name}) trains on stratified uniform times: use uniform."
            )
        if tc.weighting != "uniform":
            raise ValueError(
                f"weighting={tc.weighting!r} is for Gaussian processes; a discrete process trains on its NELBO, whose "
                "weighting is fixed: use uniform."
            )

    def times(self, process: Any, n: int, time_sampling: TimeSampling, generator: torch.Generator) -> Tensor:
        return stratified_times(n, generator)

    def noise(self, process: DiscreteProcess, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """The corrupted tokens x_t ~ q(x_t | x0)."""
        return process.corrupt(x0, t, generator)

    def loss(
        self, pipe: Any, network: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, cond: Any, weighting: Weighting
    ) -> Tensor:
        """The NELBO in nats per token (MDLM, Sahoo et al. 2024, eq. 10-11), averaged over the micro-batch."""
        return nelbo(pipe.process, TokenModel(network), x0, t, cond, x_t=noise).mean() / x0.shape[-1]

    def draw(self, pipe, request, n, indices, batch_size, progress=False, callback=None):  # type: ignore[no-untyped-def]
        return self.draw_tokens(pipe, request, n, indices, batch_size, progress=progress, callback=callback)

    def draw_tokens(
        self,
        pipe: Any,
        request: SampleRequest,
        n: int,
        indices: Sequence[int],
        batch_size: int,
        keep: Tensor | None = None,
        given: Tensor | None = None,
        progress: bool = False,
        callback: Any = None,
    ) -> Tensor:
        """Ancestral sampling of samples ``indices`` of n; ``keep``/``given`` (n, L) fix tokens (infilling)."""
        g, c = request.guidance, request.conditioning
        if c.prompt is not None or c.negative_prompt is not None:
            raise ValueError("a prompt was given, but text models are conditioned on class labels only.")
        if c.cond_image is not None:
            raise ValueError("a condition image was given, but this model generates text.")
        unsupported = {
            "classifier_scale": g.classifier_scale or None,
            "guidance_rescale": g.guidance_rescale or None,
            "guidance_interval": g.guidance_interval,
            "thresholding": None if g.thresholding in (None, "none") else g.thresholding,
        }
        for name, value in unsupported.items():
            if value is not None:
                raise ValueError(f"{name}={value!r} applies to Gaussian models; a text model takes no {name}.")
        nc = network_conditioning(pipe.config, n, c, None, pipe.config.network.num_classes)
        model = TokenModel(pipe.denoiser_network(request.use_ema))
        guidance = g.guidance if nc.guided else 1.0
        out = []
        with precision(g.mixed_precision):
            for idx, cond in iter_batches(indices, batch_size, nc.cond or None, pipe.device):
                out.append(self._batch(pipe, model, request, idx, cond, guidance, keep, given, progress, callback))
        return torch.cat(out)

    @staticmethod
    def _batch(
        pipe: Any,
        model: TokenModel,
        request: SampleRequest,
        idx: list[int],
        cond: Any,
        guidance: float,
        keep: Tensor | None,
        given: Tensor | None,
        progress: bool,
        callback: Any,
    ) -> Tensor:
        spec, rows = request.sampler, torch.as_tensor(idx)
        return sample_tokens(
            pipe.process,
            model,
            (len(idx), pipe.sample_shape[0]),
            spec.steps,
            seed=request.seed,
            cond=cond,
            guidance=guidance,
            keep=None if keep is None else keep[rows].to(pipe.device),
            given=None if given is None else given[rows].to(pipe.device),
            indices=idx,
            device=pipe.device,
            progress=progress,
            callback=callback,
            **spec.options,
        ).cpu()


FAMILIES: dict[str, Family] = {family.name: family for family in (GaussianFamily(), DiscreteFamily())}
