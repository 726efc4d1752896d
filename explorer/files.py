"""File helpers of the app that need no widgets: settings from model files, sample export."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from dflows.config import ConfigError, TrainConfig

MODEL_FILTER = "dflows model (*.dflow)"
TARGET_OPEN_FILTER = (
    "Images and arrays (*.png *.jpg *.jpeg *.bmp *.gif *.tif *.tiff *.webp *.npy);;All files (*)"
)
TARGET_SAVE_FILTER = "NumPy array (*.npy);;PNG image (*.png)"
SAMPLES_FILTER = "NumPy array (*.npy);;CSV table (*.csv)"
PNG_FILTER = "PNG image (*.png)"


def with_suffix(path: str | os.PathLike, selected_filter: str, allowed: tuple[str, ...]) -> Path:
    """Return ``path`` with a suffix from ``allowed``, taken from the chosen file filter
    when the name has none of them."""
    path = Path(path)
    if path.suffix.lower() in allowed:
        return path
    for suffix in allowed:
        if f"*{suffix}" in selected_filter:
            return path.with_name(path.name + suffix)
    return path.with_name(path.name + allowed[0])


def train_config_from_dict(
    stored: dict[str, Any] | None, defaults: TrainConfig
) -> tuple[TrainConfig, list[str]]:
    """Return the training settings stored in a model file, and notes about what was replaced.

    Settings the file lacks come from ``defaults``; settings this dflows does not know are
    dropped. If the stored values are invalid together, ``defaults`` are used.
    """
    notes: list[str] = []
    if not stored:
        note = "the file has no training settings; using the recommended ones"
        return dataclasses.replace(defaults), [note]
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    values = defaults.to_dict()
    unknown = sorted(set(stored) - known)
    if unknown:
        notes.append(f"ignored unknown training settings: {', '.join(unknown)}")
    values.update({key: value for key, value in stored.items() if key in known})
    try:
        return TrainConfig.from_dict(values), notes
    except (ConfigError, TypeError) as error:
        notes.append(f"the stored training settings are invalid ({error}); using the recommended ones")
        return dataclasses.replace(defaults), notes


def write_samples(samples: np.ndarray, path: str | os.PathLike) -> Path:
    """Write integer samples ``(N, 2)`` as ``.npy`` or as ``.csv`` with a ``row,col`` header.

    Raises ``OSError`` when the file cannot be written and ``ValueError`` for another suffix.
    """
    path = Path(path)
    samples = np.asarray(samples, dtype=np.int64)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, samples, allow_pickle=False)
    elif suffix == ".csv":
        np.savetxt(path, samples, fmt="%d", delimiter=",", header="row,col", comments="")
    else:
        raise ValueError(f"{path}: cannot write samples as {suffix or '(no suffix)'}; use .npy or .csv")
    return path
