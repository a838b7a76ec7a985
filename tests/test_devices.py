"""One device vocabulary: the torch device of an evaluation and the Lightning pair of a training."""

from __future__ import annotations

import pytest
import torch

from anomalyseg import zoo
from anomalyseg.devices import DeviceError, lightning_device, resolve_device


def test_resolve_device(monkeypatch):
    assert zoo.resolve_device is resolve_device  # the zoo's name is the same function
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"device='cuda:1'.*no CUDA device.*'cpu'"):
        resolve_device("cuda:1")
    with pytest.raises(DeviceError, match=r"device='gpu0' is not a device name"):
        resolve_device("gpu0")
    assert issubclass(DeviceError, ValueError)  # the CLI reports it as one paragraph, exit 1


def test_resolve_device_checks_the_gpu_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device(
        "cuda:0"
    ) == torch.device("cuda:0")
    with pytest.raises(DeviceError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize(
    ("device", "devices", "expected"),
    [
        ("auto", 1, ("auto", 1)),
        (None, 2, ("auto", 2)),
        ("cpu", 2, ("cpu", 2)),
        ("gpu", [0, 1], ("gpu", [0, 1])),
        ("cuda", 1, ("gpu", 1)),
        ("cuda:1", 1, ("gpu", [1])),
        (torch.device("cuda", 2), 1, ("gpu", [2])),
        ("cuda:1", 2, ("gpu", 2)),  # an explicit count wins over the index
        (torch.device("cpu"), 1, ("cpu", 1)),
    ],
)
def test_lightning_device(device, devices, expected):
    assert lightning_device(device, devices) == expected


def test_lightning_device_refuses_what_it_cannot_read():
    with pytest.raises(DeviceError, match="not a device name"):
        lightning_device("cuda1")
