"""Guidance as a denoiser wrapping a denoiser (floor 3): classifier-free and classifier guidance."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoisers import DenoiserLike, Prediction, noise_conditioning
from ..processes import broadcast_like

__all__ = [
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "null_conditioning",
    "check_guidance_interval",
    "soft_labels",
    "with_uncond",
]

# image and signal conditions are not guided: both branches see the same condition
_UNGUIDED = ("cond_image", "cond_signal", "inpaint_latents")  # inpaint_latents: SD inpainting UNets (interop)


def soft_labels(labels: Tensor, rows: int) -> Tensor:
    """Integer labels (-1: the null label) as one-hot weights over a label embedding's ``rows`` rows, the null row
    last; float labels (already weights) as they are."""
    if labels.is_floating_point():
        return labels
    return F.one_hot(torch.where(labels < 0, rows - 1, labels).long(), rows).float()


def _joined(cond: Tensor, null: Tensor) -> Tensor:
    """The conditional and unconditional values of one condition in one batch (labels as soft labels where either
    branch has weights)."""
    if cond.is_floating_point() != null.is_floating_point() and min(cond.ndim, null.ndim) == 1:
        rows = (cond if cond.is_floating_point() else null).shape[-1]
        cond, null = soft_labels(cond, rows), soft_labels(null, rows)
    return torch.cat([cond, null])


def null_conditioning(cond: Mapping[str, Tensor], uncond: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The "no condition" branch of a conditioning: class labels become the null label -1, text becomes the
    tokens given in ``uncond`` (the empty or the negative prompt's; one row broadcasts to the batch), condition
    images stay as they are."""
    uncond = uncond or {}
    out = {}
    for key, value in cond.items():
        if key in uncond:
            u = uncond[key].to(value.device)
            out[key] = u.expand(value.shape[0], *u.shape[1:]) if u.shape[0] == 1 else u
        elif key == "labels" and value.is_floating_point():  # soft labels: all weight on the null row
            out[key] = soft_labels(torch.full(value.shape[:1], -1, device=value.device), value.shape[1])
        elif key == "labels":
            out[key] = torch.full_like(value, -1)
        elif key in _UNGUIDED:
            out[key] = value
        else:
            raise ValueError(
                f"classifier-free guidance does not know the null value of condition {key!r}; pass it in uncond."
            )
    return out


def check_guidance_interval(interval: tuple[float, float] | None) -> tuple[float, float] | None:
    """None, or a (low, high) pair of noise levels with 0 <= low < high."""
    if interval is None:
        return None
    lo, hi = (float(v) for v in interval)
    if not 0 <= lo < hi:
        raise ValueError(f"guidance_interval={interval} must be two noise levels (low, high) with 0 <= low < high.")
    return lo, hi


def _rescale(x_cfg: Tensor, x_cond: Tensor, phi: float) -> Tensor:
    """CFG rescale (Lin et al. 2024, sec. 3.4, eqs. 15-18): bring the guided prediction's per-sample std back to
    the conditional one's, mixed with weight phi. Applied to x0, where over-exposure shows."""
    dims = tuple(range(1, x_cfg.ndim))
    factor = x_cond.std(dim=dims, keepdim=True) / x_cfg.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return x_cfg * (phi * factor + (1.0 - phi))


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6): eps = eps_u + w (eps_c - eps_u).

    w = 0 is the unconditional model, w = 1 the conditional one, w > 1 extrapolates. Both branches run in one
    batched network call. Combining eps or x0 is the same thing at fixed (x, t), so x0 is combined too.
    ``uncond`` holds the unconditional branch's values where they are not implied (text: the empty or the
    negative prompt). ``rescale`` phi in [0, 1] applies Lin et al.'s CFG rescale; ``interval`` (low, high)
    guides only where the noise level sigma/alpha lies in (low, high] and is conditional elsewhere
    (Kynkäänniemi et al. 2024, eq. 2).
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        scale: float,
        uncond: Mapping[str, Tensor] | None = None,
        rescale: float = 0.0,
        interval: tuple[float, float] | None = None,
    ) -> None:
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance_rescale={rescale} must lie in [0, 1].")
        self.denoiser = denoiser
        self.process = denoiser.process
        self.scale = float(scale)
        self.uncond = dict(uncond or {})
        self.rescale = float(rescale)
        self.interval = check_guidance_interval(interval)

    def _scale_at(self, t: Tensor | float, n: int) -> Tensor | float:
        if self.interval is None:
            return self.scale
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        noise_level = self.process.sigma(t) / self.process.alpha(t)
        inside = (noise_level > self.interval[0]) & (noise_level <= self.interval[1])
        return torch.where(inside, self.scale, 1.0).to(torch.float32)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        n = x.shape[0]
        w = self._scale_at(t, n)
        if not cond or (isinstance(w, float) and w == 1.0):
            return self.denoiser(x, t, cond)
        null = null_conditioning(cond, self.uncond)
        if isinstance(w, float) and w == 0.0:
            return self.denoiser(x, t, null)
        both = {k: _joined(v, null[k]) for k, v in cond.items()}
        t2 = torch.cat([t, t]) if isinstance(t, Tensor) and t.ndim == 1 else t
        pred = self.denoiser(torch.cat([x, x]), t2, both)
        w = broadcast_like(w.to(x.device), x) if isinstance(w, Tensor) else w
        x0 = pred.x0[n:] + w * (pred.x0[:n] - pred.x0[n:])
        alpha = pred.alpha[:n] if pred.alpha.ndim else pred.alpha
        sigma = pred.sigma[:n] if pred.sigma.ndim else pred.sigma
        if self.rescale > 0:
            x0 = _rescale(x0, pred.x0[:n], self.rescale)
            return Prediction(x, x0, (x - alpha * x0) / sigma, alpha, sigma)
        eps = pred.eps[n:] + w * (pred.eps[:n] - pred.eps[n:])
        return Prediction(x, x0, eps, alpha, sigma)


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021, eq. 14 / Algorithm 2): eps' = eps - s sigma grad log p(y | x_t),
    i.e. the score plus s times the gradient of a noise-aware classifier's log-probability of the label.

    ``classifier(x_in, c_noise) -> logits`` sees x_t / sqrt(alpha^2 + sigma^2) and the network noise input, as
    the denoiser's network does. Samples whose label is -1 (none) are not guided.
    """

    def __init__(
        self,
        denoiser: DenoiserLike,
        classifier: Callable[[Tensor, Tensor], Tensor],
        scale: float,
        keep_labels: bool = True,
    ) -> None:
        if scale < 0:
            raise ValueError(f"classifier_scale={scale} must be >= 0.")
        self.denoiser = denoiser
        self.process = denoiser.process
        self.classifier = classifier
        self.scale = float(scale)
        self.keep_labels = keep_labels  # False: the wrapped model is unconditional, labels are the classifier's

    def log_prob_grad(self, x: Tensor, t: Tensor | float, labels: Tensor) -> Tensor:
        """grad_x log p(y | x_t) for every sample (zero where the label is -1)."""
        t = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        alpha, sigma = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        c_noise = noise_conditioning(self.process, t).to(torch.float32)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = torch.log_softmax(self.classifier(xg / torch.sqrt(alpha**2 + sigma**2), c_noise).float(), dim=1)
            chosen = logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1)
            (grad,) = torch.autograd.grad((chosen * (labels >= 0)).sum(), xg)
        return grad.to(x.dtype)

    def __call__(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Tensor] | None = None) -> Prediction:
        inner = cond if self.keep_labels or not cond else {k: v for k, v in cond.items() if k != "labels"}
        pred = self.denoiser(x, t, inner or None)
        if not cond or "labels" not in cond or self.scale == 0.0:
            return pred
        eps = pred.eps - self.scale * pred.sigma * self.log_prob_grad(x, t, cond["labels"])
        return Prediction(x, (x - pred.sigma * eps) / pred.alpha, eps, pred.alpha, pred.sigma)


def with_uncond(denoiser: DenoiserLike, uncond: Mapping[str, Tensor]) -> DenoiserLike:
    """A copy of a guided denoiser chain (thresholding, classifier guidance, ... around classifier-free guidance)
    whose classifier-free guidance takes ``uncond`` as its unconditional branch (null-text inversion's optimised
    null, Mokady et al. 2023); the original is untouched."""
    if isinstance(denoiser, ClassifierFreeGuidance):
        out = copy.copy(denoiser)
        out.uncond = {**denoiser.uncond, **uncond}
        return out
    inner = getattr(denoiser, "denoiser", None)
    if inner is None:
        raise ValueError("this denoiser has no classifier-free guidance (a model without labels or prompts).")
    out = copy.copy(denoiser)
    out.denoiser = with_uncond(inner, uncond)
    return out
