"""Discrete coupling layers: invertible maps of ``{0, ..., K-1} ** D``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .conditioners import MLPConditioner, TableConditioner, rows_of
from .modular import (
    check_vocab_size,
    inverse_table,
    one_hot_add,
    one_hot_multiply,
    straight_through_one_hot,
    unit_mask,
)

LAYER_TYPES = ("shift", "affine")
CONDITIONERS = ("table", "mlp")


class CouplingLayer(nn.Module):
    """A bipartite coupling layer on D categorical variables with K classes each.

    The variables are split into a kept part ``a`` and a moved part ``b``. In this project
    ``forward`` maps data to latent and ``inverse`` maps latent to data::

        forward:  y_a = x_a,  y_b = (loc(x_a) + scale(x_a) * x_b) mod K
        inverse:  x_a = y_a,  x_b = (y_b - loc(y_a)) * scale(y_a)^-1 mod K

    ``loc`` and ``scale`` are the argmax classes of logits from a conditioner that reads only
    the kept part, so both directions are one parallel pass. A ``"shift"`` layer fixes
    ``scale = 1``; an ``"affine"`` (location-scale) layer chooses the scale among the units of
    Z_K only, since other residues have no inverse (for K = 91 = 7 * 13 the multiples of 7
    and 13 are excluded). Training uses ``forward_codes``: the same map on one-hot codes with
    straight-through gradients (Tran et al., 2019, arXiv:1905.10347).

    Arguments:
        vocab_size: K, the number of classes of every variable (at least 2).
        num_variables: D, the number of variables (at least 2).
        moved: indices of the moved variables; the others are kept. Neither part may be empty.
        layer_type: ``"shift"`` or ``"affine"``.
        conditioner: ``"table"`` (a lookup table over the kept values) or ``"mlp"``.
        hidden: hidden width of the MLP conditioner.
        identity_bias: added to the logit of the identity map (``loc = 0``, ``scale = 1``) at
            initialisation, so that a deep stack starts close to the identity.
        init_std: standard deviation of the random initial logits.
    """

    def __init__(
        self,
        vocab_size: int,
        num_variables: int,
        moved: Sequence[int],
        layer_type: str = "shift",
        conditioner: str = "table",
        hidden: int = 64,
        identity_bias: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.vocab_size = check_vocab_size(vocab_size)
        if num_variables < 2:
            raise ValueError(
                f"a coupling layer needs at least 2 variables, got num_variables={num_variables}"
            )
        moved = sorted(set(int(i) for i in moved))
        if not moved or len(moved) >= num_variables or moved[0] < 0 or moved[-1] >= num_variables:
            raise ValueError(
                f"moved variables {moved} are invalid for {num_variables} variables: "
                "both the moved and the kept part must be non-empty"
            )
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer type {layer_type!r} is unknown; use one of {LAYER_TYPES}")
        if conditioner not in CONDITIONERS:
            raise ValueError(f"conditioner {conditioner!r} is unknown; use one of {CONDITIONERS}")

        kept = [i for i in range(num_variables) if i not in moved]
        self.num_variables = num_variables
        self.layer_type = layer_type
        self.heads = 2 if layer_type == "affine" else 1
        self.moved_variables = tuple(moved)
        self.kept_variables = tuple(kept)
        self.register_buffer("moved_index", torch.tensor(moved, dtype=torch.long), persistent=False)
        self.register_buffer("kept_index", torch.tensor(kept, dtype=torch.long), persistent=False)
        self.register_buffer("units", unit_mask(vocab_size), persistent=False)
        self.register_buffer("inverses", inverse_table(vocab_size), persistent=False)

        init_logits = torch.zeros(self.heads, len(moved), vocab_size)
        init_logits[0, :, 0] = identity_bias
        if self.heads == 2:
            init_logits[1, :, 1] = identity_bias
        out_features = init_logits.numel()
        if conditioner == "table":
            self.conditioner = TableConditioner(
                vocab_size, len(kept), out_features, init_logits.flatten(), init_std
            )
        else:
            self.conditioner = MLPConditioner(
                vocab_size, len(kept), out_features, init_logits.flatten(), hidden, init_std
            )

    @property
    def num_moved(self) -> int:
        return int(self.moved_index.numel())

    def _split_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.view(logits.shape[0], self.heads, self.num_moved, self.vocab_size)

    def _choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the integer ``loc`` and ``scale`` (None for shift layers) for split logits."""
        loc = logits[:, 0].argmax(dim=-1)
        if self.heads == 1:
            return loc, None
        scale = logits[:, 1].masked_fill(~self.units, float("-inf")).argmax(dim=-1)
        return loc, scale

    @torch.no_grad()
    def choices(self, kept_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``loc`` and ``scale`` of shape ``(N, moved)`` for kept values ``(N, kept)``.

        ``scale`` is None for shift layers. Every scale returned is a unit of Z_K.
        """
        conditioner = self.conditioner
        rows = rows_of(kept_values, self.vocab_size)
        if conditioner.uses_rows:
            loc, scale = self._choose(self._split_logits(conditioner.row_logits()))
            return loc[rows], (None if scale is None else scale[rows])
        return self._choose(self._split_logits(conditioner.logits_for_rows(rows)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map data to latent: integer tensor ``(N, D)`` in ``[0, K)`` -> same shape."""
        loc, scale = self.choices(x[:, self.kept_index])
        moved = x[:, self.moved_index]
        if scale is not None:
            moved = moved * scale
        y = x.clone()
        y[:, self.moved_index] = torch.remainder(moved + loc, self.vocab_size)
        return y

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Map latent to data: integer tensor ``(N, D)`` in ``[0, K)`` -> same shape."""
        loc, scale = self.choices(y[:, self.kept_index])
        moved = torch.remainder(y[:, self.moved_index] - loc, self.vocab_size)
        if scale is not None:
            moved = torch.remainder(moved * self.inverses[scale], self.vocab_size)
        x = y.clone()
        x[:, self.moved_index] = moved
        return x

    def forward_codes(
        self, codes: torch.Tensor, temperature: float, input_gradient: bool = True
    ) -> torch.Tensor:
        """Map one-hot codes ``(N, D, K)`` from data to latent with straight-through gradients.

        The forward value equals ``forward`` on the argmax classes. ``temperature`` is that of
        the straight-through softmax. ``input_gradient=False`` stops the gradient from flowing
        into the conditioner's inputs (it still flows through the moved part).
        """
        kept = codes[:, self.kept_index]
        moved = codes[:, self.moved_index]
        logits = self._split_logits(self.conditioner(kept, input_gradient))

        if self.heads == 2:
            scale = straight_through_one_hot(logits[:, 1], temperature, mask=self.units)
            moved = one_hot_multiply(moved, scale)
        loc = straight_through_one_hot(logits[:, 0], temperature)
        moved = one_hot_add(moved, loc)
        return codes.index_copy(1, self.moved_index, moved)
