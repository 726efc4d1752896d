"""The discrete flow model: a stack of coupling layers on a factorized base."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .base import FactorizedCategorical
from .config import ConfigError, FlowConfig
from .layers import CouplingLayer


class DiscreteFlow(nn.Module):
    """A discrete normalizing flow ``q(x) = p_base(f(x))`` on ``{0, ..., K-1} ** D``.

    Direction convention, used everywhere in this project: ``forward`` maps data ``x`` to
    latent ``z = f(x)`` (used for likelihoods), ``inverse`` maps latent to data (used for
    sampling). ``f`` is a composition of coupling layers, applied first to last in
    ``forward`` and last to first in ``inverse``. A bijection of a finite set has no Jacobian
    term, so ``log q(x) = log p_base(f(x))`` exactly (Tran et al., 2019, arXiv:1905.10347).

    Layer ``i`` moves the second half of the variables when ``i`` is even and the first half
    when it is odd. For a grid (D = 2), variable 0 is the row and variable 1 the column, so
    layer 0 shifts the column by an amount chosen from the row.

    Integer inputs and outputs are int64 tensors of shape ``(N, D)`` with values in
    ``[0, K)``. Besides its weights, a model carries the ``target`` it was trained on (a
    ``K x K`` float64 array or None), a training ``history`` dict and the ``train_config``
    dict. ``dflows.save`` stores all of them.

    >>> flow = DiscreteFlow(FlowConfig(vocab_size=5, layers=3))
    >>> x = torch.tensor([[0, 4], [3, 2]])
    >>> bool((flow.inverse(flow(x)) == x).all())
    True
    """

    def __init__(self, config: FlowConfig | None = None, **settings: Any) -> None:
        super().__init__()
        if config is None:
            config = FlowConfig(**settings)
        elif settings:
            raise TypeError("pass either a FlowConfig or keyword settings, not both")
        config.validate()
        self.config = config
        self.vocab_size = config.vocab_size
        self.num_variables = config.num_variables

        half = config.num_variables // 2
        first = list(range(half))
        second = list(range(half, config.num_variables))
        try:
            layers = [
                CouplingLayer(
                    config.vocab_size,
                    config.num_variables,
                    second if i % 2 == 0 else first,
                    layer_type=config.layer_type,
                    conditioner=config.conditioner,
                    hidden=config.hidden,
                    identity_bias=config.identity_bias,
                    init_std=config.init_std,
                )
                for i in range(config.layers)
            ]
        except ValueError as error:
            # A setting can pass FlowConfig.validate and still be too large, such as a lookup
            # table over many kept variables.
            raise ConfigError(str(error)) from None
        self.layers = nn.ModuleList(layers)
        self.base = FactorizedCategorical(config.num_variables, config.vocab_size)
        self.target: np.ndarray | None = None
        self.history: dict[str, list] = {}
        self.train_config: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.base.logits.device

    def _check_values(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.num_variables:
            raise ValueError(
                f"{name} must have shape (N, {self.num_variables}), got {tuple(x.shape)}"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
            raise ValueError(
                f"{name} has values outside [0, {self.vocab_size}): "
                f"min {int(x.min())}, max {int(x.max())}"
            )
        return x.to(device=self.device, dtype=torch.long)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map data to latent, ``(N, D)`` -> ``(N, D)``, through every layer in order."""
        z = self._check_values(x, "x")
        for layer in self.layers:
            z = layer(z)
        return z

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Map latent to data, ``(N, D)`` -> ``(N, D)``, through the layers in reverse."""
        x = self._check_values(z, "z")
        for layer in reversed(self.layers):
            x = layer.inverse(x)
        return x

    @torch.no_grad()
    def forward_steps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return ``[x, after layer 1, ..., after the last layer]`` for data ``x``."""
        steps = [self._check_values(x, "x")]
        for layer in self.layers:
            steps.append(layer(steps[-1]))
        return steps

    @torch.no_grad()
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Return the exact ``log q(x)`` in nats, float64 of shape ``(N,)``."""
        return self.base.log_prob(self.forward(x), dtype=torch.float64)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` data points: ``inverse`` of latents drawn from the base, ``(n, D)``."""
        if n < 0:
            raise ValueError(f"number of samples must be non-negative, got {n}")
        return self.inverse(self.base.sample(n, generator))

    def forward_codes(
        self, codes: torch.Tensor, temperature: float, input_gradient: bool = True
    ) -> torch.Tensor:
        """Map one-hot data codes ``(N, D, K)`` to latent codes with straight-through gradients."""
        for layer in self.layers:
            codes = layer.forward_codes(codes, temperature, input_gradient)
        return codes

    def log_prob_codes(
        self, codes: torch.Tensor, temperature: float, input_gradient: bool = True
    ) -> torch.Tensor:
        """Return ``log q(x)`` for one-hot codes ``(N, D, K)``, differentiable for training."""
        return self.base.log_prob_codes(self.forward_codes(codes, temperature, input_gradient))

    # Exact quantities over the whole grid (D = 2).

    def _check_grid(self) -> None:
        if self.num_variables != 2:
            raise ValueError(
                f"grid quantities need a flow on 2 variables, this one has {self.num_variables}"
            )

    def grid_cells(self) -> torch.Tensor:
        """Return every cell of the K x K grid as ``(K * K, 2)`` rows ``(row, column)``.

        Cell ``(r, c)`` is at index ``r * K + c``, so ``values.reshape(K, K)`` gives an array
        whose ``[r, c]`` entry belongs to row r and column c.
        """
        self._check_grid()
        classes = torch.arange(self.vocab_size, device=self.device)
        rows, columns = torch.meshgrid(classes, classes, indexing="ij")
        return torch.stack([rows.flatten(), columns.flatten()], dim=1)

    @torch.no_grad()
    def log_density(self) -> np.ndarray:
        """Return ``log q`` on every cell as a ``K x K`` float64 array (exact)."""
        size = self.vocab_size
        return self.log_prob(self.grid_cells()).cpu().numpy().reshape(size, size)

    def density(self) -> np.ndarray:
        """Return ``q`` on every cell as a ``K x K`` float64 array; it sums to 1."""
        return np.exp(self.log_density())

    @torch.no_grad()
    def push_forward_steps(self, target: np.ndarray) -> list[np.ndarray]:
        """Return the target pushed through each layer: ``[p, f_1 # p, ..., f # p]``.

        Each entry is a ``K x K`` float64 array. A flow only permutes cells, so each is the
        target with its cells moved: entry ``i`` is the distribution of the data after ``i``
        layers, and the last one is the latent distribution.
        """
        self._check_grid()
        size = self.vocab_size
        probabilities = np.asarray(target, dtype=np.float64).reshape(-1)
        if probabilities.shape != (size * size,):
            raise ValueError(
                f"target has shape {np.shape(target)}, but this flow needs ({size}, {size})"
            )
        steps = self.forward_steps(self.grid_cells())
        pushed = []
        for cells in steps:
            flat_index = (cells[:, 0] * size + cells[:, 1]).cpu().numpy()
            out = np.zeros(size * size)
            out[flat_index] = probabilities
            pushed.append(out.reshape(size, size))
        return pushed

    def push_forward(self, target: np.ndarray) -> np.ndarray:
        """Return the latent distribution ``f # p`` of a ``K x K`` target (exact)."""
        return self.push_forward_steps(target)[-1]

    @torch.no_grad()
    def base_marginals(self) -> np.ndarray:
        """Return the base's per-variable probabilities, a ``(D, K)`` float64 array."""
        return self.base.log_probs(torch.float64).exp().cpu().numpy()

    def base_density(self) -> np.ndarray:
        """Return the base distribution on the grid, ``p_base(z0, z1)``, a ``K x K`` array."""
        self._check_grid()
        marginals = self.base_marginals()
        return np.outer(marginals[0], marginals[1])
