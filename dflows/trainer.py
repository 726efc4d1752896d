"""Training a discrete flow on a K x K target, with exact metrics and snapshots."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import aggregated
from .config import FlowConfig, TrainConfig
from .devices import resolve_device
from .flow import DiscreteFlow
from .metrics import Metrics, compute_metrics, entropy, factorized_entropy
from .search import GridSearch, temperature_at
from .targets import same_target, validate_target

# The exact objective skips cells whose probability is below this fraction of the largest
# one. Together they change the loss by far less than float32 rounding does.
SUPPORT_CUTOFF = 1e-12

# Cells per chunk when the exact objective is evaluated; bounds the memory of a step.
EXACT_CHUNK = 16384


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite; the weights were left unchanged."""


def create_flow(config: FlowConfig, seed: int = 0) -> DiscreteFlow:
    """Build a ``DiscreteFlow`` whose initial weights depend only on ``config`` and ``seed``.

    The global torch random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DiscreteFlow(config)


@dataclass
class Snapshot:
    """A copy of the training state for display; it shares no memory with the trainer.

    Grid arrays are ``K x K`` float64 with ``[row, column]`` indexing.
    """

    step: int
    steps_per_second: float
    loss: float
    temperature: float
    lr: float
    device: str
    metrics: Metrics
    history: dict[str, np.ndarray]
    density: np.ndarray
    latent: np.ndarray
    base: np.ndarray
    layers: list[np.ndarray]
    data_histogram: np.ndarray | None = None
    generated_histogram: np.ndarray | None = None


@dataclass
class RunResult:
    """The outcome of a ``Trainer.run``: ``reason`` is "completed", "stopped" or "diverged"."""

    steps: int
    reason: str
    message: str = ""
    seconds: float = 0.0


def histogram(cells: torch.Tensor, size: int) -> np.ndarray:
    """Count integer points ``(N, 2)`` per grid cell: a ``K x K`` float64 array."""
    flat = (cells[:, 0] * size + cells[:, 1]).cpu()
    counts = torch.bincount(flat, minlength=size * size)
    return counts.numpy().astype(np.float64).reshape(size, size)


class Trainer:
    """Fits a 2-variable ``DiscreteFlow`` to a ``K x K`` target.

    The config picks the method. ``"search"`` is the annealed exact search over the table
    choices of ``dflows.search``, whose steps are a few coarse starts and then sweeps at full
    resolution. ``"gradient"`` is Adam on straight-through gradients. The model is moved to
    the configured device and trained in place; the search itself runs on the CPU with NumPy
    and writes its choices into the model after every step.

    ``step`` makes one step; ``run`` makes many, calls a callback with a ``Snapshot`` every
    few steps and can be stopped from another thread with ``request_stop``. A gradient step
    whose loss or gradient is not finite is not applied: it raises ``TrainingDiverged`` and
    the weights of the last good step stay in place.

    The history in ``model.history`` holds, per step, ``step`` and ``loss`` (the training
    objective, in nats), and at every ``eval_every`` steps ``eval_step``, ``nll`` and ``kl``
    (exact, in nats) and ``seconds`` (training time so far).
    """

    def __init__(
        self,
        model: DiscreteFlow,
        target: np.ndarray,
        config: TrainConfig | None = None,
        eval_every: int = 10,
    ) -> None:
        self.config = config or TrainConfig()
        self.config.validate()
        if model.num_variables != 2:
            raise ValueError("the trainer fits flows on 2 variables (a K x K grid)")
        self.target = validate_target(target)
        size = self.target.shape[0]
        if size != model.vocab_size:
            raise ValueError(
                f"target is {size} x {size}, but the model has K={model.vocab_size}; "
                "resample the target or build the model with the target's K"
            )

        self.device = resolve_device(self.config.device)
        torch.set_num_threads(self.config.threads)
        if model.target is not None and not same_target(model.target, self.target):
            # The history measured another target; the weights carry over, the history not.
            model.history = {}
        self.model = model.to(self.device)
        self.model.target = self.target
        self.model.train_config = self.config.to_dict()
        self.eval_every = max(1, int(eval_every))
        self.entropy = entropy(self.target)
        self.best_factorized = factorized_entropy(self.target)

        self._stop = threading.Event()
        self._generator = torch.Generator().manual_seed(self.config.seed)
        # Snapshots draw from their own generator so that watching a run does not change it.
        self._display_generator = torch.Generator().manual_seed(self.config.seed + 1)
        self._flat_probabilities = torch.from_numpy(self.target.reshape(-1))
        self._prepare_support()
        if self.config.base_init == "marginals" and not model.history:
            self._init_base_from_marginals()

        self._lr = self.config.lr
        self._temperature = self.config.temperature
        self._scheduled = True
        base_lr = self.config.base_lr if self.config.base_lr is not None else self.config.lr
        self._base_lr_ratio = base_lr / self.config.lr
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(self.model.layers.parameters()), "lr": self.config.lr},
                {"params": list(self.model.base.parameters()), "lr": base_lr},
            ],
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.search: GridSearch | None = None
        self._fine_steps = 0
        if self.config.method == "search":
            self.search = GridSearch.from_model(
                self.model,
                self.target,
                seed=self.config.seed,
                restarts=0 if model.history.get("step") else self.config.restarts,
                coarse_sweeps=self.config.coarse_sweeps,
                coarse_factors=(
                    (13.0, 9.0, 6.0) if self.config.coarse_factor is None else (self.config.coarse_factor,)
                ),
            )
            self.search.write_to(self.model)

        history = self.model.history
        for key in ("step", "loss", "eval_step", "nll", "kl", "seconds"):
            history.setdefault(key, [])
        self.step_count = int(history["step"][-1]) if history["step"] else 0
        self._start_step = self.step_count
        self._seconds = float(history["seconds"][-1]) if history["seconds"] else 0.0
        self.last_loss = float(history["loss"][-1]) if history["loss"] else math.nan
        self._rate_clock = (time.perf_counter(), self.step_count)
        self.steps_per_second = 0.0
        if not history["eval_step"]:
            self._record_eval()

    # Setup.

    def _prepare_support(self) -> None:
        size = self.model.vocab_size
        flat = self.target.reshape(-1)
        keep = np.flatnonzero(flat > SUPPORT_CUTOFF * flat.max())
        cells = torch.from_numpy(np.stack([keep // size, keep % size], axis=1))
        self._support_cells = cells.to(self.device)
        weights = flat[keep] / flat[keep].sum()
        self._support_weights = torch.from_numpy(weights).to(self.device, torch.float32)

    @torch.no_grad()
    def _init_base_from_marginals(self) -> None:
        marginals = np.stack([self.target.sum(axis=1), self.target.sum(axis=0)])
        logits = np.log(np.maximum(marginals, 1e-12))
        self.model.base.logits.copy_(torch.from_numpy(logits))

    # Live settings.

    @property
    def temperature(self) -> float:
        """The straight-through temperature the next step uses."""
        return self._temperature

    @property
    def lr(self) -> float:
        """The learning rate of the coupling layers for the next step."""
        return self._lr

    def set_temperature(self, value: float) -> None:
        """Use ``value`` from the next step on; this ends the configured schedules."""
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"temperature {value!r} is invalid: it must be a positive number")
        self._temperature = float(value)
        self._scheduled = False

    def set_lr(self, value: float) -> None:
        """Use learning rate ``value`` from the next step on; this ends the schedules."""
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"learning rate {value!r} is invalid: it must be a positive number")
        self._lr = float(value)
        self._scheduled = False

    @property
    def total_steps(self) -> int:
        """Steps a run makes by default: the configured steps plus coarse starts still due."""
        if self.config.steps == 0:
            return 0
        restarts = self.search.restarts_left if self.search is not None else 0
        return self.config.steps + restarts

    def _update_schedules(self) -> None:
        config = self.config
        if self.search is not None:
            if self._scheduled and config.steps > 0 and config.temperature_final is not None:
                self._temperature = temperature_at(
                    config.temperature, config.temperature_final,
                    min(self._fine_steps, config.steps - 1), config.steps,
                )
            return
        if self._scheduled and config.steps > 0:
            progress = min(1.0, (self.step_count - self._start_step) / max(1, config.steps - 1))
            if config.temperature_final is not None:
                ratio = config.temperature_final / config.temperature
                self._temperature = config.temperature * ratio**progress
            if config.lr_final is not None:
                cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
                self._lr = config.lr_final + (config.lr - config.lr_final) * cosine
        self.optimizer.param_groups[0]["lr"] = self._lr
        self.optimizer.param_groups[1]["lr"] = self._lr * self._base_lr_ratio

    # Steps.

    def _codes(self, cells: torch.Tensor) -> torch.Tensor:
        return F.one_hot(cells, self.model.vocab_size).to(torch.float32)

    def _objective(self) -> float:
        """Compute the loss and accumulate its gradients; return the loss in nats.

        Shift flows with lookup tables trained without input gradients take the aggregated
        path of ``dflows.aggregated``, which gives the same gradients without one-hot codes.
        """
        temperature = self._temperature
        input_gradient = self.config.input_gradient
        fast = aggregated.supports(self.model, input_gradient)
        if self.config.objective == "exact" and fast:
            return aggregated.weighted_nll_backward(
                self.model, self._support_cells, self._support_weights, temperature
            )
        if self.config.objective == "exact":
            total = 0.0
            for start in range(0, len(self._support_cells), EXACT_CHUNK):
                cells = self._support_cells[start : start + EXACT_CHUNK]
                weights = self._support_weights[start : start + EXACT_CHUNK]
                log_q = self.model.log_prob_codes(self._codes(cells), temperature, input_gradient)
                loss = -(weights * log_q).sum()
                loss.backward()
                total += float(loss.detach())
            return total

        flat = torch.multinomial(
            self._flat_probabilities, self.config.batch_size, replacement=True,
            generator=self._generator,
        )
        size = self.model.vocab_size
        cells = torch.stack([flat // size, flat % size], dim=1).to(self.device)
        if fast:
            return aggregated.weighted_nll_backward(self.model, cells, 1.0 / len(cells), temperature)
        loss = -self.model.log_prob_codes(self._codes(cells), temperature, input_gradient).mean()
        loss.backward()
        return float(loss.detach())

    def _gradients_finite(self) -> bool:
        for parameter in self.model.parameters():
            if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all()):
                return False
        return True

    def step(self) -> float:
        """Make one optimiser step and return its loss in nats.

        Raises ``TrainingDiverged`` (and leaves the weights unchanged) when the loss or a
        gradient is NaN or infinite.
        """
        started = time.perf_counter()
        self._update_schedules()
        if self.search is not None:
            loss = self._search_step()
        else:
            loss = self._gradient_step()

        self.step_count += 1
        self.last_loss = loss
        self._seconds += time.perf_counter() - started
        history = self.model.history
        history["step"].append(self.step_count)
        history["loss"].append(loss)
        if self.step_count % self.eval_every == 0:
            self._record_eval()
        return loss

    def _search_step(self) -> float:
        search = self.search
        if search.in_coarse_phase:
            search.coarse_step()
            loss = search.nll()
        else:
            loss = search.fine_step(self._temperature)
            self._fine_steps += 1
        search.write_to(self.model)
        return loss

    def finish(self) -> None:
        """End a search run at its best state, polished greedily; gradient runs are unchanged.

        ``run`` calls this before it returns.
        """
        if self.search is None:
            return
        self.last_loss = self.search.finish()
        self.search.write_to(self.model)

    def _gradient_step(self) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._objective()
        if not math.isfinite(loss) or not self._gradients_finite():
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"the loss became {'non-finite' if not math.isfinite(loss) else 'finite but a gradient did not'}"
                f" at step {self.step_count + 1}; the weights of step {self.step_count} are kept. "
                "Lower the learning rate or raise the temperature and train again."
            )
        self.optimizer.step()
        return loss

    # Evaluation.

    def evaluate(self) -> Metrics:
        """Return the exact metrics of the current model on the target."""
        self.model.eval()
        return compute_metrics(self.target, self.model.log_density())

    def _record_eval(self) -> Metrics:
        metrics = self.evaluate()
        history = self.model.history
        if history["eval_step"] and history["eval_step"][-1] == self.step_count:
            return metrics
        history["eval_step"].append(self.step_count)
        history["nll"].append(metrics.nll)
        history["kl"].append(metrics.kl)
        history["seconds"].append(self._seconds)
        return metrics

    def _measure_rate(self) -> None:
        now = time.perf_counter()
        clock, steps = self._rate_clock
        if now - clock >= 0.25 and self.step_count > steps:
            self.steps_per_second = (self.step_count - steps) / (now - clock)
            self._rate_clock = (now, self.step_count)

    def snapshot(self, samples: int = 0) -> Snapshot:
        """Return a ``Snapshot`` of the model now; with ``samples > 0`` add histograms.

        The data histogram counts ``samples`` draws from the target and the generated one
        counts ``samples`` draws from the model (``inverse`` of base samples).
        """
        self.model.eval()
        size = self.model.vocab_size
        self._measure_rate()
        steps = self.model.push_forward_steps(self.target)
        log_q = self.model.log_density()
        metrics = compute_metrics(self.target, log_q)
        history = {key: np.asarray(value, dtype=np.float64) for key, value in self.model.history.items()}

        data_histogram = generated_histogram = None
        if samples > 0:
            flat = torch.multinomial(
                self._flat_probabilities, samples, replacement=True, generator=self._display_generator
            )
            data_histogram = histogram(torch.stack([flat // size, flat % size], 1), size)
            generated = self.model.sample(samples, generator=self._display_generator)
            generated_histogram = histogram(generated, size)

        return Snapshot(
            step=self.step_count,
            steps_per_second=self.steps_per_second,
            loss=self.last_loss,
            temperature=self._temperature,
            lr=self._lr,
            device=str(self.device),
            metrics=metrics,
            history=history,
            density=np.exp(log_q),
            latent=steps[-1],
            base=self.model.base_density(),
            layers=steps,
            data_histogram=data_histogram,
            generated_histogram=generated_histogram,
        )

    # Runs.

    def request_stop(self) -> None:
        """Ask a running ``run`` to return after its current step; safe from any thread."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def run(
        self,
        steps: int | None = None,
        callback: Callable[[Snapshot], None] | None = None,
        every: int = 100,
        samples: int = 0,
        progress: Callable[[int, float], None] | None = None,
    ) -> RunResult:
        """Train for ``steps`` steps (default: ``total_steps``; 0 means until stopped).

        ``callback`` gets a ``Snapshot`` every ``every`` steps and after the last one;
        ``progress(step, loss)`` is called after every step. The stop flag is checked before
        every step and cleared when the run returns. A search run ends at its best state.
        """
        total = self.total_steps if steps is None else steps
        torch.set_num_threads(self.config.threads)
        started = time.perf_counter()
        done = 0
        result = RunResult(steps=0, reason="completed")
        try:
            while total == 0 or done < total:
                if self._stop.is_set():
                    result.reason = "stopped"
                    break
                try:
                    loss = self.step()
                except TrainingDiverged as error:
                    result.reason, result.message = "diverged", str(error)
                    break
                done += 1
                if progress is not None:
                    progress(self.step_count, loss)
                if callback is not None and done % every == 0:
                    callback(self.snapshot(samples))
        finally:
            self._stop.clear()
        self.finish()
        self._record_eval()
        if callback is not None and (done % every != 0 or done == 0):
            callback(self.snapshot(samples))
        result.steps = done
        result.seconds = time.perf_counter() - started
        return result
