"""Loading checkpoints safely and checking that they fit the model.

Checkpoints are untrusted files: they are read with safetensors or with
``torch.load(map_location="cpu", weights_only=True)``, never with a full unpickler. A checkpoint
that does not fit the model (another architecture, another class count) is refused as a whole
instead of being loaded half-way, because a half-loaded network still runs and silently produces
plausible-looking garbage.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

# Keys a model may lack in a checkpoint without harm: BatchNorm's step counter appeared in
# PyTorch 0.4, after the original ERFNet weights were saved, and BatchNorm fills it in itself.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)
# A LightningModule stores its network under an attribute; ours and most others call it ``model``.
_LIGHTNING_PREFIX = "model."
# Wrappers a training script may put around the state dict.
_WRAPPER_KEYS = ("state_dict", "model")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model."""


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict ``{name: tensor}`` from ``path`` without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``. A training checkpoint (a dict holding
    the weights under ``state_dict``, as Lightning writes, or under ``model``) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not exist (or is not a file). Expected a "
            ".pth/.pt/.ckpt file written by torch.save or a .safetensors file; check the path or "
            "download the weights first."
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a readable safetensors file: {e}"
            ) from e
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle
    # (protocol marker 0x80); anything else is another kind of file, not a refused checkpoint.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a file written by torch.save (it starts with "
            f"{head!r}; a torch.save file is a zip archive or a pickle). Expected ERFNet/EoMT "
            "weights (.pth/.pt/.ckpt) or a .safetensors file; a download that saved an HTML error "
            "page or a text file looks like this."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(
                f"checkpoint {str(path)!r} could not be read by torch.load "
                f"({str(e).splitlines()[0]}). Expected a file written by torch.save; it may be "
                "truncated or in another format."
            ) from e
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True): it contains "
            "pickled objects other than tensors and plain containers, and unpickling them could "
            "run arbitrary code. Re-save only the weights (torch.save(model.state_dict(), ...)) "
            f"or convert it to safetensors. Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be read by torch.load ({type(e).__name__}: {e}). "
            "Expected a file written by torch.save; it may be truncated or in another format."
        ) from e
    return _unwrap(obj, path)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict. Expected a "
            "mapping {parameter name: tensor}, possibly wrapped under 'state_dict' or 'model'."
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a state dict: {len(bad)} entries are not name -> "
            f"tensor pairs (e.g. {bad[:3]}). Expected a mapping {{parameter name: tensor}}, "
            "possibly wrapped under 'state_dict' or 'model'."
        )
    return dict(obj)


@dataclass
class LoadReport:
    """What ``fit_state_dict`` did: keys are the model's names (after prefix stripping)."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, absent from the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, absent from the model
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )  # (key, ckpt, model)
    dropped: list[str] = field(default_factory=list)  # checkpoint keys that key_map mapped to None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.dropped:
            lines.append(f"dropped by key_map: {len(self.dropped)} ({_few(self.dropped)})")
        if self.missing:
            lines.append(f"missing from checkpoint: {len(self.missing)} ({_few(self.missing)})")
        if self.unexpected:
            lines.append(f"not in model: {len(self.unexpected)} ({_few(self.unexpected)})")
        if self.shape_mismatch:
            shapes = [
                f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.shape_mismatch
            ]
            lines.append(f"shape mismatch: {len(shapes)} ({_few(shapes)})")
        return "; ".join(lines)


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def fit_state_dict(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    strip_prefixes: tuple[str, ...] = ("module.",),
    key_map: Callable[[str], str | None] | None = None,
    strict: bool = True,
    source: str | Path | None = None,
) -> LoadReport:
    """Load ``state`` into ``model`` after matching names, and report what matched.

    Each checkpoint key loses any of ``strip_prefixes`` at its front (``module.`` from
    DataParallel); a Lightning ``model.`` prefix is removed where that makes the key match the
    model; then ``key_map`` may rename it (or drop it by returning ``None``). With ``strict``, a
    checkpoint with missing, unexpected or mis-shaped tensors is refused with a
    ``CheckpointError`` and the model is left untouched; without it, the matching tensors are
    loaded and the rest is only reported. ``source`` (a path) names the file in messages.
    """
    expected = model.state_dict()
    report = LoadReport()
    fitted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in strip_prefixes:
                if prefix and name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        if (
            name not in expected
            and name.startswith(_LIGHTNING_PREFIX)
            and name[len(_LIGHTNING_PREFIX) :] in expected
        ):
            name = name[len(_LIGHTNING_PREFIX) :]
        if key_map is not None:
            mapped = key_map(name)
            if mapped is None:
                report.dropped.append(key)
                continue
            name = mapped
        if name not in expected:
            report.unexpected.append(key)
        elif tuple(tensor.shape) != tuple(expected[name].shape):
            report.shape_mismatch.append((name, tuple(tensor.shape), tuple(expected[name].shape)))
        else:
            fitted[name] = tensor
    report.loaded = sorted(fitted)
    report.missing = [
        k
        for k in expected
        if k not in fitted
        and not k.endswith(_OPTIONAL_SUFFIXES)
        and not any(k == m for m, _, _ in report.shape_mismatch)
    ]
    if strict and not report.ok:
        where = f"checkpoint {str(source)!r}" if source is not None else "the checkpoint"
        raise CheckpointError(
            f"{where} does not fit {type(model).__name__} and was not loaded: {report}. This "
            "usually means it was trained for another architecture or another number of classes "
            "(compare the shapes above), or that its key names need a key_map / strip_prefixes. "
            "Pass strict=False to load only the matching tensors."
        )
    model.load_state_dict(fitted, strict=False)
    return report
