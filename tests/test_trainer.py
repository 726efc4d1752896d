"""Tests of dflows.trainer: steps, runs, stopping, the divergence guard, seeds and snapshots.

Trainers run a handful of steps on small grids (K = 8 or 12) to keep the suite fast. Both
methods are covered where a behaviour applies to both: ``"gradient"`` (Adam on
straight-through gradients) and ``"search"`` (the exact table search).
"""

import math
import threading

import numpy as np
import pytest
import torch

from dflows.config import FlowConfig, TrainConfig
from dflows.devices import DeviceError
from dflows.metrics import Metrics
from dflows.targets import TargetError, preset
from dflows.trainer import RunResult, Snapshot, Trainer, TrainingDiverged, create_flow, histogram

torch.set_num_threads(1)

METHODS = ["gradient", "search"]


def make_trainer(method="gradient", size=8, layers=4, flow_seed=0, target="ring8", **settings):
    """Return a Trainer for an affine table flow on a small preset, on the CPU."""
    flow = create_flow(FlowConfig(vocab_size=size, layers=layers, layer_type="affine"), seed=flow_seed)
    settings.setdefault("steps", 20)
    settings.setdefault("lr", 0.05)
    settings.setdefault("restarts", 0)
    config = TrainConfig(method=method, device="cpu", **settings)
    return Trainer(flow, preset(target, size), config)


def weights_of(trainer):
    return {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}


def same_weights(first, second):
    """Return True when two state dicts are equal, with NaN entries equal to each other."""
    if first.keys() != second.keys():
        return False
    for key, a in first.items():
        b = second[key]
        if not torch.equal(a.isnan(), b.isnan()):
            return False
        if not torch.equal(a[~a.isnan()], b[~b.isnan()]):
            return False
    return True


# Construction.


def test_trainer_sets_model_target_and_config():
    trainer = make_trainer()

    assert np.array_equal(trainer.model.target, preset("ring8", 8))
    assert trainer.model.train_config == trainer.config.to_dict()
    assert trainer.step_count == 0


def test_trainer_records_initial_evaluation():
    trainer = make_trainer(method="gradient")
    history = trainer.model.history

    assert history["eval_step"] == [0]
    assert math.isclose(history["nll"][0], trainer.evaluate().nll, rel_tol=1e-12)
    assert history["step"] == []


def test_trainer_rejects_three_variables():
    flow = create_flow(FlowConfig(vocab_size=4, num_variables=3, layers=2), seed=0)

    with pytest.raises(ValueError, match="2 variables"):
        Trainer(flow, preset("ring8", 4), TrainConfig(method="gradient", device="cpu"))


def test_trainer_rejects_target_size_mismatch():
    flow = create_flow(FlowConfig(vocab_size=8, layers=2), seed=0)

    with pytest.raises(ValueError, match="target is 9 x 9, but the model has K=8"):
        Trainer(flow, preset("ring8", 9), TrainConfig(method="gradient", device="cpu"))


def test_trainer_rejects_invalid_target():
    flow = create_flow(FlowConfig(vocab_size=4, layers=2), seed=0)

    with pytest.raises(TargetError, match="all zero"):
        Trainer(flow, np.zeros((4, 4)), TrainConfig(method="gradient", device="cpu"))


def test_search_rejects_mlp_conditioner():
    flow = create_flow(FlowConfig(vocab_size=8, layers=2, conditioner="mlp"), seed=0)

    with pytest.raises(ValueError, match="search method needs lookup-table conditioners"):
        Trainer(flow, preset("ring8", 8), TrainConfig(method="search", device="cpu"))


def test_trainer_rejects_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    flow = create_flow(FlowConfig(vocab_size=8, layers=2), seed=0)

    with pytest.raises(DeviceError, match="torch finds no CUDA GPU on this machine; use the device cpu"):
        Trainer(flow, preset("ring8", 8), TrainConfig(method="gradient", device="cuda"))


# Steps and history.


@pytest.mark.parametrize("method", METHODS)
def test_steps_reduce_loss(method):
    trainer = make_trainer(method=method, size=12)
    initial_nll = trainer.evaluate().nll

    trainer.run(steps=20)
    losses = trainer.model.history["loss"]

    assert losses[-1] < losses[0]
    assert trainer.evaluate().nll < initial_nll


def test_sampled_objective_reduces_loss():
    trainer = make_trainer(method="gradient", objective="sampled", batch_size=256, lr=0.1)
    initial_nll = trainer.evaluate().nll

    trainer.run(steps=30)

    assert trainer.evaluate().nll < initial_nll


def test_first_gradient_loss_is_exact_nll():
    trainer = make_trainer(method="gradient")
    nll = trainer.evaluate().nll

    loss = trainer.step()

    assert math.isclose(loss, nll, rel_tol=1e-5)


def test_search_loss_is_model_nll():
    trainer = make_trainer(method="search", size=12)

    trainer.run(steps=10)

    assert math.isclose(trainer.evaluate().nll, trainer.last_loss, rel_tol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_history_grows_per_step(method):
    trainer = make_trainer(method=method)
    trainer.eval_every = 2

    trainer.run(steps=5)
    history = trainer.model.history

    assert history["step"] == [1, 2, 3, 4, 5]
    assert len(history["loss"]) == 5
    assert history["eval_step"] == [0, 2, 4, 5]
    assert len(history["nll"]) == 4
    assert len(history["kl"]) == 4
    assert len(history["seconds"]) == 4


@pytest.mark.parametrize("method", METHODS)
def test_second_run_continues_history(method):
    trainer = make_trainer(method=method)

    trainer.run(steps=3)
    result = trainer.run(steps=2)

    assert result == RunResult(steps=2, reason="completed", seconds=result.seconds)
    assert trainer.model.history["step"] == [1, 2, 3, 4, 5]
    assert trainer.step_count == 5


def test_history_kl_is_nll_minus_entropy():
    trainer = make_trainer(method="gradient")
    trainer.eval_every = 1

    trainer.run(steps=4)
    history = trainer.model.history

    for nll, kl in zip(history["nll"], history["kl"]):
        assert math.isclose(kl, max(nll - trainer.entropy, 0.0), rel_tol=1e-12, abs_tol=1e-12)


def test_run_reports_progress_each_step():
    trainer = make_trainer(method="gradient")
    calls = []

    trainer.run(steps=4, progress=lambda step, loss: calls.append((step, loss)))

    assert [step for step, _ in calls] == [1, 2, 3, 4]
    assert [loss for _, loss in calls] == trainer.model.history["loss"]


def test_run_callback_every_and_last():
    trainer = make_trainer(method="gradient")
    snapshots = []

    trainer.run(steps=5, callback=snapshots.append, every=2)

    assert [snapshot.step for snapshot in snapshots] == [2, 4, 5]


# Stopping from another thread.


@pytest.mark.parametrize("method", METHODS)
def test_stop_from_other_thread(method):
    trainer = make_trainer(method=method)
    enough_steps = threading.Event()
    results = []

    def progress(step, loss):
        if step >= 3:
            enough_steps.set()

    worker = threading.Thread(target=lambda: results.append(trainer.run(steps=0, progress=progress)))
    worker.start()
    reached = enough_steps.wait(timeout=60)
    trainer.request_stop()
    worker.join(timeout=60)

    assert reached
    assert not worker.is_alive()
    assert results[0].reason == "stopped"
    assert results[0].steps >= 3
    assert not trainer.stop_requested


def test_stop_before_run_makes_no_step():
    trainer = make_trainer(method="gradient")

    trainer.request_stop()
    result = trainer.run(steps=10)

    assert result.reason == "stopped"
    assert result.steps == 0
    assert trainer.model.history["step"] == []


# Divergence guard.


def nan_objective(trainer):
    """Return an objective that computes the real gradients but reports a NaN loss."""
    original = trainer._objective

    def objective():
        original()
        return math.nan

    return objective


def nan_gradient_objective(trainer):
    """Return an objective with a finite loss and a NaN in one gradient."""
    original = trainer._objective

    def objective():
        loss = original()
        trainer.model.base.logits.grad[0, 0] = math.nan
        return loss

    return objective


@pytest.mark.parametrize("make_objective", [nan_objective, nan_gradient_objective])
def test_diverged_step_raises(make_objective, monkeypatch):
    trainer = make_trainer(method="gradient")
    trainer.run(steps=2)
    monkeypatch.setattr(trainer, "_objective", make_objective(trainer))

    with pytest.raises(TrainingDiverged, match="at step 3; the weights of step 2 are kept"):
        trainer.step()


@pytest.mark.parametrize("make_objective", [nan_objective, nan_gradient_objective])
def test_diverged_step_keeps_weights(make_objective, monkeypatch):
    trainer = make_trainer(method="gradient")
    trainer.run(steps=2)
    before = weights_of(trainer)
    adam_before = [state["exp_avg"].clone() for state in trainer.optimizer.state.values()]
    monkeypatch.setattr(trainer, "_objective", make_objective(trainer))

    with pytest.raises(TrainingDiverged):
        trainer.step()
    adam_after = [state["exp_avg"] for state in trainer.optimizer.state.values()]

    assert same_weights(weights_of(trainer), before)
    assert all(torch.equal(a, b) for a, b in zip(adam_before, adam_after))
    assert trainer.step_count == 2
    assert trainer.model.history["step"] == [1, 2]
    assert all(p.grad is None for p in trainer.model.parameters())


def test_run_returns_diverged(monkeypatch):
    trainer = make_trainer(method="gradient")
    trainer.run(steps=2)
    before = weights_of(trainer)
    monkeypatch.setattr(trainer, "_objective", nan_objective(trainer))

    result = trainer.run(steps=5)

    assert result.reason == "diverged"
    assert result.steps == 0
    assert "at step 3" in result.message
    assert same_weights(weights_of(trainer), before)


def test_nan_weight_diverges_without_update():
    trainer = make_trainer(method="gradient")
    with torch.no_grad():
        trainer.model.base.logits[1, 3] = math.nan
    before = weights_of(trainer)

    result = trainer.run(steps=3)

    assert result.reason == "diverged"
    assert same_weights(weights_of(trainer), before)


def test_training_continues_after_divergence(monkeypatch):
    trainer = make_trainer(method="gradient")
    monkeypatch.setattr(trainer, "_objective", nan_objective(trainer))
    with pytest.raises(TrainingDiverged):
        trainer.step()
    monkeypatch.undo()

    loss = trainer.step()

    assert math.isfinite(loss)
    assert trainer.step_count == 1


# Seeds.


@pytest.mark.parametrize(
    ("method", "objective"), [("gradient", "exact"), ("gradient", "sampled"), ("search", "exact")]
)
def test_same_seed_same_weights(method, objective):
    first = make_trainer(method=method, objective=objective, flow_seed=3, seed=7, batch_size=64)
    second = make_trainer(method=method, objective=objective, flow_seed=3, seed=7, batch_size=64)

    first.run(steps=8)
    second.run(steps=8)

    assert same_weights(weights_of(first), weights_of(second))
    assert first.model.history["loss"] == second.model.history["loss"]


def test_sampled_seed_changes_weights():
    first = make_trainer(method="gradient", objective="sampled", seed=1, batch_size=64)
    second = make_trainer(method="gradient", objective="sampled", seed=2, batch_size=64)

    first.run(steps=5)
    second.run(steps=5)

    assert not same_weights(weights_of(first), weights_of(second))


def test_search_seed_changes_choices():
    first = make_trainer(method="search", size=12, seed=1, temperature=1.0, temperature_final=0.5)
    second = make_trainer(method="search", size=12, seed=2, temperature=1.0, temperature_final=0.5)

    first.run(steps=3)
    second.run(steps=3)

    assert first.model.history["loss"] != second.model.history["loss"]


def test_create_flow_seed_sets_weights():
    config = FlowConfig(vocab_size=8, layers=3, init_std=1.0)

    same = [create_flow(config, seed=4).state_dict() for _ in range(2)]
    other = create_flow(config, seed=5).state_dict()

    assert same_weights(same[0], same[1])
    assert not same_weights(same[0], other)


# Schedules and live settings.


@pytest.mark.parametrize("method", METHODS)
def test_temperature_schedule_is_geometric(method):
    trainer = make_trainer(method=method, steps=5, temperature=1.0, temperature_final=0.01)
    used = []

    trainer.run(progress=lambda step, loss: used.append(trainer.temperature))

    expected = [0.01 ** (k / 4) for k in range(5)]
    assert len(used) == 5
    for k, (value, wanted) in enumerate(zip(used, expected)):
        assert math.isclose(value, wanted, rel_tol=1e-12), f"step {k + 1}"


def test_lr_schedule_is_cosine():
    trainer = make_trainer(method="gradient", steps=5, lr=0.1, lr_final=0.001)
    used = []

    trainer.run(progress=lambda step, loss: used.append(trainer.optimizer.param_groups[0]["lr"]))

    expected = [0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    for k, (value, wanted) in enumerate(zip(used, expected)):
        assert math.isclose(value, wanted, rel_tol=1e-12), f"step {k + 1}"


def test_base_lr_ratio_applies():
    trainer = make_trainer(method="gradient", lr=0.1, base_lr=0.02)

    trainer.step()

    assert trainer.optimizer.param_groups[0]["lr"] == 0.1
    assert math.isclose(trainer.optimizer.param_groups[1]["lr"], 0.02, rel_tol=1e-12)


def test_set_temperature_ends_schedule():
    trainer = make_trainer(method="gradient", steps=5, temperature=1.0, temperature_final=0.01)

    trainer.set_temperature(0.3)
    trainer.run(steps=3)

    assert trainer.temperature == 0.3


def test_set_lr_ends_schedule():
    trainer = make_trainer(method="gradient", steps=5, lr=0.1, lr_final=0.001)

    trainer.set_lr(0.02)
    trainer.run(steps=3)

    assert trainer.lr == 0.02
    assert trainer.optimizer.param_groups[0]["lr"] == 0.02


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_set_temperature_rejects_invalid(value):
    with pytest.raises(ValueError, match="temperature .* is invalid"):
        make_trainer().set_temperature(value)


@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_set_lr_rejects_invalid(value):
    with pytest.raises(ValueError, match="learning rate .* is invalid"):
        make_trainer().set_lr(value)


def test_base_init_marginals():
    trainer = make_trainer(method="gradient", target="gaussian", base_init="marginals")
    target = trainer.target

    marginals = trainer.model.base_marginals()

    assert np.allclose(marginals[0], target.sum(axis=1), rtol=1e-5, atol=1e-9)
    assert np.allclose(marginals[1], target.sum(axis=0), rtol=1e-5, atol=1e-9)


# Snapshots.


def test_snapshot_shapes():
    size = 8
    trainer = make_trainer(method="gradient", size=size, layers=4)
    trainer.run(steps=3)

    snapshot = trainer.snapshot()

    assert isinstance(snapshot, Snapshot)
    assert isinstance(snapshot.metrics, Metrics)
    assert snapshot.step == 3
    assert snapshot.device == "cpu"
    assert snapshot.density.shape == (size, size)
    assert snapshot.latent.shape == (size, size)
    assert snapshot.base.shape == (size, size)
    assert len(snapshot.layers) == 5
    assert all(layer.shape == (size, size) for layer in snapshot.layers)
    assert snapshot.data_histogram is None
    assert snapshot.generated_histogram is None
    assert all(values.ndim == 1 for values in snapshot.history.values())


def test_snapshot_values():
    trainer = make_trainer(method="gradient")
    trainer.run(steps=3)

    snapshot = trainer.snapshot()

    assert abs(snapshot.density.sum() - 1.0) < 1e-9
    assert abs(snapshot.base.sum() - 1.0) < 1e-9
    assert np.array_equal(snapshot.layers[0], trainer.target)
    assert np.array_equal(snapshot.latent, snapshot.layers[-1])
    assert snapshot.loss == trainer.model.history["loss"][-1]
    assert snapshot.metrics == trainer.evaluate()


def test_snapshot_histograms_count_samples():
    size = 8
    trainer = make_trainer(method="gradient", size=size)

    snapshot = trainer.snapshot(samples=500)

    assert snapshot.data_histogram.shape == (size, size)
    assert snapshot.generated_histogram.shape == (size, size)
    assert snapshot.data_histogram.sum() == 500
    assert snapshot.generated_histogram.sum() == 500


def test_snapshot_arrays_are_copies():
    trainer = make_trainer(method="gradient")
    trainer.run(steps=3)
    snapshot = trainer.snapshot(samples=100)
    history = {key: list(values) for key, values in trainer.model.history.items()}
    target = trainer.target.copy()
    density = trainer.model.density()

    arrays = [snapshot.density, snapshot.latent, snapshot.base, *snapshot.layers]
    arrays += [snapshot.data_histogram, snapshot.generated_histogram, *snapshot.history.values()]
    for array in arrays:
        array[...] = -1.0

    assert trainer.model.history == history
    assert np.array_equal(trainer.target, target)
    assert np.array_equal(trainer.model.target, target)
    assert np.array_equal(trainer.model.density(), density)
    assert np.array_equal(trainer.snapshot().layers[0], target)


def test_snapshot_shares_no_memory():
    trainer = make_trainer(method="gradient")
    trainer.run(steps=2)

    snapshot = trainer.snapshot()
    arrays = [snapshot.density, snapshot.latent, snapshot.base, *snapshot.layers]

    for array in arrays:
        assert not np.shares_memory(array, trainer.target)
        assert not np.shares_memory(array, trainer.model.target)


def test_histogram_counts_cells():
    cells = torch.tensor([[0, 1], [0, 1], [2, 0]])

    counts = histogram(cells, 3)

    assert counts.tolist() == [[0, 2, 0], [0, 0, 0], [1, 0, 0]]


def test_snapshots_do_not_change_sampled_training():
    watched = make_trainer(method="gradient", objective="sampled", seed=3, batch_size=64)
    unwatched = make_trainer(method="gradient", objective="sampled", seed=3, batch_size=64)

    watched.run(steps=6, callback=lambda snapshot: None, every=2, samples=50)
    unwatched.run(steps=6)

    assert watched.model.history["loss"] == unwatched.model.history["loss"]


def test_new_target_starts_new_history():
    model = create_flow(FlowConfig(vocab_size=12, layers=2), seed=0)
    Trainer(model, preset("ring8", 12), TrainConfig(steps=3, restarts=0, device="cpu")).run()
    latent = model(model.grid_cells())

    trainer = Trainer(model, preset("moons", 12), TrainConfig(steps=3, restarts=0, device="cpu"))

    assert trainer.step_count == 0
    assert model.history["step"] == []
    assert torch.equal(model(model.grid_cells()), latent)
