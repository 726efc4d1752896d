"""Choosing the torch device to train on."""

from __future__ import annotations

import torch


class DeviceError(RuntimeError):
    """The requested device does not exist on this machine. The message lists the ones that do."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[tuple[str, str]]:
    """List the usable devices as ``(name, description)``, the CPU first.

    Names are accepted by ``resolve_device``: ``"cpu"``, ``"cuda:0"``, ``"cuda:1"``, ...,
    ``"mps"``.
    """
    devices = [("cpu", "CPU")]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            devices.append((f"cuda:{index}", f"CUDA {index}: {torch.cuda.get_device_name(index)}"))
    if _mps_available():
        devices.append(("mps", "Apple MPS"))
    return devices


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name``, or raise ``DeviceError`` if it is absent.

    ``"auto"`` picks the first CUDA GPU, else MPS, else the CPU. ``"cuda"`` means
    ``"cuda:0"``.
    """
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")

    if text == "cuda" or text.startswith("cuda:"):
        index_text = text.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise DeviceError(f"device {name!r} is invalid; write cuda or cuda:N with N a number")
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} was requested, but torch finds no CUDA GPU on this machine; "
                "use the device cpu (or auto)"
            )
        index = int(index_text)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(
                f"device {name!r} does not exist: this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", index)

    if text == "mps":
        if not _mps_available():
            raise DeviceError(
                "device 'mps' was requested, but Apple MPS is not available here; "
                "use the device cpu (or auto)"
            )
        return torch.device("mps")

    raise DeviceError(f"device {name!r} is unknown; use auto, cpu, cuda, cuda:N or mps")
