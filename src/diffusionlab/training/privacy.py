"""Differentially private training: DP-SGD through Opacus (floor 5).

DP-SGD (Abadi et al. 2016, Algorithm 1): every example's gradient is clipped to norm C, the clipped gradients are
summed, Gaussian noise of standard deviation sigma C is added, and the sum is divided by the expected batch size;
batches are Poisson samples of the training rows (each row in with probability q = batch_size / N), which the
accountant assumes. The noise multiplier sigma is chosen so that the whole run spends the asked epsilon at delta
(Opacus's ``get_noise_multiplier`` with the RDP accountant, Mironov 2017); the epsilon actually spent after any
number of steps is reported and stored in the model's config (``PrivacyReport``). The EMA of the weights is
post-processing and spends nothing more.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import PrivacyReport, TrainConfig

__all__ = ["PrivateTraining", "default_delta", "poisson_rows"]


# the Renyi orders the accountant minimises over: Opacus's defaults (1.1..10.9 and 12..63) and larger ones, where a
# large epsilon or few steps put the best order (else the bound is valid but loose, and Opacus warns)
ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 384, 512, 768, 1024]


def default_delta(rows: int) -> float:
    """delta below 1/N, as DP requires to be meaningful: min(1e-5, 1 / (10 N))."""
    return min(1e-5, 1.0 / (10 * rows))


def poisson_rows(rows: int, sample_rate: float, generator: torch.Generator) -> torch.Tensor:
    """The indices of a Poisson-sampled batch: each of ``rows`` rows independently with probability ``sample_rate``."""
    return (torch.rand(rows, generator=generator) < sample_rate).nonzero().squeeze(-1)


@dataclass
class PrivateTraining:
    """A DP-SGD run's plan: the rows N, the sample rate q, delta, the clipping bound C and the noise multiplier sigma
    (from the asked epsilon over ``steps``, or a resumed run's own)."""

    rows: int
    sample_rate: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    generator: torch.Generator

    @classmethod
    def plan(cls, tc: TrainConfig, rows: int, saved: PrivacyReport | None = None) -> PrivateTraining:
        """The plan of a run of ``tc`` on ``rows`` training rows; one clear error where DP-SGD cannot run."""
        from opacus.accountants.utils import get_noise_multiplier

        if tc.grad_accumulation != 1:
            raise ValueError(f"grad_accumulation={tc.grad_accumulation}: DP-SGD clips whole batches; use 1.")
        if tc.batch_size >= rows:
            raise ValueError(
                f"batch_size={tc.batch_size} is not below the {rows} training rows; DP-SGD's privacy comes from "
                "sampling a small share of them per step."
            )
        q = tc.batch_size / rows
        delta = tc.dp_delta if tc.dp_delta is not None else default_delta(rows)
        if saved is not None:
            sigma = saved.noise_multiplier
        else:
            assert tc.dp_epsilon is not None
            with warnings.catch_warnings():  # the search tries tiny noise, where no order is large enough: not ours
                warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
                sigma = get_noise_multiplier(
                    target_epsilon=tc.dp_epsilon,
                    target_delta=delta,
                    sample_rate=q,
                    steps=tc.steps,
                    accountant="rdp",
                    alphas=ALPHAS,
                )
        generator = torch.Generator().manual_seed(tc.seed + 0xD9)
        return cls(rows, q, delta, tc.dp_max_grad_norm, float(sigma), generator)

    def wrap(self, network: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int) -> tuple[nn.Module, Any]:
        """The network with per-example gradients and the optimiser that clips them and adds the noise; one clear
        error for a layer Opacus cannot compute per-example gradients of."""
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        # Opacus's hooks see no input that needs a gradient (the inputs are data): torch says so once per call
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        problems = ModuleValidator.validate(network, strict=False)
        if problems:
            raise ValueError(f"this network cannot be trained with DP-SGD: {problems[0]}")
        private = GradSampleModule(network, loss_reduction="mean")
        dp = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=batch_size,
            generator=self.generator,
        )
        return private, dp

    def report(self, steps: int) -> PrivacyReport:
        """The (epsilon, delta) spent after ``steps`` steps."""
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, self.sample_rate, steps)] if steps else []
        epsilon = float(accountant.get_epsilon(self.delta, alphas=ALPHAS)) if steps else 0.0
        return PrivacyReport(
            epsilon=epsilon,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            max_grad_norm=self.max_grad_norm,
        )
