"""Model files (``.dflow``): one file with the configuration, weights, target and history.

The file is a ``torch.save`` archive of a dict that holds only tensors, strings, numbers,
lists and dicts, so ``torch.load(..., weights_only=True)`` reads it without unpickling any
object: loading a file can never run code from it. Tensors are mapped to the CPU first, so a
model saved on a GPU opens on a machine without one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ConfigError, FlowConfig
from .flow import DiscreteFlow
from .targets import TargetError, validate_target

FORMAT_NAME = "dflows-model"
ZIP_MAGIC = b"PK\x03\x04"
FORMAT_VERSION = 1
SUFFIX = ".dflow"


class ModelFileError(ValueError):
    """A model file could not be read or written; the message names the file and the problem."""


def _history_to_file(history: dict[str, list]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor(np.asarray(values, dtype=np.float64)) for key, values in history.items()}


def _history_from_file(history: dict[str, Any]) -> dict[str, list]:
    out = {}
    for key, values in history.items():
        array = values.numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
        as_list = array.astype(np.float64).tolist()
        if key in ("step", "eval_step"):
            as_list = [int(v) for v in as_list]
        out[str(key)] = as_list
    return out


def _checksum(data: dict[str, Any]) -> str:
    """Return a SHA-256 over the weights, target and history, in a fixed order."""
    digest = hashlib.sha256()
    settings = {"flow_config": data["flow_config"], "train_config": data["train_config"]}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    arrays = [("state_dict." + key, value) for key, value in sorted(data["state_dict"].items())]
    arrays += [("history." + key, value) for key, value in sorted(data["history"].items())]
    if data["target"] is not None:
        arrays.append(("target", data["target"]))
    for name, tensor in arrays:
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_to_dict(model: DiscreteFlow) -> dict[str, Any]:
    """Return the plain dict that ``save`` writes: tensors on the CPU and built-in types only."""
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    target = None if model.target is None else torch.from_numpy(np.array(model.target, dtype=np.float64))
    data = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "flow_config": model.config.to_dict(),
        "train_config": dict(model.train_config) if model.train_config else None,
        "state_dict": state,
        "target": target,
        "history": _history_to_file(model.history),
    }
    data["checksum"] = _checksum(data)
    return data


def save(model: DiscreteFlow, path: str | os.PathLike) -> Path:
    """Write ``model`` with its target, history and training settings to ``path``.

    The file is written to a temporary file in the same folder and then renamed over
    ``path``, so a crash leaves either the old file or the new one, never half of one.
    Returns the path written.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(model_to_dict(model), buffer)

    folder = path.parent if str(path.parent) else Path(".")
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot write here ({error.strerror or error})") from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(buffer.getbuffer())
            file.flush()
            os.fsync(file.fileno())
        # mkstemp creates the file readable by its owner only. The saved file gets the mode
        # of the file it replaces, or else the mode an ordinary new file would have.
        os.chmod(temporary, _file_mode(path))
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise ModelFileError(f"{path}: writing failed ({error.strerror or error})") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ModelFileError(f"{path}: file not found")
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    try:
        with open(path, "rb") as file:
            head = file.read(4)
        is_archive = zipfile.is_zipfile(path)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not is_archive:
        if head == ZIP_MAGIC:
            raise ModelFileError(f"{path}: the model file is truncated or corrupt (its archive is incomplete)")
        raise ModelFileError(f"{path}: not a dflows model file (it is not a torch archive)")
    with zipfile.ZipFile(path) as archive:
        if not any(name.endswith("/data.pkl") for name in archive.namelist()):
            raise ModelFileError(f"{path}: not a dflows model file (a zip archive without torch records)")

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFileError(
            f"{path}: not a dflows model file; it contains Python objects, which are never "
            "loaded because loading them could run code"
        ) from None
    except PermissionError:
        raise ModelFileError(f"{path}: permission denied") from None
    except Exception as error:  # noqa: BLE001
        # A damaged archive can fail inside the unpickler with almost any exception type.
        raise ModelFileError(
            f"{path}: the model file is truncated or corrupt ({type(error).__name__}: {error})"
        ) from None


def load(path: str | os.PathLike) -> DiscreteFlow:
    """Read a model written by ``save``: weights, target, history and training settings.

    Raises ``ModelFileError`` naming the file when it is missing, foreign, truncated,
    corrupt, or written by a newer format version.
    """
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a dflows model file (no '{FORMAT_NAME}' header)")
    version = data.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by a newer dflows (format version {version}; this one reads up to "
            f"{FORMAT_VERSION}); upgrade the dflows-explorer package to open it"
        )

    for key in ("flow_config", "train_config", "state_dict", "target", "history"):
        if key not in data:
            raise ModelFileError(f"{path}: damaged model file, entry '{key}' is missing")
    try:
        intact = data["checksum"] == _checksum(data)
    except (KeyError, TypeError, AttributeError, RuntimeError):
        intact = False
    if not intact:
        raise ModelFileError(f"{path}: the model file is corrupt (its checksum does not match)")

    try:
        config = FlowConfig.from_dict(data["flow_config"])
        model = DiscreteFlow(config)
        model.load_state_dict(data["state_dict"])
    except (ConfigError, TypeError) as error:
        raise ModelFileError(f"{path}: damaged model settings ({error})") from None
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match the settings ({first_line})") from None

    target = data.get("target")
    if target is not None:
        try:
            model.target = validate_target(target.numpy(), name=f"{path}: stored target")
        except (TargetError, AttributeError) as error:
            raise ModelFileError(f"{path}: damaged target ({error})") from None
        if model.target.shape[0] != config.vocab_size:
            raise ModelFileError(
                f"{path}: stored target is {model.target.shape[0]} x {model.target.shape[0]} "
                f"but the model has K={config.vocab_size}"
            )
    model.history = _history_from_file(data.get("history") or {})
    model.train_config = data.get("train_config")
    model.eval()
    return model
