"""Tests of dflows.layers.CouplingLayer: the integer map, its inverse and the one-hot path.

Layers are built with ``identity_bias=0`` and a large ``init_std`` so that their maps are
far from the identity. Every check on a grid covers all K * K cells.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dflows.layers import CouplingLayer
from dflows.modular import straight_through_one_hot, units
from grid_helpers import cell_ids, grid

torch.set_num_threads(1)

SIZES = [2, 3, 4, 7, 16, 20, 91, 97, 256]


def random_layer(size, layer_type, conditioner, seed=0, num_variables=2, moved=(1,)):
    torch.manual_seed(seed)
    return CouplingLayer(
        size,
        num_variables,
        moved,
        layer_type=layer_type,
        conditioner=conditioner,
        hidden=16,
        identity_bias=0.0,
        init_std=10.0,
    )




def scale_logits_view(layer):
    """Return the scale-head logits of a table layer as a writable view (rows, moved, K)."""
    table = layer.conditioner.table
    rows = table.shape[0]
    return table.data.view(rows, layer.heads, layer.num_moved, layer.vocab_size)[:, 1]


# Construction.


def test_layer_rejects_one_variable():
    with pytest.raises(ValueError, match="at least 2 variables"):
        CouplingLayer(5, 1, [0])


@pytest.mark.parametrize("moved", [[], [0, 1], [2], [-1]])
def test_layer_rejects_invalid_moved(moved):
    with pytest.raises(ValueError, match="moved variables .* are invalid"):
        CouplingLayer(5, 2, moved)


def test_layer_rejects_unknown_type():
    with pytest.raises(ValueError, match="layer type 'scale' is unknown"):
        CouplingLayer(5, 2, [1], layer_type="scale")


def test_layer_rejects_unknown_conditioner():
    with pytest.raises(ValueError, match="conditioner 'cnn' is unknown"):
        CouplingLayer(5, 2, [1], conditioner="cnn")


def test_layer_rejects_vocab_size_one():
    with pytest.raises(ValueError, match="K=1"):
        CouplingLayer(1, 2, [1])


# The integer map on the whole grid.


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", SIZES)
def test_layer_round_trip_on_grid(size, layer_type, conditioner):
    layer = random_layer(size, layer_type, conditioner, seed=size)
    x = grid(size)

    z = layer(x)

    assert torch.equal(layer.inverse(z), x)
    assert torch.equal(layer(layer.inverse(x)), x)


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", SIZES)
def test_layer_forward_permutes_grid(size, layer_type, conditioner):
    layer = random_layer(size, layer_type, conditioner, seed=size + 1)

    z = layer(grid(size))

    assert z.dtype == torch.long
    assert int(z.min()) >= 0
    assert int(z.max()) < size
    assert torch.unique(cell_ids(z, size)).numel() == size * size


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_layer_keeps_kept_variable(layer_type):
    size = 13
    layer = random_layer(size, layer_type, "table", seed=5)
    x = grid(size)

    z = layer(x)

    assert torch.equal(z[:, 0], x[:, 0])
    assert not torch.equal(z[:, 1], x[:, 1])


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_layer_forward_matches_formula(layer_type):
    size = 20
    layer = random_layer(size, layer_type, "table", seed=6)
    x = grid(size)

    loc, scale = layer.choices(x[:, [0]])
    z = layer(x)

    for i in range(x.shape[0]):
        factor = 1 if scale is None else int(scale[i, 0])
        expected = (int(loc[i, 0]) + factor * int(x[i, 1])) % size
        assert int(z[i, 1]) == expected, f"cell {x[i].tolist()}"


def test_shift_layer_has_no_scale():
    layer = random_layer(9, "shift", "table")

    _, scale = layer.choices(torch.arange(9).unsqueeze(1))

    assert scale is None


def test_layer_does_not_modify_input():
    layer = random_layer(11, "affine", "table", seed=7)
    x = grid(11)
    before = x.clone()

    layer(x)
    layer.inverse(x)

    assert torch.equal(x, before)


# Affine scales.


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("size", list(range(2, 41)) + [91, 97, 256])
def test_affine_scales_are_units(size, conditioner):
    layer = random_layer(size, "affine", conditioner, seed=size)

    _, scale = layer.choices(torch.arange(size).unsqueeze(1))

    allowed = set(units(size))
    assert set(scale.flatten().tolist()) <= allowed


@pytest.mark.parametrize("size", [91, 97])
def test_affine_scales_vary_with_random_weights(size):
    layer = random_layer(size, "affine", "table", seed=8)

    _, scale = layer.choices(torch.arange(size).unsqueeze(1))

    assert len(set(scale.flatten().tolist())) > 1


@pytest.mark.parametrize("size", [91, 12, 256])
def test_affine_table_scales_skip_non_units(size):
    layer = random_layer(size, "affine", "table", seed=9)
    non_units = [v for v in range(size) if math.gcd(v, size) != 1]
    with torch.no_grad():
        scale_logits_view(layer)[:, :, non_units] += 1000.0
    x = grid(size)

    _, scale = layer.choices(x[:, [0]])

    assert set(scale.flatten().tolist()) <= set(units(size))
    assert torch.equal(layer.inverse(layer(x)), x)


def test_affine_mlp_scales_skip_non_units():
    size = 91
    layer = random_layer(size, "affine", "mlp", seed=10)
    non_units = [v for v in range(size) if math.gcd(v, size) != 1]
    with torch.no_grad():
        layer.conditioner.net[-1].bias[size:][non_units] += 1000.0
    x = grid(size)

    _, scale = layer.choices(x[:, [0]])

    assert set(scale.flatten().tolist()) <= set(units(size))
    assert torch.equal(layer.inverse(layer(x)), x)


def test_affine_codes_skip_non_units():
    size = 91
    layer = random_layer(size, "affine", "table", seed=11)
    non_units = [v for v in range(size) if math.gcd(v, size) != 1]
    with torch.no_grad():
        scale_logits_view(layer)[:, :, non_units] += 1000.0
    x = grid(size)

    codes = layer.forward_codes(F.one_hot(x, size).float(), temperature=0.1)

    assert torch.equal(codes.argmax(-1), layer(x))


# The one-hot training path.


@pytest.mark.parametrize("conditioner", ["table", "mlp"])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize("size", [2, 7, 16, 91])
def test_forward_codes_matches_forward(size, layer_type, conditioner):
    layer = random_layer(size, layer_type, conditioner, seed=12)
    x = grid(size)

    codes = layer.forward_codes(F.one_hot(x, size).float(), temperature=0.1)

    assert torch.equal(codes.argmax(-1), layer(x))
    assert torch.equal(codes, F.one_hot(layer(x), size).float())


@pytest.mark.parametrize("input_gradient", [True, False])
@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_forward_codes_gradient_reaches_conditioner(layer_type, input_gradient):
    size = 7
    layer = random_layer(size, layer_type, "table", seed=13)
    codes = F.one_hot(grid(size), size).float().requires_grad_(True)
    weights = torch.randn(size * size, 2, size, generator=torch.Generator().manual_seed(0))

    out = layer.forward_codes(codes, temperature=0.5, input_gradient=input_gradient)
    (out * weights).sum().backward()

    assert layer.conditioner.table.grad.abs().sum() > 0
    assert codes.grad[:, 1].abs().sum() > 0


def test_codes_without_input_gradient_skip_kept():
    size = 7
    layer = random_layer(size, "shift", "table", seed=14)
    codes = F.one_hot(grid(size), size).float().requires_grad_(True)
    weights = torch.randn(size * size, 2, size, generator=torch.Generator().manual_seed(1))

    out = layer.forward_codes(codes, temperature=0.5, input_gradient=False)
    (out[:, 1] * weights[:, 1]).sum().backward()

    assert torch.all(codes.grad[:, 0] == 0)


def test_codes_with_input_gradient_reach_kept():
    size = 7
    layer = random_layer(size, "shift", "table", seed=14)
    codes = F.one_hot(grid(size), size).float().requires_grad_(True)
    weights = torch.randn(size * size, 2, size, generator=torch.Generator().manual_seed(1))

    out = layer.forward_codes(codes, temperature=0.5, input_gradient=True)
    (out[:, 1] * weights[:, 1]).sum().backward()

    assert codes.grad[:, 0].abs().sum() > 0


def dense_one_hot_op(x, s, combine):
    """Return ``y[..., k] = sum over (j, m) with combine(j, m) % K == k of x[j] s[m]``, densely."""
    size = x.shape[-1]
    indicator = torch.zeros(size, size, size, dtype=x.dtype)
    for j in range(size):
        for m in range(size):
            indicator[j, m, combine(j, m) % size] = 1.0
    return torch.einsum("...j,...m,jmk->...k", x, s, indicator)


def dense_forward_codes(layer, codes, temperature):
    """Compute a table layer's ``forward_codes`` with dense bilinear maps and no gathers.

    The conditioner is the one-hot row code times the table, and addition and
    multiplication mod K are the dense bilinear forms, so autograd differentiates the maps
    that the library's gathers stand for.
    """
    kept = codes[:, layer.kept_index]
    moved = codes[:, layer.moved_index]
    row_code = kept[:, 0]
    for column in range(1, kept.shape[1]):
        row_code = (row_code.unsqueeze(-1) * kept[:, column].unsqueeze(1)).flatten(1)
    logits = (row_code @ layer.conditioner.table).view(-1, layer.heads, layer.num_moved, layer.vocab_size)

    if layer.heads == 2:
        scale = straight_through_one_hot(logits[:, 1], temperature, mask=layer.units)
        moved = dense_one_hot_op(moved, scale, lambda j, m: j * m)
    loc = straight_through_one_hot(logits[:, 0], temperature)
    moved = dense_one_hot_op(moved, loc, lambda j, m: j + m)
    return codes.index_copy(1, layer.moved_index, moved)


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize(("size", "num_variables", "moved"), [(6, 2, [1]), (5, 2, [0]), (4, 3, [2])])
def test_forward_codes_gradient_matches_dense(size, num_variables, moved, layer_type):
    layer = random_layer(size, layer_type, "table", seed=17, num_variables=num_variables, moved=moved)
    # Smaller logits keep the softmax away from saturation, so its gradients are not all ~0.
    layer.conditioner.table.data.mul_(0.1)
    generator = torch.Generator().manual_seed(3)
    points = torch.randint(0, size, (60, num_variables), generator=generator)
    upstream = torch.randn(60, num_variables, size, generator=generator)
    codes = F.one_hot(points, size).float()

    fast_codes = codes.clone().requires_grad_(True)
    layer.forward_codes(fast_codes, temperature=0.7).backward(upstream)
    fast_table_grad = layer.conditioner.table.grad.clone()
    layer.conditioner.table.grad = None

    dense_codes = codes.clone().requires_grad_(True)
    dense_forward_codes(layer, dense_codes, temperature=0.7).backward(upstream)

    assert fast_table_grad.abs().sum() > 0
    torch.testing.assert_close(fast_table_grad, layer.conditioner.table.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_codes.grad, dense_codes.grad, rtol=1e-5, atol=1e-6)


# More than two variables.


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
@pytest.mark.parametrize(
    ("size", "num_variables", "moved"),
    [(5, 3, [2]), (5, 3, [0, 1]), (4, 4, [2, 3]), (6, 4, [0, 2]), (3, 5, [1, 3, 4])],
)
def test_layer_permutes_all_points(size, num_variables, moved, layer_type):
    layer = random_layer(size, layer_type, "table", seed=15, num_variables=num_variables, moved=moved)
    axes = [torch.arange(size)] * num_variables
    x = torch.cartesian_prod(*axes)

    z = layer(x)
    kept_variables = [i for i in range(num_variables) if i not in moved]

    assert torch.equal(layer.inverse(z), x)
    assert torch.unique(cell_ids(z, size)).numel() == size**num_variables
    assert torch.equal(z[:, kept_variables], x[:, kept_variables])


@pytest.mark.parametrize("layer_type", ["shift", "affine"])
def test_codes_match_forward_four_variables(layer_type):
    size = 6
    layer = random_layer(size, layer_type, "mlp", seed=16, num_variables=4, moved=[1, 2])
    x = torch.randint(0, size, (300, 4), generator=torch.Generator().manual_seed(2))

    codes = layer.forward_codes(F.one_hot(x, size).float(), temperature=0.1)

    assert torch.equal(codes.argmax(-1), layer(x))
