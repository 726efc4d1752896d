"""A baseline discrete flow in the dense one-hot style of the original discrete-flow code.

That code is the TensorFlow implementation in Edward2 (edward2/tensorflow/layers/utils.py and
discrete_flows.py, for Tran et al., 2019, "Discrete Flows", arXiv:1905.10347) and its PyTorch
port, PyTorchDiscreteFlows. This file contains no code from either. It is the same model as a
``dflows`` flow with shift layers and lookup-table conditioners on D = 2 variables, but every
quantity is a dense one-hot (or float) vector of length K:

* a conditioner is a matrix product ``one_hot(kept) @ table``;
* ``loc`` is the straight-through one-hot argmax of its logits, whose gradient is that of
  ``softmax(logits / T)``;
* the modular add ``(x + loc) mod K`` is a circular convolution of the two one-hot vectors,
  computed per sample as ``irfft(rfft(x) * rfft(loc))``;
* the modular subtract of the inverse multiplies each one-hot by its own K x K permutation
  matrix, built from the ``loc`` one-hot by K cyclic shifts;
* the base is a factorized categorical evaluated as ``sum(one_hot(z) * log_softmax(logits))``.

``speed.py`` times this class against ``dflows`` and checks that both give the same
log-probabilities, gradients and samples for the same weights. Only shift layers are written
here, because the benchmark measures only those.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def straight_through_one_hot(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the one-hot argmax of ``logits`` with the gradient of ``softmax(logits / T)``."""
    soft = torch.softmax(logits / temperature, dim=-1)
    hard = F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return soft + (hard - soft).detach()


def fft_add(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return the circular convolution of ``x`` and ``shift`` along the last axis (length K).

    For one-hot inputs at ``a`` and ``b`` the result is the one-hot at ``(a + b) mod K``, up
    to float rounding of the FFT (about 1e-7 in float32).
    """
    size = x.shape[-1]
    spectrum = torch.fft.rfft(x, dim=-1) * torch.fft.rfft(shift, dim=-1)
    return torch.fft.irfft(spectrum, n=size, dim=-1)


def roll_matrix_subtract(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return the one-hot at ``(argmax x - argmax shift) mod K`` as ``x @ M`` per sample.

    ``M[n, u, v] = shift[n, (v - u) mod K]``: row ``u`` of the K x K matrix is ``shift``
    cyclically shifted by ``u``, so for a one-hot shift at ``s`` it is the permutation matrix
    that moves class ``u + s`` to ``u``. Building ``M`` takes ``N * K * K`` floats.
    """
    size = x.shape[-1]
    rolled = [torch.roll(shift, offset, dims=-1) for offset in range(size)]
    matrices = torch.stack(rolled, dim=-2)
    return torch.einsum("...v,...uv->...u", x, matrices)


class ReferenceShiftFlow(nn.Module):
    """A stack of shift coupling layers with lookup tables on 2 variables, all in one-hot form.

    Layer ``i`` moves variable 1 (keeping variable 0) when ``i`` is even and variable 0 when
    it is odd, as in ``dflows``. ``tables[i][r]`` contains the ``loc`` logits of layer ``i``
    when its kept variable has class ``r``, so ``tables[i]`` is laid out like the ``table``
    parameter of a ``dflows`` lookup-table conditioner.
    """

    def __init__(self, vocab_size: int, layers: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tables = nn.ParameterList(
            nn.Parameter(init_std * torch.randn(vocab_size, vocab_size)) for _ in range(layers)
        )
        self.base_logits = nn.Parameter(torch.zeros(2, vocab_size))

    @classmethod
    def from_dflows(cls, model) -> "ReferenceShiftFlow":
        """Copy the weights of a ``dflows.DiscreteFlow`` with shift layers and lookup tables.

        Raises ``ValueError`` for any other kind of flow.
        """
        config = model.config
        if config.num_variables != 2 or config.layer_type != "shift" or config.conditioner != "table":
            raise ValueError(
                "the reference-style flow copies only flows on 2 variables with shift layers "
                f"and lookup tables, got {config}"
            )
        reference = cls(config.vocab_size, config.layers)
        with torch.no_grad():
            for table, layer in zip(reference.tables, model.layers):
                table.copy_(layer.conditioner.table)
            reference.base_logits.copy_(model.base.logits)
        return reference.to(model.device)

    @staticmethod
    def _split(layer_index: int) -> tuple[int, int]:
        """Return ``(kept, moved)`` variable indices of a layer."""
        return (0, 1) if layer_index % 2 == 0 else (1, 0)

    def _join(self, kept_index: int, kept: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        parts = (kept, moved) if kept_index == 0 else (moved, kept)
        return torch.stack(parts, dim=1)

    def forward_codes(self, codes: torch.Tensor, temperature: float) -> torch.Tensor:
        """Map one-hot data codes ``(N, 2, K)`` to latent codes, differentiably."""
        for index, table in enumerate(self.tables):
            kept_index, moved_index = self._split(index)
            kept = codes[:, kept_index]
            loc = straight_through_one_hot(kept @ table, temperature)
            moved = fft_add(codes[:, moved_index], loc)
            codes = self._join(kept_index, kept, moved)
        return codes

    def log_prob_codes(self, codes: torch.Tensor, temperature: float) -> torch.Tensor:
        """Return ``log q(x)`` in nats for one-hot data codes ``(N, 2, K)``, shape ``(N,)``."""
        latent = self.forward_codes(codes, temperature)
        log_probs = torch.log_softmax(self.base_logits, dim=-1)
        return (latent * log_probs).sum(dim=(-2, -1))

    @torch.no_grad()
    def inverse_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Map one-hot latent codes ``(N, 2, K)`` to one-hot data codes, layers last to first."""
        for index in reversed(range(len(self.tables))):
            kept_index, moved_index = self._split(index)
            kept = codes[:, kept_index]
            loc = F.one_hot((kept @ self.tables[index]).argmax(dim=-1), self.vocab_size)
            moved = roll_matrix_subtract(codes[:, moved_index], loc.to(codes.dtype))
            codes = self._join(kept_index, kept, moved)
        return codes

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` data points as an int64 tensor ``(n, 2)``.

        The latents are drawn on the CPU from float64 probabilities with ``torch.multinomial``,
        as ``dflows`` draws them, so the same ``generator`` state gives the same latents.
        """
        probabilities = torch.softmax(self.base_logits.to(torch.float64), dim=-1).cpu()
        latent = torch.multinomial(probabilities, n, replacement=True, generator=generator)
        latent = latent.T.contiguous().to(self.base_logits.device)
        codes = F.one_hot(latent, self.vocab_size).to(torch.float32)
        return self.inverse_codes(codes).argmax(dim=-1)

    @torch.no_grad()
    def log_density(self, chunk: int = 8192) -> np.ndarray:
        """Return ``log q`` on every cell of the K x K grid, as a float64 array ``[row, column]``.

        The ``K * K`` cells go through the one-hot path ``chunk`` cells at a time, which bounds
        the size of every intermediate tensor.
        """
        size = self.vocab_size
        device = self.base_logits.device
        classes = torch.arange(size, device=device)
        rows, columns = torch.meshgrid(classes, classes, indexing="ij")
        cells = torch.stack([rows.flatten(), columns.flatten()], dim=1)
        pieces = []
        for start in range(0, len(cells), chunk):
            codes = F.one_hot(cells[start : start + chunk], size).to(torch.float32)
            pieces.append(self.log_prob_codes(codes, temperature=1.0))
        return torch.cat(pieces).to(torch.float64).cpu().numpy().reshape(size, size)
