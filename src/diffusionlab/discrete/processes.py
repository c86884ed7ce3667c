"""Discrete corruption processes over tokens in continuous time (floor 1: imports only torch and math).

A token x0 in {0..K-1} is kept with probability alpha(t) and otherwise replaced by a draw from a fixed
distribution pi: the MASK state for the absorbing process, the uniform distribution over the K classes for the
uniform process. In MDLM's notation (Sahoo et al. 2024, sec. 3.1, eq. 4), q(x_t | x0) = Cat(alpha_t x0 + (1 -
alpha_t) pi); the same kernel between two times s < t is q(x_t | x_s) = Cat(alpha_{t|s} x_s + (1 - alpha_{t|s}) pi)
with alpha_{t|s} = alpha_t / alpha_s (MDLM sec. 3.1, after eq. 4; D3PM, Austin et al. 2021, appendix A.2:
Q_t = (1 - beta_t) I + beta_t 1 pi^T). Time runs from t = 0 (clean, alpha = 1 exactly) to t = 1 (alpha = eps).

Vectors: tokens are integer tensors (B, ...), times are (B,) or scalars, probabilities end in a last axis over
the process's ``num_states`` (K + 1 for absorbing, the MASK being id K; K for uniform).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "DiscreteSchedule",
    "LogLinearSchedule",
    "CosineSchedule",
    "SCHEDULES",
    "make_schedule",
    "DiscreteProcess",
    "AbsorbingProcess",
    "UniformProcess",
    "PROCESSES",
    "make_process",
    "check_times",
    "MixedProcess",
]


# --------------------------------------------------------------------------------------------------- schedules


class DiscreteSchedule(ABC):
    """alpha(t): the probability that a token still holds its clean value at time t in [0, 1] (decreasing,
    alpha(0) = 1, alpha(1) = eps), with its derivative dalpha(t)."""

    name: str = ""

    def __init__(self, eps: float = 1e-3) -> None:
        eps = float(eps)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps={eps} must lie in (0, 1): alpha(1) = eps is the share of tokens left clean at t=1.")
        self.eps = eps

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t), elementwise."""

    @abstractmethod
    def dalpha(self, t: Tensor) -> Tensor:
        """d alpha / dt, elementwise (negative)."""

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        """1 - alpha(t), the corrupted share, without the cancellation of 1 - alpha near t = 0."""
        return 1.0 - self.alpha(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps})"


class LogLinearSchedule(DiscreteSchedule):
    """The log-linear schedule of SEDD (Lou et al. 2024) and MDLM (Sahoo et al. 2024; its code's LogLinearNoise,
    total noise sigma(t) = -log(1 - (1 - eps) t)):
    alpha(t) = exp(-sigma(t)) = 1 - (1 - eps) t, so the masked share grows linearly in t."""

    name = "loglinear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t


class CosineSchedule(DiscreteSchedule):
    """Cosine schedule alpha(t) = eps + (1 - eps) cos(pi t / 2): slow corruption near t = 0, fast near t = 1.
    Written as 1 - (1 - eps) 2 sin^2(pi t / 4), so alpha(0) = 1 exactly and 1 - alpha keeps its digits near 0."""

    name = "cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - self.one_minus_alpha(t)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * 2.0 * torch.sin(0.25 * math.pi * t) ** 2  # 1 - cos x = 2 sin^2(x / 2)

    def dalpha(self, t: Tensor) -> Tensor:
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * t)


SCHEDULES: dict[str, type[DiscreteSchedule]] = {"loglinear": LogLinearSchedule, "cosine": CosineSchedule}


def make_schedule(name: str | DiscreteSchedule, eps: float = 1e-3) -> DiscreteSchedule:
    """The schedule called ``name`` ("loglinear" or "cosine"); a schedule object is returned as it is."""
    if isinstance(name, DiscreteSchedule):
        return name
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r} is not a discrete schedule; expected one of {sorted(SCHEDULES)}.")
    return SCHEDULES[name](eps)


# --------------------------------------------------------------------------------------------------- checks


def check_times(t: Tensor | float, batch: int, name: str = "t") -> Tensor:
    """Times as a float (batch,) tensor, a scalar broadcast to the batch; one clear error unless all lie in [0, 1]."""
    t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)  # a Python float keeps its digits
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected a scalar or one time per sample, ({batch},).")
    bad = ~(torch.isfinite(t) & (t >= 0) & (t <= 1))
    if bool(bad.any()):
        raise ValueError(f"{name}={t[bad][0].item():.6g} must lie in [0, 1] (0 = clean data, 1 = fully corrupted).")
    return t


def _per_token(a: Tensor, like: Tensor) -> Tensor:
    """A (B,) tensor viewed to broadcast against a (B, ...) tensor."""
    return a.view(a.shape[0], *([1] * (like.ndim - 1)))


def _categorical(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draws from the rows of probs (N, K) with one U[0, 1) number per row (N,): the smallest j with
    cdf_j > u * cdf_K, so classes of probability 0 are never drawn."""
    cdf = probs.to(torch.float64).cumsum(-1)
    target = u.to(torch.float64)[:, None] * cdf[:, -1:]
    return (cdf <= target).sum(-1).clamp_max(probs.shape[-1] - 1)


# --------------------------------------------------------------------------------------------------- processes


class DiscreteProcess(ABC):
    """A corruption process over K clean classes with schedule alpha(t): closed-form marginals, forward
    corruption, the x0-parameterised posterior, the prior and an ancestral step."""

    name: str = ""
    mask_id: int | None = None

    def __init__(self, num_classes: int, schedule: DiscreteSchedule | str = "loglinear") -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes={num_classes!r} must be an integer >= 2 (the vocabulary size).")
        self.num_classes = num_classes
        self.schedule = make_schedule(schedule)

    @property
    @abstractmethod
    def num_states(self) -> int:
        """The number of states a noisy token can take (the network's input vocabulary)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, schedule={self.schedule!r})"

    def alpha(self, t: Tensor) -> Tensor:
        """The schedule's alpha(t)."""
        return self.schedule.alpha(t)

    # -- input checks

    def check_tokens(self, x: Tensor, name: str = "x0", allow_mask: bool = False) -> Tensor:
        """One clear error unless x is an integer tensor (B, ...) of ids in 0..K-1 (or the MASK id if allowed)."""
        if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor of token ids, got {getattr(x, 'dtype', type(x))}.")
        if x.ndim < 1:
            raise ValueError(f"{name} must have a batch axis first, got a scalar.")
        top = self.num_states if allow_mask else self.num_classes
        bad = (x < 0) | (x >= top)
        if bool(bad.any()):
            value = int(x[bad][0])
            extra = f" or the MASK id {self.mask_id}" if allow_mask and self.mask_id is not None else ""
            raise ValueError(f"{name} holds token id {value}; expected ids 0..{self.num_classes - 1}{extra}.")
        return x.long()

    def _check_probs(self, x0_probs: Tensor, x_t: Tensor) -> Tensor:
        if x0_probs.shape != (*x_t.shape, self.num_classes):
            raise ValueError(
                f"x0_probs has shape {tuple(x0_probs.shape)}; expected {(*x_t.shape, self.num_classes)} "
                "(a distribution over the clean classes for every token)."
            )
        if not x0_probs.is_floating_point():
            raise ValueError(f"x0_probs must be floating point probabilities, got {x0_probs.dtype}.")
        return x0_probs

    def _check_pair(self, x_t: Tensor, s: Tensor | float, t: Tensor | float) -> tuple[Tensor, Tensor]:
        s = check_times(s, x_t.shape[0], "s")
        t = check_times(t, x_t.shape[0], "t")
        bad = s >= t
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"s={s[i].item():.6g} must be smaller than t={t[i].item():.6g} (a step goes back in time)."
            )
        return s, t

    # -- the process

    @abstractmethod
    def pi(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The distribution (num_states,) that corrupted tokens are drawn from."""

    def marginal(self, x0: Tensor, t: Tensor | float) -> Tensor:
        """q(x_t | x0) = Cat(alpha_t x0 + (1 - alpha_t) pi) (MDLM eq. 4; D3PM eq. 3 with Q-bar_t), (B, ..., S)."""
        x0 = self.check_tokens(x0)
        t = check_times(t, x0.shape[0]).to(x0.device)
        t64 = t.to(x0.device, torch.float64)
        dtype = t.dtype
        a = _per_token(self.schedule.alpha(t64).to(dtype), x0).unsqueeze(-1)
        b = _per_token(self.schedule.one_minus_alpha(t64).to(dtype), x0).unsqueeze(-1)
        onehot = torch.nn.functional.one_hot(x0, self.num_states).to(dtype)
        return a * onehot + b * self.pi(dtype, x0.device)

    def corrupt(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        """A draw x_t ~ q(x_t | x0): each token kept with probability alpha_t, else replaced by a draw from pi."""
        x0 = self.check_tokens(x0)
        t = check_times(t, x0.shape[0]).to(x0.device)
        device = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape, generator=generator, device=device, dtype=torch.float64).to(x0.device)
        keep = u < _per_token(self.alpha(t).to(torch.float64), x0)
        return torch.where(keep, x0, self._noise_tokens(x0, generator))

    @abstractmethod
    def _noise_tokens(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """Tokens drawn from pi, shaped like x0."""

    @abstractmethod
    def posterior(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """q(x_s | x_t, x0) with x0 ~ x0_probs (B, ..., K), for 0 <= s < t: probabilities (B, ..., num_states)."""

    @abstractmethod
    def ancestral_step(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float, u: Tensor) -> Tensor:
        """One draw x_s ~ posterior(x_t, x0_probs, s, t) from the U[0, 1) numbers u (B, ..., 3): the same u gives
        the same draw, so a sampler's randomness is wholly in u."""

    @abstractmethod
    def prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """x_1: where a sampler starts."""

    @abstractmethod
    def prior_probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """p(x_1) (num_states,) in the likelihood bound: q(x_1 | x0) for x0 uniform over the K classes."""

    @abstractmethod
    def prior_kl(self) -> float | Tensor:
        """KL(q(x_1 | x0) || p(x_1)) in nats per token; the same for every x0 (the prior term of the NELBO); a tensor
        (L,) where positions differ (a uniform process with cardinalities)."""

    def _check_step(
        self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float, u: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Checked x_t, x0_probs and s, then alpha_s, alpha_t, 1 - alpha_s, 1 - alpha_t shaped to broadcast."""
        x_t = self.check_tokens(x_t, "x_t", allow_mask=True)
        x0_probs = self._check_probs(x0_probs, x_t)
        s, t = self._check_pair(x_t, s, t)
        if u is not None and u.shape != (*x_t.shape, 3):
            raise ValueError(f"u has shape {tuple(u.shape)}; expected {(*x_t.shape, 3)} (three uniforms per token).")
        # alpha and 1 - alpha of s and t, each computed in float64 and then cast (1 - alpha keeps its digits)
        s64, t64 = s.to(x0_probs.device, torch.float64), t.to(x0_probs.device, torch.float64)
        sched = self.schedule
        a_s, a_t, b_s, b_t = (
            _per_token(v.to(x0_probs.dtype), x_t)
            for v in (sched.alpha(s64), sched.alpha(t64), sched.one_minus_alpha(s64), sched.one_minus_alpha(t64))
        )
        return x_t, x0_probs, s, a_s, a_t, b_s, b_t


class AbsorbingProcess(DiscreteProcess):
    """The absorbing (masking) process: a token turns into MASK (id K) with probability 1 - alpha_t and stays
    there (D3PM's absorbing Q_t = (1 - beta_t) I + beta_t 1 e_m^T, Austin et al. 2021 appendix A.2.2, eq. 7; MDLM)."""

    name = "absorbing"

    def __init__(self, num_classes: int, schedule: DiscreteSchedule | str = "loglinear") -> None:
        super().__init__(num_classes, schedule)
        self.mask_id = num_classes

    @property
    def num_states(self) -> int:
        return self.num_classes + 1

    def _noise_tokens(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.full_like(x0, self.mask_id)

    def posterior(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """MDLM's masked posterior (Sahoo et al. 2024, sec. 3.2.1, eq. 6) with the SUBS parameterisation
        (sec. 3.2.3, eq. 7): an unmasked x_t is carried over; a MASK stays masked with probability (1 - alpha_s) /
        (1 - alpha_t) and otherwise becomes a draw from x0_probs (zero mass on MASK). This equals D3PM's eq. 4
        (x0 summed out under x0_probs) because q(x_t = MASK | x0) does not depend on x0."""
        x_t, x0_probs, _, _, _, b_s, b_t = self._check_step(x_t, x0_probs, s, t, None)
        b_s, b_t = b_s.unsqueeze(-1), b_t.unsqueeze(-1)
        masked_row = torch.cat([(b_t - b_s) / b_t * x0_probs, (b_s / b_t).expand_as(x0_probs[..., :1])], -1)
        kept_row = torch.nn.functional.one_hot(x_t, self.num_states).to(x0_probs.dtype)
        return torch.where((x_t == self.mask_id).unsqueeze(-1), masked_row, kept_row)

    def ancestral_step(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float, u: Tensor) -> Tensor:
        """MDLM's ancestral unmasking step: each MASK unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t)
        (u[..., 0]) to a draw from x0_probs (u[..., 1]); unmasked tokens never change. At s = 0 every MASK
        unmasks, so the last step leaves none."""
        x_t, x0_probs, s, _, _, b_s, b_t = self._check_step(x_t, x0_probs, s, t, u)
        p_unmask = torch.where(_per_token(s, x_t).to(b_s.device) == 0, torch.ones_like(b_s), (b_t - b_s) / b_t)
        unmask = (x_t == self.mask_id) & (u[..., 0].to(b_s.dtype) < p_unmask)
        out = x_t.clone()
        if bool(unmask.any()):
            out[unmask] = _categorical(x0_probs[unmask], u[..., 1][unmask]).to(out.device)
        return out

    def prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """All MASK (the sampler's start; it has probability 1 - alpha(1) under prior_probs)."""
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    def prior_probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """MASK with probability 1 - alpha(1), each clean class alpha(1) / K."""
        a1 = self.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)).item()
        probs = torch.full((self.num_states,), a1 / self.num_classes, dtype=dtype, device=device)
        probs[self.mask_id] = 1.0 - a1
        return probs

    def pi(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """The MASK state as a one-hot (num_states,)."""
        out = torch.zeros(self.num_states, dtype=dtype, device=device)
        out[self.mask_id] = 1.0
        return out

    def prior_kl(self) -> float:
        """alpha(1) log K: q(x_1 | x0) puts alpha(1) on x0 where p(x_1) puts alpha(1) / K; the MASK masses agree."""
        a1 = self.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)).item()
        return a1 * math.log(self.num_classes)


class UniformProcess(DiscreteProcess):
    """The uniform-transition process (multinomial diffusion, Hoogeboom et al. 2021, sec. 4; D3PM's uniform
    Q_t = (1 - beta_t) I + beta_t 11^T / K, Austin et al. 2021 sec. 3.1): a token is replaced by a uniformly
    drawn class with probability 1 - alpha_t, and may change again later.

    ``cardinalities`` (one per position of the last token axis, each at most ``num_classes``) give every position
    its own K: a table's categorical columns, each with uniform transitions over its own categories only (TabDDPM's
    multinomial diffusion per column, Kotelnikov et al. 2023, sec. 3). A position's classes at or above its K have
    probability 0 everywhere; without cardinalities every position has all ``num_classes``."""

    name = "uniform"

    def __init__(
        self,
        num_classes: int,
        schedule: DiscreteSchedule | str = "loglinear",
        cardinalities: list[int] | tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(num_classes, schedule)
        self.cardinalities: Tensor | None = None
        if cardinalities is not None:
            cards = list(cardinalities)
            if not cards or any(
                isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes for k in cards
            ):
                raise ValueError(
                    f"cardinalities={cards!r} must be a non-empty list of integers in 1..{num_classes} (num_classes)."
                )
            self.cardinalities = torch.tensor(cards, dtype=torch.long)

    def __repr__(self) -> str:
        cards = "" if self.cardinalities is None else f", cardinalities={self.cardinalities.tolist()}"
        return f"{type(self).__name__}(num_classes={self.num_classes}, schedule={self.schedule!r}{cards})"

    @property
    def num_states(self) -> int:
        return self.num_classes

    def classes(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor | int:
        """K of every position: the cardinalities (L,) as ``dtype``, or the int ``num_classes`` without them."""
        if self.cardinalities is None:
            return self.num_classes
        return self.cardinalities.to(device=device, dtype=dtype)

    def valid(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor | float:
        """1 where a class exists at a position (L, K) and 0 where it does not; 1.0 without cardinalities."""
        if self.cardinalities is None:
            return 1.0
        cards = self.cardinalities.to(device)
        return (torch.arange(self.num_classes, device=device) < cards[:, None]).to(dtype)

    def check_tokens(self, x: Tensor, name: str = "x0", allow_mask: bool = False) -> Tensor:
        """As ``DiscreteProcess.check_tokens``, and with cardinalities: L positions, each id below its K."""
        x = super().check_tokens(x, name, allow_mask)
        if self.cardinalities is not None:
            cards = self.cardinalities.to(x.device)
            if x.shape[-1] != len(cards):
                raise ValueError(
                    f"{name} has {x.shape[-1]} positions in its last axis; expected {len(cards)}, one per cardinality."
                )
            bad = x >= cards
            if bool(bad.any()):
                j = int(bad.nonzero()[0, -1])
                raise ValueError(
                    f"{name} holds id {int(x[bad][0])} at position {j}; expected ids 0..{int(cards[j]) - 1}."
                )
        return x

    def _uniform_ids(self, u: Tensor) -> Tensor:
        """Uniform class ids from U[0, 1) numbers u (..., L): floor(u K), K per position."""
        k = self.classes(u.dtype, u.device)
        ids = (u * k).long()
        return ids.clamp_max(self.num_classes - 1) if isinstance(k, int) else torch.minimum(ids, (k - 1).long())

    def _noise_tokens(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else x0.device
        if self.cardinalities is None:
            return torch.randint(self.num_classes, x0.shape, generator=generator, device=device).to(x0.device)
        u = torch.rand(x0.shape, generator=generator, device=device, dtype=torch.float64).to(x0.device)
        return self._uniform_ids(u)

    def posterior(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float) -> Tensor:
        """D3PM's x0-parameterised reverse step (Austin et al. 2021, eq. 4; eq. 3 for one-hot x0), which is
        multinomial diffusion's theta_post(x_t, x0_hat) (Hoogeboom et al. 2021, sec. 4):
        p(x_s = j | x_t = i) proportional to q(x_t = i | x_s = j) * m_j, with q(x_t = i | x_s = j) = r [i = j] +
        (1 - r) / K, r = alpha_t / alpha_s, and m = alpha_s x0_probs + (1 - alpha_s) / K. The normaliser is
        r m_i + (1 - r) / K. With cardinalities, K is the position's and m is 0 on the classes it does not have."""
        x_t, x0_probs, _, a_s, a_t, b_s, b_t = self._check_step(x_t, x0_probs, s, t, None)
        a_s, a_t, b_s, b_t = (v.unsqueeze(-1) for v in (a_s, a_t, b_s, b_t))
        k = self.classes(x0_probs.dtype, x0_probs.device)
        k = k if isinstance(k, int) else k[:, None]
        r, one_minus_r = a_t / a_s, (b_t - b_s) / a_s
        m = (a_s * x0_probs + b_s / k) * self.valid(x0_probs.dtype, x0_probs.device)
        m_i = m.gather(-1, x_t.unsqueeze(-1))
        onehot = torch.nn.functional.one_hot(x_t, self.num_classes).to(m.dtype)
        return (one_minus_r / k * m + r * m_i * onehot) / (r * m_i + one_minus_r / k)

    def ancestral_step(self, x_t: Tensor, x0_probs: Tensor, s: Tensor | float, t: Tensor | float, u: Tensor) -> Tensor:
        """A draw from posterior() as a mixture: stay at x_t with probability r m_i / (r m_i + (1 - r) / K)
        (u[..., 0]); otherwise draw from m, i.e. from x0_probs with probability alpha_s (u[..., 1]) and uniformly
        otherwise (u[..., 2] picks the class in both cases)."""
        x_t, x0_probs, _, a_s, a_t, b_s, b_t = self._check_step(x_t, x0_probs, s, t, u)
        u = u.to(a_s.dtype)
        k = self.classes(a_s.dtype, a_s.device)
        r, one_minus_r = a_t / a_s, (b_t - b_s) / a_s
        m_i = a_s * x0_probs.gather(-1, x_t.unsqueeze(-1)).squeeze(-1) + b_s / k
        stay = u[..., 0] < r * m_i / (r * m_i + one_minus_r / k)
        from_x0 = ~stay & (u[..., 1] < a_s)
        out = torch.where(stay, x_t, self._uniform_ids(u[..., 2]).to(x_t.device))
        if bool(from_x0.any()):
            out[from_x0] = _categorical(x0_probs[from_x0], u[..., 2][from_x0]).to(out.device)
        return out

    def prior(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniformly drawn classes (each position's own K with cardinalities)."""
        gen_device = generator.device if generator is not None else device
        if self.cardinalities is None:
            return torch.randint(self.num_classes, tuple(shape), generator=generator, device=gen_device).to(device)
        u = torch.rand(tuple(shape), generator=generator, device=gen_device, dtype=torch.float64).to(device)
        return self._uniform_ids(u)

    def pi(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Uniform over the K classes (num_states,); with cardinalities, uniform over each position's (L, K)."""
        if self.cardinalities is None:
            return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=dtype, device=device)
        return self.valid(dtype, device) / self.classes(dtype, device)[:, None]

    def prior_probs(self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Uniform over the K classes (the stationary distribution, reached exactly only as alpha -> 0); with
        cardinalities, over each position's (L, K)."""
        return self.pi(dtype, device)

    def prior_kl(self) -> float | Tensor:
        """KL(alpha_1 x0 + (1 - alpha_1) / K || 1 / K) = (alpha_1 + b) log(K (alpha_1 + b)) + (K - 1) b log(K b),
        b = (1 - alpha_1) / K; with cardinalities one value per position (L,), float64."""
        a1 = self.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)).item()
        if self.cardinalities is None:
            k = self.num_classes
            b = (1.0 - a1) / k
            return (a1 + b) * math.log(k * (a1 + b)) + (k - 1) * b * math.log(k * b)
        k = self.cardinalities.to(torch.float64)
        b = (1.0 - a1) / k
        return (a1 + b) * torch.log(k * (a1 + b)) + (k - 1) * b * torch.log(k * b)


PROCESSES: dict[str, type[DiscreteProcess]] = {"absorbing": AbsorbingProcess, "uniform": UniformProcess}


def make_process(name: str, num_classes: int, schedule: DiscreteSchedule | str = "loglinear") -> DiscreteProcess:
    """The process called ``name`` ("absorbing" or "uniform") over ``num_classes`` clean classes."""
    if name not in PROCESSES:
        raise ValueError(f"process={name!r} is not a discrete process; expected one of {sorted(PROCESSES)}.")
    return PROCESSES[name](num_classes, schedule)


@dataclass(frozen=True)
class MixedProcess:
    """A table's forward process: a Gaussian process over its ``num_numeric`` numeric columns and a discrete process
    (absorbing, or uniform over each column's own categories) over its categorical columns, both at one shared time
    t (TabDDPM, Kotelnikov et al. 2023, sec. 3: Gaussian diffusion for numbers and a discrete diffusion for
    categories in one model). ``numeric`` is a
    ``diffusionlab.processes.GaussianProcess`` (not imported here: this floor imports only torch)."""

    numeric: Any
    categorical: DiscreteProcess
    num_numeric: int
    num_categorical: int
