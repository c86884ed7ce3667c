"""Per-step callbacks: every sampler reports each grid step once and samples the same with or without one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from diffusionlab.denoisers import Prediction
from diffusionlab.processes import EDMProcess, FlowProcess, GaussianProcess, VPProcess, broadcast_like
from diffusionlab.sampling import ADAPTIVE_SAMPLERS, SAMPLERS, StepCallback, default_spacing, sample, time_grid

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 5
SHAPE = (3,)


class UnitGaussianDenoiser:
    """Exact denoiser for data ~ N(0, I): x0 = alpha x / (alpha^2 + sigma^2), eps = sigma x / (alpha^2 + sigma^2)."""

    def __init__(self, process: GaussianProcess) -> None:
        self.process = process

    def __call__(self, x: Tensor, t: Tensor | float, cond: dict | None = None) -> Prediction:
        t = t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        a, s = broadcast_like(self.process.alpha(t), x), broadcast_like(self.process.sigma(t), x)
        var = a * a + s * s
        return Prediction(x, (a / var * x).to(x.dtype), (s / var * x).to(x.dtype), a, s)


class Recorder:
    """A ``StepCallback`` that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, *, step: int, t: Tensor, x: Tensor, x0: Tensor | None) -> None:
        self.calls.append({"step": step, "t": float(t), "x": x, "x0": x0})


@pytest.mark.parametrize("process", [VPProcess(), FlowProcess(), EDMProcess()], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_callback_sees_every_step_and_changes_nothing(sampler: str, process: GaussianProcess) -> None:
    den = UnitGaussianDenoiser(process)
    rec = Recorder()
    recorder: StepCallback = rec

    def run(callback: StepCallback | None) -> Tensor:
        return sample(den, SHAPE, num_samples=4, sampler=sampler, steps=STEPS, seed=7, callback=callback)

    plain, watched = run(None), run(recorder)
    assert torch.equal(plain, watched)  # bit for bit: the callback draws no noise and changes no arithmetic
    if sampler in ADAPTIVE_SAMPLERS:  # steps of their own: numbered attempts, the batch's latest time, then t = 0
        times = [c["t"] for c in rec.calls]
        assert [c["step"] for c in rec.calls] == list(range(len(rec.calls))) and len(rec.calls) > 2
        assert all(a >= b for a, b in zip(times, times[1:], strict=False)) and times[-1] == 0.0
        assert torch.equal(rec.calls[-1]["x"], watched)
        return
    ts = time_grid(process, STEPS, default_spacing(process))
    assert [c["step"] for c in rec.calls] == list(range(STEPS))
    times = [c["t"] for c in rec.calls]
    assert times == ts[1:].tolist()
    assert all(a > b for a, b in zip(times, times[1:], strict=False)) and times[-1] == 0.0
    assert torch.equal(rec.calls[-1]["x"], watched)
    for c in rec.calls:
        assert c["x"].shape == watched.shape and c["x"].dtype == watched.dtype
        if c["x0"] is None:  # only annealed Langevin's skipped level at alpha = 0 (flow's t = 1) evaluates nothing
            assert sampler == "annealed_langevin" and c["step"] == 0 and float(process.alpha(ts[0])) == 0.0
            continue
        assert c["x0"].shape == watched.shape and torch.isfinite(c["x0"]).all()
    assert math.isfinite(float(watched.abs().max()))
