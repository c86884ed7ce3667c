"""Few-step students (floor 5), each an objective of the one training loop: progressive distillation, consistency
distillation and training, and reflow.

Progressive distillation: a student that samples in n DDIM steps what its teacher samples in 2n (Salimans & Ho
2022, Algorithm 2).

The grids are nested: the n-step grid is t_k = t_min + (1 - k / n)(t_max - t_min) for k < n, then 0, so the
teacher's 2n-step grid holds it and a step t_k -> t_{k+1} of the student is two of the teacher's, t_k -> t_mid ->
t_{k+1}. From x_t = alpha_t x0 + sigma_t eps at a student time, the teacher's two DDIM steps (eta 0, under its
classifier-free guidance w; w = 0 where the label is dropped) land at x''; the student's target is the x0 from
which one DDIM step lands there (their eq. 8):

    x0~ = (x'' - (sigma'' / sigma_t) x_t) / (alpha'' - (sigma'' / sigma_t) alpha_t)   (x'' itself where sigma'' = 0),

and its loss is the truncated-SNR weighted error max(alpha_t^2 / sigma_t^2, 1) |x0_hat - x0~|^2 (their sec. 4).
The student starts from the teacher's (EMA) weights; its folder samples with DDIM on its own grid (stored as the
tuned grid ``ddim:n``, ``spacing="tuned"``) at guidance 1, the teacher's guidance being distilled in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import DistillConfig, ModelConfig
from ..denoisers import Denoiser
from ..pipeline import Pipeline
from ..processes import GaussianProcess, broadcast_like
from ..sampling import NoiseSource, prior_std, sample_seed, time_grid
from ..sampling.grids import few_step_grid
from ..sampling.tuning import grid_key
from .data import TrainingData
from .diffusion import DiffusionBatch, DiffusionObjective

__all__ = [
    "DistillationObjective",
    "ConsistencyObjective",
    "ConsistencyTrainingObjective",
    "ReflowObjective",
    "ct_scales",
    "lognormal_pair_weights",
    "reflow_pairs",
    "distill_reflow",
    "nested_grid",
    "progressive_target",
    "pseudo_huber",
    "distill_progressively",
    "distill_consistency",
    "halvings",
]


def load_teacher(folder: str, method: str, device: torch.device) -> Pipeline:
    """The teacher's pipeline, frozen; one clear error unless it is a Gaussian model."""
    teacher = Pipeline.load(folder, device=device)
    if teacher.family.name != "gaussian":
        raise ValueError(f"{method} distillation needs a Gaussian model; {folder} is a {teacher.family.name} model.")
    for p in teacher.network.parameters():
        p.requires_grad_(False)
    if teacher.ema is not None:
        teacher.ema.requires_grad_(False)
    return teacher


OWN_GRID_STEPS = 8  # a consistency or reflow student stores its few-step grids for 1 .. this many steps


def own_grids(sampler: str, process: GaussianProcess, steps: int, spacing: str) -> dict[str, Any]:
    """Sampling defaults of a one-call student: ``sampler`` at ``steps`` steps, guidance 1 (the teacher's is
    distilled in), on its own few-step grids (``few_step_grid``, stored as tuned grids for 1 .. 8 steps and
    ``steps``: the last step starts from a real noise level, not from t_min)."""
    counts = sorted({*range(1, OWN_GRID_STEPS + 1), steps})
    grids = {grid_key(sampler, k): few_step_grid(process, k, spacing).tolist() for k in counts}
    return {"sampler": sampler, "steps": steps, "spacing": "tuned", "guidance": 1.0, "tuned_grids": grids}


def nested_grid(process: GaussianProcess, steps: int) -> Tensor:
    """The n-step grid t_k = t_min + (1 - k / n)(t_max - t_min), k < n, then 0; the 2n-step grid holds it."""
    t_max, t_min = float(process.t_max), float(process.t_min)
    k = torch.arange(steps, dtype=torch.float64)
    return torch.cat([t_min + (1 - k / steps) * (t_max - t_min), torch.zeros(1, dtype=torch.float64)])


def _coefs(process: GaussianProcess, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    return broadcast_like(process.alpha(t), like).to(like.dtype), broadcast_like(process.sigma(t), like).to(like.dtype)


def progressive_target(process: GaussianProcess, x_t: Tensor, t: Tensor, x_next: Tensor, t_next: Tensor) -> Tensor:
    """The x0 from which one DDIM step at t lands on x_next at t_next (Salimans & Ho 2022, eq. 8)."""
    a, s = _coefs(process, t, x_t)
    a2, s2 = _coefs(process, t_next, x_t)
    ratio = s2 / s
    target = (x_next - ratio * x_t) / (a2 - ratio * a)
    return torch.where(s2 == 0, x_next / a2, target)


class DistillationObjective(DiffusionObjective):
    """The student's objective: times on its nested grid, the teacher's two-step targets, truncated-SNR weights."""

    def __init__(self, config: ModelConfig, pipeline: Pipeline, data: TrainingData, teacher: Pipeline) -> None:
        super().__init__(config, pipeline, data)
        spec = config.train.distill
        assert spec is not None
        self.teacher, self.spec = teacher, spec
        self.grid = nested_grid(pipeline.process, 2 * spec.student_steps)
        self.clip = pipeline.space.clip_x0 and config.sample.thresholding != "none"

    @classmethod
    def prepare(  # type: ignore[override]
        cls, config: ModelConfig, data: TrainingData | None, checkpoint: Path | None, device: torch.device
    ) -> DistillationObjective:
        """The student as a fresh run of the teacher's model (its weights, its data), or the checkpoint's."""
        spec = config.train.distill
        assert spec is not None
        teacher = load_teacher(spec.teacher, spec.method, device)
        base = DiffusionObjective.prepare(config, data, checkpoint, device)
        student = base.model
        if checkpoint is None and not spec.from_scratch:  # a new student starts as the teacher (its EMA weights)
            source = teacher.denoiser_network().state_dict()
            student.network.load_state_dict(source)
            student.ema = student.copy_for_ema()
        sample = student.config.sample.model_copy(update=cls.sampling(student.process, spec.student_steps))
        student.config = student.config.model_copy(update={"sample": sample})
        return cls(student.config, student, base.data, teacher)

    @staticmethod
    def sampling(process: GaussianProcess, steps: int) -> dict[str, Any]:
        """The student's sampling defaults: DDIM on its nested grid (stored as its tuned grid), guidance 1."""
        grid = nested_grid(process, steps).tolist()
        return {
            "sampler": "ddim",
            "steps": steps,
            "spacing": "tuned",
            "guidance": 1.0,
            "tuned_grids": {grid_key("ddim", steps): grid},
        }

    def global_batch(self, step: int) -> DiffusionBatch:
        """The plain batch with each example's time replaced by a student time drawn from its grid (the same
        generator, one more draw), so the run is seed-exact as any other."""
        batch = super().global_batch(step)
        gen = torch.Generator().manual_seed(sample_seed(self.train_config.seed, step) ^ 0x5EED)
        k = torch.randint(self.spec.student_steps, (len(batch.t),), generator=gen)
        return batch._replace(t=self.grid[2 * k].to(batch.t.dtype))

    def _teacher_x0(self, x: Tensor, t: Tensor, cond: dict[str, Tensor] | None) -> Tensor:
        """The teacher's x0_hat under classifier-free guidance w (w = 0 where the label is dropped)."""
        den = Denoiser(self.teacher.denoiser_network(), self.teacher.process, self.teacher.parameterisation)
        x0 = den(x, t, cond).x0
        labels = (cond or {}).get("labels")
        if labels is not None and self.spec.guidance != 1.0:
            unconditional = den(x, t, {**cond, "labels": torch.full_like(labels, -1)}).x0  # type: ignore[dict-item]
            w = torch.where(labels >= 0, self.spec.guidance, 0.0).to(x.dtype)
            w = w.reshape(-1, *([1] * (x.ndim - 1)))
            x0 = unconditional + w * (x0 - unconditional)
        return x0.clamp(-1, 1) if self.clip else x0

    def _ddim(self, x: Tensor, t: Tensor, t_next: Tensor, cond: dict[str, Tensor] | None) -> Tensor:
        """One teacher DDIM step (eta 0): x' = alpha' x0_hat + sigma' eps_hat."""
        process = self.teacher.process
        x0 = self._teacher_x0(x, t, cond)
        a, s = _coefs(process, t, x)
        a2, s2 = _coefs(process, t_next, x)
        return a2 * x0 + s2 * (x - a * x0) / s

    def loss(self, network: nn.Module, batch: DiffusionBatch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, t, eps, cond = batch[:4]
        process = self.model.process
        index = (self.grid[None, :-1] - t.double()[:, None]).abs().argmin(1)  # each time's place on the grid
        t_mid, t_next = self.grid[index + 1].to(t.dtype), self.grid[index + 2].to(t.dtype)
        a, s = _coefs(process, t, x0)
        x_t = a * x0 + s * eps
        with torch.no_grad():
            x_next = self._ddim(self._ddim(x_t, t, t_mid, cond), t_mid, t_next, cond)
            target = progressive_target(process, x_t, t, x_next, t_next)
        student = Denoiser(network, process, self.model.parameterisation)(x_t, t, cond).x0
        snr = (a / s).pow(2).flatten(1)[:, 0]
        weight = snr.clamp(min=1.0)
        per_example = (student - target).pow(2).flatten(1).mean(1)
        return (weight * per_example).mean(), {"distill_error": per_example.mean().detach()}


def pseudo_huber(a: Tensor, b: Tensor) -> Tensor:
    """The pseudo-Huber distance per example, sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(d) (Song &
    Dhariwal 2024, sec. 3.3): no feature network (LPIPS) to download, and robust to outliers."""
    d = a[0].numel()
    c = 0.00054 * d**0.5
    return ((a - b).pow(2).flatten(1).sum(1) + c * c).sqrt() - c


class ConsistencyObjective(DistillationObjective):
    """Consistency distillation (Song et al. 2023, Algorithm 2, with iCT's choices, Song & Dhariwal 2024): from
    x_{t_{n+1}} = alpha x0 + sigma eps on a Karras grid of ``scales`` levels, one teacher DDIM step (under its
    guidance) to t_n gives x^_{t_n}; the student's x0_hat at (x_{t_{n+1}}, t_{n+1}) learns the student's own x0_hat
    at (x^_{t_n}, t_n), without gradients (iCT's target, no EMA teacher), by the pseudo-Huber distance weighted by
    1 / (sigma~_{n+1} - sigma~_n) (iCT's lambda). The student's x0_hat is its consistency function: with the
    library's parameterisations it tends to x as the noise vanishes, the boundary condition."""

    def __init__(self, config: ModelConfig, pipeline: Pipeline, data: TrainingData, teacher: Pipeline) -> None:
        super().__init__(config, pipeline, data, teacher)
        process = pipeline.process
        self.grid = time_grid(process, self.spec.scales, "karras")[:-1]  # t_max .. t_min
        alpha, sigma = process.alpha(self.grid).double(), process.sigma(self.grid).double()
        ve = sigma / alpha.clamp_min(1e-12)
        self.weights = (1.0 / (ve[:-1] - ve[1:]).clamp_min(1e-6)).float()  # lambda of the pair (n, n + 1)

    @staticmethod
    def sampling(process: GaussianProcess, steps: int) -> dict[str, Any]:
        """Multistep consistency sampling (Song et al. 2023, Algorithm 1) on few-step Karras grids, guidance 1."""
        return own_grids("consistency", process, steps, "karras")

    def global_batch(self, step: int) -> DiffusionBatch:
        """The plain batch with each example's time replaced by the upper level t_{n+1} of a drawn pair."""
        batch = DiffusionObjective.global_batch(self, step)
        gen = torch.Generator().manual_seed(sample_seed(self.train_config.seed, step) ^ 0xC0C0)
        n = torch.randint(len(self.grid) - 1, (len(batch.t),), generator=gen)
        return batch._replace(t=self.grid[n].to(batch.t.dtype))

    def lower_point(self, x_hi: Tensor, t: Tensor, t_lo: Tensor, x0: Tensor, eps: Tensor, cond: Any) -> Tensor:
        """x^_{t_n}: one teacher DDIM step from x_{t_{n+1}} under its guidance."""
        return self._ddim(x_hi, t, t_lo, cond)

    def loss(self, network: nn.Module, batch: DiffusionBatch) -> tuple[Tensor, dict[str, Tensor]]:
        x0, t, eps, cond = batch[:4]
        process = self.model.process
        index = (self.grid[None, :-1] - t.double()[:, None]).abs().argmin(1)
        t_lo = self.grid[index + 1].to(t.dtype)
        a, s = _coefs(process, t, x0)
        x_hi = a * x0 + s * eps
        student = Denoiser(network, process, self.model.parameterisation)
        with torch.no_grad():
            x_lo = self.lower_point(x_hi, t, t_lo, x0, eps, cond)
            was = network.training
            network.eval()  # the target without dropout, as the model samples
            target = student(x_lo, t_lo, cond).x0
            network.train(was)
            if self.clip:
                target = target.clamp(-1, 1)
        online = student(x_hi, t, cond).x0
        distance = pseudo_huber(online, target)
        weight = self.weights[index].to(distance.dtype)
        return (weight * distance).mean() / weight.mean(), {"consistency_distance": distance.mean().detach()}


def ct_scales(step: int, total: int, most: int, least: int = 10) -> int:
    """iCT's discretisation curriculum (Song & Dhariwal 2024, eq. 7): N(k) = min(s0 2^floor(k / K'), s1) + 1 noise
    levels at step k of K, K' = floor(K / (log2 floor(s1 / s0) + 1)), s0 = ``least``, s1 = ``most``."""
    least = min(least, most)
    stage = max(1, total // (int(math.log2(max(1, most // least))) + 1))
    return min(least * 2 ** (step // stage), most) + 1


def lognormal_pair_weights(sigmas: Tensor, mean: float = -1.1, std: float = 2.0) -> Tensor:
    """iCT's probabilities of the pairs (sigma_n, sigma_{n+1}) of ascending ``sigmas`` (Song & Dhariwal 2024,
    eq. 10): erf((ln sigma_{n+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_n - P_mean) / (sqrt(2) P_std))."""
    cdf = torch.special.erf((sigmas.double().clamp_min(1e-12).log() - mean) / (math.sqrt(2) * std))
    weights = (cdf[1:] - cdf[:-1]).clamp_min(0)
    return weights / weights.sum()


class ConsistencyTrainingObjective(ConsistencyObjective):
    """Consistency training (Song et al. 2023, Algorithm 3, with iCT's improvements, Song & Dhariwal 2024): as
    consistency distillation, but the lower point of a pair is the same noise at the lower level, x_{t_n} =
    alpha_n x0 + sigma_n eps (the one-sample estimate of the teacher's step), so no network but the student runs.
    The levels follow iCT's curriculum (``ct_scales``, doubling from 10 to ``scales``) on the Karras grid, the
    pairs are drawn log-normally in sigma~ = sigma / alpha (``lognormal_pair_weights``) and weighted by
    1 / (sigma~_{n+1} - sigma~_n); the distance is pseudo-Huber against the stop-gradient student."""

    def levels(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """The grid of ``step`` (t_max .. t_min), its pairs' probabilities and weights (pair n: levels n, n + 1)."""
        process = self.model.process
        grid = time_grid(process, ct_scales(step, self.train_config.steps, self.spec.scales), "karras")[:-1]
        ve = (process.sigma(grid).double() / process.alpha(grid).double().clamp_min(1e-12)).flip(0)  # ascending
        probs = lognormal_pair_weights(ve).flip(0)
        weights = (1.0 / (ve[1:] - ve[:-1]).clamp_min(1e-6)).flip(0).float()
        return grid, probs, weights

    def global_batch(self, step: int) -> DiffusionBatch:
        """The plain batch with each example's time replaced by the upper level of a pair drawn by iCT's law."""
        batch = DiffusionObjective.global_batch(self, step)
        self.grid, probs, self.weights = self.levels(step)
        gen = torch.Generator().manual_seed(sample_seed(self.train_config.seed, step) ^ 0xC7C7)
        n = torch.multinomial(probs, len(batch.t), replacement=True, generator=gen)
        return batch._replace(t=self.grid[n].to(batch.t.dtype))

    def lower_point(self, x_hi: Tensor, t: Tensor, t_lo: Tensor, x0: Tensor, eps: Tensor, cond: Any) -> Tensor:
        a, s = _coefs(self.model.process, t_lo, x0)
        return a * x0 + s * eps


def reflow_pairs(
    teacher: Pipeline, count: int, steps: int, guidance: float, seed: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``count`` couplings (noise z, the teacher's ODE end x from it, label) in the model's space (Liu et al. 2023,
    Algorithm 1: X_1 ~ pi_0, X_0 = ODE(X_1)); a conditional teacher's labels cycle through its classes and its
    guidance ``guidance`` is applied. Sample i's noise is ``Pipeline.sample``'s for seed ``seed``, index i."""
    from ..tasks.ode_space import regenerate  # the same floor: tasks' ODE runs

    indices = list(range(count))
    t_max = torch.tensor(float(teacher.process.t_max), dtype=torch.float64)
    z = (prior_std(teacher.process, t_max) * NoiseSource(seed, indices, teacher.device)(teacher.sample_shape)).cpu()
    k = teacher.config.network.num_classes
    labels = torch.arange(count) % k if k else None
    x = regenerate(
        teacher, z, labels=None if labels is None else labels.tolist(), sampler="dpmpp_2m", steps=steps,
        guidance=guidance, decode=False, batch_size=512,
    )  # fmt: skip
    return z, x, labels


class ReflowObjective(DiffusionObjective):
    """Reflow (Liu et al. 2023, sec. 2.3): flow matching on the teacher's own couplings (z, x = ODE(z)), x_t =
    (1 - t) x + t z and the velocity z - x, so the student's ODE straightens and few Euler steps suffice. The
    student starts from the teacher's weights; the teacher's guidance is distilled into the pairs."""

    def __init__(self, config: ModelConfig, pipeline: Pipeline, data: TrainingData, noises: Tensor) -> None:
        super().__init__(config, pipeline, data)
        self.noises = noises

    @classmethod
    def prepare(  # type: ignore[override]
        cls, config: ModelConfig, data: TrainingData | None, checkpoint: Path | None, device: torch.device
    ) -> ReflowObjective:
        """The pairs from the teacher (drawn again, bit for bit, on resume), then the student as a run of them."""
        spec = config.train.distill
        assert spec is not None
        teacher = load_teacher(spec.teacher, spec.method, device)
        if teacher.config.diffusion.process.name != "flow":
            raise ValueError(
                f"reflow straightens a flow-matching model; {spec.teacher} has process "
                f"{teacher.config.diffusion.process.name!r} (train one with --process flow)."
            )
        if teacher.space.name not in ("image", "points", "signal"):
            raise ValueError(f"reflow takes pixel images, points or signals; {spec.teacher} is a {teacher.space.name} "
                             "model.")  # fmt: skip
        z, x, labels = reflow_pairs(teacher, spec.pairs, spec.pair_steps, spec.guidance, config.train.seed)
        base = DiffusionObjective.prepare(config, data, checkpoint, device)
        student = base.model
        if checkpoint is None:
            student.network.load_state_dict(teacher.denoiser_network().state_dict())
            student.ema = student.copy_for_ema()
        sample = own_grids("euler", student.process, spec.student_steps, "uniform")
        student.config = student.config.model_copy(update={"sample": student.config.sample.model_copy(update=sample)})
        pairs = TrainingData(x, labels, base.data.class_names)
        return cls(student.config, student, pairs, z)

    def global_batch(self, step: int) -> DiffusionBatch:
        """Pairs, times and their own noises: the coupling replaces independent noise (no label dropout: the
        guidance is in the pairs)."""
        tc = self.train_config
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        idx = torch.randint(len(self.data.x), (tc.batch_size,), generator=gen)
        t = self.model.family.times(self.model.process, len(idx), self.time_sampling, gen)
        cond = {"labels": self.data.labels[idx]} if self.data.labels is not None else None
        return DiffusionBatch(self.data.x[idx], t, self.noises[idx], cond)


def halvings(teacher_steps: int, student_steps: int) -> list[int]:
    """The student step counts of the rounds from ``teacher_steps`` down to ``student_steps``, halving each time."""
    if student_steps < 1 or teacher_steps <= student_steps:
        raise ValueError(f"teacher_steps={teacher_steps} must be above student_steps={student_steps} (at least 1).")
    rounds, n = [], teacher_steps
    while n > student_steps and n % 2 == 0:
        n //= 2
        rounds.append(n)
    if n != student_steps:
        raise ValueError(
            f"teacher_steps={teacher_steps} must be student_steps={student_steps} times a power of two "
            "(each round halves the steps)."
        )
    return rounds


def distill_progressively(
    teacher: str | Path,
    out: str | Path,
    student_steps: int,
    *,
    teacher_steps: int = 64,
    guidance: float | None = None,
    train: dict[str, Any] | None = None,
    progress: bool = False,
) -> Path:
    """Distil the model folder ``teacher`` into ``out``, a model that samples in ``student_steps`` DDIM steps:
    rounds of halving from ``teacher_steps`` (each a resumable training run of ``train``'s settings, e.g. steps,
    batch_size, lr), the rounds' students kept in ``out/rounds/steps-N``; the teacher's guidance (default: its
    own) is distilled in during the first round."""
    from .trainer import Trainer

    rounds = halvings(teacher_steps, student_steps)
    base = Pipeline.load(teacher).config
    w = base.sample.guidance if guidance is None else guidance
    source, out = Path(teacher), Path(out)
    for i, n in enumerate(rounds):
        spec = DistillConfig(teacher=str(source), student_steps=n, guidance=w if i == 0 else 1.0)
        settings = {"label_dropout": 0.1 if base.network.num_classes else 0.0, **(train or {}), "distill": spec}
        config = base.model_copy(update={"train": base.train.model_copy(update=settings)})
        folder = out if n == student_steps else out / "rounds" / f"steps-{n}"
        Trainer(config, folder, progress=progress).train()
        source, base = folder, Pipeline.load(folder).config
    return out


def _one_run(
    teacher: str | Path, out: str | Path, spec: DistillConfig, dropout: bool, train: Any, progress: bool, resume: bool
) -> Path:
    """One resumable training run of the teacher's config with ``spec`` and ``train``'s settings, into ``out``
    (``resume``: continued from its latest checkpoint)."""
    from .trainer import Trainer

    base = Pipeline.load(teacher).config
    label_dropout = 0.1 if dropout and base.network.num_classes else 0.0
    settings = {"label_dropout": label_dropout, **(train or {}), "distill": spec}
    config = base.model_copy(update={"train": base.train.model_copy(update=settings)})
    Trainer(config, out, progress=progress, resume=resume).train()
    return Path(out)


def distill_consistency(
    teacher: str | Path,
    out: str | Path,
    student_steps: int,
    *,
    scales: int = 40,
    guidance: float | None = None,
    train: dict[str, Any] | None = None,
    progress: bool = False,
    training: bool = False,
    from_scratch: bool = False,
    resume: bool = False,
) -> Path:
    """Distil the model folder ``teacher`` into ``out`` by consistency distillation (``training``: consistency
    training, no teacher steps; ``from_scratch``: from fresh weights), one resumable training run of ``train``'s
    settings; the student samples in ``student_steps`` consistency steps."""
    w = Pipeline.load(teacher).config.sample.guidance if guidance is None else guidance
    method = "consistency_training" if training else "consistency"
    spec = DistillConfig(method=method, teacher=str(teacher), student_steps=student_steps, guidance=w, scales=scales,
                         from_scratch=from_scratch)  # fmt: skip
    return _one_run(teacher, out, spec, True, train, progress, resume)


def distill_reflow(
    teacher: str | Path,
    out: str | Path,
    student_steps: int,
    *,
    pairs: int = 2048,
    pair_steps: int = 32,
    guidance: float | None = None,
    train: dict[str, Any] | None = None,
    progress: bool = False,
    resume: bool = False,
) -> Path:
    """Reflow the flow-matching model folder ``teacher`` into ``out`` (Liu et al. 2023): ``pairs`` couplings from
    its ODE in ``pair_steps`` dpmpp_2m steps under its guidance, then one resumable training run on them; the
    student samples in ``student_steps`` Euler steps."""
    w = Pipeline.load(teacher).config.sample.guidance if guidance is None else guidance
    spec = DistillConfig(method="reflow", teacher=str(teacher), student_steps=student_steps, guidance=w, pairs=pairs,
                         pair_steps=pair_steps)  # fmt: skip
    return _one_run(teacher, out, spec, False, train, progress, resume)


# the objective of each ``DistillConfig.method``
DISTILLATIONS: dict[str, type[DiffusionObjective]] = {
    "progressive": DistillationObjective,
    "consistency": ConsistencyObjective,
    "consistency_training": ConsistencyTrainingObjective,
    "reflow": ReflowObjective,
}
