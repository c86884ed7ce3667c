"""Process families: how a model of each kind of forward process is trained and sampled (floor 4, under the pipeline).

A ``ProcessConfig`` names its family ("gaussian" or "discrete"); ``FAMILIES`` turns that name into one of the objects
here, once, when a pipeline is built. The pipeline, the trainer and the evaluation then ask the family, never the
process's type:

- ``GaussianFamily``: x_t = alpha(t) x0 + sigma(t) eps; the denoising loss (Ho et al. 2020, eq. 14, with the
  config's weighting) and every solver of ``diffusionlab.sampling``, with classifier-free and classifier guidance.
- ``MixedFamily``: table rows, Gaussian numbers and masked categories at one shared time in one network (TabDDPM).
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
from tqdm.auto import tqdm

from .conditioning import check_labels, iter_batches, network_conditioning
from .config import ModelConfig
from .denoisers import Coefficients, Denoiser, Prediction, noise_conditioning
from .discrete.losses import nelbo, stratified_times
from .discrete.processes import DiscreteProcess
from .discrete.sampling import TOKEN_SAMPLERS, guided_log_probs, sample_tokens, x0_probs
from .losses import TimeSampling, Weighting, denoising_loss
from .sampling import SAMPLERS, NoiseSource, default_spacing, prior_std, sample, sample_seed, time_grid
from .sampling.request import SampleRequest, precision
from .sampling.solvers import ddim_step

__all__ = ["Family", "GaussianFamily", "DiscreteFamily", "MixedFamily", "FAMILIES", "TokenModel", "column_logits"]


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
        self,
        pipe: Any,
        network: nn.Module,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Any,
        weighting: Weighting,
        loss_mask: Tensor | None = None,
    ) -> Tensor:
        """The mean training loss of a micro-batch under ``network`` (over the elements ``loss_mask`` marks, if any)."""

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
        self,
        pipe: Any,
        network: nn.Module,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Any,
        weighting: Weighting,
        loss_mask: Tensor | None = None,
    ) -> Tensor:
        """The weighted denoising loss (Ho et al. 2020, eq. 14, with ``config.train.weighting``)."""
        denoiser = Denoiser(network, pipe.process, pipe.parameterisation)
        return denoising_loss(denoiser, x0, cond, t=t, eps=noise, weighting=weighting, mask=loss_mask)

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
            times=spec.times,
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
        self,
        pipe: Any,
        network: nn.Module,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Any,
        weighting: Weighting,
        loss_mask: Tensor | None = None,
    ) -> Tensor:
        """The NELBO in nats per token (MDLM, Sahoo et al. 2024, eq. 10-11), averaged over the micro-batch."""
        _refuse_loss_mask(loss_mask, "text")
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
        net = pipe.config.network
        _refuse_gaussian_settings(request, "text", prompts=bool(net.text_dim))
        g, c = request.guidance, request.conditioning
        encoder = pipe.text_encoder if net.text_dim else None
        nc = network_conditioning(pipe.config, n, c, encoder, net.num_classes)
        model = TokenModel(pipe.denoiser_network(request.use_ema))
        guidance = g.guidance if nc.guided else 1.0
        uncond = {k: v.to(pipe.device) for k, v in nc.uncond.items()} or None
        out = []
        with precision(g.mixed_precision):
            for idx, cond in iter_batches(indices, batch_size, nc.cond or None, pipe.device):
                part = None if uncond is None else {k: v.expand(len(idx), *v.shape[1:]) for k, v in uncond.items()}
                out.append(
                    self._batch(pipe, model, request, idx, (cond, part), guidance, keep, given, progress, callback)
                )
        return torch.cat(out)

    @staticmethod
    def _batch(
        pipe: Any,
        model: TokenModel,
        request: SampleRequest,
        idx: list[int],
        cond: tuple[Any, Any],
        guidance: float,
        keep: Tensor | None,
        given: Tensor | None,
        progress: bool,
        callback: Any,
    ) -> Tensor:
        """One batch: ``cond`` is (the conditional inputs, the unconditional branch's text inputs or None)."""
        spec, rows = request.sampler, torch.as_tensor(idx)
        # MDLM's cache is exact for a network that ignores t: then on unless asked otherwise
        options = {"cache": not pipe.config.network.time_conditioning} | dict(spec.options)
        return sample_tokens(
            pipe.process,
            model,
            (len(idx), pipe.sample_shape[0]),
            spec.steps,
            seed=request.seed,
            cond=cond[0],
            uncond=cond[1],
            guidance=guidance,
            keep=None if keep is None else keep[rows].to(pipe.device),
            given=None if given is None else given[rows].to(pipe.device),
            indices=idx,
            device=pipe.device,
            progress=progress,
            callback=callback,
            **options,
        ).cpu()


MASKED_LOGIT = -1e4  # the logit of a category a column does not have: probability 0, finite under guidance


class _RowNetwork(nn.Module):
    """A tabular network seen as a Gaussian denoiser's network over the numeric columns: it is called with the
    numeric input and c_noise, the categorical tokens it was given are appended, and the categorical logits of the
    same call are kept in ``logits`` for the discrete part of the loss."""

    def __init__(self, network: nn.Module, tokens: Tensor, num_numeric: int) -> None:
        super().__init__()
        self.network, self.tokens, self.num_numeric = network, tokens, num_numeric
        self.logits: Tensor | None = None

    def forward(self, x: Tensor, c_noise: Tensor, **cond: Any) -> Tensor:
        out = self.network(torch.cat([x, self.tokens.to(x.dtype)], dim=1), c_noise, **cond)
        self.logits = out[:, self.num_numeric :]
        return out[:, : self.num_numeric]


def column_logits(flat: Tensor, cardinalities: Sequence[int], classes: int) -> Tensor:
    """Each categorical column's logits (B, sum K_c) as (B, C, classes): a column's K_c categories first, the
    categories it does not have at ``MASKED_LOGIT``."""
    out = flat.new_full((flat.shape[0], len(cardinalities), classes), MASKED_LOGIT)
    start = 0
    for j, k in enumerate(cardinalities):
        out[:, j, :k] = flat[:, start : start + k]
        start += k
    return out


def _refuse_loss_mask(loss_mask: Tensor | None, kind: str) -> None:
    """One clear error for a loss mask (a conditional imputation model's) given to a family without one."""
    if loss_mask is not None:
        raise ValueError(f"a {kind} model's loss counts every element; it takes no loss mask.")


def _refuse_gaussian_settings(request: SampleRequest, kind: str, prompts: bool = False) -> None:
    """One clear error for a setting only Gaussian models take (prompts unless ``prompts``, condition images,
    classifier guidance, CFG rescale and interval, thresholding)."""
    g, c = request.guidance, request.conditioning
    if not prompts and (c.prompt is not None or c.negative_prompt is not None):
        raise ValueError(f"a prompt was given, but this {kind} model was trained without prompts.")
    if c.cond_image is not None:
        raise ValueError(f"a condition image was given, but this model generates {kind}.")
    unsupported = {
        "classifier_scale": g.classifier_scale or None,
        "guidance_rescale": g.guidance_rescale or None,
        "guidance_interval": g.guidance_interval,
        "thresholding": None if g.thresholding in (None, "none") else g.thresholding,
    }
    for name, value in unsupported.items():
        if value is not None:
            raise ValueError(f"{name}={value!r} applies to Gaussian models; a {kind} model takes no {name}.")


class MixedFamily(Family):
    """Table rows: a Gaussian process over the numeric columns and a discrete process over the categorical ones at one
    shared time, one network predicting both (TabDDPM, Kotelnikov et al. 2023): MDLM's masking for the categories,
    or TabDDPM's multinomial diffusion (uniform transitions over each column's own categories).

    Loss: the Gaussian denoising loss of the numeric columns plus the categorical columns' NELBO per column
    (TabDDPM's L_simple + sum_i L_i / C, sec. 3). Sampling: ancestral on one grid: DDPM's posterior step for the
    numbers (DDIM with eta = 1) and the discrete process's ancestral step for the categories (MDLM's unmasking, or
    D3PM's x0-parameterised uniform step from a uniform start), each sample from its own random stream.
    A model conditioned on a categorical target carries the row's label as its last value; rows asked for without
    labels get labels drawn from the training frequencies (as TabDDPM samples y first)."""

    name = "mixed"
    samplers = ("ancestral",)

    def check_config(self, config: ModelConfig) -> None:
        if config.train.time_sampling != "uniform":
            raise ValueError(
                f"time_sampling={config.train.time_sampling!r}: a table's categorical NELBO needs uniform times; use "
                "uniform."
            )

    def times(self, process: Any, n: int, time_sampling: TimeSampling, generator: torch.Generator) -> Tensor:
        return time_sampling(process.numeric, n, generator=generator)

    def noise(self, process: Any, x0: Tensor, t: Tensor, generator: torch.Generator) -> Tensor:
        """Gaussian noise for the numeric columns, the corrupted categories, zeros for a label."""
        n, c = process.num_numeric, process.num_categorical
        eps = torch.randn((x0.shape[0], n), generator=generator)
        tokens = process.categorical.corrupt(x0[:, n : n + c].round().long(), t, generator) if c else eps[:, :0]
        rest = torch.zeros(x0.shape[0], x0.shape[1] - n - c)
        return torch.cat([eps, tokens.to(eps.dtype), rest], dim=1)

    def loss(
        self,
        pipe: Any,
        network: nn.Module,
        x0: Tensor,
        t: Tensor,
        noise: Tensor,
        cond: Any,
        weighting: Weighting,
        loss_mask: Tensor | None = None,
    ) -> Tensor:
        """Gaussian denoising loss of the numeric columns + the categorical NELBO in nats per column."""
        _refuse_loss_mask(loss_mask, "table")
        process = pipe.process
        n, c = process.num_numeric, process.num_categorical
        rows = _RowNetwork(network, noise[:, n : n + c], n)
        denoiser = Denoiser(rows, process.numeric, pipe.parameterisation)
        x_num = x0[:, :n]
        total = denoising_loss(denoiser, x_num, cond, t=t, eps=noise[:, :n], weighting=weighting) if n else 0.0
        if not n:
            denoiser.forward_raw(x_num, t, cond)  # the network's one call: its logits
        if c:
            cards, classes = pipe.config.network.cardinalities, process.categorical.num_classes
            logits = column_logits(rows.logits, cards, classes)
            nats = nelbo(
                process.categorical,
                lambda *_: logits,
                x0[:, n : n + c].round().long(),
                t,
                x_t=noise[:, n : n + c].round().long(),
            )
            total = total + nats.mean() / c
        return total

    def draw(self, pipe, request, n, indices, batch_size, progress=False, callback=None):  # type: ignore[no-untyped-def]
        return self.draw_rows(pipe, request, n, indices, batch_size, progress=progress)

    def draw_rows(
        self,
        pipe: Any,
        request: SampleRequest,
        n: int,
        indices: Sequence[int],
        batch_size: int,
        known: Tensor | None = None,
        keep: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Rows ``indices`` of n in the model's space; ``keep`` (n, D) marks the values of ``known`` (n, D) to keep
        (imputation: RePaint's replacement for the numbers, Lugmayr et al. 2022; kept tokens for the categories)."""
        _refuse_gaussian_settings(request, "table")
        options = dict(request.sampler.options)
        temperature = float(options.pop("temperature", 1.0))
        if options:
            raise ValueError(f"option(s) {sorted(options)} do not apply to table models; they take temperature.")
        if not (temperature >= 0 and temperature < float("inf")):
            raise ValueError(f"temperature={temperature} must be a finite number >= 0.")
        labels = self._labels(pipe, request, n)
        out = []
        with precision(request.guidance.mixed_precision):
            for idx, cond in iter_batches(
                indices, batch_size, {"labels": labels} if labels is not None else None, pipe.device
            ):
                rows = torch.as_tensor(idx)
                part = None if known is None else (known[rows].to(pipe.device), keep[rows].to(pipe.device))
                out.append(self._batch(pipe, request, idx, cond, part, temperature, progress).cpu())
        return torch.cat(out)

    @staticmethod
    def _labels(pipe: Any, request: SampleRequest, n: int) -> Tensor | None:
        """The labels of a conditioned model's rows: those asked for, else draws from the training frequencies."""
        schema, k = pipe.config.data.table, pipe.config.network.num_classes
        if not k:
            return check_labels(request.conditioning.labels, n, None)
        given = check_labels(request.conditioning.labels, n, k)
        if given is not None:
            return given
        target = next(c for c in schema.columns if c.name == schema.target)
        weights = torch.tensor(target.frequencies or [1.0] * k, dtype=torch.float64)
        draws = [
            torch.multinomial(
                weights, 1, generator=torch.Generator().manual_seed(sample_seed(request.seed, i) ^ 0x5EED)
            )
            for i in range(n)
        ]
        return torch.cat(draws)

    def _batch(self, pipe, request, idx, cond, part, temperature, progress):  # type: ignore[no-untyped-def]
        process, net = pipe.process, pipe.denoiser_network(request.use_ema)
        n, c = process.num_numeric, process.num_categorical
        cards, classes = pipe.config.network.cardinalities, process.categorical.num_classes
        spec, batch, device = request.sampler, len(idx), pipe.device
        ts = time_grid(process.numeric, spec.steps, spec.spacing or default_spacing(process.numeric))
        noise = NoiseSource(request.seed, idx, device)
        x = prior_std(process.numeric, ts[0]) * noise((n,))
        tokens = torch.stack([process.categorical.prior((c,), generator=g) for g in noise.generators]).to(device)
        labels = None if cond is None else cond["labels"]
        w = request.guidance.guidance if labels is not None else 1.0
        if part is not None:
            known, keep = part
            tokens = torch.where(keep[:, n : n + c], known[:, n : n + c].round().long(), tokens)
        steps = range(len(ts) - 1)
        for i in tqdm(steps, desc="sample rows", leave=False) if progress else steps:
            t, s = ts[i], ts[i + 1]
            pred, logits = self._predict(net, pipe, x, tokens, t, labels)
            logits = column_logits(logits, cards, classes)
            if w != 1.0:  # classifier-free guidance (Ho & Salimans 2022) on x0_hat and on the categories' log-probs
                pred_u, logits_u = self._predict(net, pipe, x, tokens, t, torch.full_like(labels, -1))
                pred = pred.with_x0(pred_u.x0 + w * (pred.x0 - pred_u.x0))
                logits = guided_log_probs(logits, column_logits(logits_u, cards, classes), w)
            x = ddim_step(process.numeric, pred, t, s, 1.0, noise) if n else x
            u = torch.stack([torch.rand(c, 3, generator=g, dtype=torch.float64) for g in noise.generators]).to(device)
            if c:
                probs = x0_probs(logits, temperature)
                tb, sb = t.expand(batch).double(), s.expand(batch).double()
                tokens = process.categorical.ancestral_step(tokens, probs, sb, tb, u)
            if part is not None:
                a, sig = float(process.numeric.alpha(s)), float(process.numeric.sigma(s))
                forward = a * known[:, :n] + sig * noise((n,)) if float(s) > 0 else known[:, :n]
                x = torch.where(keep[:, :n], forward, x)
                tokens = torch.where(keep[:, n : n + c], known[:, n : n + c].round().long(), tokens)
        rest = [labels[:, None].to(x.dtype)] if pipe.config.network.num_classes else []
        return torch.cat([x, tokens.to(x.dtype), *rest], dim=1)

    @staticmethod
    def _predict(net, pipe, x, tokens, t, labels):  # type: ignore[no-untyped-def]
        """The numeric prediction and the categorical logits (B, sum K_c) of one network call."""
        process = pipe.process
        tt = t.expand(x.shape[0]).to(torch.float32)
        coef = Coefficients(process.numeric, tt, x)
        c_noise = noise_conditioning(process.numeric, tt).to(torch.float32)
        x_in = pipe.parameterisation.network_input(x, coef)
        out = net(
            torch.cat([x_in, tokens.to(x_in.dtype)], dim=1),
            c_noise,
            **({"labels": labels} if labels is not None else {}),
        )
        n = process.num_numeric
        x0, eps = pipe.parameterisation.prediction(out[:, :n].to(x.dtype), x, coef)
        return Prediction(x, x0, eps, coef.alpha, coef.sigma), out[:, n:].float()


FAMILIES: dict[str, Family] = {family.name: family for family in (GaussianFamily(), DiscreteFamily(), MixedFamily())}
