"""Variational diffusion models (floor 5): a model whose log-SNR schedule is learned with it, trained on the
continuous-time VLB (Kingma et al. 2021), as an objective of the one training loop.

The loss of an example is its VLB in bits/dim, ``evaluation.likelihood.continuous_vlb_terms``: the diffusion term
(eq. 17) at one time drawn by the low-discrepancy sampler of their appendix (t_i = (u + i / B) mod 1 over the
batch), the prior term at t = 1 and the discretised reconstruction at t = 0. The network's weights descend the
VLB itself; the schedule's descend it for its endpoints gamma_0, gamma_1 (the prior and reconstruction terms) and,
for its shape, the *squared* diffusion term (sec. 5.2: the VLB does not depend on the shape between the ends, but
the variance of its estimate does, and minimising E[L^2] minimises that variance). The squaring is done on the
gradient: every per-sample gamma(t_i) the loss reads carries a hook that multiplies its gradient by 2 L_i, which
turns d mean(L) / d gamma into d mean(L^2) / d gamma and leaves the network's gradients alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..denoisers import Denoiser
from ..evaluation.likelihood import continuous_vlb_terms
from ..processes import LearnedVPProcess, MonotoneLogSNR
from ..sampling import sample_seed
from .data import TrainingData
from .diffusion import DiffusionBatch, DiffusionObjective

__all__ = ["VLBObjective", "VarianceMinimisingSchedule", "low_discrepancy_times"]


def low_discrepancy_times(n: int, generator: torch.Generator) -> Tensor:
    """n times in [0, 1): t_i = (u + i / n) mod 1 with one u ~ U(0, 1) (Kingma et al. 2021, appendix I.1)."""
    u = torch.rand((), generator=generator, dtype=torch.float64)
    return (u + torch.arange(n, dtype=torch.float64) / n).remainder(1.0)


class VarianceMinimisingSchedule(nn.Module):
    """A learned schedule as the VLB loss reads it: gamma at the batch's own times ``t`` passes gradients scaled
    by 2 L_i (``losses`` (B,), filled in after the forward pass) to the schedule's weights; other times
    (the ends) pass them unchanged."""

    def __init__(self, schedule: MonotoneLogSNR, t: Tensor) -> None:
        super().__init__()
        self.schedule, self.t = schedule, t
        self.losses: Tensor | None = None

    def forward(self, t: Tensor) -> tuple[Tensor, Tensor]:
        g, dg = self.schedule(t)
        if t.shape == self.t.shape and t.data_ptr() == self.t.data_ptr() and g.requires_grad:
            g.register_hook(self._squared)
            dg.register_hook(self._squared)
        return g, dg

    def _squared(self, grad: Tensor) -> Tensor:
        assert self.losses is not None, "the per-sample losses are set before backward"
        return grad * 2 * self.losses.to(grad.dtype)


def _schedule_of(network: nn.Module) -> MonotoneLogSNR:
    inner = getattr(network, "module", network)
    return getattr(inner, "_orig_mod", inner).schedule


class VLBObjective(DiffusionObjective):
    """Train a model of a learned process (``VDMProcessConfig``) on the continuous-time VLB in bits/dim."""

    @classmethod
    def prepare(  # type: ignore[override]
        cls, config: ModelConfig, data: TrainingData | None, checkpoint: Path | None, device: torch.device
    ) -> VLBObjective:
        """A diffusion run whose fresh schedule starts linear between the config's gamma_min and gamma_max."""
        if config.train.time_sampling != "uniform" or config.train.weighting != "uniform":
            raise ValueError(
                f"time_sampling={config.train.time_sampling!r}, weighting={config.train.weighting!r}: a vdm model "
                "trains on its VLB, whose times are uniform and whose weighting is fixed; use uniform for both."
            )
        base = DiffusionObjective.prepare(config, data, checkpoint, device)
        if base.config.space != "image":
            raise ValueError(
                f"a vdm model's VLB ends in a decoder of 8-bit pixels; this data is {base.config.space!r}, not pixel "
                "images (use another process)."
            )
        if checkpoint is None:
            process = base.config.diffusion.process
            for net in (base.model.network, base.model.ema):
                if net is not None:
                    schedule = _schedule_of(net)
                    with torch.no_grad():
                        schedule.gamma_0.fill_(process.gamma_min)  # type: ignore[union-attr]
                        schedule.gamma_1.fill_(process.gamma_max)  # type: ignore[union-attr]
        return cls(base.config, base.model, base.data, base.captions)

    def global_batch(self, step: int) -> DiffusionBatch:
        """The plain batch with low-discrepancy times (one more draw from the step's own generator)."""
        batch = super().global_batch(step)
        gen = torch.Generator().manual_seed(sample_seed(self.train_config.seed, step) ^ 0x7D7D)
        return batch._replace(t=low_discrepancy_times(len(batch.t), gen).to(batch.t.dtype))

    def loss(self, network: nn.Module, batch: DiffusionBatch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, t, eps, cond = batch[:4]
        hooked = VarianceMinimisingSchedule(_schedule_of(network), t)
        process = LearnedVPProcess(schedule=hooked)  # type: ignore[arg-type]
        denoiser = Denoiser(network, process, self.model.parameterisation)
        denoiser.process = process  # the hooked schedule, not the network's plain one
        diffusion, prior, reconstruction = continuous_vlb_terms(denoiser, x0, t, eps, cond, t0=0.0)
        per_dim = x0[0].numel() * torch.log(torch.tensor(2.0))
        hooked.losses = (diffusion / per_dim).detach()
        bpd = (diffusion + prior + reconstruction) / per_dim
        parts: dict[str, Any] = {
            "diffusion_bpd": (diffusion / per_dim).mean().detach(),
            "prior_bpd": (prior / per_dim).mean().detach(),
            "reconstruction_bpd": (reconstruction / per_dim).mean().detach(),
        }
        return bpd.mean(), parts
