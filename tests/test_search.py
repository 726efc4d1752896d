"""Tests of the exact annealed search over lookup-table choices."""

import math

import numpy as np
import pytest
import torch

import dflows
from dflows.config import FlowConfig, TrainConfig, recommended_configs
from dflows.metrics import factorized_entropy
from dflows.modular import units
from dflows.search import GridSearch, temperature_at

torch.set_num_threads(1)


def search_trainer(target, layers=2, layer_type="shift", **train_options):
    size = target.shape[0]
    flow = FlowConfig(vocab_size=size, layers=layers, layer_type=layer_type)
    options = {"steps": 20, "restarts": 2, "coarse_sweeps": 10, "device": "cpu"}
    options.update(train_options)
    model = dflows.create_flow(flow, 0)
    return dflows.Trainer(model, target, TrainConfig(method="search", **options))


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [14, 21])
def test_search_nll_matches_model(layer_type, size):
    trainer = search_trainer(dflows.preset("ring8", size), layers=3, layer_type=layer_type)

    trainer.run()

    assert math.isclose(trainer.last_loss, trainer.evaluate().nll, abs_tol=1e-6)


@pytest.mark.parametrize("name", list(dflows.PRESETS))
def test_search_never_worse_than_identity(name):
    target = dflows.preset(name, 16)
    trainer = search_trainer(target, layers=2)

    trainer.run()

    assert trainer.evaluate().nll <= factorized_entropy(target) + 1e-9


def test_search_model_round_trips():
    trainer = search_trainer(dflows.preset("spiral", 20), layers=4, layer_type="affine")
    trainer.run()
    model = trainer.model
    cells = model.grid_cells()

    latent = model(cells)

    assert torch.equal(model.inverse(latent), cells)
    assert len({tuple(row) for row in latent.tolist()}) == 20 * 20


def test_search_affine_scales_are_units():
    size = 21
    trainer = search_trainer(dflows.preset("moons", size), layers=2, layer_type="affine", temperature=1.0)
    trainer.run()
    allowed = set(units(size))
    rows = torch.arange(size).unsqueeze(1)

    for layer in trainer.model.layers:
        _, scale = layer.choices(rows)
        assert set(scale.flatten().tolist()) <= allowed


def test_search_needs_table_conditioners():
    model = dflows.create_flow(FlowConfig(vocab_size=8, conditioner="mlp"), 0)

    with pytest.raises(ValueError, match="lookup-table conditioners"):
        dflows.Trainer(model, dflows.preset("ring8", 8), TrainConfig(method="search"))


def test_search_total_steps_counts_restarts():
    trainer = search_trainer(dflows.preset("ring8", 20), steps=7, restarts=3)

    result = trainer.run()

    assert trainer.total_steps == 7
    assert result.steps == 10


def test_search_continues_without_restarts(tmp_path):
    first = search_trainer(dflows.preset("ring8", 20))
    first.run()
    path = dflows.save(first.model, tmp_path / "ring.dflow")

    model = dflows.load(path)
    second = dflows.Trainer(model, model.target, TrainConfig(method="search", steps=5, device="cpu"))

    assert second.total_steps == 5
    assert second.search.restarts_left == 0
    assert math.isclose(second.search.nll(), first.evaluate().nll, abs_tol=1e-6)


def test_search_seed_reproducible():
    target = dflows.preset("ring8", 20)
    first = search_trainer(target, temperature=0.5)
    second = search_trainer(target, temperature=0.5)

    first.run()
    second.run()

    assert first.model.history["loss"] == second.model.history["loss"]


def test_lift_maps_rows_and_shifts():
    search = GridSearch([(1, False)], np.full((12, 12), 1 / 144), restarts=0)
    coarse = search.layers[0].copy()
    coarse.size = 3
    coarse.loc = np.array([0, 1, 2])

    fine = search._lift(coarse, 3, 0, search.layers[0])

    assert fine.loc.tolist() == [0] * 4 + [4] * 4 + [8] * 4


def test_lift_respects_offset():
    search = GridSearch([(1, False)], np.full((12, 12), 1 / 144), restarts=0)
    coarse = search.layers[0].copy()
    coarse.loc = np.array([0, 1, 2])

    fine = search._lift(coarse, 3, 2, search.layers[0])

    assert fine.loc.tolist() == [8, 8] + [0] * 4 + [4] * 4 + [8] * 2


def test_temperature_schedule_ends():
    assert temperature_at(0.1, 0.002, 0, 400) == 0.1
    assert math.isclose(temperature_at(0.1, 0.002, 399, 400), 0.002)


def test_ring8_default_settings_small_budget():
    flow, train = recommended_configs("ring8", 91)
    train.steps = 60
    train.restarts = 4
    train.device = "cpu"
    model = dflows.create_flow(flow, 0)
    trainer = dflows.Trainer(model, dflows.preset("ring8", 91), train)

    trainer.run()

    assert trainer.evaluate().nll < 7.0


@pytest.mark.slow
def test_ring8_default_settings_reach_target():
    flow, train = recommended_configs("ring8", 91)
    train.device = "cpu"
    model = dflows.create_flow(flow, 0)
    trainer = dflows.Trainer(model, dflows.preset("ring8", 91), train)

    trainer.run()

    assert trainer.evaluate().nll <= 6.40


def test_gaussian_default_settings_reach_entropy():
    target = dflows.preset("gaussian")
    flow, train = recommended_configs("gaussian", 30)
    train.device = "cpu"
    trainer = dflows.Trainer(dflows.create_flow(flow, 0), target, train)

    trainer.run()

    assert trainer.evaluate().kl < 0.01


def test_mlp_gradient_learns_band():
    size = 32
    rows = np.arange(size)
    # Each row's mass sits at column row / 2 + 4: one shift per row makes it factorized.
    target = np.exp(-0.5 * (rows[None, :] - (rows[:, None] // 2 + 4)) ** 2)
    target *= np.exp(-0.5 * (rows[:, None] - 16) ** 2 / 36)
    target /= target.sum()
    flow, train = recommended_configs(None, size, "gradient", "mlp")
    train.steps = 300
    train.device = "cpu"
    trainer = dflows.Trainer(dflows.create_flow(flow, 0), target, train)

    trainer.run()

    assert trainer.evaluate().nll < factorized_entropy(target) - 0.5
