"""Base distributions over the latent space."""

from __future__ import annotations

import torch
from torch import nn

from .modular import check_vocab_size


class FactorizedCategorical(nn.Module):
    """A product of D independent categorical distributions over ``{0, ..., K-1}``.

    ``log p(z) = sum_d log softmax(logits[d])[z_d]``. The logits, shape ``(D, K)``, are
    learned; they start at zero (uniform) unless ``init_logits`` is given.
    """

    def __init__(
        self, num_variables: int, vocab_size: int, init_logits: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.num_variables = num_variables
        self.vocab_size = check_vocab_size(vocab_size)
        logits = torch.zeros(num_variables, vocab_size)
        if init_logits is not None:
            logits.copy_(init_logits)
        self.logits = nn.Parameter(logits)

    def log_probs(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return the log-probabilities of every class, shape ``(D, K)``."""
        return torch.log_softmax(self.logits.to(dtype), dim=-1)

    def log_prob(self, z: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Return ``log p(z)`` for integer latents ``(N, D)``, shape ``(N,)``."""
        log_probs = self.log_probs(dtype)
        variables = torch.arange(self.num_variables, device=z.device)
        return log_probs[variables, z].sum(dim=-1)

    def log_prob_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Return ``log p(z)`` for one-hot latents ``(N, D, K)``; differentiable in both."""
        return (codes * self.log_probs(codes.dtype)).sum(dim=(-2, -1))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` latents, an int64 tensor ``(n, D)`` on the logits' device.

        The draws are made on the CPU, so a CPU ``generator`` gives the same samples on
        every device.
        """
        if n == 0:
            return torch.zeros(0, self.num_variables, dtype=torch.long, device=self.logits.device)
        probs = self.log_probs(torch.float64).exp().cpu()
        draws = torch.multinomial(probs, n, replacement=True, generator=generator)
        return draws.T.contiguous().to(self.logits.device)
