"""One device vocabulary for the whole package.

A device is named as torch names it (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a
``torch.device``) or ``"auto"`` (the first CUDA GPU when there is one, else the CPU).
``resolve_device`` turns it into the ``torch.device`` an evaluation runs on; ``lightning_device``
into the ``(accelerator, devices)`` pair a Lightning training runs on, which also accepts
Lightning's own accelerator names (``"gpu"``, ``"auto"``...). Both raise ``DeviceError`` (a
``ValueError``) for a name they cannot read or a GPU that is not there, never ``SystemExit``.
"""

from __future__ import annotations

import torch

# Lightning accelerator names that are not torch device types.
_LIGHTNING_ONLY = ("auto", "gpu", "tpu", "hpu")


class DeviceError(ValueError):
    """A device name that cannot be read, or a device this machine does not have."""


def _torch_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(
            f"device={device!r} is not a device name ({e}); expected 'auto', 'cpu', 'cuda', "
            "'cuda:N' or 'mps'."
        ) from None


def _check_available(d: torch.device, name) -> None:
    if d.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device={str(name)!r}: torch {torch.__version__} sees no CUDA device on this machine; "
            "use 'cpu' or 'auto'."
        )
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise DeviceError(
            f"device={str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)."
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` an evaluation runs on: ``"auto"`` is the first CUDA GPU when there
    is one, else the CPU; any other name as torch reads it. ``DeviceError`` for a bad name or
    a CUDA device on a machine without one."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = _torch_device(device)
    _check_available(d, device)
    return d


def lightning_device(
    device: str | torch.device | None = "auto", devices: int | str | list[int] = 1
) -> tuple[str, int | str | list[int]]:
    """Lightning's ``(accelerator, devices)`` for a training on ``device``.

    Lightning's names pass through with ``devices`` (``"gpu"``, ``"cpu"``, ``"auto"``; None is
    ``"auto"``); ``"cuda"`` is ``("gpu", devices)``; an indexed device ``"cuda:N"`` (or a
    ``torch.device`` with an index) is ``("gpu", [N])`` when ``devices`` is left at 1.
    """
    if device is None:
        return "auto", devices
    if isinstance(device, str) and device in _LIGHTNING_ONLY:
        return device, devices
    d = _torch_device(device)
    if d.type != "cuda":
        return d.type, devices
    if d.index is not None and devices == 1:
        return "gpu", [d.index]
    return "gpu", devices
