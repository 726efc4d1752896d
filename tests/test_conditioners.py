"""Tests of dflows.conditioners: row indices, the row lookup and its gradient, conditioners."""

import pytest
import torch
import torch.nn.functional as F

from dflows.conditioners import (
    MAX_ROWS,
    MLPConditioner,
    TableConditioner,
    digits_of,
    row_lookup,
    rows_of,
)

torch.set_num_threads(1)


def random_codes(count, width, size, seed):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(0, size, (count, width), generator=generator)
    return values, F.one_hot(values, size).to(torch.float64)


def dense_row_code(codes):
    """Return the one-hot code of each sample's row, the outer product of its variables' codes.

    ``codes`` has shape ``(N, d, K)``; the result has shape ``(N, K ** d)`` with the first
    variable as the most significant digit, the same order as ``rows_of``.
    """
    product = codes[:, 0]
    for column in range(1, codes.shape[1]):
        product = (product.unsqueeze(-1) * codes[:, column].unsqueeze(1)).flatten(1)
    return product


# Row indices.


def test_rows_of_is_mixed_radix():
    values = torch.tensor([[0, 0, 0], [0, 0, 1], [1, 0, 0], [2, 3, 4]])

    assert rows_of(values, 5).tolist() == [0, 1, 25, 2 * 25 + 3 * 5 + 4]


@pytest.mark.parametrize(("size", "width"), [(2, 1), (3, 3), (7, 2), (16, 2), (91, 1)])
def test_digits_of_inverts_rows_of(size, width):
    rows = torch.arange(size**width)

    digits = digits_of(rows, size, width)

    assert digits.shape == (size**width, width)
    assert int(digits.min()) >= 0
    assert int(digits.max()) < size
    assert torch.equal(rows_of(digits, size), rows)


def test_rows_of_single_column_is_identity():
    values = torch.tensor([[4], [0], [9]])

    assert rows_of(values, 10).tolist() == [4, 0, 9]


# Row lookup.


@pytest.mark.parametrize(("size", "width"), [(5, 1), (4, 2), (3, 3)])
def test_row_lookup_forward_gathers_rows(size, width):
    values, codes = random_codes(30, width, size, seed=size)
    table = torch.randn(size**width, 6, dtype=torch.float64)

    result = row_lookup(codes, table)

    assert torch.equal(result, table[rows_of(values, size)])


@pytest.mark.parametrize(("size", "width"), [(5, 1), (4, 2), (3, 3)])
def test_row_lookup_gradients_match_dense_product(size, width):
    generator = torch.Generator().manual_seed(10 + size)
    _, codes = random_codes(25, width, size, seed=size + 1)
    table = torch.randn(size**width, 4, dtype=torch.float64, generator=generator)
    upstream = torch.randn(25, 4, dtype=torch.float64, generator=generator)

    fast_codes = codes.clone().requires_grad_(True)
    fast_table = table.clone().requires_grad_(True)
    row_lookup(fast_codes, fast_table).backward(upstream)

    dense_codes = codes.clone().requires_grad_(True)
    dense_table = table.clone().requires_grad_(True)
    (dense_row_code(dense_codes) @ dense_table).backward(upstream)

    torch.testing.assert_close(fast_codes.grad, dense_codes.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_table.grad, dense_table.grad, rtol=1e-12, atol=1e-12)


# Table conditioner.


def test_table_conditioner_starts_near_init_logits():
    init = torch.tensor([3.0, 0.0, 0.0, -1.0])
    torch.manual_seed(0)
    conditioner = TableConditioner(7, 1, 4, init, init_std=0.0)

    assert conditioner.table.shape == (7, 4)
    assert torch.equal(conditioner.table, init.expand(7, 4))


def test_table_conditioner_forward_looks_up_rows():
    torch.manual_seed(1)
    conditioner = TableConditioner(6, 2, 3, torch.zeros(3), init_std=1.0)
    values, codes = random_codes(20, 2, 6, seed=3)

    logits = conditioner(codes.float())

    assert torch.equal(logits, conditioner.table[rows_of(values, 6)])
    assert torch.equal(conditioner.logits_for_rows(rows_of(values, 6)), logits)


def test_table_conditioner_detaches_codes_when_asked():
    torch.manual_seed(2)
    conditioner = TableConditioner(5, 1, 2, torch.zeros(2), init_std=1.0)
    _, codes = random_codes(8, 1, 5, seed=4)
    codes = codes.float().requires_grad_(True)

    conditioner(codes, input_gradient=False).sum().backward()

    assert codes.grad is None
    assert conditioner.table.grad is not None


def test_table_conditioner_rejects_huge_table():
    with pytest.raises(ValueError, match="use the MLP conditioner instead"):
        TableConditioner(64, 3, 2, torch.zeros(2))


def test_table_conditioner_uses_rows_up_to_limit():
    assert TableConditioner(256, 2, 1, torch.zeros(1)).uses_rows
    assert TableConditioner(256, 2, 1, torch.zeros(1)).num_rows == MAX_ROWS


# MLP conditioner.


def test_mlp_conditioner_rejects_zero_hidden():
    with pytest.raises(ValueError, match="hidden width 0 is invalid"):
        MLPConditioner(5, 1, 3, torch.zeros(3), hidden=0)


def test_mlp_conditioner_bias_is_init_logits():
    init = torch.tensor([2.0, -1.0, 0.5])
    conditioner = MLPConditioner(5, 1, 3, init, hidden=8, init_std=0.0)
    _, codes = random_codes(10, 1, 5, seed=5)

    logits = conditioner(codes.float())

    assert torch.equal(logits, init.expand(10, 3))


def test_mlp_row_path_matches_network():
    torch.manual_seed(3)
    conditioner = MLPConditioner(7, 2, 5, torch.zeros(5), hidden=16, init_std=2.0)
    _, codes = random_codes(40, 2, 7, seed=6)
    codes = codes.float()

    assert conditioner.uses_rows
    torch.testing.assert_close(conditioner(codes), conditioner.net(codes.flatten(1)))


def test_mlp_row_logits_cover_every_row():
    torch.manual_seed(4)
    conditioner = MLPConditioner(4, 2, 3, torch.zeros(3), hidden=8, init_std=1.0)
    rows = torch.arange(16)

    assert conditioner.row_logits().shape == (16, 3)
    torch.testing.assert_close(conditioner.row_logits(), conditioner.logits_for_rows(rows))


def test_mlp_without_rows_uses_network_directly():
    torch.manual_seed(5)
    conditioner = MLPConditioner(64, 3, 4, torch.zeros(4), hidden=8, init_std=1.0)
    values, codes = random_codes(12, 3, 64, seed=7)
    codes = codes.float()

    assert not conditioner.uses_rows
    assert torch.equal(conditioner(codes), conditioner.net(codes.flatten(1)))
    torch.testing.assert_close(
        conditioner.logits_for_rows(rows_of(values, 64)), conditioner(codes)
    )
