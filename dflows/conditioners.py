"""Conditioners: networks that map the kept variables of a coupling layer to logits.

A conditioner receives the ``d`` kept variables of a coupling layer as one-hot codes of shape
``(N, d, K)`` and returns logits of shape ``(N, out_features)``. The ``K ** d`` possible values
of the kept part are called *rows*: row ``r`` is the mixed-radix number whose digits, most
significant first, are the kept values.

Whenever the number of rows is small (always for two variables, where it is K), the logits of
every row are computed once per call and looked up. So the integer paths used for inference
(``forward``, ``inverse``, ``sample``) and the one-hot path used for training pick their
classes from the very same numbers, whatever the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Above this many rows a conditioner is evaluated per sample instead of per row.
MAX_ROWS = 1 << 16

# A lookup table may hold at most this many logits (128 MiB of float32).
MAX_TABLE_ENTRIES = 1 << 25


def rows_of(values: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Return the row index of each kept part: values ``(N, d)`` in ``[0, K)`` -> ``(N,)``."""
    rows = torch.zeros(values.shape[0], dtype=torch.long, device=values.device)
    for column in range(values.shape[1]):
        rows = rows * vocab_size + values[:, column]
    return rows


def digits_of(rows: torch.Tensor, vocab_size: int, width: int) -> torch.Tensor:
    """Return the kept values of each row: ``(R,)`` -> ``(R, width)``, most significant first."""
    digits = []
    remaining = rows
    for _ in range(width):
        digits.append(torch.remainder(remaining, vocab_size))
        remaining = torch.div(remaining, vocab_size, rounding_mode="floor")
    return torch.stack(digits[::-1], dim=1)


class _RowLookup(torch.autograd.Function):
    """Pick ``row_logits[row(codes)]`` with the straight-through gradient of a one-hot product.

    With one kept variable this is ``codes[:, 0] @ row_logits``; with several it is the
    product of their one-hot codes (the one-hot of the row) times ``row_logits``. Forward is a
    gather. Backward gives ``row_logits`` its scatter-added gradient and, only when asked,
    gives each kept variable's code the gradient it would have as a factor of that product.
    """

    @staticmethod
    def forward(ctx, codes: torch.Tensor, row_logits: torch.Tensor) -> torch.Tensor:
        vocab_size = codes.shape[-1]
        values = codes.argmax(dim=-1)
        rows = rows_of(values, vocab_size)
        ctx.vocab_size = vocab_size
        ctx.save_for_backward(values, rows, row_logits)
        return row_logits[rows]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        values, rows, row_logits = ctx.saved_tensors
        width = values.shape[1]
        vocab_size = ctx.vocab_size
        grad_codes = grad_table = None

        if ctx.needs_input_grad[1]:
            grad_table = torch.zeros_like(row_logits).index_add_(0, rows, grad)

        if ctx.needs_input_grad[0]:
            # scores[n, r] is the first-order change of the loss if sample n had row r.
            scores = grad @ row_logits.T
            classes = torch.arange(vocab_size, device=grad.device)
            per_variable = []
            for column in range(width):
                weight = vocab_size ** (width - 1 - column)
                candidate_rows = rows.unsqueeze(1) + (classes - values[:, column : column + 1]) * weight
                per_variable.append(scores.gather(1, candidate_rows))
            grad_codes = torch.stack(per_variable, dim=1)
        return grad_codes, grad_table


def row_lookup(codes: torch.Tensor, row_logits: torch.Tensor) -> torch.Tensor:
    """Return ``row_logits[row]`` for each sample's one-hot codes ``(N, d, K)``, differentiably."""
    return _RowLookup.apply(codes, row_logits)


class Conditioner(nn.Module):
    """Common interface: logits for one-hot codes, and per-row logits for integer paths."""

    def __init__(self, vocab_size: int, kept: int, out_features: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.kept = kept
        self.out_features = out_features
        self.num_rows = vocab_size**kept

    @property
    def uses_rows(self) -> bool:
        """True when all rows are evaluated at once instead of per sample."""
        return self.num_rows <= MAX_ROWS

    def row_logits(self) -> torch.Tensor:
        """Return the logits of every row, shape ``(K ** kept, out_features)``."""
        raise NotImplementedError

    def logits_for_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Return the logits for the given rows, shape ``(len(rows), out_features)``."""
        raise NotImplementedError

    def forward(self, codes: torch.Tensor, input_gradient: bool = True) -> torch.Tensor:
        """Return logits ``(N, out_features)`` for one-hot codes ``(N, kept, K)``.

        With ``input_gradient=False`` no gradient flows back into ``codes``, which makes the
        backward pass linear in K for lookup tables.
        """
        if not input_gradient:
            codes = codes.detach()
        return row_lookup(codes, self.row_logits())


class TableConditioner(Conditioner):
    """A lookup table with one row of logits per value of the kept part.

    This is the conditioner of the Figure-2 experiment of Tran et al. (2019): for two
    variables and K = 91 it is a 91 x 91 table of ``loc`` logits. The table has
    ``K ** kept * out_features`` entries, so it suits small kept parts only.
    """

    def __init__(
        self,
        vocab_size: int,
        kept: int,
        out_features: int,
        init_logits: torch.Tensor,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(vocab_size, kept, out_features)
        entries = self.num_rows * out_features
        if self.num_rows > MAX_ROWS or entries > MAX_TABLE_ENTRIES:
            raise ValueError(
                f"a lookup-table conditioner for {kept} kept variables with K={vocab_size} "
                f"needs {entries:,} logits, more than the limit of {MAX_TABLE_ENTRIES:,}; "
                "use the MLP conditioner instead"
            )
        table = init_logits.to(torch.float32).expand(self.num_rows, -1).clone()
        table += init_std * torch.randn(self.num_rows, out_features)
        self.table = nn.Parameter(table)

    def row_logits(self) -> torch.Tensor:
        return self.table

    def logits_for_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.table[rows]


class MLPConditioner(Conditioner):
    """A two-hidden-layer ReLU network on the concatenated one-hot codes of the kept part."""

    def __init__(
        self,
        vocab_size: int,
        kept: int,
        out_features: int,
        init_logits: torch.Tensor,
        hidden: int = 64,
        init_std: float = 0.01,
    ) -> None:
        super().__init__(vocab_size, kept, out_features)
        if hidden < 1:
            raise ValueError(f"MLP hidden width {hidden} is invalid: it must be at least 1")
        self.net = nn.Sequential(
            nn.Linear(kept * vocab_size, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_features),
        )

        # Start near the given logits: the output layer's weights are shrunk so that the
        # spread of the initial logits is about init_std, whatever the hidden width.
        last = self.net[-1]
        with torch.no_grad():
            last.weight.normal_(0.0, init_std / math.sqrt(hidden))
            last.bias.copy_(init_logits.to(torch.float32))

    def _one_hot_rows(self, rows: torch.Tensor) -> torch.Tensor:
        digits = digits_of(rows, self.vocab_size, self.kept)
        return F.one_hot(digits, self.vocab_size).to(torch.float32).flatten(1)

    def row_logits(self) -> torch.Tensor:
        rows = torch.arange(self.num_rows, device=self.net[0].weight.device)
        return self.net(self._one_hot_rows(rows))

    def logits_for_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return self.net(self._one_hot_rows(rows))

    def forward(self, codes: torch.Tensor, input_gradient: bool = True) -> torch.Tensor:
        if self.uses_rows:
            return super().forward(codes, input_gradient)
        if not input_gradient:
            codes = codes.detach()
        return self.net(codes.flatten(1))
