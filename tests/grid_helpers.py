"""Reference helpers for the layer and flow tests, written without the library's own code."""

import torch


def grid(size):
    """Return every cell of a size x size grid as (size * size, 2) rows (row, column)."""
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return torch.stack([rows.flatten(), columns.flatten()], dim=1)


def cell_ids(points, size):
    """Return one integer per point, its index in the mixed-radix order of the variables."""
    ids = torch.zeros(points.shape[0], dtype=torch.long)
    for column in range(points.shape[1]):
        ids = ids * size + points[:, column]
    return ids
