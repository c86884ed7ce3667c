"""The studio's job queue (floor 6): generation off the event loop, one job at a time on a worker thread, with
progress, cancelling within one network evaluation, a time limit and a bounded queue.

A job's work is a function of the job; while it runs, every forward call of the model's network first checks the
job (``watch``): a cancelled job or one past its time limit stops there, before the next evaluation, so it stops
within one sampler step. The same hook counts the evaluations, the progress of work that has no step callback;
a sampler's step callback (``Job.on_step``) gives steps, an ETA and a low-resolution preview.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import DataError
from ..io import CheckpointError
from .history import History
from .requests import one_sentence

__all__ = ["Job", "JobQueue", "QueueFull", "JobStopped", "watch", "new_job_id", "JOB_ID_PATTERN"]

JOB_ID_PATTERN = r"^[0-9a-f]{16}$"
USER_ERROR = "the request's values were refused."  # the sentence of a refusal that gave none
SERVER_ERROR = "the server failed on this request; its log has the details."
_log = logging.getLogger("diffusionlab.server")


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


class QueueFull(Exception):
    """The queue holds its maximum of waiting jobs; ``retry_after`` is a guess at seconds until a place frees."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in about {retry_after} s.")
        self.retry_after = retry_after


class JobStopped(Exception):
    """Raised inside a job's work when it was cancelled or ran past its time limit."""


@dataclass
class Job:
    """One unit of work and its live state (the history keeps the lasting record)."""

    id: str
    model: str
    task: str
    settings: dict[str, Any]
    work: Callable[[Job], dict[str, Any]]
    time_limit: float
    state: str = "queued"
    step: int = 0
    total: int | None = None
    evaluations: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    preview: str | None = None  # a data URL of a small PNG of x0_hat
    stop_reason: str | None = None
    exception: BaseException | None = None  # what ended a failed job (a synchronous endpoint answers from it)
    bug: bool = False  # the failure was ours, not the request's
    version: int = 0  # bumped on every change, so a stream sends only news
    done: threading.Event = field(default_factory=threading.Event)

    def touch(self) -> None:
        self.version += 1

    def cancel(self) -> None:
        """Ask the job to stop (a running one stops at its next network evaluation)."""
        if self.stop_reason is None:
            self.stop_reason = "cancelled"
            self.touch()

    def check(self) -> None:
        """Raise JobStopped when the job was cancelled or is past its time limit."""
        if self.started is not None and self.stop_reason is None and time.time() - self.started > self.time_limit:
            self.stop_reason = f"the job ran past its time limit of {self.time_limit:g} s."
        if self.stop_reason is not None:
            raise JobStopped(self.stop_reason)

    def on_step(self, step: int, total: int, preview: str | None = None) -> None:
        """A sampler reached step ``step`` (1-based) of ``total``."""
        self.step, self.total = step, total
        if preview is not None:
            self.preview = preview
        self.touch()

    @property
    def eta(self) -> float | None:
        """Seconds left, from the pace of the steps so far."""
        if self.started is None or not self.total or not self.step or self.state != "running":
            return None
        spent = time.time() - self.started
        return spent / self.step * (self.total - self.step)

    def public(self) -> dict[str, Any]:
        """The live state a client sees."""
        return {
            "id": self.id,
            "model": self.model,
            "task": self.task,
            "state": self.state,
            "step": self.step,
            "total": self.total,
            "evaluations": self.evaluations,
            "eta": None if self.eta is None else round(self.eta, 1),
            "elapsed": None if self.started is None else round((self.finished or time.time()) - self.started, 2),
            "error": self.error,
            "preview": self.preview,
            "outputs": self.outputs,
        }


@contextmanager
def watch(job: Job, modules: list[nn.Module]) -> Iterator[None]:
    """While inside, each forward call of ``modules`` first checks the job and counts one evaluation."""

    def hook(module: nn.Module, args: Any) -> None:
        job.check()
        job.evaluations += 1
        job.touch()

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class JobQueue:
    """Jobs run one at a time, in order, on one worker thread; at most ``max_waiting`` wait (more: QueueFull)."""

    def __init__(self, history: History, max_waiting: int = 8) -> None:
        self.history = history
        self.max_waiting = max_waiting
        self._waiting: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # every job this process has seen, until it is forgotten
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._seconds: deque[float] = deque(maxlen=20)  # recent jobs' durations, for Retry-After
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name="diffusionlab-jobs", daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        """Queue a job, or raise QueueFull."""
        with self._cond:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(self._retry_after())
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._cond.notify()
        return job

    def _retry_after(self) -> int:
        typical = sorted(self._seconds)[len(self._seconds) // 2] if self._seconds else 5.0
        return max(1, round(typical * (len(self._waiting) + 1)))

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """How many jobs run before this one (0: next), or None when it no longer waits."""
        with self._cond:
            return (self._waiting.index(job) + int(self._running is not None)) if job in self._waiting else None

    def cancel(self, job_id: str) -> bool:
        """Cancel a waiting or running job; False if it has finished (or is unknown)."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.done.is_set():
                return False
            job.cancel()
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, "cancelled", "cancelled before it started.")
            return True

    def cancel_all(self) -> None:
        """Cancel every waiting and running job."""
        with self._cond:
            active = [j.id for j in self._jobs.values() if not j.done.is_set()]
        for job_id in active:
            self.cancel(job_id)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def close(self) -> None:
        """Cancel everything and stop the worker."""
        with self._cond:
            self._closed = True
            for job in [*self._waiting, *([self._running] if self._running else [])]:
                job.cancel()
            self._cond.notify_all()
        self._worker.join(timeout=30)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    for job in list(self._waiting):
                        self._finish(job, "cancelled", "the server stopped.")
                    return
                job = self._running = self._waiting.popleft()
            self._run(job)
            with self._cond:
                self._running = None
                if len(self._jobs) > 1000:  # keep memory bounded: the history has the rest
                    for old in [j for j in self._jobs.values() if j.done.is_set()][:500]:
                        self._jobs.pop(old.id, None)

    def _run(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        job.touch()
        self.history.update(job.id, state="running", started=job.started)
        try:
            job.check()
            with torch.no_grad():
                job.outputs = job.work(job)
        except JobStopped as err:
            state = "cancelled" if job.stop_reason == "cancelled" else "failed"
            self._finish(job, state, "cancelled while running." if state == "cancelled" else str(err))
        except (ValueError, DataError, CheckpointError) as err:
            job.exception = err
            self._finish(job, "failed", one_sentence(str(err), USER_ERROR))
        except Exception as err:  # noqa: BLE001 - a bug of ours: logged in full, the client gets one generic sentence
            _log.exception("job %s failed", job.id)
            job.exception, job.bug = err, True
            self._finish(job, "failed", SERVER_ERROR)
        else:
            self._finish(job, "done", None)
        self._seconds.append(time.time() - job.started)

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        job.state, job.error, job.finished = state, error, time.time()
        self.history.update(job.id, state=state, error=error, finished=job.finished, outputs=job.outputs)
        job.touch()
        job.done.set()
