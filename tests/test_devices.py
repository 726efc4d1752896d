"""Tests of dflows.devices: device names, auto selection and errors on missing hardware.

The CUDA and MPS probes are patched, so these tests behave the same on machines with and
without a GPU.
"""

import re

import pytest
import torch

from dflows import devices
from dflows.devices import DeviceError, available_devices, resolve_device


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"Test GPU {index}")
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.fixture
def mps_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(devices, "_mps_available", lambda: True)


# CPU and automatic choice.


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu "])
def test_resolve_cpu(cpu_only, name):
    assert resolve_device(name) == torch.device("cpu")


def test_resolve_auto_without_gpu(cpu_only):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


def test_resolve_auto_prefers_cuda(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_resolve_auto_uses_mps(mps_only):
    assert resolve_device("auto") == torch.device("mps")


# CUDA.


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_missing_raises(cpu_only, name):
    with pytest.raises(DeviceError) as caught:
        resolve_device(name)

    message = str(caught.value)
    assert repr(name) in message
    assert "torch finds no CUDA GPU on this machine" in message
    assert "use the device cpu (or auto)" in message


def test_cuda_means_first_gpu(two_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 0)


def test_cuda_index_selects_gpu(two_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_index_out_of_range(two_gpus):
    expected = "device 'cuda:2' does not exist: this machine has 2 CUDA device(s), cuda:0 to cuda:1"

    with pytest.raises(DeviceError, match=re.escape(expected)):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda:x", "cuda:-1", "cuda: 1", "cuda:1.0"])
def test_cuda_invalid_index(two_gpus, name):
    with pytest.raises(DeviceError, match="is invalid; write cuda or cuda:N with N a number"):
        resolve_device(name)


# MPS and unknown names.


def test_mps_missing_raises(cpu_only):
    with pytest.raises(DeviceError, match="Apple MPS is not available here; use the device cpu"):
        resolve_device("mps")


def test_mps_available(mps_only):
    assert resolve_device("mps") == torch.device("mps")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "cuda0"])
def test_unknown_device_raises(cpu_only, name):
    with pytest.raises(DeviceError, match="is unknown; use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_device_error_is_runtime_error():
    assert issubclass(DeviceError, RuntimeError)


# Listing devices.


def test_available_devices_cpu_only(cpu_only):
    assert available_devices() == [("cpu", "CPU")]


def test_available_devices_lists_gpus(two_gpus):
    assert available_devices() == [
        ("cpu", "CPU"),
        ("cuda:0", "CUDA 0: Test GPU 0"),
        ("cuda:1", "CUDA 1: Test GPU 1"),
    ]


def test_available_devices_lists_mps(mps_only):
    assert available_devices() == [("cpu", "CPU"), ("mps", "Apple MPS")]


def test_available_names_resolve(two_gpus):
    for name, _ in available_devices():
        assert str(resolve_device(name)) == name
