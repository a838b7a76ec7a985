"""The models a run uses: trained or loaded once, then reused by every notebook.

Notebooks 02-05 ask this module for their segmenters, so they share one code path:

- ``eomt_segmenter(ws)``: the embedded default is a small EoMT (``small_eomt_config``) trained
  with ``train_eomt`` on ``ws.cityscapes`` into ``<ws.checkpoints>/eomt/``. The first call trains
  it (resuming ``last.ckpt`` if a run was interrupted); every later call finds the exported
  ``model/`` folder and only loads it. ``checkpoint=`` loads anything ``load_eomt`` reads instead:
  the hub id ``tue-mps/cityscapes_semantic_eomt_large_1024``, a ``save_pretrained`` folder or an
  upstream ``.ckpt``.
- ``erfnet_segmenter(ws)``: likewise ``<ws.checkpoints>/erfnet/erfnet.safetensors``, the file
  notebook 01 trains with ``train_erfnet``; ``checkpoint=`` loads e.g. the course's
  ``erfnet_pretrained.pth``.

The settings a default model was trained with are kept beside it (``zoo_train.json``, every
default filled in, without those that do not change the weights such as ``num_workers``). A
later call with ``train=None`` reuses the model silently; one that asks for other settings reuses
it with a warning (delete the folder to retrain), so a notebook never silently spends minutes
retraining, and an interrupted run is only continued with its own settings.

Each segmenter's ``cache_tag`` also carries a fingerprint of its weight files (size and
modification time), so an ``OutputCache`` never serves outputs of an earlier model that was
retrained into the same folder.
"""

from __future__ import annotations

import inspect
import json
import re
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from .models.checkpoints import CheckpointError
from .workspace import Workspace

EOMT_DIR = "eomt"
ERFNET_DIR = "erfnet"
SETTINGS_FILE = "zoo_train.json"

# The embedded default: a small EoMT that learns the generated road scenes on a 2-core CPU in
# minutes: on the demo data (300 frames at 256x512) 400 steps at batch 4 take 2 minutes on two
# idle cores and reach val mIoU 0.199 (600 steps: 0.205). lr 1e-3: upstream's 1e-4 is meant for
# a pre-trained DINOv2 backbone, this one starts from scratch. The demo preset uses these.
DEFAULT_EOMT_TRAIN = dict(max_steps=400, batch_size=4, lr=1e-3, config={})
# What train_erfnet is called with when train= leaves a setting out (notebook 01 passes its own).
DEFAULT_ERFNET_TRAIN: dict = {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_checkpoint(ws: Workspace, model: str) -> Path:
    """Where the embedded default of ``model`` (``"eomt"`` or ``"erfnet"``) lives once trained:
    ``<checkpoints>/eomt/model`` (a ``save_pretrained`` folder) or
    ``<checkpoints>/erfnet/erfnet.safetensors``."""
    if model == "eomt":
        return Path(ws.checkpoints) / EOMT_DIR / "model"
    if model == "erfnet":
        return Path(ws.checkpoints) / ERFNET_DIR / "erfnet.safetensors"
    raise ValueError(f"default_checkpoint: unknown model {model!r}; expected 'eomt' or 'erfnet'.")


# ----------------------------------------------------------------------------- EoMT
def eomt_segmenter(
    ws: Workspace,
    checkpoint: str | Path | None = None,
    train: dict | None = None,
    window_size: int | None = None,
    device: str | torch.device = "auto",
    name: str = "eomt",
    progress: bool = True,
    train_from_scratch: bool = False,
):
    """An ``EomtSegmenter`` ready for evaluation.

    ``checkpoint=None`` is the embedded default: a ``small_eomt_config`` EoMT trained on
    ``ws.cityscapes`` into ``<ws.checkpoints>/eomt/`` unless its exported ``model/`` folder
    exists (an interrupted training resumes). ``train`` overrides ``DEFAULT_EOMT_TRAIN``: any
    keyword of ``train_eomt`` (``max_steps``, ``batch_size``, ``lr``, ``num_workers``...),
    ``config`` (a dict of ``small_eomt_config`` settings) and ``crop_size`` (the square
    training crop, which for transformers' EoMT is also its ``image_size`` and window size).

    Otherwise ``checkpoint`` is what ``load_eomt`` reads: a hub id, a ``save_pretrained``
    folder or an upstream tue-mps/eomt ``.ckpt`` / ``.bin`` file. ``window_size`` defaults to
    the model's ``image_size``; ``name`` labels its rows in the results store.

    On the embedded data, the shipped demo weights (``demo_models``) stand in for the training
    when they were trained with exactly these settings on exactly this data set, unless
    ``train_from_scratch``.
    """
    from .models.eomt import load_eomt

    device = resolve_device(device)
    if checkpoint is None:
        source = _trained_eomt(ws, train, progress, train_from_scratch)
    else:
        if train:
            raise ValueError(
                "eomt_segmenter: train= applies to the embedded default only (checkpoint=None); a given checkpoint "
                f"({checkpoint!r}) is loaded as it is. Fine-tune it with anomalyseg.training.eomt.train_eomt instead."
            )
        source = _local_or_hub(checkpoint, "EoMT", "a save_pretrained folder (config.json + model.safetensors), an "
                               "upstream tue-mps/eomt .ckpt/.bin file or a hub id like tue-mps/cityscapes_semantic_eomt_large_1024")
    segmenter = load_eomt(source, device=device, name=name, window_size=window_size)
    segmenter.cache_tag = f"{segmenter.cache_tag}|{_fingerprint(source)}"
    return segmenter


def eomt_train_settings(train: dict | None = None) -> dict:
    """``DEFAULT_EOMT_TRAIN`` updated with ``train``, checked against ``train_eomt``'s keywords;
    ``crop_size`` becomes ``config["image_size"]``."""
    from .training.eomt import train_eomt

    settings = {**DEFAULT_EOMT_TRAIN, **(train or {})}
    config = dict(settings.pop("config", None) or {})
    crop = settings.pop("crop_size", None)
    if crop is not None:
        size = crop if isinstance(crop, int) else tuple(crop)
        if not isinstance(size, int) and (len(size) != 2 or size[0] != size[1]):
            raise ValueError(f"eomt_segmenter train crop_size={crop!r}: EoMT trains on square crops; give one side, e.g. 128.")
        config["image_size"] = int(size if isinstance(size, int) else size[0])
    allowed = set(inspect.signature(train_eomt).parameters) - {"data_root", "out_dir", "model_or_config", "resume", "progress"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(
            f"eomt_segmenter train= has unknown settings {unknown}; expected keywords of train_eomt "
            f"({', '.join(sorted(allowed))}), 'config' (small_eomt_config settings) or 'crop_size'."
        )
    return {**settings, "config": config}


def _trained_eomt(ws: Workspace, train: dict | None, progress: bool, from_scratch: bool = False) -> Path:
    from .models.eomt import small_eomt_config
    from .training.eomt import train_eomt

    settings = eomt_train_settings(train)
    resolved = {**_resolved(settings, train_eomt, small_eomt_config), "data_root": _data_root(ws)}
    folder = Path(ws.checkpoints) / EOMT_DIR
    exported = folder / "model"
    if (exported / "config.json").is_file():
        if train is not None:
            _warn_if_other_settings(folder, resolved, "EoMT")
        return exported
    if not from_scratch and _install_demo_weights("eomt", ws, folder, resolved, progress):
        return exported
    stored = _read_settings(folder)
    resume = stored is None or stored == resolved  # never continue a run of other settings
    folder.mkdir(parents=True, exist_ok=True)
    _write_settings(folder, resolved)
    kwargs = {k: v for k, v in settings.items() if k != "config"}
    started = time.time()
    out = train_eomt(ws.cityscapes, folder, small_eomt_config(**settings["config"]), resume=resume, progress=progress, **kwargs)
    if progress:
        print(f"trained the embedded EoMT in {time.time() - started:.0f} s -> {out}")
    return out


# ----------------------------------------------------------------------------- ERFNet
def erfnet_segmenter(
    ws: Workspace,
    checkpoint: str | Path | None = None,
    train: dict | None = None,
    input_size: tuple[int, int] | None = (512, 1024),
    use_void: bool = False,
    device: str | torch.device = "auto",
    progress: bool = True,
    train_from_scratch: bool = False,
):
    """An ``ErfnetSegmenter`` ready for evaluation.

    ``checkpoint=None`` is the embedded default ``<ws.checkpoints>/erfnet/erfnet.safetensors``
    (what notebook 01 trains), trained now with ``train_erfnet(ws.cityscapes, ...,
    input_size=input_size, **train)`` when it does not exist yet. Otherwise ``checkpoint`` is an
    ERFNet weight file (the course's ``erfnet_pretrained.pth``, a training ``.ckpt`` or an
    exported ``.safetensors``). Frames are scored at ``input_size`` (H and W divisible by 8);
    ``None`` takes the size the embedded default was trained and evaluated at (its stored
    settings), else the course's 512x1024. Shipped demo weights stand in for the training as in
    ``eomt_segmenter``, unless ``train_from_scratch``.
    """
    from .models.erfnet import ErfnetSegmenter, load_erfnet

    device = resolve_device(device)
    if input_size is None:
        stored = _read_settings(Path(ws.checkpoints) / ERFNET_DIR) if checkpoint is None else None
        input_size = tuple(stored["input_size"]) if stored and stored.get("input_size") else (512, 1024)
    if checkpoint is None:
        path = _trained_erfnet(ws, train, input_size, progress, train_from_scratch)
    else:
        if train:
            raise ValueError(
                "erfnet_segmenter: train= applies to the embedded default only (checkpoint=None); a given checkpoint "
                f"({checkpoint!r}) is loaded as it is. Fine-tune it with train_erfnet(init_weights=...) instead."
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"ERFNet checkpoint {str(checkpoint)!r} does not exist (or is not a file). Expected an ERFNet weight "
                "file: the course's erfnet_pretrained.pth, a train_erfnet .ckpt or an exported .safetensors; or "
                "checkpoint=None for the model notebook 01 trains."
            )
    segmenter = ErfnetSegmenter(load_erfnet(path), checkpoint=str(path), input_size=input_size, use_void=use_void,
                                device=device)  # fmt: skip
    segmenter.cache_tag = f"{getattr(segmenter, 'cache_tag', '')}|{_fingerprint(path)}"
    return segmenter


def _trained_erfnet(ws: Workspace, train: dict | None, input_size, progress: bool, from_scratch: bool = False) -> Path:
    from .training.erfnet import train_erfnet

    settings = {**DEFAULT_ERFNET_TRAIN, "input_size": tuple(input_size), **(train or {})}
    allowed = set(inspect.signature(train_erfnet).parameters) - {"data_root", "out_dir", "resume", "progress"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"erfnet_segmenter train= has unknown settings {unknown}; expected keywords of train_erfnet "
                         f"({', '.join(sorted(allowed))}).")  # fmt: skip
    resolved = {**_resolved(settings, train_erfnet), "data_root": _data_root(ws)}
    folder = Path(ws.checkpoints) / ERFNET_DIR
    path = folder / "erfnet.safetensors"
    if path.is_file():
        if train is not None:
            _warn_if_other_settings(folder, resolved, "ERFNet")
        return path
    if not from_scratch and _install_demo_weights("erfnet", ws, folder, resolved, progress):
        return path
    stored = _read_settings(folder)
    resume = stored is None or stored == resolved
    folder.mkdir(parents=True, exist_ok=True)
    _write_settings(folder, resolved)
    return train_erfnet(ws.cityscapes, folder, resume=resume, progress=progress, **settings)


# ----------------------------------------------------------------------------- helpers
def _install_demo_weights(model: str, ws: Workspace, folder: Path, resolved: dict, progress: bool) -> bool:
    """The shipped demo weights of ``model`` into ``folder`` when they match ``resolved`` and the data."""
    from . import demo_models

    if not ws.embedded or _read_settings(folder) is not None:  # real data, or a training of ours underway
        return False
    if not demo_models.install(model, {k: v for k, v in resolved.items() if k != "data_root"}, ws.cityscapes, folder):
        return False
    _write_settings(folder, resolved)
    if progress:
        entry = demo_models.read_manifest()[model]
        print(f"{model}: the shipped demo weights ({entry['steps']} steps, val mIoU {100 * entry['val_miou']:.2f}%, "
              f"made by `{entry['command']}`) -> {folder}; train_from_scratch=True trains it here instead")
    return True


def _local_or_hub(checkpoint: str | Path, what: str, expected: str) -> str | Path:
    """A path that exists, or a string shaped like a hub id (``org/name``); anything else that
    names a local file or folder which is not there is refused before the hub is asked."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path
    text = str(checkpoint)
    looks_local = (path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
                   or path.suffix in (".ckpt", ".bin", ".pt", ".pth", ".safetensors"))  # fmt: skip
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise FileNotFoundError(f"{what} checkpoint {text!r} does not exist. Expected {expected}.")
    return text


def _fingerprint(source) -> str:
    """Size and modification time of the weight files of ``source`` (a hub id: the id itself)."""
    path = Path(source)
    if not path.exists():
        return str(source)
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json")) if path.is_dir() else [path]
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


# Settings that do not change the trained weights: never a reason to warn or to refuse a resume.
_RUN_ONLY = {"resume", "num_workers", "progress", "val_every_n_steps", "limit_val_batches", "checkpoint_every_n_steps",
             "callbacks", "accelerator", "devices", "strategy"}


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def _defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty}


def _resolved(settings: dict, trainer, config_fn=None) -> dict:
    """The settings that decide the weights, with every default filled in (so that ``{}`` and the
    defaults written out compare equal), as JSON values."""
    full = {k: v for k, v in {**_defaults(trainer), **settings}.items() if k not in _RUN_ONLY and k != "config"}
    if config_fn is not None:
        full["config"] = {**_defaults(config_fn), **settings.get("config", {})}
    return _jsonable(full)


def _data_root(ws: Workspace) -> str:
    """The training data of a zoo model belong to its settings: a model trained on the embedded
    scenes is not reused silently for real Cityscapes written to the same output folder."""
    return str(Path(ws.cityscapes).expanduser().resolve())


def _read_settings(folder: Path) -> dict | None:
    path = folder / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_settings(folder: Path, settings: dict) -> None:
    (folder / SETTINGS_FILE).write_text(json.dumps(_jsonable(settings), indent=1, sort_keys=True))


def _warn_if_other_settings(folder: Path, wanted: dict, what: str) -> None:
    stored = _read_settings(folder)
    if stored is not None and stored != wanted:
        diff = {k: (stored.get(k), wanted.get(k)) for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)}
        warnings.warn(
            f"Reusing the {what} already trained in {folder} with other settings ({', '.join(f'{k}: trained {a!r}, asked {b!r}' for k, (a, b) in diff.items())}). "
            f"Delete {folder} (or use another output_dir) to train it again with the new settings.",
            stacklevel=3,
        )


def seconds_per_frame(segmenter, dataset, frames: int = 24, warmup: int = 2) -> float:
    """Median wall time of one forward pass (``segmenter.raw_outputs``) over the first ``frames``
    items of ``dataset`` after ``warmup`` untimed ones: what an evaluation pass costs per frame."""
    n = min(len(dataset), warmup + frames)
    if n <= warmup:
        raise ValueError(f"seconds_per_frame needs more than {warmup} frames, the data set has {len(dataset)}.")
    times = []
    for i in range(n):
        image = dataset[i]["image"]
        start = time.perf_counter()
        segmenter.raw_outputs(image)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(sorted(times)[len(times) // 2])
