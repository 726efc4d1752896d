"""Exact information measures of a model on a K x K target, in nats and bits."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LN2 = math.log(2.0)


def entropy(p: np.ndarray) -> float:
    """Return the Shannon entropy ``-sum p log p`` of an array of probabilities, in nats."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def factorized_entropy(p: np.ndarray) -> float:
    """Return ``H(rows) + H(columns)`` of a 2D distribution, in nats.

    This is the lowest expected NLL any product distribution ``q(r) q(c)`` can reach on
    ``p``: the best factorized model, which a flow on a factorized base must beat.
    """
    p = np.asarray(p, dtype=np.float64)
    return entropy(p.sum(axis=1)) + entropy(p.sum(axis=0))


def cross_entropy(p: np.ndarray, log_q: np.ndarray) -> float:
    """Return ``-sum p log q`` in nats; cells with ``p = 0`` add nothing, even if ``q = 0``."""
    p = np.asarray(p, dtype=np.float64).ravel()
    log_q = np.asarray(log_q, dtype=np.float64).ravel()
    support = p > 0
    return float(-(p[support] * log_q[support]).sum())


@dataclass(frozen=True)
class Metrics:
    """Exact measures of a model q on a target p, all in nats.

    ``nll = -sum p log q``; ``entropy = H(p)`` is the lowest NLL any model can reach;
    ``kl = nll - entropy`` is ``KL(p || q)``; ``best_factorized`` is the NLL of the best
    product of marginals.
    """

    nll: float
    entropy: float
    kl: float
    best_factorized: float

    @property
    def nll_bits(self) -> float:
        return self.nll / LN2

    @property
    def entropy_bits(self) -> float:
        return self.entropy / LN2

    @property
    def kl_bits(self) -> float:
        return self.kl / LN2

    @property
    def best_factorized_bits(self) -> float:
        return self.best_factorized / LN2

    def to_dict(self) -> dict[str, float]:
        """Return every measure, with ``_nats`` and ``_bits`` suffixes."""
        out = {}
        for name, value in asdict(self).items():
            out[f"{name}_nats"] = value
            out[f"{name}_bits"] = value / LN2
        return out


def compute_metrics(target: np.ndarray, log_q: np.ndarray) -> Metrics:
    """Return the exact ``Metrics`` of a model with log-density ``log_q`` on ``target``."""
    h = entropy(target)
    nll = cross_entropy(target, log_q)
    return Metrics(nll=nll, entropy=h, kl=max(nll - h, 0.0), best_factorized=factorized_entropy(target))


def evaluate(model, target: np.ndarray | None = None) -> Metrics:
    """Return the exact ``Metrics`` of a 2-variable flow on a K x K target.

    ``target`` defaults to the one the model carries.
    """
    if target is None:
        target = model.target
    if target is None:
        raise ValueError("the model carries no target: pass one to evaluate()")
    return compute_metrics(target, model.log_density())
