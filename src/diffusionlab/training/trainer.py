"""The one training loop: accelerate-driven, seed-exact, resumable, whatever it trains (floor 5).

What a run learns is an *objective* (``training.objective``): a diffusion model, an autoencoder or a noise-aware
classifier. The loop writes the rest once for all of them: the processes' slices and micro-batches, the refusal of
a non-finite loss, gradient clipping, AdamW and the LR schedule, the EMA, checkpoints and resume, TensorBoard,
evaluation and previews, the experiment trackers (``log_with``: TensorBoard, W&B, MLflow), and the checkpoint saved
on Ctrl-C or SIGTERM.

Every step's global batch (indices, times, noise, label dropout) is drawn from a generator seeded by
``(seed, step)``, and each process takes its slice. So a run is the same whether it is resumed or not and, up to
float summation order, whatever the number of processes (``accelerate launch`` / ``torchrun``) or of
micro-batches (``grad_accumulation``); a run may resume on another number of processes.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import AutoencoderConfig, ModelConfig, TrainConfig
from ..hardware import describe_precision, resolve_precision
from ..io import CheckpointError, load_json, save_json
from ..pipeline import CONFIG_NAME
from .checkpoints import STATE_NAME, latest_checkpoint, load_training_state, remove_leftovers, save_checkpoint
from .data import TrainingData, load_training_data
from .diffusion import DiffusionObjective
from .ema import ema_decay_at, update_ema
from .objective import C, Objective, take
from .privacy import PrivateTraining
from .tracking import Trackers, check_trackers

__all__ = [
    "Trainer",
    "TrainingData",
    "load_training_data",
    "lr_lambda",
    "micro_batches",
    "make_accelerator",
    "starting_checkpoint",
    "objective_for",
    "with_run_precision",
]


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


def batch_length(batch: Any) -> int:
    """The rows of a batch: the length of its first tensor (a tensor, or tuples and dicts of them)."""
    if isinstance(batch, Tensor):
        return len(batch)
    values = batch.values() if isinstance(batch, dict) else batch
    return next(batch_length(v) for v in values if isinstance(v, Tensor | tuple | dict))


def micro_batches(n: int, k: int) -> list[slice]:
    """Cut n examples into k consecutive micro-batches whose sizes differ by at most one."""
    if not 1 <= k <= n:
        raise ValueError(f"grad_accumulation={k} must be between 1 and the batch of one process ({n}).")
    return [slice(i * n // k, (i + 1) * n // k) for i in range(k)]


def make_accelerator(mixed_precision: str, cpu: bool = False) -> Accelerator:
    """The accelerate set-up of a run, joined to the processes a launcher started (checked)."""
    # accelerate keeps one precision per process; a later run in the same process (a notebook, a bench, the noise-
    # aware classifier after an "auto" bf16 run) may ask for another: start its state afresh, keeping the processes
    held = AcceleratorState._shared_state.get("_mixed_precision")
    if held is not None and held != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    # without a GPU, accelerate joins the processes of torchrun / accelerate launch only when told cpu=True
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu or not torch.accelerator.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"the launcher started {launched} processes but accelerate joined {accelerator.num_processes}; "
            "check the launch command (torchrun --nproc_per_node / accelerate launch --num_processes)."
        )
    return accelerator


def _device(cpu: bool) -> torch.device:
    """The device a run trains on: the accelerator's (a GPU) unless ``cpu`` or there is none."""
    available = torch.accelerator.is_available() and not cpu
    return torch.accelerator.current_accelerator() if available else torch.device("cpu")  # type: ignore[return-value]


def with_run_precision(config: C, checkpoint: Path | None, cpu: bool = False) -> C:
    """``config`` with the precision its run uses: a resumed run's own (its checkpoint's config), else the
    setting made concrete for this machine ("auto": ``hardware.resolve_precision``)."""
    saved = _saved_precision(checkpoint) if checkpoint is not None else None
    asked = config.train.mixed_precision
    if getattr(config.train, "dp_epsilon", None) is not None and asked == "auto":
        asked = "no"  # DP-SGD's per-example gradients in full precision
    chosen = resolve_precision(saved or asked, _device(cpu))
    train = config.train.model_copy(update={"mixed_precision": chosen})
    return config.model_copy(update={"train": train})


def _saved_precision(checkpoint: Path) -> str | None:
    """The precision a checkpoint's run trained in, or None where its config cannot be read (loading the checkpoint
    then says what is wrong)."""
    try:
        value = load_json(checkpoint / CONFIG_NAME)["train"]["mixed_precision"]
    except (OSError, ValueError, KeyError, TypeError, CheckpointError):
        return None
    return value if value in ("no", "bf16", "fp16") else None


def starting_checkpoint(out_dir: Path, resume: bool) -> Path | None:
    """The checkpoint a run resumes from (``resume=True``), or None for a fresh run, which never writes over another
    run's model or checkpoints."""
    previous = latest_checkpoint(out_dir)
    if resume and previous is None:
        raise CheckpointError(f"resume=True was given but {out_dir / 'checkpoints'} holds no checkpoint.")
    if not resume and ((out_dir / CONFIG_NAME).is_file() or previous is not None):
        held = previous.relative_to(out_dir) if previous is not None else CONFIG_NAME
        raise CheckpointError(
            f"{out_dir} already holds a training run ({held}); pass resume=True to continue it, "
            "or choose another out_dir."
        )
    return previous if resume else None


def objective_for(config: ModelConfig | AutoencoderConfig) -> Callable[..., Objective]:
    """How a run of ``config`` prepares its objective, ``prepare(config, data, checkpoint, device)``: an
    autoencoder's for an ``AutoencoderConfig``, a distillation's for ``train.distill``, else a diffusion model's
    (the one place that picks)."""
    from .autoencoder import AutoencoderObjective  # here: training.autoencoder imports this module
    from .distill import DISTILLATIONS

    if isinstance(config, AutoencoderConfig):
        return AutoencoderObjective.prepare
    if config.train.distill is not None:
        return DISTILLATIONS[config.train.distill.method].prepare
    if config.diffusion.process.learned:
        from .vdm import VLBObjective

        return VLBObjective.prepare
    return DiffusionObjective.prepare


def _check_batch_split(tc: TrainConfig, world: int) -> None:
    if tc.batch_size % world:
        raise ValueError(f"batch_size={tc.batch_size} must be divisible by the number of processes ({world}).")
    if tc.grad_accumulation > tc.batch_size // world:
        raise ValueError(
            f"grad_accumulation={tc.grad_accumulation} must be at most the batch of one process "
            f"(batch_size {tc.batch_size} / {world} processes = {tc.batch_size // world})."
        )


def _private_training(objective: Objective, accelerator: Accelerator) -> PrivateTraining | None:
    """The DP-SGD plan of a run asking for ``dp_epsilon``, or None; one clear error where it cannot run."""
    tc = objective.train_config
    if getattr(tc, "dp_epsilon", None) is None:
        return None
    if not hasattr(objective.config, "privacy"):
        raise ValueError("dp_epsilon trains diffusion models privately; this objective has no privacy report.")
    if accelerator.num_processes > 1:
        raise ValueError(f"dp_epsilon={tc.dp_epsilon}: DP-SGD runs in one process, not {accelerator.num_processes}.")
    if tc.mixed_precision != "no":
        raise ValueError(f"dp_epsilon={tc.dp_epsilon} needs mixed_precision='no' (per-example gradients in fp32).")
    return PrivateTraining.plan(tc, len(objective.data.x), objective.config.privacy)


def _optimiser(network: nn.Module, tc: TrainConfig, device: torch.device) -> tuple[Any, Any]:
    """AdamW and its LR schedule. The schedule is stepped by the loop once per optimiser step: accelerate would step
    it once per process, which suits a per-process batch size, while ``batch_size`` is global."""
    # fused: 3.2 ms a step instead of 11.7 for the 1.1M-parameter 'small' UNet on one CPU thread
    fused = device.type in ("cpu", "cuda")
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay, fused=fused
    )
    if tc.lr_schedule == "onecycle":
        return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=tc.lr, total_steps=tc.steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, tc.steps))


@contextlib.contextmanager
def _sigterm_interrupts(active: bool) -> Iterator[None]:
    """SIGTERM (a scheduler's stop) raises KeyboardInterrupt, as Ctrl-C does, while the block runs."""
    previous = signal.getsignal(signal.SIGTERM)
    if active:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        if active:
            signal.signal(signal.SIGTERM, previous)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _check_resumed_step(step: int, steps: int, checkpoint: Path) -> None:
    """A run resumed at ``step`` must have that many ``steps`` or more to train (equal: it only finishes)."""
    if step > steps:
        raise CheckpointError(
            f"{checkpoint} is at step {step}, past steps={steps}; ask for steps={step} or more to continue that run."
        )


class Trainer:
    """The one training loop, around an objective: ``Trainer(config, out_dir).train()``.

    A ``ModelConfig`` trains a diffusion model (returns its ``Pipeline``), an ``AutoencoderConfig`` an autoencoder
    (returns the ``Autoencoder``); ``Trainer.in_memory(objective, accelerator)`` runs any objective without files.
    The objective's own members (``data``, ``text``, ``grid_prompts``, ...) read through the trainer.
    """

    def __init__(
        self,
        config: ModelConfig | AutoencoderConfig,
        out_dir: str | Path,
        data: TrainingData | None = None,
        resume: bool = False,
        progress: bool = True,
        cpu: bool = False,
        track: bool = True,
    ) -> None:
        """Set up a run of ``config`` in ``out_dir``: fit the config to the data (a pure step), build the model
        (fresh and seeded, or ``resume=True``: the latest checkpoint's, with optimiser, schedule and RNG). The
        precision is made concrete first ("auto": bf16 where the hardware has it) and printed."""
        requested = config.train.mixed_precision
        check_trackers(config.train.log_with if track else ())
        checkpoint = starting_checkpoint(Path(out_dir), resume)
        config = with_run_precision(config, checkpoint, cpu)
        accelerator = make_accelerator(config.train.mixed_precision, cpu)
        if accelerator.is_main_process:
            remove_leftovers(out_dir)  # what a killed run left; never the checkpoint picked above
        objective = objective_for(config)(config, data, checkpoint, accelerator.device)
        self._attach(objective, accelerator, Path(out_dir), progress, track)
        if checkpoint is not None:
            self._restore(load_training_state(checkpoint), checkpoint / STATE_NAME)
            _check_resumed_step(self.start_step, objective.train_config.steps, checkpoint)
        if config.train.eval_every or config.train.final_eval:
            objective.check_evaluation()  # a metric unfit for this model fails now, before the run starts
        if accelerator.is_main_process:  # once the data, the model and the checkpoint are known good
            chosen = config.train.mixed_precision
            line = describe_precision(requested if checkpoint is None else chosen, _device(cpu))
            if getattr(config.train, "dp_epsilon", None) is not None and requested == "auto":
                line = "precision: fp32 (auto: DP-SGD's per-example gradients run in fp32)"
            print(line if checkpoint is None else f"{line.split(' (')[0]} (the resumed run's own)", file=sys.stderr)

    @classmethod
    def in_memory(cls, objective: Objective, accelerator: Accelerator, progress: bool = True) -> Trainer:
        """A run of an objective built by the caller that writes no files: no checkpoints, previews or logs."""
        trainer = cls.__new__(cls)
        trainer._attach(objective, accelerator, None, progress, track=False)
        return trainer

    def _attach(
        self,
        objective: Objective,
        accelerator: Accelerator,
        out_dir: Path | None,
        progress: bool,
        track: bool,
    ) -> None:
        self.objective, self.accelerator, self.out_dir = objective, accelerator, out_dir
        self.progress, self.track = progress, track and out_dir is not None
        tc = objective.train_config
        _check_batch_split(tc, accelerator.num_processes)
        optimizer, self.scheduler = _optimiser(objective.network, tc, accelerator.device)
        network, self.privacy = objective.network, _private_training(objective, accelerator)
        if self.privacy is not None:
            network, optimizer = self.privacy.wrap(network, optimizer, tc.batch_size)
        self.model, self.optimizer = accelerator.prepare(network, optimizer)
        if objective.ema is not None:
            objective.ema.to(accelerator.device)
        self.start_step, self.step = 0, 0
        self.last_terms: dict[str, float] = {}
        self._trackers: Trackers | None = None

    def __getattr__(self, name: str) -> Any:
        """What the trainer does not hold itself, its objective's (``data``, ``text``, ``grid_prompts``, ...)."""
        objective = self.__dict__.get("objective")
        if objective is None:
            raise AttributeError(name)
        return getattr(objective, name)

    @property
    def config(self) -> Any:
        """The fitted config: exactly what is trained and saved."""
        return self.objective.config

    @property
    def pipeline(self) -> Any:
        """The model being trained: a ``Pipeline``, an ``Autoencoder``, a classifier network."""
        return self.objective.model

    # ------------------------------------------------------------------ state
    def _state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "rng_numpy_pos": int(np.random.get_state()[2]),
            "rng_python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64),
            **({"rng_dp": self.privacy.generator.get_state()} if self.privacy is not None else {}),
        }

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """Continue from a training state (read from ``path``): step, optimiser, LR schedule and RNG states; one
        ``CheckpointError`` naming the file if any part is missing or does not fit."""
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng_torch"])
            np.random.set_state(
                ("MT19937", state["rng_numpy"].numpy().astype(np.uint32), int(state["rng_numpy_pos"]), 0, 0.0)
            )
            random.setstate((3, tuple(int(v) for v in state["rng_python"].tolist()), None))
            if self.privacy is not None:
                self.privacy.generator.set_state(state["rng_dp"])
        except KeyError as err:
            raise CheckpointError(f"{path} has no {err.args[0]!r}; it is not a complete training state.") from None
        except (TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            raise CheckpointError(f"{path} does not fit this run ({type(err).__name__}: {err}).") from None
        self.start_step = state["step"]

    # ------------------------------------------------------------------ one step
    def _rows(self) -> slice:
        """This process's rows of a global batch (one process: all of them, however many a Poisson batch has)."""
        n, world, rank = (
            self.objective.train_config.batch_size,
            self.accelerator.num_processes,
            self.accelerator.process_index,
        )
        return slice(rank * n // world, (rank + 1) * n // world) if world > 1 else slice(None)

    def batch(self, step: int) -> Any:
        """This process's slice of the global batch of ``step``, on its device."""
        return take(self.objective.global_batch(step), self._rows(), self.accelerator.device)

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimisation step on the global batch of ``step``; returns (loss over all processes, gradient norm).

        This process's slice is cut into ``grad_accumulation`` micro-batches; each one's mean loss is weighted by
        its share of the slice, so the summed gradients equal those of the whole slice. Processes average their
        gradients once, in the last micro-batch's backward pass.
        """
        acc = self.accelerator
        self.model.train()
        batch = self.batch(step)
        n = batch_length(batch)
        parts = micro_batches(n, self.objective.train_config.grad_accumulation)
        total = torch.zeros((), device=acc.device)
        terms: dict[str, Tensor] = {}
        for i, part in enumerate(parts):
            weight = (part.stop - part.start) / n
            with contextlib.nullcontext() if i == len(parts) - 1 else acc.no_sync(self.model):
                with acc.autocast():
                    loss, logged = self.objective.loss(self.model, take(batch, part))
                    loss = weight * loss
                acc.backward(loss)
            total += loss.detach().float()
            for key, value in logged.items():
                terms[key] = terms[key] + weight * value.float() if key in terms else weight * value.float()
        if acc.num_processes > 1:  # every process sees the same loss, so all stop together on a NaN
            total = acc.reduce(total, "mean")
            terms = (
                dict(zip(terms, acc.reduce(torch.stack(list(terms.values())), "mean"), strict=True)) if terms else {}
            )
        grad_norm = self.apply_gradients(step, total)
        self.last_terms = {key: float(value) for key, value in terms.items()}
        return float(total), grad_norm

    def apply_gradients(self, step: int, loss: Tensor) -> float:
        """Finish an optimiser step whose gradients are accumulated: refuse a non-finite loss, clip, step AdamW and
        the LR schedule, update the EMA; returns the gradient norm before clipping."""
        tc, acc = self.objective.train_config, self.accelerator
        if not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"the loss became {loss.item()} at step {step}; lower lr (now {tc.lr}) or use mixed_precision='no'."
            )
        clip = tc.grad_clip > 0 and self.privacy is None  # DP-SGD clips every example's gradient itself
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), tc.grad_clip) if clip else 0.0
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.objective.ema is not None:
            decay = ema_decay_at(step, tc.ema_decay, tc.ema_start, tc.ema_power)
            update_ema(self.objective.ema, acc.unwrap_model(self.model), decay)
        return float(grad_norm)

    # ------------------------------------------------------------------ the loop
    def train(self, stop_after: int | None = None) -> Any:
        """Train from the current step to ``config.train.steps`` (or ``stop_after`` steps, or ``minutes``); returns
        the model (a ``Pipeline``, an ``Autoencoder``, ...).

        Writes checkpoints every ``checkpoint_every`` steps and at the end, previews every ``sample_every``,
        TensorBoard scalars every ``log_every``; on the main process only. Ctrl-C or SIGTERM saves a checkpoint first.
        A whole run (no ``stop_after``) ends with an evaluation of the saved model (``final_eval``), printed.
        """
        tc, acc = self.objective.train_config, self.accelerator
        end = tc.steps if stop_after is None else min(tc.steps, stop_after)
        if tc.eval_every or tc.final_eval:
            self.objective.check_evaluation()  # a metric unfit for this model fails now, not mid-run
        self.step = self.start_step
        show = self.progress and acc.is_main_process
        label = self.objective.progress_label
        bar = tqdm(total=tc.steps, initial=self.step, disable=not show, desc=label, unit="step", dynamic_ncols=True)
        interrupted = False
        try:
            with _sigterm_interrupts(acc.is_main_process):
                self._run(end, bar)
        except KeyboardInterrupt:
            interrupted = True
            saving = "; saving a checkpoint to resume from" if self.out_dir is not None else ""
            bar.write(f"interrupted at step {self.step}{saving}.")
        finally:
            bar.close()
        self.save(self.step)
        if not interrupted:
            self.finish()
            evaluated = tc.eval_every and self.step % tc.eval_every == 0
            ended = stop_after is None and self.out_dir is not None  # a whole run that writes files
            if tc.final_eval and ended and self.objective.evaluates and not evaluated:
                self._evaluate(self.step, lambda line: print(line, file=sys.stderr, flush=True))
        if self._trackers is not None:
            self._trackers.close()
            self._trackers = None
        if interrupted:
            raise KeyboardInterrupt
        return self.objective.model

    def _run(self, end: int, bar: Any) -> None:
        """Steps until ``end`` or the time budget; ``self.step`` counts the steps done."""
        tc = self.objective.train_config
        started, smooth = time.monotonic(), None
        while self.step < end:
            loss, grad_norm = self.train_step(self.step)
            self.step += 1
            smooth = loss if smooth is None else 0.98 * smooth + 0.02 * loss
            bar.update(1)
            step = self.step
            if (tc.log_every and step % tc.log_every == 0) or step == end:
                bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
                self._log_scalars(step, {"loss": loss, "loss_smooth": smooth, "grad_norm": grad_norm})
            if tc.sample_every and step % tc.sample_every == 0 and step < end:
                self._write_preview(step)
            if tc.eval_every and step % tc.eval_every == 0:
                self._evaluate(step, bar.write)
            if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < end:
                self.save(step)
            if tc.minutes is not None and time.monotonic() - started > 60 * tc.minutes:
                bar.write(f"time budget of {tc.minutes} min reached at step {step}; saving.")
                break

    # ------------------------------------------------------------------ files
    def save(self, step: int) -> None:
        """Write a checkpoint of ``step`` (main process) and wait for every process; nothing for a run in memory."""
        if self.out_dir is None:
            return
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            keep = self.objective.train_config.keep_checkpoints
            self._record_privacy(step)
            save_checkpoint(self.objective, self._state(step), self.out_dir, step, keep)
        self.accelerator.wait_for_everyone()

    def finish(self) -> None:
        """Write the final model folder and its picture (``samples.png``, ...) into the output folder."""
        if self.out_dir is None or not self.accelerator.is_main_process:
            return
        self._record_privacy(self.step)
        self.objective.save(self.out_dir)
        if self.privacy is not None:
            p = self.objective.config.privacy
            print(
                f"privacy: epsilon {p.epsilon:.3g} spent at delta {p.delta:.3g} (DP-SGD: noise multiplier "
                f"{p.noise_multiplier:.3g}, sample rate {p.sample_rate:.3g}, {p.steps} steps, "
                f"clip {p.max_grad_norm:g})",
                file=sys.stderr,
            )
        if self.objective.preview_name is not None:
            self.objective.write_preview(self.out_dir / self.objective.preview_name, per_class=8)

    def _record_privacy(self, step: int) -> None:
        """Store the (epsilon, delta) spent by ``step`` in the config saved with the model (DP-SGD runs)."""
        if self.privacy is None:
            return
        config = self.objective.config.model_copy(update={"privacy": self.privacy.report(step)})
        self.objective.config = config
        self.objective.model.config = config

    def _write_preview(self, step: int) -> None:
        if self.out_dir is None or not self.accelerator.is_main_process:
            return
        suffix = Path(self.objective.preview_name or ".png").suffix
        path = self.out_dir / "samples" / f"step-{step:06d}{suffix}"
        self.objective.write_preview(path, per_class=4)
        trackers = self._tracking()
        if trackers is not None and path.is_file() and suffix == ".png":
            from PIL import Image

            trackers.log_image("samples", np.asarray(Image.open(path).convert("RGB")), step)

    def _log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Log the step's loss, its smoothed value, the gradient norm, the LR and the objective's terms."""
        trackers = self._tracking()
        if trackers is not None:
            values = {**scalars, "lr": self.scheduler.get_last_lr()[0], **self.last_terms}
            trackers.log({f"train/{name}": value for name, value in values.items()}, step)

    def _evaluate(self, step: int, write: Callable[[str], None]) -> None:
        """Evaluate the model on the main process while the others wait; log the numbers to TensorBoard as eval/*
        and write them to eval/step-NNNNNN.json."""
        if self.accelerator.is_main_process:
            result = self.objective.evaluate()
            if self.out_dir is not None:
                save_json(result, self.out_dir / "eval" / f"step-{step:06d}.json")
            trackers = self._tracking()
            if trackers is not None:
                trackers.log({f"eval/{key}": value for key, value in result["metrics"].items()}, step)
            write(f"eval at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items()))
        self.accelerator.wait_for_everyone()

    def _tracking(self) -> Trackers | None:
        """The run's experiment trackers (``log_with``), opened on first use on the main process; None if the run
        writes no logs."""
        if not (self.track and self.accelerator.is_main_process):
            return None
        if self._trackers is None:
            config = self.objective.config.model_dump(mode="json")
            self._trackers = Trackers(self.out_dir, self.objective.train_config.log_with, self.out_dir.name, config)
        return self._trackers
