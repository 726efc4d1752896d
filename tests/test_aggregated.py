"""The aggregated straight-through gradients equal autograd through one-hot codes."""

import pytest
import torch
import torch.nn.functional as F

import dflows
from dflows import aggregated
from dflows.config import FlowConfig, TrainConfig

torch.set_num_threads(1)


def random_flow(size, layers, seed=0):
    flow = dflows.create_flow(FlowConfig(vocab_size=size, layers=layers, init_std=1.0), seed)
    with torch.no_grad():
        flow.base.logits.normal_(generator=torch.Generator().manual_seed(seed))
    return flow


def autograd_gradients(flow, cells, weights, temperature):
    flow.zero_grad(set_to_none=True)
    codes = F.one_hot(cells, flow.vocab_size).to(torch.float32)
    loss = -(weights * flow.log_prob_codes(codes, temperature, input_gradient=False)).sum()
    loss.backward()
    return float(loss.detach()), [parameter.grad.clone() for parameter in flow.parameters()]


def aggregated_gradients(flow, cells, weights, temperature):
    flow.zero_grad(set_to_none=True)
    loss = aggregated.weighted_nll_backward(flow, cells, weights, temperature)
    return loss, [parameter.grad.clone() for parameter in flow.parameters()]


@pytest.mark.parametrize("matmul_limit", [128, 0])
@pytest.mark.parametrize("size, layers", [(2, 1), (7, 1), (12, 5), (13, 3), (91, 4), (150, 2)])
@pytest.mark.parametrize("uniform", [True, False])
def test_aggregated_matches_autograd(monkeypatch, matmul_limit, size, layers, uniform):
    monkeypatch.setattr(aggregated, "MAX_MATMUL_SIZE", matmul_limit)
    flow = random_flow(size, layers, seed=size + layers)
    generator = torch.Generator().manual_seed(1)
    cells = torch.randint(0, size, (400, 2), generator=generator)
    weights = torch.full((400,), 1 / 400) if uniform else torch.rand(400, generator=generator)
    passed = 1 / 400 if uniform else weights

    expected_loss, expected = autograd_gradients(flow, cells, weights, 0.3)
    loss, gradients = aggregated_gradients(flow, cells, passed, 0.3)

    # Both sums run in float32, so differences scale with the total weight, not each entry.
    tolerance = 1e-5 * float(weights.sum()) * size
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for got, want in zip(gradients, expected):
        assert torch.allclose(got, want, rtol=1e-4, atol=tolerance)


def test_aggregated_accumulates_into_existing_gradients():
    flow = random_flow(9, 2)
    cells = torch.randint(0, 9, (50, 2), generator=torch.Generator().manual_seed(2))

    _, once = aggregated_gradients(flow, cells, 0.02, 0.5)
    aggregated.weighted_nll_backward(flow, cells, 0.02, 0.5)
    twice = [parameter.grad for parameter in flow.parameters()]

    for single, double in zip(once, twice):
        assert torch.allclose(double, 2 * single)


@pytest.mark.parametrize(
    "flow_options, input_gradient, expected",
    [
        ({}, False, True),
        ({}, True, False),
        ({"layer_type": "affine"}, False, False),
        ({"conditioner": "mlp"}, False, False),
        ({"num_variables": 3, "vocab_size": 5}, False, False),
    ],
)
def test_supports_only_shift_tables(flow_options, input_gradient, expected):
    options = {"vocab_size": 9, "layers": 2, **flow_options}
    flow = dflows.create_flow(FlowConfig(**options), 0)

    assert aggregated.supports(flow, input_gradient) is expected


@pytest.mark.parametrize("objective", ["exact", "sampled"])
def test_trainer_paths_agree(objective):
    target = dflows.preset("moons", 16)
    histories = []
    for input_gradient in (False, True):
        flow = dflows.create_flow(FlowConfig(vocab_size=16, layers=3, identity_bias=1.0), 0)
        config = TrainConfig(
            method="gradient", objective=objective, steps=1, batch_size=256, device="cpu",
            input_gradient=input_gradient,
        )
        trainer = dflows.Trainer(flow, target, config)
        trainer.run()
        histories.append(trainer.model.history["loss"][0])

    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
