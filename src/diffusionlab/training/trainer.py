"""The trainer: accelerate-driven, seed-exact, resumable (floor 5).

Every step draws its global batch (indices, times, noise, label dropout) from a generator seeded by
``(seed, step)``, and each process takes its slice. So a run is the same whether it is resumed or not and,
up to float summation order, whatever the number of processes (``accelerate launch`` / ``torchrun``).
"""

from __future__ import annotations

import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..data import DataError, load_dataset, load_toy_dataset
from ..denoisers import Denoiser
from ..images import save_scatter
from ..io import CheckpointError
from ..losses import denoising_loss, sample_times
from ..pipeline import Pipeline, build_network
from ..sampling import sample_seed
from .checkpoints import latest_checkpoint, load_training_state, save_checkpoint
from .ema import ema_decay_at, update_ema

__all__ = ["Trainer", "TrainingData", "load_training_data", "lr_lambda"]


@dataclass
class TrainingData:
    """Training examples held in memory: data (N, ...) in the model's space and optional labels (N,)."""

    x: Tensor
    labels: Tensor | None
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None


def load_training_data(config: ModelConfig) -> TrainingData:
    """Load the dataset a config names: ``toy:<name>`` for 2-D toys, else anything ``data.load_dataset`` takes."""
    name = config.data.dataset
    if name.startswith("toy:"):
        points = load_toy_dataset(name[4:], n=20000, seed=config.train.seed).tensors()[0]
        return TrainingData(points.float(), None, None)
    ds = load_dataset(name, image_size=config.data.image_size, channels=config.data.channels, split="train")
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} has no examples.")
    names = ds.class_names or ([str(i) for i in range(ds.num_classes)] if ds.num_classes else None)
    return TrainingData(ds.images.float(), ds.labels, names)


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then constant or half-cosine decay to 0 (Loshchilov & Hutter 2017)."""

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


class Trainer:
    """Train a ``Pipeline`` on in-memory data with AdamW, LR schedule, EMA, label dropout and checkpoints."""

    def __init__(
        self,
        config: ModelConfig,
        out_dir: str | Path,
        data: TrainingData | None = None,
        resume: bool = False,
        progress: bool = True,
        cpu: bool = False,
        log_tensorboard: bool = True,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.log_tensorboard = log_tensorboard
        self.accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=cpu)
        self.start_step = 0
        resume_from = latest_checkpoint(self.out_dir) if resume else None
        if resume and resume_from is None:
            raise CheckpointError(f"--resume was given but {self.out_dir / 'checkpoints'} holds no checkpoint.")
        if resume_from is not None:
            saved = Pipeline.load(resume_from)
            # the model is the checkpoint's; how long to train and how to log may change on resume
            keep = {"steps", "minutes", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"}
            train = saved.config.train.model_copy(update={k: getattr(config.train, k) for k in keep})
            config = saved.config.model_copy(update={"train": train})
        self.data = data if data is not None else load_training_data(config)
        config = self._fit_config_to_data(config)
        self.config = config
        set_seed(config.train.seed)  # same seed, same initial weights (and dropout draws)
        self.pipeline = Pipeline(config)
        if resume_from is not None:
            self.pipeline.network.load_state_dict(saved.network.state_dict())
        self.pipeline.ema = (
            saved.ema if resume_from is not None and saved.ema is not None else self.pipeline.copy_for_ema()
        )
        tc = config.train
        world = self.accelerator.num_processes
        if tc.batch_size % world:
            raise ValueError(f"batch_size={tc.batch_size} must be divisible by the number of processes ({world}).")
        self.optimizer = torch.optim.AdamW(self.pipeline.network.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        if tc.lr_schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=tc.lr, total_steps=tc.steps)
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, tc.steps)
            )
        # the scheduler is stepped by us once per optimiser step: accelerate would step it once per process,
        # which suits a per-process batch size, while our batch_size is global
        self.model, self.optimizer = self.accelerator.prepare(self.pipeline.network, self.optimizer)
        self.pipeline.ema.to(self.accelerator.device)
        if resume_from is not None:
            self._restore(load_training_state(resume_from))
        self._writer: Any = None

    # ------------------------------------------------------------------ set-up
    def _fit_config_to_data(self, config: ModelConfig) -> ModelConfig:
        x = self.data.x
        net = config.network
        if x.ndim == 2:
            net = net.model_copy(update={"kind": "mlp", "dim": x.shape[1]})
        else:
            n, c, h, w = x.shape
            if h != w:
                raise DataError(f"training images must be square, got {h}x{w}.")
            net = net.model_copy(update={"in_channels": c})
            config = config.model_copy(update={"data": config.data.model_copy(update={"channels": c, "image_size": h})})
        if net.num_classes == 0 and self.data.labels is None:  # "conditional if the data has labels"
            net = net.model_copy(update={"num_classes": None})
        if self.data.labels is not None and net.num_classes is not None:
            net = net.model_copy(update={"num_classes": self.data.num_classes})
            config = config.model_copy(
                update={
                    "data": config.data.model_copy(
                        update={"num_classes": self.data.num_classes, "class_names": self.data.class_names}
                    )
                }
            )
        elif net.num_classes is not None and self.data.labels is None:
            raise DataError(
                f"a class-conditional model was asked for, but dataset {config.data.dataset!r} has no labels."
            )
        config = config.model_copy(update={"network": net})
        if net.kind == "unet":
            build_network(net).check_input_size(config.data.image_size, config.data.image_size)
        return config

    def _state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "rng_numpy_pos": int(np.random.get_state()[2]),
            "rng_python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.start_step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng_torch"])
        np.random.set_state(
            ("MT19937", state["rng_numpy"].numpy().astype(np.uint32), int(state["rng_numpy_pos"]), 0, 0.0)
        )
        random.setstate((3, tuple(int(v) for v in state["rng_python"].tolist()), None))

    # ------------------------------------------------------------------ one step
    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor] | None]:
        """This process's slice of the global batch of ``step``: (x0, t, eps, cond)."""
        tc = self.config.train
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        n = len(self.data.x)
        idx = torch.randint(n, (tc.batch_size,), generator=gen)
        t = sample_times(self.pipeline.process, tc.batch_size, tc.time_sampling, generator=gen)
        eps = torch.randn((tc.batch_size, *self.data.x.shape[1:]), generator=gen)
        drop = torch.rand(tc.batch_size, generator=gen) < tc.label_dropout
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        lo, hi = rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world
        dev = self.accelerator.device
        x0 = self.data.x[idx[lo:hi]].to(dev)
        cond = None
        if self.config.network.num_classes:
            labels = torch.where(drop, torch.full_like(idx, -1), self.data.labels[idx])  # per-sample dropout
            cond = {"labels": labels[lo:hi].to(dev)}
        return x0, t[lo:hi].to(dev), eps[lo:hi].to(dev), cond

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimisation step; returns (loss, gradient norm)."""
        tc, d = self.config.train, self.config.diffusion
        self.model.train()
        denoiser = Denoiser(self.model, self.pipeline.process, d.parameterisation, d.sigma_data)
        x0, t, eps, cond = self.batch(step)
        with self.accelerator.autocast():
            loss = denoising_loss(denoiser, x0, cond, t=t, eps=eps, weighting=tc.weighting)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {step}; lower --lr (now {tc.lr}) or use mixed_precision='no'."
            )
        self.accelerator.backward(loss)
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else 0.0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(
            self.pipeline.ema,
            self.accelerator.unwrap_model(self.model),
            ema_decay_at(step, tc.ema_decay, tc.ema_start),
        )
        return float(loss.detach()), float(grad_norm)

    # ------------------------------------------------------------------ the loop
    def train(self, stop_after: int | None = None) -> Pipeline:
        """Train from the current step to ``config.train.steps`` (or ``stop_after`` steps, or ``minutes``).

        Writes checkpoints every ``checkpoint_every`` steps and at the end, sample grids every ``sample_every``,
        TensorBoard scalars every ``log_every``; on the main process only. Ctrl-C saves a checkpoint first.
        """
        tc = self.config.train
        acc = self.accelerator
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        started = time.monotonic()
        bar = tqdm(
            total=tc.steps,
            initial=self.start_step,
            disable=not (self.progress and acc.is_main_process),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        smooth = None
        step = self.start_step
        interrupted = False
        previous = signal.getsignal(signal.SIGTERM)
        if acc.is_main_process:
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while step < end:
                loss, grad_norm = self.train_step(step)
                step += 1
                smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
                bar.update(1)
                if step % tc.log_every == 0 or step == end:
                    bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                    self._log_scalars(step, loss, smooth, grad_norm)
                if tc.sample_every and step % tc.sample_every == 0 and step < end:
                    self._write_samples(step)
                if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < end:
                    self.save(step)
                if tc.minutes is not None and time.monotonic() - started > 60 * tc.minutes:
                    bar.write(f"time budget of {tc.minutes} min reached at step {step}; saving.")
                    break
        except KeyboardInterrupt:
            interrupted = True
            bar.write(f"interrupted at step {step}; saving a checkpoint to resume from.")
        finally:
            bar.close()
            if acc.is_main_process:
                signal.signal(signal.SIGTERM, previous)
        self.save(step)
        if not interrupted and acc.is_main_process:
            self.finish(step)
        if self._writer is not None:
            self._writer.close()
        if interrupted:
            raise KeyboardInterrupt
        return self.pipeline

    def save(self, step: int) -> None:
        """Write a checkpoint of ``step`` (main process) and wait for every process."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.pipeline.network = self.accelerator.unwrap_model(self.model)
            save_checkpoint(self.pipeline, self._state(step), self.out_dir, step, self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def finish(self, step: int) -> None:
        """Write the final model folder and its ``samples.png`` picture into the output folder."""
        self.pipeline.network = self.accelerator.unwrap_model(self.model)
        self.pipeline.save(self.out_dir)
        self.write_samples(self.out_dir / "samples.png", per_class=8)

    def write_samples(self, path: Path, per_class: int) -> None:
        """A labelled grid of images (one row per class), or a scatter plot of 2-D points over the data."""
        if self.config.network.kind == "unet":
            self.pipeline.sample_class_grid(path, per_class=per_class, seed=self.config.train.seed)
        else:
            points = self.pipeline.sample(2000, seed=self.config.train.seed)
            save_scatter(points, path, reference=self.data.x[:2000])

    def _write_samples(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        path = self.out_dir / "samples" / f"step-{step:06d}.png"
        self.write_samples(path, per_class=4)
        writer = self._tensorboard()
        if writer is not None:
            from PIL import Image

            grid = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image("samples", grid, step, dataformats="HWC")

    def _log_scalars(self, step: int, loss: float, smooth: float, grad_norm: float) -> None:
        writer = self._tensorboard()
        if writer is None:
            return
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/loss_smooth", smooth, step)
        writer.add_scalar("train/grad_norm", grad_norm, step)
        writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], step)

    def _tensorboard(self) -> Any:
        if not (self.log_tensorboard and self.accelerator.is_main_process):
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
