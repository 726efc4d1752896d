"""The window icon and the preset thumbnails: where to find them, and how to draw them.

The PNG files are made by ``scripts/make_assets.py`` and kept in the repository's
``assets/`` folder. An installed copy of the package looks in ``explorer/assets/`` first.
When neither folder contains a file, the image is drawn at run time from the same preset, so
a missing file does not change what the app shows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

import dflows

from .render import colorize

log = logging.getLogger("explorer")

PACKAGE_ASSETS = Path(__file__).resolve().parent / "assets"
SOURCE_ASSETS = Path(__file__).resolve().parent.parent / "assets"
ASSET_FOLDERS = (PACKAGE_ASSETS, SOURCE_ASSETS)

ICON_FILE = "dflows-explorer.png"
ICON_PIXELS = 256
# The icon shows ring8 on a coarse grid so that single cells stay visible at 32 pixels,
# with a margin of empty cells around it.
ICON_GRID = 32
ICON_MARGIN = 4
THUMBNAIL_PIXELS = 64


def thumbnail_file(name: str) -> str:
    """Return the file name of the thumbnail of preset ``name``."""
    return f"preset-{name}.png"


def find_asset(file_name: str) -> Path | None:
    """Return the first existing ``file_name`` in the asset folders, or None."""
    for folder in ASSET_FOLDERS:
        path = folder / file_name
        if path.is_file():
            return path
    return None


def thumbnail_pixels(name: str, pixels: int = THUMBNAIL_PIXELS) -> np.ndarray:
    """Draw preset ``name`` on a ``pixels x pixels`` grid as an RGBA uint8 image.

    The colours follow the square root of the probability, so that thin or sparse presets
    stay visible at this size.
    """
    return colorize(np.sqrt(dflows.preset(name, pixels)))


def icon_pixels(pixels: int = ICON_PIXELS) -> np.ndarray:
    """Draw the window icon: ring8 on a coarse grid, in a rounded square, as RGBA uint8."""
    inner = ICON_GRID - 2 * ICON_MARGIN
    grid = np.zeros((ICON_GRID, ICON_GRID))
    grid[ICON_MARGIN : ICON_MARGIN + inner, ICON_MARGIN : ICON_MARGIN + inner] = dflows.preset(
        "ring8", inner
    )
    cells = colorize(np.sqrt(grid))
    repeat = max(1, pixels // ICON_GRID)
    image = np.repeat(np.repeat(cells, repeat, axis=0), repeat, axis=1)
    size = image.shape[0]

    # Round the corners: pixels outside a quarter circle of radius size/8 become transparent.
    radius = size / 8.0
    centres = np.arange(size) + 0.5
    dx = np.maximum(np.maximum(radius - centres, centres - (size - radius)), 0.0)
    outside = np.hypot(dx[None, :], dx[:, None]) > radius
    image = image.copy()
    image[outside, 3] = 0
    return image


def _qicon_from_pixels(pixels: np.ndarray):
    from PySide6 import QtGui

    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    image = QtGui.QImage(pixels.data, width, height, 4 * width, QtGui.QImage.Format.Format_RGBA8888)
    # QImage does not own the NumPy buffer; copy before the array goes away.
    return QtGui.QIcon(QtGui.QPixmap.fromImage(image.copy()))


def _load_icon(file_name: str, draw) -> "QtGui.QIcon":  # noqa: F821
    from PySide6 import QtGui

    path = find_asset(file_name)
    if path is not None:
        icon = QtGui.QIcon(str(path))
        if not icon.isNull():
            return icon
        log.warning("asset %s could not be read; drawing it instead", path)
    else:
        log.debug("asset %s not found in %s; drawing it", file_name, [str(f) for f in ASSET_FOLDERS])
    return _qicon_from_pixels(draw())


def app_icon():
    """Return the window icon as a ``QIcon``."""
    return _load_icon(ICON_FILE, icon_pixels)


def preset_icon(name: str):
    """Return the thumbnail of preset ``name`` as a ``QIcon``."""
    return _load_icon(thumbnail_file(name), lambda: thumbnail_pixels(name))
