"""Colour mapping shared by the views, the preset thumbnails and the window icon.

Everything here works on NumPy arrays and needs no QApplication, so
``scripts/make_assets.py`` can use it without a display.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pyqtgraph as pg

COLORMAP_NAME = "inferno"

# A log view shows this many decades below the largest value; smaller values, and zeros,
# get the lowest colour.
LOG_DECADES = 6.0


def colormap() -> pg.ColorMap:
    """Return the colour map that every grid view uses."""
    return pg.colormap.get(COLORMAP_NAME)


@lru_cache(maxsize=1)
def lookup_table() -> np.ndarray:
    """Return the colour map as a ``(256, 4)`` uint8 RGBA table."""
    table = colormap().getLookupTable(nPts=256, alpha=True)
    return np.ascontiguousarray(table, dtype=np.uint8)


def display_values(values: np.ndarray, log: bool, low: float | None = None) -> np.ndarray:
    """Return the array that an image shows: ``values`` itself, or ``log10`` of it.

    In log mode, zeros and values below ``10 ** low`` are raised to that floor, so the image
    has no infinities. ``low`` defaults to ``LOG_DECADES`` below the array's own maximum.
    """
    values = np.asarray(values, dtype=np.float64)
    if not log:
        return values
    if low is None:
        low, _ = levels_for(float(values.max(initial=0.0)), log=True)
    return np.log10(np.maximum(values, 10.0**low))


# Linear levels end at one of these multiples of a power of 10, at most 25 % above the
# maximum. While training, the maximum changes a little at every update. Rounded levels
# keep the colours steady, and the colour bar's ticks, which are slow to redraw, too.
NICE_STEPS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
# Log levels end at a multiple of this fraction of a decade.
LOG_STEP = 0.25


def nice_ceiling(value: float) -> float:
    """Return the smallest number of the form ``step * 10**k`` (step in NICE_STEPS) >= value."""
    exponent = math.floor(math.log10(value))
    scale = 10.0**exponent
    for step in NICE_STEPS:
        if step * scale >= value * (1 - 1e-12):
            return step * scale
    return 10.0 * scale


def levels_for(maximum: float, log: bool) -> tuple[float, float]:
    """Return the ``(low, high)`` colour levels for data whose largest value is ``maximum``."""
    if not maximum > 0 or not np.isfinite(maximum):
        return (-LOG_DECADES, 0.0) if log else (0.0, 1.0)
    if log:
        high = math.ceil(math.log10(maximum) / LOG_STEP - 1e-9) * LOG_STEP
        return high - LOG_DECADES, high
    return 0.0, nice_ceiling(maximum)


def colorize(values: np.ndarray, log: bool = False) -> np.ndarray:
    """Map a 2D array to an RGBA uint8 image ``(H, W, 4)``; row 0 becomes the top row.

    Unlike the views, the top colour goes to the exact maximum, not a rounded level.
    """
    maximum = float(np.asarray(values).max(initial=0.0))
    low, high = levels_for(maximum, log)
    if maximum > 0:
        high = math.log10(maximum) if log else maximum
        low = high - LOG_DECADES if log else 0.0
    shown = display_values(values, log, low)
    scaled = (shown - low) / (high - low)
    index = np.clip(np.round(scaled * 255.0), 0, 255).astype(np.intp)
    return lookup_table()[index]
