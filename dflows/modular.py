"""Arithmetic on Z_K and its straight-through relaxation.

Two families of functions live here:

* exact integer arithmetic on tensors of class indices in ``[0, K)`` (``mod_add``,
  ``mod_mul``, ``mod_inverse``), used by every inference path;
* operations on one-hot codes of shape ``(..., K)`` whose forward values are exact one-hots
  and whose backward passes are the gradients of the underlying bilinear maps evaluated at
  those one-hots (``one_hot_add``, ``one_hot_multiply``), used for training.

The bilinear maps are the circular convolution ``y[k] = sum_{(j+m) % K == k} x[j] s[m]``
and its multiplicative analogue ``y[k] = sum_{(j*m) % K == k} x[j] s[m]``. At one-hot
inputs their gradients are gathers of the incoming gradient, so no ``K x K`` table and no FFT
is ever built: the cost is ``O(N K)`` for ``N`` one-hot vectors.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

MIN_VOCAB_SIZE = 2


def check_vocab_size(vocab_size: int) -> int:
    """Return ``vocab_size`` as an ``int`` after checking that it is at least 2."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocabulary size must be an int, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocabulary size K={vocab_size} is invalid: it must be at least {MIN_VOCAB_SIZE}"
        )
    return vocab_size


@lru_cache(maxsize=None)
def _units(vocab_size: int) -> tuple[int, ...]:
    return tuple(u for u in range(vocab_size) if math.gcd(u, vocab_size) == 1)


def units(vocab_size: int) -> list[int]:
    """List the units of Z_K: the residues ``u`` with ``gcd(u, K) == 1``.

    Only these are invertible under multiplication mod K, so only these can be scales of an
    affine coupling layer. For prime K they are ``1 .. K-1``; for ``K = 91 = 7 * 13`` the
    multiples of 7 and 13 are missing.

    >>> units(10)
    [1, 3, 7, 9]
    """
    return list(_units(check_vocab_size(vocab_size)))


def unit_mask(vocab_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return a bool tensor of shape ``(K,)`` that is True exactly at the units of Z_K."""
    mask = torch.zeros(check_vocab_size(vocab_size), dtype=torch.bool)
    mask[list(_units(vocab_size))] = True
    return mask.to(device)


def inverse_table(vocab_size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Return an int64 tensor ``t`` of shape ``(K,)`` with ``(u * t[u]) % K == 1`` for units.

    Entries at non-units are ``-1`` so that an accidental lookup is easy to detect.
    """
    table = torch.full((check_vocab_size(vocab_size),), -1, dtype=torch.long)
    for u in _units(vocab_size):
        table[u] = pow(u, -1, vocab_size)
    return table.to(device)


def mod_add(a: torch.Tensor, b: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Return ``(a + b) mod K`` in ``[0, K)``, also for negative inputs (floor modulo)."""
    return torch.remainder(a + b, vocab_size)


def mod_sub(a: torch.Tensor, b: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Return ``(a - b) mod K`` in ``[0, K)``."""
    return torch.remainder(a - b, vocab_size)


def mod_mul(a: torch.Tensor, b: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Return ``(a * b) mod K`` in ``[0, K)``.

    Inputs are reduced first, so the int64 product cannot overflow for any K below 2**31.
    """
    return torch.remainder(
        torch.remainder(a, vocab_size) * torch.remainder(b, vocab_size), vocab_size
    )


def mod_inverse(
    a: torch.Tensor, vocab_size: int, table: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the multiplicative inverse of every entry of ``a`` modulo K.

    Raises ``ValueError`` when an entry is not a unit of Z_K, naming the first such value.
    ``table`` may be a cached result of ``inverse_table`` on the same device as ``a``.
    """
    if table is None:
        table = inverse_table(vocab_size, device=a.device)
    result = table[torch.remainder(a, vocab_size)]
    bad = result < 0
    if bool(bad.any()):
        value = int(torch.remainder(a, vocab_size)[bad][0])
        raise ValueError(
            f"{value} has no inverse modulo {vocab_size} because gcd({value}, {vocab_size}) "
            f"= {math.gcd(value, vocab_size)}; only units of Z_{vocab_size} can be scales"
        )
    return result


def straight_through_one_hot(
    logits: torch.Tensor, temperature: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the one-hot argmax of ``logits`` with the gradient of ``softmax(logits / T)``.

    The forward value is exactly the one-hot code of ``argmax(logits, -1)``. The backward
    pass is that of ``softmax(logits / temperature)`` (Tran et al., 2019, "Discrete Flows",
    arXiv:1905.10347, use T = 0.1). Classes where the bool ``mask`` is False can never be
    chosen: their logits are set to ``-inf`` first, so they also get zero gradient.
    """
    if temperature <= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature {temperature!r} is invalid: it must be a positive number")
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))

    soft = torch.softmax(logits / temperature, dim=-1)
    hard = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


def _shifted_index(offsets: torch.Tensor, vocab_size: int, multiply: bool) -> torch.Tensor:
    """Return ``(arange(K) + offsets[..., None]) % K`` or the same with ``*`` in place of ``+``."""
    classes = torch.arange(vocab_size, device=offsets.device)
    if multiply:
        return torch.remainder(classes * offsets.unsqueeze(-1), vocab_size)
    return torch.remainder(classes + offsets.unsqueeze(-1), vocab_size)


class _OneHotAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        vocab_size = x.shape[-1]
        x_index = x.argmax(dim=-1)
        shift_index = shift.argmax(dim=-1)
        ctx.save_for_backward(x_index, shift_index)
        out_index = torch.remainder(x_index + shift_index, vocab_size)
        return F.one_hot(out_index, vocab_size).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_index, shift_index = ctx.saved_tensors
        vocab_size = grad.shape[-1]
        grad_x = grad_shift = None

        # d y[k] / d x[j] = shift[(k - j) % K], which at a one-hot shift s is 1 for k = j + s.
        if ctx.needs_input_grad[0]:
            grad_x = grad.gather(-1, _shifted_index(shift_index, vocab_size, multiply=False))
        if ctx.needs_input_grad[1]:
            grad_shift = grad.gather(-1, _shifted_index(x_index, vocab_size, multiply=False))
        return grad_x, grad_shift


class _OneHotMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        vocab_size = x.shape[-1]
        x_index = x.argmax(dim=-1)
        scale_index = scale.argmax(dim=-1)
        ctx.save_for_backward(x_index, scale_index)
        out_index = torch.remainder(x_index * scale_index, vocab_size)
        return F.one_hot(out_index, vocab_size).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_index, scale_index = ctx.saved_tensors
        vocab_size = grad.shape[-1]
        grad_x = grad_scale = None

        # d y[k] / d x[j] = sum over m with (j * m) % K == k of scale[m]: at a one-hot scale s
        # that is 1 exactly for k = j * s.
        if ctx.needs_input_grad[0]:
            grad_x = grad.gather(-1, _shifted_index(scale_index, vocab_size, multiply=True))
        if ctx.needs_input_grad[1]:
            grad_scale = grad.gather(-1, _shifted_index(x_index, vocab_size, multiply=True))
        return grad_x, grad_scale


def one_hot_add(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Add two one-hot codes modulo K: the result is the one-hot of ``(argmax x + argmax shift) % K``.

    Both inputs have shape ``(..., K)`` and must be one-hot in value (straight-through codes
    are). The gradient is that of the circular convolution of ``x`` and ``shift`` at these
    one-hots, computed with two gathers.
    """
    return _OneHotAdd.apply(x, shift)


def one_hot_multiply(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Multiply two one-hot codes modulo K: the one-hot of ``(argmax x * argmax scale) % K``.

    The gradient is that of ``y[k] = sum_{(j*m) % K == k} x[j] scale[m]`` at these one-hots,
    computed with two gathers. The map is a bijection only when ``argmax scale`` is a unit.
    """
    return _OneHotMultiply.apply(x, scale)
