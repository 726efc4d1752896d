"""Tests of dflows.flow.DiscreteFlow: exact invertibility, normalisation and grid quantities.

Flows are built with ``identity_bias=0`` and a large ``init_std`` so that every layer moves
cells; round trips compare integers exactly, with no tolerance.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dflows.config import FlowConfig, TrainConfig
from dflows.flow import DiscreteFlow
from dflows.targets import preset
from dflows.trainer import Trainer, create_flow
from grid_helpers import cell_ids, grid

torch.set_num_threads(1)


def random_flow(size, layers, layer_type="shift", conditioner="table", seed=0, num_variables=2):
    config = FlowConfig(
        vocab_size=size,
        num_variables=num_variables,
        layers=layers,
        layer_type=layer_type,
        conditioner=conditioner,
        hidden=16,
        identity_bias=0.0,
        init_std=10.0,
    )
    flow = create_flow(config, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        flow.base.logits.copy_(2.0 * torch.randn(flow.base.logits.shape, generator=generator))
    return flow




def round_trip_cases():
    cases = []
    for size in [2, 3, 4, 7, 16, 20, 91, 97, 256]:
        depths = [1, 2] if size == 256 else [1, 2, 5, 16]
        for layer_type in ["shift", "affine"]:
            for conditioner in ["table", "mlp"]:
                for layers in depths:
                    cases.append((size, layer_type, conditioner, layers))
    return cases


# Exact invertibility.


@pytest.mark.parametrize(("size", "layer_type", "conditioner", "layers"), round_trip_cases())
def test_flow_round_trip_on_grid(size, layer_type, conditioner, layers):
    flow = random_flow(size, layers, layer_type, conditioner, seed=size + layers)
    x = grid(size)

    z = flow.forward(x)

    assert torch.equal(flow.inverse(z), x)
    assert torch.equal(flow.forward(flow.inverse(x)), x)
    assert int(z.min()) >= 0
    assert int(z.max()) < size
    assert torch.unique(cell_ids(z, size)).numel() == size * size


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [7, 16])
def test_deep_flow_round_trip_many_seeds(size, layer_type, conditioner):
    x = grid(size)

    for seed in range(12):
        flow = random_flow(size, 16, layer_type, conditioner, seed=seed)
        z = flow.forward(x)
        assert torch.equal(flow.inverse(z), x), f"seed {seed}"
        assert torch.unique(cell_ids(z, size)).numel() == size * size, f"seed {seed}"


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_random_flow_is_not_identity(layer_type):
    size = 16
    flow = random_flow(size, 4, layer_type, seed=1)
    x = grid(size)

    assert not torch.equal(flow.forward(x), x)


@pytest.mark.parametrize(
    ("conditioner", "method"), [("table", "gradient"), ("table", "search"), ("mlp", "gradient")]
)
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [7, 16])
def test_round_trip_after_training(size, layer_type, conditioner, method):
    config = FlowConfig(
        vocab_size=size, layers=4, layer_type=layer_type, conditioner=conditioner, hidden=16
    )
    flow = create_flow(config, seed=3)
    before = [p.detach().clone() for p in flow.parameters()]
    settings = TrainConfig(method=method, steps=5, lr=0.3, restarts=0, device="cpu")
    trainer = Trainer(flow, preset("gaussian", size), settings)
    trainer.run(steps=5)
    x = grid(size)

    changed = [not torch.equal(a, b) for a, b in zip(before, flow.parameters())]
    z = flow.forward(x)

    assert any(changed)
    assert torch.equal(flow.inverse(z), x)
    assert torch.unique(cell_ids(z, size)).numel() == size * size


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_batched_and_single_rows_agree(layer_type):
    size = 20
    flow = random_flow(size, 6, layer_type, seed=4)
    x = grid(size)[::7]

    batched = flow.forward(x)
    single = torch.cat([flow.forward(x[i : i + 1]) for i in range(x.shape[0])])
    batched_inverse = flow.inverse(x)
    single_inverse = torch.cat([flow.inverse(x[i : i + 1]) for i in range(x.shape[0])])

    assert torch.equal(batched, single)
    assert torch.equal(batched_inverse, single_inverse)


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize(("size", "num_variables"), [(5, 3), (9, 3), (4, 4), (6, 4)])
def test_round_trip_more_variables(size, num_variables, layer_type, conditioner):
    flow = random_flow(size, 8, layer_type, conditioner, seed=5, num_variables=num_variables)
    x = torch.randint(0, size, (500, num_variables), generator=torch.Generator().manual_seed(6))

    z = flow.forward(x)

    assert z.shape == x.shape
    assert int(z.min()) >= 0
    assert int(z.max()) < size
    assert torch.equal(flow.inverse(z), x)


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_three_variables_permute_all_points(layer_type):
    size = 5
    flow = random_flow(size, 6, layer_type, seed=7, num_variables=3)
    x = torch.cartesian_prod(*[torch.arange(size)] * 3)

    z = flow.forward(x)

    assert torch.unique(cell_ids(z, size)).numel() == size**3


def test_round_trip_mlp_without_row_tables():
    size, num_variables = 64, 6
    flow = random_flow(size, 3, "affine", "mlp", seed=8, num_variables=num_variables)
    x = torch.randint(0, size, (200, num_variables), generator=torch.Generator().manual_seed(9))

    assert not flow.layers[0].conditioner.uses_rows
    assert torch.equal(flow.inverse(flow.forward(x)), x)


# The one-hot training path agrees with the integer path.


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [3, 16, 91])
def test_flow_forward_codes_matches_forward(size, layer_type, conditioner):
    flow = random_flow(size, 5, layer_type, conditioner, seed=10)
    x = grid(size)

    codes = flow.forward_codes(F.one_hot(x, size).float(), temperature=0.1)

    assert torch.equal(codes.argmax(-1), flow.forward(x))


def test_codes_match_forward_without_rows():
    size, num_variables = 64, 6
    flow = random_flow(size, 3, "affine", "mlp", seed=11, num_variables=num_variables)
    x = torch.randint(0, size, (200, num_variables), generator=torch.Generator().manual_seed(12))

    codes = flow.forward_codes(F.one_hot(x, size).float(), temperature=0.1)

    assert torch.equal(codes.argmax(-1), flow.forward(x))


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_log_prob_codes_matches_log_prob(layer_type):
    size = 16
    flow = random_flow(size, 4, layer_type, seed=13)
    x = grid(size)

    from_codes = flow.log_prob_codes(F.one_hot(x, size).float(), temperature=0.1)

    torch.testing.assert_close(from_codes.double(), flow.log_prob(x), rtol=1e-5, atol=1e-5)


# Normalisation and grid quantities.


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [2, 7, 91, 256])
def test_log_prob_sums_to_one(size, layer_type):
    flow = random_flow(size, 3, layer_type, seed=14)

    log_q = flow.log_prob(grid(size))

    assert log_q.dtype == torch.float64
    assert log_q.shape == (size * size,)
    assert abs(float(log_q.exp().sum()) - 1.0) < 1e-9


@pytest.mark.parametrize("size", [5, 91])
def test_density_sums_to_one(size):
    flow = random_flow(size, 4, "affine", seed=15)

    density = flow.density()

    assert density.shape == (size, size)
    assert density.dtype == np.float64
    assert abs(density.sum() - 1.0) < 1e-9


def test_log_density_indexes_row_then_column():
    size = 9
    flow = random_flow(size, 3, "affine", seed=16)
    log_density = flow.log_density()

    for row, column in [(0, 1), (1, 0), (8, 3), (4, 7)]:
        expected = float(flow.log_prob(torch.tensor([[row, column]]))[0])
        assert log_density[row, column] == expected, f"cell ({row}, {column})"


def test_grid_cells_order():
    flow = random_flow(4, 1)

    cells = flow.grid_cells()

    assert cells.shape == (16, 2)
    assert cells[6].tolist() == [1, 2]
    assert torch.equal(cells[:, 0] * 4 + cells[:, 1], torch.arange(16))


def test_log_prob_is_base_of_latent():
    size = 12
    flow = random_flow(size, 4, "affine", seed=17)
    x = grid(size)

    expected = flow.base.log_prob(flow.forward(x), dtype=torch.float64)

    assert torch.equal(flow.log_prob(x), expected)


@pytest.mark.parametrize("name", ["ring8", "checkerboard", "moons"])
def test_push_forward_steps_permute_target(name):
    size = 24
    target = preset(name, size)
    flow = random_flow(size, 5, "affine", seed=18)

    steps = flow.push_forward_steps(target)

    assert len(steps) == 6
    assert np.array_equal(steps[0], target)
    for index, step in enumerate(steps):
        assert step.shape == (size, size), f"step {index}"
        assert abs(step.sum() - target.sum()) < 1e-12, f"step {index}"
        assert np.array_equal(np.sort(step.ravel()), np.sort(target.ravel())), f"step {index}"


def test_push_forward_moves_each_cell_to_its_latent():
    size = 10
    target = preset("gaussian", size)
    flow = random_flow(size, 3, "affine", seed=19)
    x = grid(size)

    latent = flow.push_forward(target)
    z = flow.forward(x)

    for (row, column), (z_row, z_column) in zip(x.tolist(), z.tolist()):
        assert latent[z_row, z_column] == target[row, column]


def test_push_forward_keeps_unnormalised_mass():
    size = 6
    weights = np.arange(size * size, dtype=np.float64).reshape(size, size)
    flow = random_flow(size, 3, seed=20)

    latent = flow.push_forward(weights)

    assert latent.sum() == weights.sum()


def test_push_forward_rejects_wrong_shape():
    flow = random_flow(6, 2)

    with pytest.raises(ValueError, match=r"needs \(6, 6\)"):
        flow.push_forward_steps(np.ones((5, 5)))


def test_base_density_is_outer_product():
    size = 8
    flow = random_flow(size, 2, seed=21)

    base = flow.base_density()
    marginals = flow.base_marginals()

    assert base.shape == (size, size)
    assert abs(base.sum() - 1.0) < 1e-12
    assert np.allclose(base, np.outer(marginals[0], marginals[1]), rtol=0, atol=1e-15)
    assert np.allclose(marginals.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_grid_methods_reject_three_variables():
    flow = random_flow(4, 2, num_variables=3)

    with pytest.raises(ValueError, match="2 variables"):
        flow.grid_cells()
    with pytest.raises(ValueError, match="2 variables"):
        flow.push_forward_steps(np.ones((4, 4)))
    with pytest.raises(ValueError, match="2 variables"):
        flow.base_density()


# Sampling.


def test_sample_shape_and_range():
    size = 13
    flow = random_flow(size, 3, "affine", seed=22)

    samples = flow.sample(500, generator=torch.Generator().manual_seed(0))

    assert samples.shape == (500, 2)
    assert samples.dtype == torch.long
    assert int(samples.min()) >= 0
    assert int(samples.max()) < size


def test_sample_is_reproducible_with_generator():
    flow = random_flow(11, 3, seed=23)

    first = flow.sample(200, generator=torch.Generator().manual_seed(5))
    second = flow.sample(200, generator=torch.Generator().manual_seed(5))

    assert torch.equal(first, second)


def test_sample_zero_points():
    assert random_flow(5, 2).sample(0).shape == (0, 2)


def test_sample_rejects_negative_count():
    with pytest.raises(ValueError, match="non-negative"):
        random_flow(5, 2).sample(-1)


def test_sample_follows_density():
    size = 4
    count = 40000
    flow = random_flow(size, 3, "affine", seed=24)

    samples = flow.sample(count, generator=torch.Generator().manual_seed(1))
    counts = np.bincount((samples[:, 0] * size + samples[:, 1]).numpy(), minlength=size * size)
    expected = flow.density().ravel() * count

    # Each count is binomial; 5 standard deviations bound all 16 cells with a fixed seed.
    spread = np.sqrt(expected * (1 - expected / count))
    assert np.all(np.abs(counts - expected) <= 5 * spread + 1)


# Input checks.


def test_forward_accepts_numpy_and_int32():
    flow = random_flow(6, 2, seed=25)
    x = grid(6)

    from_numpy = flow.forward(x.numpy())
    from_int32 = flow.forward(x.to(torch.int32))

    assert from_numpy.dtype == torch.long
    assert torch.equal(from_numpy, flow.forward(x))
    assert torch.equal(from_int32, flow.forward(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_forward_rejects_non_integer(dtype):
    flow = random_flow(6, 2)

    with pytest.raises(TypeError, match="must be an integer tensor"):
        flow.forward(torch.zeros(3, 2, dtype=dtype))


@pytest.mark.parametrize("shape", [(3,), (3, 3), (3, 1), (2, 2, 2)])
def test_forward_rejects_wrong_shape(shape):
    flow = random_flow(6, 2)

    with pytest.raises(ValueError, match=r"must have shape \(N, 2\)"):
        flow.forward(torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("value", [-1, 6, 100])
def test_inverse_rejects_out_of_range(value):
    flow = random_flow(6, 2)

    with pytest.raises(ValueError, match=r"z has values outside \[0, 6\)"):
        flow.inverse(torch.tensor([[0, 0], [value, 1]]))


def test_forward_accepts_empty_batch():
    flow = random_flow(6, 2)

    assert flow.forward(torch.zeros(0, 2, dtype=torch.long)).shape == (0, 2)


def test_flow_rejects_config_and_settings():
    with pytest.raises(TypeError, match="not both"):
        DiscreteFlow(FlowConfig(vocab_size=5), layers=3)


def test_flow_accepts_keyword_settings():
    flow = DiscreteFlow(vocab_size=5, layers=3)

    assert flow.config == FlowConfig(vocab_size=5, layers=3)
    assert len(flow.layers) == 3


def test_layers_alternate_moved_half():
    flow = DiscreteFlow(vocab_size=5, num_variables=4, layers=3)

    assert flow.layers[0].moved_index.tolist() == [2, 3]
    assert flow.layers[1].moved_index.tolist() == [0, 1]
    assert flow.layers[2].moved_index.tolist() == [2, 3]


def test_create_flow_leaves_global_random_state():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)

    create_flow(FlowConfig(vocab_size=7, layers=3), seed=9)

    assert torch.equal(torch.rand(3), expected)
