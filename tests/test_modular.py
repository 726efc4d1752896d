"""Tests of dflows.modular: integer arithmetic on Z_K and the one-hot straight-through ops.

Integer operations are checked against tables built with Python's own ``%``, ``math.gcd``
and ``pow(u, -1, K)`` for every pair of residues. The one-hot operations are checked against
the dense bilinear maps they stand for, differentiated by autograd.
"""

import math

import pytest
import torch

from dflows.modular import (
    check_vocab_size,
    inverse_table,
    mod_add,
    mod_inverse,
    mod_mul,
    mod_sub,
    one_hot_add,
    one_hot_multiply,
    straight_through_one_hot,
    unit_mask,
    units,
)

torch.set_num_threads(1)

ALL_SIZES = range(2, 41)


def all_pairs(size):
    """Return every pair (a, b) of residues as two int64 tensors of length K * K."""
    a, b = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return a.flatten(), b.flatten()


def brute_force(size, operation):
    """Return ``operation(a, b) % K`` for every pair, in the order of ``all_pairs``."""
    values = [operation(a, b) % size for a in range(size) for b in range(size)]
    return torch.tensor(values, dtype=torch.long)


def dense_bilinear(x, s, size, combine):
    """Return ``y[k] = sum over (j, m) with combine(j, m) % K == k of x[j] * s[m]`` densely."""
    indicator = torch.zeros(size, size, size, dtype=x.dtype)
    for j in range(size):
        for m in range(size):
            indicator[j, m, combine(j, m) % size] = 1.0
    return torch.einsum("nj,nm,jmk->nk", x, s, indicator)


# Vocabulary size.


def test_check_vocab_size_accepts_two():
    assert check_vocab_size(2) == 2


@pytest.mark.parametrize("size", [1, 0, -3])
def test_check_vocab_size_rejects_small(size):
    with pytest.raises(ValueError, match=f"K={size}"):
        check_vocab_size(size)


@pytest.mark.parametrize("size", [2.0, True, "5", None])
def test_check_vocab_size_rejects_non_int(size):
    with pytest.raises(TypeError, match="must be an int"):
        check_vocab_size(size)


# Units and inverses.


@pytest.mark.parametrize("size", ALL_SIZES)
def test_units_match_gcd(size):
    expected = [u for u in range(size) if math.gcd(u, size) == 1]
    assert units(size) == expected


@pytest.mark.parametrize("size", ALL_SIZES)
def test_unit_mask_matches_units(size):
    mask = unit_mask(size)

    assert mask.dtype == torch.bool
    assert mask.shape == (size,)
    assert torch.nonzero(mask).flatten().tolist() == units(size)


def test_units_of_91_skip_7_and_13():
    found = units(91)

    assert all(u % 7 != 0 and u % 13 != 0 for u in found)
    assert len(found) == 72


def test_units_of_prime_are_all_nonzero():
    assert units(97) == list(range(1, 97))


@pytest.mark.parametrize("size", ALL_SIZES)
def test_inverse_table_inverts_units(size):
    table = inverse_table(size).tolist()

    for u in range(size):
        if math.gcd(u, size) == 1:
            assert (u * table[u]) % size == 1, f"u={u}"
            assert table[u] == pow(u, -1, size), f"u={u}"
        else:
            assert table[u] == -1, f"u={u}"


@pytest.mark.parametrize("size", ALL_SIZES)
def test_mod_inverse_matches_pow(size):
    values = torch.tensor(units(size))
    expected = torch.tensor([pow(u, -1, size) for u in units(size)])

    assert torch.equal(mod_inverse(values, size), expected)


@pytest.mark.parametrize("size", ALL_SIZES)
def test_mod_inverse_rejects_every_non_unit(size):
    for value in range(size):
        if math.gcd(value, size) == 1:
            continue
        with pytest.raises(ValueError, match=rf"^{value} has no inverse modulo {size}\b"):
            mod_inverse(torch.tensor([1, value]), size)


def test_mod_inverse_names_first_non_unit():
    with pytest.raises(ValueError, match=r"^14 has no inverse modulo 91 because gcd\(14, 91\) = 7"):
        mod_inverse(torch.tensor([1, 2, 14, 13]), 91)


def test_mod_inverse_reduces_negative_values():
    values = torch.tensor([-1, -3, 10])

    assert mod_inverse(values, 7).tolist() == [pow(6, -1, 7), pow(4, -1, 7), pow(3, -1, 7)]


def test_mod_inverse_uses_given_table():
    table = inverse_table(10)

    assert mod_inverse(torch.tensor([3, 7, 9]), 10, table=table).tolist() == [7, 3, 9]


# Integer arithmetic against brute-force tables.


@pytest.mark.parametrize("size", ALL_SIZES)
def test_mod_add_matches_table(size):
    a, b = all_pairs(size)

    assert torch.equal(mod_add(a, b, size), brute_force(size, lambda x, y: x + y))


@pytest.mark.parametrize("size", ALL_SIZES)
def test_mod_sub_matches_table(size):
    a, b = all_pairs(size)

    assert torch.equal(mod_sub(a, b, size), brute_force(size, lambda x, y: x - y))


@pytest.mark.parametrize("size", ALL_SIZES)
def test_mod_mul_matches_table(size):
    a, b = all_pairs(size)

    assert torch.equal(mod_mul(a, b, size), brute_force(size, lambda x, y: x * y))


@pytest.mark.parametrize("operation", [mod_add, mod_sub, mod_mul])
def test_negative_inputs_stay_in_range(operation):
    size = 13
    a = torch.arange(-3 * size, 3 * size)
    shift = torch.full_like(a, -5)

    result = operation(a, shift, size)

    assert int(result.min()) >= 0
    assert int(result.max()) < size


def test_negative_shift_matches_python_modulo():
    size = 11
    a = torch.arange(-30, 30)
    b = torch.full_like(a, -17)

    assert mod_add(a, b, size).tolist() == [(x - 17) % size for x in range(-30, 30)]
    assert mod_sub(a, b, size).tolist() == [(x + 17) % size for x in range(-30, 30)]
    assert mod_mul(a, b, size).tolist() == [(x * -17) % size for x in range(-30, 30)]


def test_mod_mul_large_values_do_not_overflow():
    size = 2**31 - 1
    a = torch.tensor([size - 1, 2**40 + 3])
    b = torch.tensor([size - 2, -(2**41) - 5])

    expected = [((size - 1) * (size - 2)) % size, ((2**40 + 3) * (-(2**41) - 5)) % size]
    assert mod_mul(a, b, size).tolist() == expected


# One-hot addition and multiplication.


def exhaustive_one_hots(size):
    a, b = all_pairs(size)
    x = torch.nn.functional.one_hot(a, size).to(torch.float64)
    s = torch.nn.functional.one_hot(b, size).to(torch.float64)
    return a, b, x, s


@pytest.mark.parametrize("size", range(2, 13))
def test_one_hot_add_forward_is_exact(size):
    a, b, x, s = exhaustive_one_hots(size)

    result = one_hot_add(x, s)

    expected = torch.nn.functional.one_hot((a + b) % size, size).to(torch.float64)
    assert torch.equal(result, expected)


@pytest.mark.parametrize("size", range(2, 13))
def test_one_hot_multiply_forward_is_exact(size):
    a, b, x, s = exhaustive_one_hots(size)

    result = one_hot_multiply(x, s)

    expected = torch.nn.functional.one_hot((a * b) % size, size).to(torch.float64)
    assert torch.equal(result, expected)


@pytest.mark.parametrize(
    ("operation", "combine"),
    [(one_hot_add, lambda j, m: j + m), (one_hot_multiply, lambda j, m: j * m)],
    ids=["add", "multiply"],
)
@pytest.mark.parametrize("size", [2, 3, 4, 6, 7, 10])
def test_one_hot_gradients_match_dense_form(operation, combine, size):
    generator = torch.Generator().manual_seed(size)
    _, _, x, s = exhaustive_one_hots(size)
    upstream = torch.randn(size * size, size, dtype=torch.float64, generator=generator)

    x_fast = x.clone().requires_grad_(True)
    s_fast = s.clone().requires_grad_(True)
    operation(x_fast, s_fast).backward(upstream)

    x_dense = x.clone().requires_grad_(True)
    s_dense = s.clone().requires_grad_(True)
    dense_bilinear(x_dense, s_dense, size, combine).backward(upstream)

    torch.testing.assert_close(x_fast.grad, x_dense.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(s_fast.grad, s_dense.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("operation", "combine"),
    [(one_hot_add, lambda j, m: j + m), (one_hot_multiply, lambda j, m: j * m)],
    ids=["add", "multiply"],
)
def test_one_hot_forward_matches_dense_form(operation, combine):
    size = 9
    _, _, x, s = exhaustive_one_hots(size)

    assert torch.equal(operation(x, s), dense_bilinear(x, s, size, combine))


@pytest.mark.parametrize("operation", [one_hot_add, one_hot_multiply])
def test_one_hot_ops_keep_batch_shape(operation):
    size = 5
    x = torch.nn.functional.one_hot(torch.randint(0, size, (3, 4)), size).float()
    s = torch.nn.functional.one_hot(torch.randint(0, size, (3, 4)), size).float()

    result = operation(x, s)

    assert result.shape == (3, 4, size)
    assert result.dtype == torch.float32


def test_one_hot_add_gradient_gathers_upstream():
    size = 6
    x = torch.nn.functional.one_hot(torch.tensor([2]), size).double().requires_grad_(True)
    shift = torch.nn.functional.one_hot(torch.tensor([5]), size).double()
    upstream = torch.arange(size, dtype=torch.float64).unsqueeze(0)

    one_hot_add(x, shift).backward(upstream)

    # d y[k] / d x[j] is 1 exactly for k = (j + 5) % 6, so x.grad[j] = upstream[(j + 5) % 6].
    assert x.grad.tolist() == [[5.0, 0.0, 1.0, 2.0, 3.0, 4.0]]


# Straight-through one-hot codes.


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0, 4.0])
def test_straight_through_forward_is_one_hot_argmax(temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 9, generator=generator)

    codes = straight_through_one_hot(logits, temperature)

    expected = torch.nn.functional.one_hot(logits.argmax(-1), 9).float()
    assert torch.equal(codes, expected)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_straight_through_gradient_is_softmax_gradient(temperature):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 7, dtype=torch.float64, generator=generator)
    upstream = torch.randn(40, 7, dtype=torch.float64, generator=generator)

    hard = logits.clone().requires_grad_(True)
    straight_through_one_hot(hard, temperature).backward(upstream)
    soft = logits.clone().requires_grad_(True)
    torch.softmax(soft / temperature, dim=-1).backward(upstream)

    assert hard.grad.abs().sum() > 0
    torch.testing.assert_close(hard.grad, soft.grad, rtol=1e-12, atol=1e-12)


def test_straight_through_mask_prevents_choice():
    size = 10
    mask = unit_mask(size)
    logits = torch.where(mask, torch.zeros(size), torch.full((size,), 50.0)).repeat(8, 1)
    logits = logits + 0.01 * torch.randn(8, size, generator=torch.Generator().manual_seed(2))

    chosen = straight_through_one_hot(logits, 0.1, mask=mask).argmax(-1)

    assert all(int(c) in units(size) for c in chosen)


def test_straight_through_masked_zero_gradient():
    size = 12
    mask = unit_mask(size)
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(20, size, dtype=torch.float64, generator=generator).requires_grad_(True)
    upstream = torch.randn(20, size, dtype=torch.float64, generator=generator)

    straight_through_one_hot(logits, 0.5, mask=mask).backward(upstream)

    assert torch.all(logits.grad[:, ~mask] == 0)
    assert torch.all(logits.grad[:, mask].abs().sum(-1) > 0)


def test_straight_through_masked_softmax_gradient():
    size = 12
    mask = unit_mask(size)
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(20, size, dtype=torch.float64, generator=generator)
    upstream = torch.randn(20, size, dtype=torch.float64, generator=generator)

    hard = logits.clone().requires_grad_(True)
    straight_through_one_hot(hard, 0.3, mask=mask).backward(upstream)
    soft = logits.clone().requires_grad_(True)
    masked = soft.masked_fill(~mask, float("-inf"))
    torch.softmax(masked / 0.3, dim=-1).backward(upstream)

    torch.testing.assert_close(hard.grad, soft.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf"), -float("inf")])
def test_straight_through_rejects_invalid_temperature(temperature):
    with pytest.raises(ValueError, match="temperature .* is invalid"):
        straight_through_one_hot(torch.zeros(2, 3), temperature)
