"""Tests of dflows.metrics: exact entropies and cross-entropies in nats and bits."""

import math

import numpy as np
import pytest
import torch

from dflows.config import FlowConfig
from dflows.metrics import (
    LN2,
    Metrics,
    compute_metrics,
    cross_entropy,
    entropy,
    evaluate,
    factorized_entropy,
)
from dflows.targets import preset
from dflows.trainer import create_flow

torch.set_num_threads(1)


def plain_entropy(p):
    """Compute ``-sum p log p`` over the positive cells with nothing but NumPy."""
    p = np.asarray(p, dtype=np.float64).ravel()
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


# Entropies.


def test_entropy_of_uniform_grid():
    size = 17

    assert math.isclose(entropy(np.full((size, size), 1 / size**2)), 2 * math.log(size), rel_tol=1e-13)


def test_entropy_of_point_mass_is_zero():
    p = np.zeros((5, 5))
    p[2, 3] = 1.0

    assert entropy(p) == 0.0


def test_entropy_ignores_zero_cells():
    assert math.isclose(entropy([0.5, 0.0, 0.5, 0.0]), math.log(2), rel_tol=1e-15)


def test_factorized_entropy_of_product_is_entropy():
    generator = np.random.default_rng(0)
    rows = generator.dirichlet(np.ones(9))
    columns = generator.dirichlet(np.ones(9))
    p = np.outer(rows, columns)

    assert math.isclose(factorized_entropy(p), entropy(p), rel_tol=1e-12)


def test_factorized_entropy_sums_marginal_entropies():
    p = np.array([[0.5, 0.0], [0.0, 0.5]])

    assert math.isclose(factorized_entropy(p), 2 * math.log(2), rel_tol=1e-15)
    assert math.isclose(entropy(p), math.log(2), rel_tol=1e-15)


def test_ring_entropy_in_nats():
    ring = preset("ring8")

    assert abs(entropy(ring) - 6.320) <= 0.002
    assert math.isclose(entropy(ring), plain_entropy(ring), rel_tol=1e-12)


def test_ring_best_factorized_in_nats():
    ring = preset("ring8")
    expected = plain_entropy(ring.sum(axis=1)) + plain_entropy(ring.sum(axis=0))

    assert abs(factorized_entropy(ring) - 7.352) <= 0.002
    assert math.isclose(factorized_entropy(ring), expected, rel_tol=1e-12)


@pytest.mark.parametrize("name", ["ring8", "moons", "checkerboard", "spiral", "rings", "gaussian"])
def test_factorized_entropy_bounds_entropy(name):
    p = preset(name, 32)

    assert factorized_entropy(p) >= entropy(p) - 1e-12


# Cross-entropy.


def test_cross_entropy_of_self_is_entropy():
    p = preset("moons", 20)

    with np.errstate(divide="ignore"):
        log_p = np.log(p)

    assert math.isclose(cross_entropy(p, log_p), entropy(p), rel_tol=1e-12)


def test_cross_entropy_skips_zero_probability_cells():
    p = np.array([0.5, 0.5, 0.0])
    log_q = np.array([math.log(0.25), math.log(0.75), -np.inf])

    assert math.isclose(cross_entropy(p, log_q), -0.5 * math.log(0.25) - 0.5 * math.log(0.75))


def test_cross_entropy_is_infinite_on_missed_support():
    p = np.array([0.5, 0.5])
    log_q = np.array([0.0, -np.inf])

    assert cross_entropy(p, log_q) == math.inf


# Metrics and evaluation.


def test_compute_metrics_fields():
    p = preset("checkerboard", 8)
    log_q = np.full((8, 8), -2 * math.log(8))

    metrics = compute_metrics(p, log_q)

    assert math.isclose(metrics.nll, 2 * math.log(8), rel_tol=1e-13)
    assert math.isclose(metrics.entropy, entropy(p), rel_tol=1e-15)
    assert math.isclose(metrics.kl, metrics.nll - metrics.entropy, rel_tol=1e-13)
    assert math.isclose(metrics.best_factorized, factorized_entropy(p), rel_tol=1e-15)


def test_compute_metrics_kl_never_negative():
    p = np.array([[0.25, 0.25], [0.25, 0.25]])
    # This q is not normalised, so its NLL is 1e-9 below the entropy: KL is clipped at 0.
    log_q = np.log(p) + 1e-9

    assert compute_metrics(p, log_q).kl == 0.0


def test_metrics_bits_properties():
    metrics = Metrics(nll=2.0, entropy=1.0, kl=1.0, best_factorized=1.5)

    assert metrics.nll_bits == 2.0 / LN2
    assert metrics.entropy_bits == 1.0 / LN2
    assert metrics.kl_bits == 1.0 / LN2
    assert metrics.best_factorized_bits == 1.5 / LN2


def test_metrics_to_dict_keys_and_values():
    metrics = Metrics(nll=2.0, entropy=1.0, kl=1.0, best_factorized=1.5)

    values = metrics.to_dict()

    assert set(values) == {
        "nll_nats", "nll_bits", "entropy_nats", "entropy_bits",
        "kl_nats", "kl_bits", "best_factorized_nats", "best_factorized_bits",
    }
    assert values["nll_nats"] == 2.0
    assert values["best_factorized_bits"] == 1.5 / math.log(2)


def test_evaluate_uniform_flow():
    size = 12
    flow = create_flow(FlowConfig(vocab_size=size, layers=2), seed=0)
    target = preset("ring8", size)

    metrics = evaluate(flow, target)

    assert math.isclose(metrics.nll, 2 * math.log(size), rel_tol=1e-12)
    assert math.isclose(metrics.entropy, entropy(target), rel_tol=1e-15)


def test_evaluate_uses_model_target():
    size = 10
    flow = create_flow(FlowConfig(vocab_size=size, layers=2), seed=1)
    with torch.no_grad():
        flow.base.logits.normal_(generator=torch.Generator().manual_seed(0))
    flow.target = preset("moons", size)

    assert evaluate(flow) == compute_metrics(flow.target, flow.log_density())


def test_evaluate_without_target_raises():
    flow = create_flow(FlowConfig(vocab_size=5, layers=1), seed=0)

    with pytest.raises(ValueError, match="carries no target"):
        evaluate(flow)
