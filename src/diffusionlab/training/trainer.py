"""The trainer: accelerate-driven, seed-exact, resumable (floor 5).

Every step draws its global batch (indices, times, noise, label dropout) from a generator seeded by
``(seed, step)``, and each process takes its slice. So a run is the same whether it is resumed or not and,
up to float summation order, whatever the number of processes (``accelerate launch`` / ``torchrun``) or of
micro-batches (``grad_accumulation``); a run may resume on another number of processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..data import DataError, load_dataset, load_toy_dataset, make_image_condition, toy_name
from ..denoisers import Denoiser
from ..io import CheckpointError
from ..losses import TimeSampling, Weighting, denoising_loss, make_time_sampling, make_weighting
from ..networks.autoencoder import Autoencoder
from ..networks.text import TextEmbedding, TextEncoder
from ..pipeline import CONFIG_NAME, Pipeline, write_class_grid, write_condition_grid, write_prompt_grid
from ..sampling import sample_seed
from ..spaces import space_for_data
from .checkpoints import latest_checkpoint, load_training_state, save_checkpoint
from .ema import ema_decay_at, update_ema

__all__ = ["Trainer", "TrainingData", "load_training_data", "lr_lambda", "micro_batches"]


@dataclass
class TrainingData:
    """Training examples held in memory: data (N, ...) in the model's space and optional labels (N,)."""

    x: Tensor
    labels: Tensor | None
    class_names: list[str] | None = None
    captions: list[list[str]] | None = None  # one or more phrasings per example, for text conditioning

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None


def load_training_data(config: ModelConfig) -> TrainingData:
    """Load the dataset a config names: ``toy:<name>`` for 2-D toys, else anything ``data.load_dataset`` takes."""
    name, toy = config.data.dataset, toy_name(config.data.dataset)
    if toy is not None:
        points = load_toy_dataset(toy, n=20000, seed=config.train.seed).tensors()[0]
        return TrainingData(points.float(), None, None)
    ds = load_dataset(name, image_size=config.data.image_size, channels=config.data.channels, split="train")
    if len(ds) == 0:
        raise DataError(f"dataset {name!r} has no examples.")
    names = ds.class_names or ([str(i) for i in range(ds.num_classes)] if ds.num_classes else None)
    return TrainingData(ds.images.float(), ds.labels, names, ds.captions)


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


def _refuse_to_overwrite(out_dir: Path) -> None:
    """A fresh run never writes over another run's model or checkpoints (which --resume would then mix up)."""
    previous = latest_checkpoint(out_dir)
    if (out_dir / CONFIG_NAME).is_file() or previous is not None:
        held = previous.relative_to(out_dir) if previous is not None else CONFIG_NAME
        raise CheckpointError(
            f"{out_dir} already holds a training run ({held}); pass --resume to continue it, or choose a new --out."
        )


def micro_batches(n: int, k: int) -> list[slice]:
    """Cut n examples into k consecutive micro-batches whose sizes differ by at most one."""
    if not 1 <= k <= n:
        raise ValueError(f"grad_accumulation={k} must be between 1 and the batch of one process ({n}).")
    return [slice(i * n // k, (i + 1) * n // k) for i in range(k)]


class Trainer:
    """Train a ``Pipeline`` on in-memory data with AdamW, LR schedule, EMA, label dropout and checkpoints."""

    pipeline_class: Any = Pipeline  # the model folder it trains and checkpoints (AutoencoderTrainer: Autoencoder)

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
        # without a GPU, accelerate joins the processes of torchrun / accelerate launch only when told cpu=True
        cpu = cpu or not torch.accelerator.is_available()
        self.accelerator = Accelerator(mixed_precision=config.train.mixed_precision, cpu=cpu)
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.accelerator.num_processes:
            raise ValueError(
                f"the launcher started {launched} processes but accelerate joined {self.accelerator.num_processes}; "
                "check the launch command (torchrun --nproc_per_node / accelerate launch --num_processes)."
            )
        self.start_step = 0
        resume_from = latest_checkpoint(self.out_dir) if resume else None
        if resume and resume_from is None:
            raise CheckpointError(f"--resume was given but {self.out_dir / 'checkpoints'} holds no checkpoint.")
        if not resume:
            _refuse_to_overwrite(self.out_dir)
        if resume_from is not None:
            saved = self.pipeline_class.load(resume_from)
            # the model is the checkpoint's; how long to train and how to log may change on resume
            keep = {"steps", "minutes", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"}
            keep |= {"eval_every", "eval_metrics", "eval_samples", "eval_features"}
            keep.add("grad_accumulation")  # memory use only: a resume on other hardware may split batches otherwise
            train = saved.config.train.model_copy(update={k: getattr(config.train, k) for k in keep})
            config = saved.config.model_copy(update={"train": train})
        self.data = data if data is not None else load_training_data(config)
        self.text: TextEmbedding | None = None  # every distinct caption's tokens, the empty prompt last
        if config.text_encoder is not None and self.data.captions is None:
            config = config.model_copy(update={"text_encoder": None})  # text-conditional if the data has captions
        if config.text_encoder is not None:
            config = self._encode_captions(config)
        config = self._fit_config_to_data(config)
        config, self.pipeline = self._new_pipeline(config, saved if resume_from is not None else None)
        self.config = config
        if resume_from is not None:
            self.pipeline.network.load_state_dict(saved.network.state_dict())
        self.pipeline.ema = (
            saved.ema if resume_from is not None and saved.ema is not None else self.pipeline.copy_for_ema()
        )
        tc = config.train
        world = self.accelerator.num_processes
        if tc.batch_size % world:
            raise ValueError(f"batch_size={tc.batch_size} must be divisible by the number of processes ({world}).")
        if tc.grad_accumulation > tc.batch_size // world:
            raise ValueError(
                f"grad_accumulation={tc.grad_accumulation} must be at most the batch of one process "
                f"(batch_size {tc.batch_size} / {world} processes = {tc.batch_size // world})."
            )
        # fused: 3.2 ms a step instead of 11.7 for the 1.1M-parameter 'small' UNet on one CPU thread
        fused = self.accelerator.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(
            self.pipeline.network.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
        )
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
    def _new_pipeline(self, config: ModelConfig, saved: Pipeline | None) -> tuple[ModelConfig, Pipeline]:
        """A freshly initialised model of ``config``. A latent model's training data becomes its scaled latents
        here, encoded by the autoencoder of ``config.latent`` (on resume: the checkpoint's copy, ``saved``)."""
        autoencoder = None
        if config.latent is not None:
            if saved is not None:
                autoencoder = saved.autoencoder
            elif config.latent.autoencoder is None:
                raise ValueError("config.latent.autoencoder is not set; give the autoencoder folder to train in.")
            else:
                autoencoder = Autoencoder.load(config.latent.autoencoder).to(self.accelerator.device)
            config = space_for_data(config, self.data.x).fit_config(config, self.data.x, autoencoder)
            with torch.no_grad():
                latents = Pipeline(config, autoencoder=autoencoder).space.to_model_space(self.data.x)
            self.data = replace(self.data, x=latents.cpu())
        set_seed(config.train.seed)  # same seed, same initial weights (and dropout draws)
        return config, Pipeline(config, autoencoder=autoencoder)

    def _encode_captions(self, config: ModelConfig) -> ModelConfig:
        """Encode every distinct caption once with the frozen text encoder; examples keep caption indices."""
        encoder = TextEncoder(config.text_encoder.name, config.text_encoder.max_length)
        distinct = sorted({c for caps in self.data.captions for c in caps} - {""}) + [""]
        position = {c: i for i, c in enumerate(distinct)}
        parts = [encoder(distinct[i : i + 256]) for i in range(0, len(distinct), 256)]
        length = max(p.tokens.shape[1] for p in parts)
        padded = [p.padded(length) for p in parts]
        self.text = TextEmbedding(torch.cat([p.tokens for p in padded]), torch.cat([p.mask for p in padded]))
        self.caption_ids = [[position[c] for c in caps] for caps in self.data.captions]
        self.max_phrasings = max(len(ids) for ids in self.caption_ids)
        self.caption_table = torch.tensor(
            [ids + ids[:1] * (self.max_phrasings - len(ids)) for ids in self.caption_ids], dtype=torch.long
        )
        self.phrasing_counts = torch.tensor([len(ids) for ids in self.caption_ids])
        net = config.network.model_copy(update={"text_dim": encoder.dim, "num_classes": None})
        return config.model_copy(update={"network": net})

    def _fit_config_to_data(self, config: ModelConfig) -> ModelConfig:
        if config.latent is None:  # a latent model is fitted to its latents once the autoencoder is loaded
            config = space_for_data(config, self.data.x).fit_config(config, self.data.x)
        net = config.network
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
        return config.model_copy(update={"network": net})

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
    @cached_property
    def time_sampling(self) -> TimeSampling:
        """How this run draws training times (chosen once from the config)."""
        return make_time_sampling(self.config.train.time_sampling)

    @cached_property
    def weighting(self) -> Weighting:
        """This run's loss weighting (chosen once from the config)."""
        return make_weighting(self.config.train.weighting, self.config.diffusion.sigma_data)

    def batch(self, step: int) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor] | None]:
        """This process's slice of the global batch of ``step``: (x0, t, eps, cond)."""
        tc = self.config.train
        gen = torch.Generator().manual_seed(sample_seed(tc.seed, step))
        n = len(self.data.x)
        idx = torch.randint(n, (tc.batch_size,), generator=gen)
        t = self.time_sampling(self.pipeline.process, tc.batch_size, generator=gen)
        eps = torch.randn((tc.batch_size, *self.data.x.shape[1:]), generator=gen)
        drop = torch.rand(tc.batch_size, generator=gen) < tc.label_dropout
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        lo, hi = rank * tc.batch_size // world, (rank + 1) * tc.batch_size // world
        dev = self.accelerator.device
        x0 = self.data.x[idx[lo:hi]].to(dev)
        cond = {}
        if self.config.network.num_classes:
            labels = torch.where(drop, torch.full_like(idx, -1), self.data.labels[idx])  # per-sample dropout
            cond["labels"] = labels[lo:hi].to(dev)
        if self.text is not None:  # one of the example's phrasings, or the empty prompt where dropped
            phrasing = torch.randint(1 << 30, (tc.batch_size,), generator=gen) % self.phrasing_counts[idx]
            ids = self.caption_table[idx, phrasing]
            ids = torch.where(drop, torch.full_like(ids, len(self.text) - 1), ids)[lo:hi]
            cond["text"], cond["text_mask"] = self.text.tokens[ids].to(dev), self.text.mask[ids].to(dev)
        if self.config.data.image_condition is not None:
            kind, factor = self.config.data.image_condition, self.config.data.superres_factor
            cond["cond_image"] = make_image_condition(kind, x0, factor)
        return x0, t[lo:hi].to(dev), eps[lo:hi].to(dev), cond or None

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimisation step on the global batch of ``step``; returns (loss over all processes, gradient norm).

        This process's slice is cut into ``grad_accumulation`` micro-batches; each one's mean loss is weighted by
        its share of the slice, so the summed gradients equal those of the whole slice. Processes average their
        gradients once, in the last micro-batch's backward pass.
        """
        tc = self.config.train
        acc = self.accelerator
        self.model.train()
        denoiser = Denoiser(self.model, self.pipeline.process, self.pipeline.parameterisation)
        x0, t, eps, cond = self.batch(step)
        parts = micro_batches(x0.shape[0], tc.grad_accumulation)
        total = torch.zeros((), device=acc.device)
        for i, part in enumerate(parts):
            weight = (part.stop - part.start) / x0.shape[0]
            sub = {k: v[part] for k, v in cond.items()} if cond else None
            with contextlib.nullcontext() if i == len(parts) - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    loss = weight * denoising_loss(
                        denoiser, x0[part], sub, t=t[part], eps=eps[part], weighting=self.weighting
                    )
                acc.backward(loss)
            total += loss.detach().float()
        if acc.num_processes > 1:
            total = acc.reduce(total, "mean")  # every process sees the same loss, so all stop together on a NaN
        return float(total), self.apply_gradients(step, total)

    def apply_gradients(self, step: int, loss: Tensor) -> float:
        """Finish an optimiser step whose gradients are accumulated: refuse a non-finite loss, clip, step AdamW and
        the LR schedule, update the EMA; returns the gradient norm before clipping."""
        tc, acc = self.config.train, self.accelerator
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {step}; lower --lr (now {tc.lr}) or use mixed_precision='no'."
            )
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if tc.grad_clip > 0 else 0.0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.pipeline.ema, acc.unwrap_model(self.model), ema_decay_at(step, tc.ema_decay, tc.ema_start))
        return float(grad_norm)

    # ------------------------------------------------------------------ the loop
    def train(self, stop_after: int | None = None) -> Pipeline:
        """Train from the current step to ``config.train.steps`` (or ``stop_after`` steps, or ``minutes``).

        Writes checkpoints every ``checkpoint_every`` steps and at the end, sample grids every ``sample_every``,
        TensorBoard scalars every ``log_every``; on the main process only. Ctrl-C saves a checkpoint first.
        """
        tc = self.config.train
        acc = self.accelerator
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        if tc.eval_every:
            from ..evaluation import parse_metrics

            parse_metrics(tc.eval_metrics, self.config)  # a metric unfit for this model fails now, not mid-run
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
                if tc.eval_every and step % tc.eval_every == 0:
                    self._evaluate(step, bar.write)
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
        """A labelled grid of images (one row per class or prompt; or conditions, samples and targets), or a
        scatter plot of 2-D points over the data."""
        seed = self.config.train.seed
        if self.config.data.image_condition is not None:
            targets = self.data.x[:: max(1, len(self.data.x) // 8)][:8]
            conds = make_image_condition(self.config.data.image_condition, targets, self.config.data.superres_factor)
            write_condition_grid(self.pipeline, path, (conds + 1) / 2, (targets + 1) / 2, seed=seed)
        elif self.text is not None:
            write_prompt_grid(self.pipeline, path, self.grid_prompts(), per_prompt=per_class, seed=seed)
        elif self.pipeline.space.grid_preview:
            write_class_grid(self.pipeline, path, per_class=per_class, seed=seed)
        else:
            points = self.pipeline.sample(2000, seed=self.config.train.seed)
            self.pipeline.space.save(points, path, reference=self.data.x[:2000])

    def grid_prompts(self, count: int = 10) -> list[str]:
        """Prompts for sample grids: the shortest caption of each example, distinct, in data order."""
        out: list[str] = []
        for caps in self.data.captions or []:
            shortest = min(caps, key=len)
            if shortest not in out:
                out.append(shortest)
            if len(out) == count:
                break
        return out

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

    def _evaluate(self, step: int, write: Callable[[str], None]) -> None:
        """Evaluate the EMA model (``diffusionlab evaluate``'s metrics) on the main process while the others wait;
        log the numbers to TensorBoard as eval/* and write them to eval/step-NNNNNN.json."""
        if self.accelerator.is_main_process:
            from ..evaluation import evaluate_model
            from ..io import save_json

            tc = self.config.train
            features = None if tc.eval_features == "auto" else tc.eval_features
            result = evaluate_model(
                self.pipeline, tc.eval_metrics, num_samples=tc.eval_samples, features=features, seed=tc.seed
            )
            save_json(result, self.out_dir / "eval" / f"step-{step:06d}.json")
            writer = self._tensorboard()
            if writer is not None:
                for key, value in result["metrics"].items():
                    writer.add_scalar(f"eval/{key}", value, step)
            write(f"eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()))
        self.accelerator.wait_for_everyone()

    def _tensorboard(self) -> Any:
        if not (self.log_tensorboard and self.accelerator.is_main_process):
            return None
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
        return self._writer


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
