"""Straight-through gradients of shift flows on a grid, summed per table row instead of per sample.

For a flow of shift layers with lookup-table conditioners on two variables, trained without
gradients into the conditioners' inputs, the straight-through gradient of a weighted NLL
``-sum_n w_n log q(x_n)`` has a closed form that needs no one-hot codes:

* A layer that moves variable ``j`` adds ``loc(v)`` to it, where ``v`` is the kept value. Later
  layers only add more shifts to ``j``, so the gradient with respect to the one-hot code of
  ``j`` right after this layer is ``g`` rolled by those later shifts. ``g = -log base_j`` is
  the gradient at the latent.
* The gradient with respect to the one-hot ``loc`` of a sample in row ``v`` is therefore
  ``g[(z_j - loc(v) + m) mod K]`` for candidate shift ``m``, where ``z_j`` is the sample's
  latent value. Summed over a row this is a circular cross-correlation of the row's weighted
  histogram of ``z_j`` with ``g``::

      S[v, m] = sum_c H[v, c] * g[(c - loc(v) + m) mod K],  H[v, c] = sum of w_n in row v with z_j = c

* The straight-through softmax turns ``S`` into the table gradient
  ``softmax(table[v] / T) * (S[v] - <softmax(table[v] / T), S[v]>) / T``, because that map is
  linear in ``S``.

So a step costs integer arithmetic and one ``bincount`` entry per sample and layer. On top
comes one row-wise circular correlation of a ``K x K`` histogram per layer: a product with a
circulant matrix for small K, FFTs along the rows for large K. It gives the same gradients as autograd
through ``DiscreteFlow.log_prob_codes(..., input_gradient=False)``.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from .conditioners import TableConditioner


def supports(model, input_gradient: bool) -> bool:
    """Return True when ``weighted_nll_backward`` computes ``model``'s gradients exactly."""
    if input_gradient or model.num_variables != 2:
        return False
    return all(
        layer.layer_type == "shift" and isinstance(layer.conditioner, TableConditioner)
        for layer in model.layers
    )


# Up to this K the row correlations are one matrix product with a circulant matrix, K^3
# multiply-adds per layer. Above it, FFTs along the rows are cheaper (K^2 log K).
MAX_MATMUL_SIZE = 128


@lru_cache(maxsize=16)
def _offsets(size: int, device: torch.device) -> torch.Tensor:
    """Return ``[0, K]``: added to latent pairs, it puts both variables in one bincount."""
    return torch.tensor([0, size], device=device)


def _correlate_rows(histograms: torch.Tensor, g: torch.Tensor, moved: list[int]) -> torch.Tensor:
    """Return ``out[l, v, m] = sum_c histograms[l, v, c] * g[moved[l], (c + m) mod K]``."""
    size = g.shape[1]
    if size <= MAX_MATMUL_SIZE:
        # circulant[j, c, m] = g[j, (c + m) mod K], a strided view of g repeated twice.
        doubled = torch.cat([g, g], dim=1)
        circulant = doubled.as_strided((2, size, size), (2 * size, 1, 1))
        if len(moved) == 1:
            # A plain index keeps the view; a list index would copy it first.
            return torch.matmul(histograms, circulant[moved[0]])
        return torch.matmul(histograms, circulant[moved])
    spectra = torch.fft.rfft(g, dim=1)
    spectrum = torch.conj(torch.fft.rfft(histograms, dim=2)) * spectra[moved, None]
    return torch.fft.irfft(spectrum, n=size, dim=2)


def _accumulate(parameter: torch.Tensor, gradient: torch.Tensor) -> None:
    if parameter.grad is None:
        parameter.grad = gradient.to(parameter.dtype)
    else:
        parameter.grad += gradient


def weighted_nll_backward(
    model, cells: torch.Tensor, weights: torch.Tensor | float, temperature: float
) -> float:
    """Return ``-sum_n w_n log q(cells_n)`` and add its gradients to the parameters' ``.grad``.

    ``cells`` is an int64 tensor ``(N, 2)`` on the model's device. ``weights`` is a float
    tensor ``(N,)``, or one number that weighs every cell alike (``1 / N`` gives the mean NLL
    of a batch). The gradients are the straight-through gradients at ``temperature`` without
    gradients into the conditioners' inputs; see the module docstring.
    """
    size = model.vocab_size
    uniform = not isinstance(weights, torch.Tensor)
    tables, variables = [], []
    for layer in model.layers:
        tables.append(layer.conditioner.table)
        variables.append((layer.kept_variables[0], layer.moved_variables[0]))
    count = len(tables)

    # Forward: integer shifts, remembering each sample's row and shift in every layer.
    values = cells.clone()
    records = []
    if tables:
        stacked = torch.stack([table.detach() for table in tables]) if count > 1 else tables[0].detach()[None]
        loc_of_rows = stacked.argmax(dim=2)
    for index, (kept, moved) in enumerate(variables):
        rows = values[:, kept].clone()
        loc = loc_of_rows[index][rows]
        shifted = values[:, moved]
        shifted += loc
        shifted.remainder_(size)
        records.append((rows, moved, loc))

    # One bincount gives every histogram. Layer l counts (row, z_j - loc(row)) in the bins
    # [l K^2, (l + 1) K^2), and the last 2 K bins count z_0 and z_1.
    layer_bins = count * size * size
    flat = [
        (index * size + rows) * size + torch.remainder(values[:, moved] - loc, size)
        for index, (rows, moved, loc) in enumerate(records)
    ]
    flat.append((values + _offsets(size, cells.device)).view(-1) + layer_bins)
    if uniform:
        # Count, and apply the common weight to the small factors below instead of the bins.
        histograms = torch.bincount(torch.cat(flat), minlength=layer_bins + 2 * size).to(torch.float32)
        scale = weights
    else:
        repeated = torch.cat([weights.repeat(count), weights.repeat_interleave(2)])
        histograms = torch.bincount(torch.cat(flat), weights=repeated, minlength=layer_bins + 2 * size)
        scale = 1.0

    # Base: with h the histogram of z, the loss is -<h, log softmax(logits)> and its gradient
    # with respect to the logits is sum(h) * softmax(logits) - h.
    latent_histogram = histograms[layer_bins:].view(2, size)
    log_base = torch.log_softmax(model.base.logits.detach(), dim=-1)
    loss = -scale * float((latent_histogram * log_base).sum())
    total = len(cells) if uniform else weights.sum()
    _accumulate(model.base.logits, log_base.exp().mul_(total).sub_(latent_histogram).mul_(scale))
    if not records:
        return loss

    # Layers: the row-wise correlation of each layer's histogram with g = -log base_j is the
    # row-summed gradient S directly; the straight-through softmax turns it into the table's.
    moved = [record[1] for record in records]
    row_sums = _correlate_rows(histograms[:layer_bins].view(count, size, size), log_base * -scale, moved)

    inverse_temperature = 1.0 / temperature
    soft = torch.softmax(stacked * inverse_temperature, dim=2)
    weighted = soft * row_sums
    gradients = weighted.sub_(soft * weighted.sum(dim=2, keepdim=True)).mul_(inverse_temperature)
    for table, gradient in zip(tables, gradients):
        _accumulate(table, gradient)
    return loss
