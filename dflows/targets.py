"""Targets: probability distributions on a K x K grid.

A target is a float64 array ``p`` of shape ``(K, K)`` with non-negative entries summing to 1.
``p[r, c]`` is the probability of row ``r`` and column ``c``; row 0 is drawn at the top.
Targets come from presets, NumPy arrays, ``.npy`` files or images, and every one goes
through ``validate_target``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_GRID = 2
MAX_GRID = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class TargetError(ValueError):
    """A target is invalid or could not be read. The message names the problem and the fix."""


def _describe_cell(array: np.ndarray, mask: np.ndarray) -> str:
    index = np.argwhere(mask)[0]
    if array.ndim == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"index {tuple(int(i) for i in index)}"


def validate_target(array, name: str = "target") -> np.ndarray:
    """Return ``array`` as a normalised float64 ``K x K`` target, or raise ``TargetError``.

    The array must be square with ``2 <= K <= 256``, finite, non-negative and not all zero.
    It is divided by its sum, so any non-negative weights will do.
    """
    try:
        p = np.array(array, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TargetError(f"{name} is not a numeric array: {error}") from None

    if p.ndim != 2:
        raise TargetError(f"{name} must be a 2D array, got shape {p.shape}")
    if p.shape[0] != p.shape[1]:
        raise TargetError(
            f"{name} must be square (K x K), got shape {p.shape}; resample it to a square grid"
        )
    size = p.shape[0]
    if not MIN_GRID <= size <= MAX_GRID:
        raise TargetError(
            f"{name} has grid size K={size}, out of range: K must be from {MIN_GRID} to {MAX_GRID}"
        )
    if np.isnan(p).any():
        raise TargetError(
            f"{name} has {int(np.isnan(p).sum())} NaN entries "
            f"(first at {_describe_cell(p, np.isnan(p))}); replace them with 0 or a weight"
        )
    if np.isinf(p).any():
        raise TargetError(
            f"{name} has {int(np.isinf(p).sum())} infinite entries "
            f"(first at {_describe_cell(p, np.isinf(p))}); use finite weights"
        )
    if (p < 0).any():
        raise TargetError(
            f"{name} has {int((p < 0).sum())} negative entries "
            f"(minimum {p.min():.6g} at {_describe_cell(p, p == p.min())}); "
            "probabilities must be 0 or more"
        )
    total = p.sum()
    if not total > 0:
        raise TargetError(f"{name} is all zero: give at least one cell a positive weight")
    if abs(total - 1.0) <= 1e-12:
        # Already normalised: dividing again would change the last bit of some entries.
        return p
    return p / total


def same_target(first: np.ndarray | None, second: np.ndarray | None) -> bool:
    """Return True when two targets are equal up to float rounding (relative 1e-9)."""
    if first is None or second is None:
        return first is second
    first, second = np.asarray(first), np.asarray(second)
    return first.shape == second.shape and bool(np.allclose(first, second, rtol=1e-9, atol=1e-300))


def _overlap(new_size: int, old_size: int) -> np.ndarray:
    """Return ``A`` (new x old): the fraction of old cell j that lies inside new cell i."""
    old_edges = np.arange(old_size + 1) / old_size
    new_edges = np.arange(new_size + 1) / new_size
    low = np.maximum(new_edges[:-1, None], old_edges[None, :-1])
    high = np.minimum(new_edges[1:, None], old_edges[None, 1:])
    return np.clip(high - low, 0.0, None) * old_size


def resample(array: np.ndarray, size: int) -> np.ndarray:
    """Resample a 2D array of cell masses to ``size x size`` by exact area overlap.

    Both grids cover the same unit square; each new cell receives the mass of the old cells
    it overlaps, in proportion to the overlap. Total mass is kept exactly, and so is the shape
    up to the resolution of the coarser grid. Non-square input is stretched to a square.
    """
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise TargetError(f"can only resample a 2D array, got shape {array.shape}")
    if not MIN_GRID <= size <= MAX_GRID:
        raise TargetError(
            f"grid size K={size} is out of range: K must be from {MIN_GRID} to {MAX_GRID}"
        )
    rows = _overlap(size, array.shape[0])
    columns = _overlap(size, array.shape[1])
    return rows @ array @ columns.T


# Presets.


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1.0 + erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def _interval_masses(edges: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Return the mass of a normal distribution between consecutive edges."""
    return np.diff(_normal_cdf((edges - mean) / std))


def ring8(size: int = 91) -> np.ndarray:
    """Return the 8-Gaussian ring of Figure 2 of Tran et al. (2019), exactly, on a K x K grid.

    The generator (edward2, ``examples/quantized_ring_of_gaussians.py``) draws one of 8
    equally weighted Gaussians with means on a circle of radius 2 at angles ``2 pi i / 8`` and
    standard deviation 0.1 per coordinate, clips each coordinate to ``[-2.25, 2.25]`` and
    quantises it as ``round(20 v) + 45``, so K = 91. Other K use the scale ``(K - 1) / 4.5``
    and the centre ``(K - 1) / 2``, which keep the clipping range on the outer cells. The
    first coordinate is the row. Cell masses are computed with the normal CDF, including the
    clipped tails that land on the edge cells.
    """
    scale = (size - 1) / 4.5
    centre = (size - 1) / 2.0
    edges = (np.arange(size + 1) - centre - 0.5) / scale
    edges[0], edges[-1] = -np.inf, np.inf

    p = np.zeros((size, size))
    for i in range(8):
        angle = 2.0 * math.pi * i / 8
        row = _interval_masses(edges, 2.0 * math.cos(angle), 0.1)
        column = _interval_masses(edges, 2.0 * math.sin(angle), 0.1)
        p += np.outer(row, column) / 8
    return p


def gaussian(size: int = 30) -> np.ndarray:
    """Return the single 2D Gaussian of the PyTorchDiscreteFlows demo on a K x K grid.

    That demo draws from an isotropic Gaussian with mean (5, 7) and variance 2 and keeps the
    integer part of each coordinate on a 30 x 30 grid. Other K scale coordinates by K / 30;
    values below 0 or beyond the last cell fall on the edge cells.
    """
    edges = np.arange(size + 1) * (30.0 / size)
    edges[0], edges[-1] = -np.inf, np.inf
    std = math.sqrt(2.0)
    return np.outer(_interval_masses(edges, 5.0, std), _interval_masses(edges, 7.0, std))


def _fine_centres(size: int, low: float, high: float) -> tuple[int, np.ndarray]:
    """Return ``n`` and the centres of an ``(n K) x (n K)`` sub-grid of ``[low, high]``."""
    n = max(2, min(16, math.ceil(768 / size)))
    fine = size * n
    return n, low + (np.arange(fine) + 0.5) * (high - low) / fine


def _oversampled(
    density: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int, low: float, high: float
) -> np.ndarray:
    """Integrate ``density(x, y)`` over each cell of a grid on ``[low, high]^2``.

    Each cell is split into ``n x n`` sub-cells evaluated at their centres (midpoint rule).
    Row 0 is the top (largest y); columns run along x.
    """
    n, centres = _fine_centres(size, low, high)
    x, y = np.meshgrid(centres, centres[::-1])
    return density(x, y).reshape(size, n, size, n).sum(axis=(1, 3))


def _curve(
    points: np.ndarray, weights: np.ndarray, std: float, size: int, low: float, high: float
) -> np.ndarray:
    """Integrate a weighted sum of isotropic Gaussians centred on ``points`` over each cell.

    An isotropic Gaussian is a product of one factor in x and one in y, so the sum over all
    points is one matrix product of the per-axis factors.
    """
    n, centres = _fine_centres(size, low, high)
    along_x = np.exp(-((centres[:, None] - points[None, :, 0]) ** 2) / (2 * std**2))
    along_y = np.exp(-((centres[::-1, None] - points[None, :, 1]) ** 2) / (2 * std**2))
    values = (along_y * weights) @ along_x.T
    return values.reshape(size, n, size, n).sum(axis=(1, 3))


def moons(size: int = 64) -> np.ndarray:
    """Return two interleaving half circles of radius 1 blurred by Gaussian noise (std 0.1)."""
    t = np.linspace(0.0, math.pi, 100)
    upper = np.stack([np.cos(t), np.sin(t)], axis=1)
    lower = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], axis=1)
    points = np.concatenate([upper, lower]) - np.array([0.5, 0.25])
    return _curve(points, np.ones(len(points)), 0.1, size, -2.0, 2.0)


def checkerboard(size: int = 64) -> np.ndarray:
    """Return a uniform density on the dark squares of a 4 x 4 checkerboard."""

    def density(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.floor((x + 1.0) * 2.0)
        j = np.floor((1.0 - y) * 2.0)
        return ((i + j) % 2 == 0).astype(np.float64)

    return _oversampled(density, size, -1.0, 1.0)


def spiral(size: int = 64) -> np.ndarray:
    """Return two interleaved spiral arms of 1.5 turns each, blurred by noise (std 0.04)."""
    t = np.linspace(0.15, 1.0, 300)
    arms = [
        np.stack([t * np.cos(3 * math.pi * t + phase), t * np.sin(3 * math.pi * t + phase)], 1)
        for phase in (0.0, math.pi)
    ]
    # Points are evenly spaced in t, not in length: weight each by the arm's speed |dp/dt| so
    # that the density along an arm is even.
    speed = np.sqrt(1.0 + (3 * math.pi * t) ** 2)
    return _curve(np.concatenate(arms), np.concatenate([speed, speed]), 0.04, size, -1.1, 1.1)


def rings(size: int = 64) -> np.ndarray:
    """Return three concentric rings (radii 0.3, 0.6, 0.9, radial std 0.04), mass by length."""

    def density(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        radius = np.hypot(x, y)
        total = np.zeros_like(x)
        # Equal peak heights give each ring a mass proportional to its length.
        for r in (0.3, 0.6, 0.9):
            total += np.exp(-((radius - r) ** 2) / (2 * 0.04**2))
        return total

    return _oversampled(density, size, -1.1, 1.1)


def uniform(size: int = 64) -> np.ndarray:
    """Return the uniform distribution on all K x K cells."""
    return np.ones((size, size))


@dataclass(frozen=True)
class Preset:
    """A named target generator with a one-line description and its natural grid size."""

    name: str
    description: str
    native_size: int
    generate: Callable[[int], np.ndarray]


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("ring8", "8 Gaussians on a ring, Figure 2 of Tran et al. (2019); native K=91", 91, ring8),
        Preset("gaussian", "one isotropic 2D Gaussian, the PyTorchDiscreteFlows demo; native K=30", 30, gaussian),
        Preset("moons", "two interleaving half circles", 64, moons),
        Preset("checkerboard", "uniform on the dark squares of a 4 x 4 board", 64, checkerboard),
        Preset("spiral", "two interleaved spiral arms", 64, spiral),
        Preset("rings", "three concentric rings", 64, rings),
        Preset("uniform", "every cell equally likely (nothing to learn)", 64, uniform),
    )
}


def preset(name: str, size: int | None = None) -> np.ndarray:
    """Return the preset target ``name`` on a ``size x size`` grid (default: its native K)."""
    if name not in PRESETS:
        raise TargetError(f"unknown preset {name!r}; the presets are: {', '.join(PRESETS)}")
    spec = PRESETS[name]
    size = spec.native_size if size is None else size
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_GRID <= size <= MAX_GRID:
        raise TargetError(
            f"grid size K={size!r} is out of range: K must be an integer from {MIN_GRID} to {MAX_GRID}"
        )
    return validate_target(spec.generate(size), name=f"preset {name!r}")


# Files.


def load_npy(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Read a target from a ``.npy`` file, resampled to ``size`` when given.

    Pickled objects are never loaded. Errors name the file.
    """
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise TargetError(f"{path}: file not found") from None
    except ValueError as error:
        if "pickle" in str(error):
            # NumPy blames pickling both for object arrays and for files without a .npy header.
            with open(path, "rb") as file:
                has_header = file.read(6) == b"\x93NUMPY"
            reason = "it holds Python objects, which are never loaded" if has_header else "it has no .npy header"
            raise TargetError(f"{path}: not a readable .npy array: {reason}") from None
        raise TargetError(f"{path}: not a readable .npy array ({error})") from None
    except (OSError, EOFError) as error:
        raise TargetError(f"{path}: not a readable .npy array ({error})") from None
    if array.ndim == 2 and size is not None and array.shape != (size, size):
        array = resample(validate_target(_square(array), name=str(path)), size)
    return validate_target(array, name=str(path))


def _square(array: np.ndarray) -> np.ndarray:
    """Pad a 2D array with zeros to a centred square, keeping its aspect ratio."""
    height, width = array.shape
    side = max(height, width)
    out = np.zeros((side, side))
    top = (side - height) // 2
    left = (side - width) // 2
    out[top : top + height, left : left + width] = array
    return out


def image_to_array(path: str | os.PathLike, invert: bool = False) -> np.ndarray:
    """Read an image as intensities in ``[0, 1]``: luminance times alpha, shape ``(H, W)``.

    The EXIF orientation is applied, so the array looks as the image does in a viewer.
    16-bit and floating-point grayscale images keep their full range. With ``invert=True``,
    dark pixels get high values instead (alpha still applies).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                values = np.asarray(image, dtype=np.float64)
                if image.mode == "F":
                    top = values.max() if values.max() > 0 else 1.0
                else:
                    top = max(65535.0, values.max())
                luminance = np.clip(values / top, 0.0, 1.0)
                alpha = np.ones_like(luminance)
            else:
                rgba = image.convert("RGBA")
                luminance = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
                alpha = np.asarray(rgba, dtype=np.float64)[..., 3] / 255.0
    except FileNotFoundError:
        raise TargetError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise TargetError(f"{path}: not a readable image ({error})") from None
    if invert:
        luminance = 1.0 - luminance
    return luminance * alpha


def load_image(path: str | os.PathLike, size: int = 64, invert: bool = False) -> np.ndarray:
    """Read a PNG or JPEG image as a ``size x size`` target: brighter means more probable.

    The image is padded with zeros to a square (keeping its aspect ratio) and resampled by
    area. Transparent pixels get probability 0. ``invert=True`` makes dark pixels probable.
    """
    intensities = image_to_array(path, invert=invert)
    return validate_target(resample(_square(intensities), size), name=str(path))


def load_target(spec: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """Return a target from a preset name, a ``.npy`` file or an image file.

    ``size`` resamples the result to ``size x size``; for images it defaults to 64 and for
    presets to their native size.
    """
    text = os.fspath(spec)
    if text in PRESETS:
        return preset(text, size)
    suffix = Path(text).suffix.lower()
    if suffix == ".npy":
        return load_npy(text, size)
    if suffix in IMAGE_SUFFIXES:
        return load_image(text, 64 if size is None else size)
    if not Path(text).exists():
        raise TargetError(
            f"{text!r} is neither a preset nor an existing file; "
            f"use one of {', '.join(PRESETS)}, a .npy file or an image"
        )
    raise TargetError(
        f"{text}: unsupported file type {suffix or '(none)'}; use .npy or an image "
        f"({', '.join(IMAGE_SUFFIXES)})"
    )


def save_target(target: np.ndarray, path: str | os.PathLike) -> None:
    """Write a target to ``.npy`` (exact float64) or to a grayscale PNG (scaled to its max)."""
    target = validate_target(target)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, target, allow_pickle=False)
    elif suffix == ".png":
        from PIL import Image

        pixels = np.round(255.0 * target / target.max()).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(path)
    else:
        raise TargetError(f"{path}: cannot save a target as {suffix or '(none)'}; use .npy or .png")
