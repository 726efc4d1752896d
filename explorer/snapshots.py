"""Snapshots of a model that is not training, for the views between runs.

``Trainer.snapshot`` needs a trainer, which moves the model to its device and records an
evaluation in the history. Between runs the GUI thread builds the same ``Snapshot`` from
the model directly, leaving the model and its history untouched.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dflows.flow import DiscreteFlow
from dflows.metrics import Metrics, compute_metrics
from dflows.targets import same_target
from dflows.trainer import Snapshot, histogram


def sample_target(target: np.ndarray, samples: int, generator: torch.Generator) -> np.ndarray:
    """Return a ``K x K`` histogram of ``samples`` draws from ``target``."""
    size = target.shape[0]
    flat = torch.multinomial(
        torch.from_numpy(target.reshape(-1)), samples, replacement=True, generator=generator
    )
    return histogram(torch.stack([flat // size, flat % size], dim=1), size)


def snapshot_of(
    model: DiscreteFlow, target: np.ndarray, samples: int, seed: int = 0
) -> Snapshot:
    """Return a ``Snapshot`` of ``model`` on ``target`` without changing either.

    ``samples`` draws from the target and from the model make the two histograms. Step,
    loss and learning settings come from the model's history and stored training settings.
    An all-zero target (nothing painted yet) gives zero histograms and NaN metrics.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    layers = model.push_forward_steps(target)
    log_q = model.log_density()
    if target.any():
        metrics = compute_metrics(target, log_q)
        data_histogram = sample_target(target, samples, generator)
    else:
        metrics = Metrics(math.nan, math.nan, math.nan, math.nan)
        data_histogram = np.zeros_like(target)
    history = {key: np.asarray(value, dtype=np.float64) for key, value in model.history.items()}
    if model.target is not None and not same_target(model.target, target):
        # The stored history measured another target, so its curve would mislead here.
        history = {}
    steps = history.get("step")
    losses = history.get("loss")
    settings = model.train_config or {}

    return Snapshot(
        step=int(steps[-1]) if steps is not None and len(steps) else 0,
        steps_per_second=0.0,
        loss=float(losses[-1]) if losses is not None and len(losses) else math.nan,
        temperature=float(settings.get("temperature", math.nan)),
        lr=float(settings.get("lr", math.nan)),
        device=str(model.device),
        metrics=metrics,
        history=history,
        density=np.exp(log_q),
        latent=layers[-1],
        base=model.base_density(),
        layers=layers,
        data_histogram=data_histogram,
        generated_histogram=histogram(model.sample(samples, generator=generator), model.vocab_size),
    )
