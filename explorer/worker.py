"""Background training: one ``TrainingJob`` at a time, in its own ``QThread``.

A job owns the model and its ``Trainer`` from ``start_job`` until it emits ``finished``;
the GUI thread must not touch either in between. The GUI talks to a running job only
through thread-safe methods: ``request_stop``, ``set_live`` and ``acknowledge``. Queued
signals would never reach a job, because its thread is busy in the training loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from PySide6 import QtCore

from dflows.config import TrainConfig
from dflows.devices import DeviceError
from dflows.flow import DiscreteFlow
from dflows.trainer import Snapshot, Trainer

log = logging.getLogger("explorer")

# Snapshots cost a few milliseconds at K = 91, and the GUI cannot show more than its
# refresh rate anyway.
MAX_SNAPSHOTS_PER_SECOND = 30.0

_threads: "weakref.WeakSet[QtCore.QThread]" = weakref.WeakSet()


def running_threads() -> list[QtCore.QThread]:
    """Return the job threads that are still running (the tests check this is empty)."""
    return [thread for thread in list(_threads) if thread.isRunning()]


@dataclass
class JobResult:
    """The outcome of a job.

    ``reason`` is "completed", "stopped", "diverged" or "failed"; ``message`` explains the
    last two. ``planned`` is the number of steps the job set out to make (0: until
    stopped). ``run_length`` is the length of a full run of a trainer this job built
    (``Trainer.total_steps``; 0: until stopped), and None for a job that continued a
    trainer. ``trainer`` is the job's trainer (None if it could not be built), which the
    GUI keeps to resume a paused run.
    """

    reason: str
    steps: int = 0
    planned: int = 0
    run_length: int | None = None
    message: str = ""
    trainer: Trainer | None = None
    seconds: float = 0.0


def describe_failure(error: BaseException) -> str:
    """Return a message for an exception raised while training, saying what to do next."""
    if isinstance(error, DeviceError):
        return f"{error}. Choose another device in the settings and train again."
    out_of_memory = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
    if isinstance(error, out_of_memory):
        details = str(error).splitlines()[0] if str(error) else "no details"
        return (
            f"Training ran out of memory ({type(error).__name__}: {details}). "
            "Lower the grid size K, the number of layers, the MLP width or the batch size, "
            "or choose another device."
        )
    return f"Training failed with {type(error).__name__}: {error}"


class TrainingJob(QtCore.QObject):
    """Trains for a number of steps in a worker thread and sends snapshots to the GUI.

    Give it either a ``trainer`` to continue, or a ``model``, ``target`` and ``config`` to
    build a new one in the worker thread. Building moves the model to its device and, for
    the search method, prepares the search, which can take seconds. ``steps`` is the
    number of steps to make: None means the trainer's full run (``Trainer.total_steps``),
    0 trains until ``request_stop``.

    Signals carry plain data. ``snapshot_ready(job_id, Snapshot)`` carries arrays copied
    from the model, at most ``MAX_SNAPSHOTS_PER_SECOND`` per second, and only after the GUI
    has called ``acknowledge`` for the previous one. ``finished(job_id, JobResult)`` comes
    once, after the last snapshot.
    """

    snapshot_ready = QtCore.Signal(int, object)
    finished = QtCore.Signal(int, object)

    _next_id = 1

    def __init__(
        self,
        steps: int | None,
        samples: int,
        trainer: Trainer | None = None,
        model: DiscreteFlow | None = None,
        target: np.ndarray | None = None,
        config: TrainConfig | None = None,
        live: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if trainer is None and (model is None or target is None or config is None):
            raise ValueError("a job needs a trainer, or a model, a target and a config")
        self.job_id = TrainingJob._next_id
        TrainingJob._next_id += 1
        self.steps = None if steps is None else int(steps)
        self.samples = int(samples)
        self.trainer = trainer
        self._model, self._target, self._config = model, target, config
        self.result: JobResult | None = None

        self._stop = threading.Event()
        self._awaiting_ack = threading.Event()
        self._live_lock = threading.Lock()
        self._live: dict[str, float] = dict(live or {})
        self._last_emit = -math.inf

    # Thread-safe controls, called from the GUI thread.

    def request_stop(self) -> None:
        """Ask the job to finish after its current step."""
        self._stop.set()

    def set_live(self, name: str, value: float) -> None:
        """Change ``"lr"`` or ``"temperature"`` before the next step."""
        if name not in ("lr", "temperature"):
            raise ValueError(f"{name!r} cannot change during training; only lr and temperature can")
        with self._live_lock:
            self._live[name] = float(value)

    def acknowledge(self) -> None:
        """Tell the job the GUI has drawn its last snapshot, so it may send the next one."""
        self._awaiting_ack.clear()

    # Worker side.

    def _apply_live(self) -> None:
        with self._live_lock:
            changes, self._live = self._live, {}
        for name, value in changes.items():
            log.debug(
                "job %d: %s set to %g before step %d",
                self.job_id, name, value, self.trainer.step_count + 1,
            )
            if name == "lr":
                self.trainer.set_lr(value)
            else:
                self.trainer.set_temperature(value)

    def _emit_snapshot(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force:
            if self._awaiting_ack.is_set() or now - self._last_emit < 1.0 / MAX_SNAPSHOTS_PER_SECOND:
                return
        self._last_emit = now
        self._awaiting_ack.set()
        self.snapshot_ready.emit(self.job_id, self.trainer.snapshot(self.samples))

    def _after_step(self, step: int, loss: float) -> None:
        """Called by ``Trainer.run`` in the worker thread after every step."""
        if self._stop.is_set():
            # The trainer checks its own flag before the next step. Because this sets it
            # inside run(), run() also clears it, so no stop request outlives the job.
            self.trainer.request_stop()
            return
        self._apply_live()
        self._emit_snapshot()

    @QtCore.Slot()
    def run(self) -> None:
        """Build the trainer if needed, train, send the last snapshot, then finish."""
        started = time.monotonic()
        result = JobResult(reason="failed")
        try:
            if self.trainer is None:
                log.debug("job %d: building the trainer (device %s)", self.job_id, self._config.device)
                self.trainer = Trainer(self._model, self._target, self._config)
                result.run_length = getattr(self.trainer, "total_steps", self.trainer.config.steps)
            result.trainer = self.trainer
            result.planned = self.steps
            if self.steps is None:
                result.planned = getattr(self.trainer, "total_steps", self.trainer.config.steps)
            self._apply_live()
            if self._stop.is_set():
                result.reason = "stopped"
            else:
                log.debug(
                    "job %d: training from step %d for %s on %s",
                    self.job_id, self.trainer.step_count,
                    f"{result.planned} steps" if result.planned else "until stopped",
                    self.trainer.device,
                )
                outcome = self.trainer.run(result.planned, progress=self._after_step)
                result.reason, result.steps, result.message = outcome.reason, outcome.steps, outcome.message
                if result.reason == "stopped" and not self._stop.is_set():
                    result.reason = "completed"
            self._emit_snapshot(force=True)
        except Exception as error:  # noqa: BLE001 (every failure must reach the window)
            log.exception("job %d failed", self.job_id)
            result.reason = "failed"
            result.message = describe_failure(error)
        result.seconds = time.monotonic() - started
        self.result = result
        log.debug(
            "job %d: %s after %d steps in %.2f s", self.job_id, result.reason, result.steps, result.seconds
        )
        self.finished.emit(self.job_id, result)
        QtCore.QThread.currentThread().quit()


def start_job(job: TrainingJob) -> QtCore.QThread:
    """Move ``job`` to a new thread and start it; returns the thread.

    The thread quits by itself when the job finishes. Keep a reference to both until
    ``QThread.wait`` returns: destroying a running QThread aborts the process.
    """
    thread = QtCore.QThread()
    thread.setObjectName(f"training-job-{job.job_id}")
    job.moveToThread(thread)
    thread.started.connect(job.run)
    _threads.add(thread)
    log.debug("job %d: starting thread", job.job_id)
    thread.start()
    return thread
