"""Ancestral samplers of the discrete processes (floor 3): a pure function ``sample_tokens`` that starts from the
prior at t = 1 and draws x_s ~ p_theta(x_s | x_t) down the uniform grid t_k = k / steps to t = 0.

Absorbing: MDLM's ancestral unmasking (Sahoo et al. 2024, sec. 4.1 with eq. 7; its efficient sampler ``ddpm_cache``:
each MASK unmasks with probability (alpha_s - alpha_t) / (1 - alpha_t) to a draw from x0_hat; unmasked tokens stay),
with MDLM's cache: when a sample's tokens did not change in a step, the network is not called again and the previous
x0_hat is reused. Uniform: D3PM's ancestral step with the x0-parameterisation (Austin et al. 2021, eq. 4). The step
itself is ``process.ancestral_step``; this module adds the network, guidance, temperature, nucleus filtering,
infilling and the per-sample random streams.

Sample i draws all its randomness from a generator seeded by ``diffusionlab.sampling.sample_seed(seed, i)``:
the same seed gives the same tokens at any batch size (for a network whose outputs do not depend on the batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..sampling.guidance import null_conditioning
from ..sampling.noise import sample_seed
from .processes import AbsorbingProcess, DiscreteProcess

__all__ = ["sample_tokens", "x0_probs", "guided_log_probs", "TokenCallback", "TOKEN_SAMPLERS"]

Model = Callable[[Tensor, Tensor, Any], Tensor]


class TokenCallback(Protocol):
    """Called after each step i with the time reached t (B,), the tokens x there and the denoiser's most likely
    clean tokens x0 of that step (argmax of x0_hat). It must not modify the tensors in place."""

    def __call__(self, *, step: int, t: Tensor, x: Tensor, x0: Tensor) -> None: ...


# ------------------------------------------------------------------------------------------------ x0_hat


def guided_log_probs(cond_logits: Tensor, uncond_logits: Tensor, guidance: float) -> Tensor:
    """Classifier-free guidance on x0_hat in log space, the library's convention (Ho & Salimans 2022, eq. 6, with
    w = 1 the conditional model): log p_u + w (log p_c - log p_u), renormalised (as LLaDA, Nie et al. 2025)."""
    dtype = torch.promote_types(cond_logits.dtype, torch.float32)
    log_c = torch.log_softmax(cond_logits.to(dtype), -1)
    log_u = torch.log_softmax(uncond_logits.to(dtype), -1)
    return torch.log_softmax(log_u + guidance * (log_c - log_u), -1)


def x0_probs(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0) -> Tensor:
    """x0_hat (..., K) (float32 or wider) from logits: softmax(logits / temperature) (temperature 0: the argmax,
    one-hot), then nucleus filtering (Holtzman et al. 2020): keep the most likely classes whose mass first reaches
    top_p."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if temperature == 0:
        probs = torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    else:
        probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more likely classes
        keep_sorted = before < top_p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


# ------------------------------------------------------------------------------------------------ checks


def _check_settings(
    process: DiscreteProcess, shape: Sequence[int], steps: int, seed: int, temperature: float, top_p: float
) -> tuple[int, int]:
    if not isinstance(process, DiscreteProcess):
        raise ValueError(f"process must be a DiscreteProcess (absorbing or uniform), got {type(process).__name__}.")
    if len(shape) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"shape={tuple(shape)} must be (batch, length) with two positive integers.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} must be a positive integer.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer.")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 = always the most likely token).")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must lie in (0, 1] (1 = no nucleus filtering).")
    return int(shape[0]), int(shape[1])


def _check_infill(
    process: DiscreteProcess, keep: Tensor | None, given: Tensor | None, shape: tuple[int, int]
) -> tuple[Tensor | None, Tensor | None]:
    if keep is None and given is None:
        return None, None
    if keep is None or given is None:
        raise ValueError("infilling needs both keep (which positions are fixed) and given (their tokens).")
    if keep.dtype != torch.bool or tuple(keep.shape) != shape:
        raise ValueError(f"keep must be a bool tensor of shape {shape}, got {keep.dtype} {tuple(keep.shape)}.")
    if tuple(given.shape) != shape:
        raise ValueError(f"given has shape {tuple(given.shape)}; expected {shape}.")
    given = torch.where(keep, given, torch.zeros_like(given))  # only the kept positions must be real tokens
    return keep, process.check_tokens(given, "given")


def _unconditional(cond: Any, uncond: Any) -> Any:
    if uncond is not None:
        return uncond
    if isinstance(cond, Tensor):
        return torch.full_like(cond, -1)  # the library's null label
    if isinstance(cond, Mapping):
        return null_conditioning(cond)
    raise ValueError(f"guidance needs uncond: the unconditional branch of a {type(cond).__name__} condition.")


def _rows(cond: Any, rows: Tensor, batch: int) -> Any:
    """The conditioning of the samples ``rows``: tensors (and mappings of tensors) with a batch axis are indexed."""
    if isinstance(cond, Tensor) and cond.ndim > 0 and cond.shape[0] == batch:
        return cond[rows.to(cond.device)]
    if isinstance(cond, Mapping):
        return {k: _rows(v, rows, batch) for k, v in cond.items()}
    return cond


# ------------------------------------------------------------------------------------------------ sampler


@torch.no_grad()
def sample_tokens(
    process: DiscreteProcess,
    model: Model,
    shape: Sequence[int],
    steps: int,
    *,
    seed: int,
    cond: Any = None,
    uncond: Any = None,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    keep: Tensor | None = None,
    given: Tensor | None = None,
    indices: Sequence[int] | None = None,
    cache: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
    callback: TokenCallback | None = None,
) -> Tensor:
    """Tokens (B, L) drawn by ancestral sampling over ``steps`` equal steps from t = 1 to 0; no MASK is left.

    ``model(x_t, t, cond) -> logits (B, L, K)``. ``guidance`` w != 1 mixes the conditional and unconditional
    branches (``guided_log_probs``; ``uncond`` defaults to the null label -1 for a label tensor and to
    ``null_conditioning`` for a mapping). ``temperature`` and ``top_p`` shape x0_hat (``x0_probs``). ``keep``
    (B, L) bool marks positions fixed to ``given`` tokens (infilling): they start as given and never change.
    ``indices`` name the samples' random streams (default 0..B-1). ``cache`` (absorbing only): call the model
    only for samples whose tokens changed since its last call, as MDLM does; identical to calling it every step
    for a model that ignores t (MDLM's choice: absorbing x0_hat does not depend on t), an approximation otherwise,
    so it is off unless asked for.
    """
    batch, length = _check_settings(process, shape, steps, seed, temperature, top_p)
    if not math.isfinite(guidance):
        raise ValueError(f"guidance={guidance} must be a finite number (1 = the conditional model).")
    guided = guidance != 1.0
    if guided and cond is None:
        raise ValueError(f"guidance={guidance} needs a condition (cond); without one use guidance=1.")
    uncond = _unconditional(cond, uncond) if guided else None
    keep, given = _check_infill(process, keep, given, (batch, length))
    indices = list(range(batch)) if indices is None else [int(i) for i in indices]
    if len(indices) != batch:
        raise ValueError(f"{len(indices)} indices were given for a batch of {batch}; give one per sample.")
    if device is None:
        device = given.device if given is not None else "cpu"
    device = torch.device(device)
    generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in indices]

    if isinstance(process, AbsorbingProcess):
        x = process.prior((batch, length), device=device)
    else:
        x = torch.stack([process.prior((length,), generator=g) for g in generators]).to(device)
    if keep is not None:
        keep, given = keep.to(device), given.to(device)
        x = torch.where(keep, given, x)
    use_cache = cache and isinstance(process, AbsorbingProcess)
    probs = torch.zeros(batch, length, process.num_classes, device=device)
    stale = torch.ones(batch, dtype=torch.bool, device=device)  # samples whose x0_hat must be (re)computed
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    loop = tqdm(range(steps), desc="sample_tokens", unit="step", leave=False) if progress else range(steps)
    for i in loop:
        t = ts[i].expand(batch).to(device)
        s = ts[i + 1].expand(batch).to(device)
        rows = stale.nonzero().squeeze(-1) if use_cache else torch.arange(batch, device=device)
        if len(rows) > 0:
            x_rows, t_rows = x[rows], t[rows].to(torch.get_default_dtype())
            logits = model(x_rows, t_rows, _rows(cond, rows, batch))
            if tuple(logits.shape) != (len(rows), length, process.num_classes):
                raise ValueError(
                    f"the model returned logits of shape {tuple(logits.shape)}; expected "
                    f"{(len(rows), length, process.num_classes)} (one logit per clean class for every token)."
                )
            if guided:
                logits = guided_log_probs(logits, model(x_rows, t_rows, _rows(uncond, rows, batch)), guidance)
            probs[rows] = x0_probs(logits.to(device), temperature, top_p).to(probs.dtype)
        u = torch.stack([torch.rand(length, 3, generator=g, dtype=torch.float64) for g in generators]).to(device)
        x_new = process.ancestral_step(x, probs, s, t, u)
        if keep is not None:
            x_new = torch.where(keep, given, x_new)
        stale = (x_new != x).any(-1)
        x = x_new
        if callback is not None:
            callback(step=i, t=s, x=x, x0=probs.argmax(-1))
    return x


# the discrete family's samplers by name (their options: ``diffusionlab.sampling.TOKEN_SAMPLER_OPTIONS``)
TOKEN_SAMPLERS: dict[str, Callable[..., Tensor]] = {"ancestral": sample_tokens}
