"""Progressive distillation: the target formula, nested grids, and a 2-step student of a 2-D toy teacher that
matches the toy better than the teacher does in 2 steps (MMD against fresh toy points)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusionlab.config import DataConfig, DiffusionConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.data import load_toy_dataset
from diffusionlab.evaluation.toy import mmd_rbf
from diffusionlab.pipeline import Pipeline
from diffusionlab.processes import DiscreteVPProcess
from diffusionlab.training import Trainer
from diffusionlab.training.distill import distill_progressively, halvings, nested_grid, progressive_target

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log_with": [], "sample_every": 0, "checkpoint_every": 0, "log_every": 0, "final_eval": False}


def test_nested_grids_and_the_one_step_target() -> None:
    process = DiscreteVPProcess("cosine")
    coarse, fine = nested_grid(process, 4), nested_grid(process, 8)
    assert torch.equal(fine[::2], coarse) and coarse[-1] == 0 and coarse[0] == process.t_max
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    t, t_next = torch.full((5,), 0.7, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    a, s = float(process.alpha(t[0])), float(process.sigma(t[0]))
    a2, s2 = float(process.alpha(t_next[0])), float(process.sigma(t_next[0]))
    x_t = a * x0 + s * eps
    x_next = a2 * x0 + s2 * eps  # the DDIM step from x_t with the exact x0 lands here
    torch.testing.assert_close(progressive_target(process, x_t, t, x_next, t_next), x0)
    zero = torch.zeros(5, dtype=torch.float64)
    torch.testing.assert_close(progressive_target(process, x_t, t, x0, zero), x0)  # into the data: x'' itself
    assert halvings(64, 4) == [32, 16, 8, 4]
    with pytest.raises(ValueError, match="times a power of two"):
        halvings(48, 5)


def toy_config(steps: int) -> ModelConfig:
    return ModelConfig(
        space="points",
        network=NetworkConfig(kind="mlp", dim=2, width=128, depth=3),
        diffusion=DiffusionConfig(process={"name": "ddpm", "schedule": "cosine"}),
        data=DataConfig(dataset="toy:eight_gaussians"),
        sample=SampleConfig(sampler="ddim", steps=32, thresholding="none"),
        train=TrainConfig(steps=steps, batch_size=256, lr=2e-3, warmup_steps=50, ema_decay=0.99, **QUIET),
    )


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> Path:
    out = tmp_path_factory.mktemp("distill") / "teacher"
    Trainer(toy_config(1000), out, progress=False).train()
    return out


def test_a_two_step_student_matches_the_toy_better_than_its_teacher_in_two_steps(
    teacher_dir: Path, tmp_path: Path
) -> None:
    teacher = Pipeline.load(teacher_dir)
    train = {"steps": 150, "batch_size": 256, "lr": 5e-4, "warmup_steps": 10, **QUIET}
    distill_progressively(teacher_dir, tmp_path / "student", 2, teacher_steps=16, train=train)
    student = Pipeline.load(tmp_path / "student")
    assert (student.config.sample.steps, student.config.sample.spacing) == (2, "tuned")
    assert sorted(p.name for p in (tmp_path / "student" / "rounds").iterdir()) == ["steps-4", "steps-8"]
    real = load_toy_dataset("eight_gaussians", n=2000, seed=123).tensors()[0]
    distilled = mmd_rbf(real, student.sample(2000, seed=0))  # its own defaults: 2 DDIM steps on its grid
    teacher_2 = mmd_rbf(real, teacher.sample(2000, seed=0, steps=2))
    teacher_32 = mmd_rbf(real, teacher.sample(2000, seed=0, steps=32))
    assert distilled < 0.5 * teacher_2, (distilled, teacher_2, teacher_32)
    assert distilled < 3 * teacher_32 + 0.01, (distilled, teacher_32)


def test_the_cli_distils_and_refuses_bad_settings(teacher_dir: Path, tmp_path: Path) -> None:
    from cli_helpers import assert_clear_error, run

    out = tmp_path / "s"
    done = run("distill", teacher_dir, "--out", out, "--steps", "1", "--teacher-steps", "2", "--iterations", "5",
               "--batch-size", "32", "--no-progress")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert Pipeline.load(out).sample(4, seed=0).shape == (4, 2)
    assert_clear_error(
        run("distill", teacher_dir, "--out", tmp_path / "x", "--method", "bogus"), "consistency_training"
    )
    assert_clear_error(run("distill", teacher_dir, "--out", tmp_path / "x", "--method", "reflow"), "flow-matching")
    assert_clear_error(run("distill", teacher_dir, "--out", tmp_path / "x", "--pairs", "0"), "--pairs=0")
    assert not (tmp_path / "x").exists()
    assert_clear_error(run("distill", teacher_dir, "--out", tmp_path / "x", "--steps", "5", "--teacher-steps", "48"),
                       "power of two")  # fmt: skip


def test_a_consistency_student_samples_the_toy_in_one_and_two_steps(teacher_dir: Path, tmp_path: Path) -> None:
    from diffusionlab.training.distill import distill_consistency, pseudo_huber

    a, b = torch.zeros(3, 4), torch.ones(3, 4)
    c = 0.00054 * 2.0
    torch.testing.assert_close(pseudo_huber(a, b), torch.full((3,), (4 + c * c) ** 0.5 - c))
    teacher = Pipeline.load(teacher_dir)
    train = {"steps": 1500, "batch_size": 256, "lr": 5e-4, "warmup_steps": 20, **QUIET}
    distill_consistency(teacher_dir, tmp_path / "cd", 2, scales=18, train=train)
    student = Pipeline.load(tmp_path / "cd")
    assert (student.config.sample.sampler, student.config.sample.steps) == ("consistency", 2)
    # its 2-step grid's middle level is a real one, Karras's middle of three levels, not t_min (where it is a no-op)
    p, grids = student.process, student.config.sample.tuned_grids
    s_max, s_min = float(p.sigma(p.t_max) / p.alpha(p.t_max)), float(p.sigma(p.t_min) / p.alpha(p.t_min))
    mid = ((s_max ** (1 / 7) + s_min ** (1 / 7)) / 2) ** 7
    t_mid = torch.tensor(grids["consistency:2"][1], dtype=torch.float64)
    assert abs(float(p.sigma(t_mid) / p.alpha(t_mid)) / mid - 1) < 1e-4
    assert grids["consistency:1"] == [float(p.t_max), 0.0] and len(grids["consistency:8"]) == 9
    real = load_toy_dataset("eight_gaussians", n=2000, seed=123).tensors()[0]
    scores = {
        "student 1": mmd_rbf(real, student.sample(2000, seed=0, steps=1)),
        "student 2": mmd_rbf(real, student.sample(2000, seed=0)),
        "teacher 1": mmd_rbf(real, teacher.sample(2000, seed=0, steps=1)),
        "teacher 2": mmd_rbf(real, teacher.sample(2000, seed=0, steps=2)),
    }
    assert scores["student 1"] < 0.5 * scores["teacher 1"], scores
    assert scores["student 2"] < 0.5 * scores["teacher 2"], scores
    # the second step, from a real middle level, improves on the first (measured: 0.0102 against 0.0213)
    assert scores["student 2"] < 0.6 * scores["student 1"], scores


def test_ict_curriculum_and_pair_law() -> None:
    from diffusionlab.training.distill import ct_scales, lognormal_pair_weights

    # s0 = 10, s1 = 80: 4 stages (10, 20, 40, 80) of K / 4 steps, plus one level each
    assert [ct_scales(k, 400, 80) for k in (0, 99, 100, 200, 300, 399)] == [11, 11, 21, 41, 81, 81]
    assert ct_scales(0, 10, 5) == 6  # fewer levels than s0: s1 throughout
    sigmas = torch.tensor([0.002, 0.1, 0.3, 1.0, 3.0, 80.0], dtype=torch.float64)
    w = lognormal_pair_weights(sigmas)
    cdf = torch.distributions.Normal(-1.1, 2.0).cdf(sigmas.log())
    torch.testing.assert_close(w, (cdf[1:] - cdf[:-1]) / (cdf[-1] - cdf[0]))


def test_consistency_training_without_teacher_steps_samples_the_toy_in_one_step(
    teacher_dir: Path, tmp_path: Path
) -> None:
    """iCT from the diffusion model's weights (ECT's tuning): the student never calls the teacher, and in one step
    it matches the toy better than the teacher does in one."""
    from diffusionlab.training import distill as module

    teacher = Pipeline.load(teacher_dir)
    train = {"steps": 750, "batch_size": 256, "lr": 5e-4, "warmup_steps": 20, **QUIET}
    calls = {"n": 0}
    original = module.ConsistencyObjective._ddim
    module.ConsistencyObjective._ddim = lambda *a, **k: calls.__setitem__("n", calls["n"] + 1) or original(*a, **k)
    try:
        module.distill_consistency(teacher_dir, tmp_path / "ct", 1, scales=80, train=train, training=True)
    finally:
        module.ConsistencyObjective._ddim = original
    assert calls["n"] == 0
    student = Pipeline.load(tmp_path / "ct")
    assert student.config.train.distill.method == "consistency_training"
    real = load_toy_dataset("eight_gaussians", n=2000, seed=123).tensors()[0]
    ct_1 = mmd_rbf(real, student.sample(2000, seed=0, steps=1))
    teacher_1 = mmd_rbf(real, teacher.sample(2000, seed=0, steps=1))
    assert ct_1 < 0.5 * teacher_1, (ct_1, teacher_1)  # measured: 0.0173 against 0.088


def test_reflow_straightens_a_flow_teacher_so_one_euler_step_suffices(tmp_path: Path) -> None:
    """A flow-matching toy teacher's 1-step Euler samples collapse to the mean; after reflow on its own couplings
    the student's one step lands near the toy (MMD), and near the teacher's 32-step end of the same noise."""
    from diffusionlab.training.distill import distill_reflow

    config = toy_config(1000)
    config = config.model_copy(
        update={
            "diffusion": DiffusionConfig(process={"name": "flow"}, parameterisation="velocity"),
            "sample": SampleConfig(sampler="euler", steps=32, thresholding="none"),
        }
    )
    Trainer(config, tmp_path / "flow", progress=False).train()
    teacher = Pipeline.load(tmp_path / "flow")
    train = {"steps": 400, "batch_size": 256, "lr": 5e-4, "warmup_steps": 20, **QUIET}
    distill_reflow(tmp_path / "flow", tmp_path / "reflow", 1, pairs=4096, pair_steps=32, train=train)
    student = Pipeline.load(tmp_path / "reflow")
    assert (student.config.sample.sampler, student.config.sample.steps) == ("euler", 1)
    real = load_toy_dataset("eight_gaussians", n=2000, seed=123).tensors()[0]
    one = student.sample(2000, seed=0)
    scores = {
        "reflow 1": mmd_rbf(real, one),
        "teacher 1": mmd_rbf(real, teacher.sample(2000, seed=0, steps=1)),
        "teacher 32": mmd_rbf(real, teacher.sample(2000, seed=0, steps=32, sampler="dpmpp_2m")),
    }
    # measured: MMD 0.0040 against the teacher's one step 0.080; distance to the ODE end of the same noise 0.19
    # against 1.11
    assert scores["reflow 1"] < 0.25 * scores["teacher 1"], scores
    # the coupling is kept: one step of the student lands near the teacher's ODE end of the same noise
    end = teacher.sample(2000, seed=0, steps=32, sampler="dpmpp_2m")
    assert (one - end).norm(dim=1).median() < 0.25 * (teacher.sample(2000, seed=0, steps=1) - end).norm(dim=1).median()
