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

import json
import re
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .devices import resolve_device  # the one device vocabulary, importable from here too
from .workspace import Workspace

EOMT_DIR = "eomt"
ERFNET_DIR = "erfnet"
SETTINGS_FILE = "zoo_train.json"

# The embedded default: a small EoMT that learns the generated road scenes on a 2-core CPU in
# minutes (on the demo data, 300 frames at 256x512, 400 steps at batch 4 take 2 minutes on two
# idle cores). lr 2e-3 and crops at the frames' own scale (scale_range (1, 1), as ERFNet's
# recipe) instead of lr 1e-3 with 0.5-2x jitter: +4.0 val mIoU points at 800 steps
# (benchmarks/diagnose_eomt.py, one factor at a time, chosen on Cityscapes val, never on an
# anomaly benchmark). Upstream's lr 1e-4 is meant for a pre-trained DINOv2 backbone.
DEFAULT_EOMT_TRAIN = {
    "max_steps": 400,
    "batch_size": 4,
    "lr": 2e-3,
    "scale_range": (1.0, 1.0),
    "config": {},
}


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
    field of ``TrainSettings`` or ``EomtTrainConfig`` (``max_steps``, ``batch_size``, ``lr``,
    ``num_workers``, ``trainable``...), ``config`` (a dict of ``small_eomt_config`` settings) and
    ``crop_size`` (the square training crop, which for transformers' EoMT is also its
    ``image_size`` and window size).

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
                "eomt_segmenter: train= applies to the embedded default only (checkpoint=None); a "
                f"given checkpoint ({checkpoint!r}) is loaded as it is. Fine-tune it with "
                "anomalyseg.training.eomt.train_eomt instead."
            )
        source = _local_or_hub(
            checkpoint,
            "EoMT",
            "a save_pretrained folder (config.json + model.safetensors), an upstream tue-mps/eomt "
            ".ckpt/.bin file or a hub id like tue-mps/cityscapes_semantic_eomt_large_1024",
        )
    segmenter = load_eomt(source, device=device, name=name, window_size=window_size)
    segmenter.cache_tag = f"{segmenter.cache_tag}|{_fingerprint(source)}"
    return segmenter


def eomt_train_settings(train: dict | None = None) -> dict:
    """``DEFAULT_EOMT_TRAIN`` updated with ``train``, checked against the fields of
    ``TrainSettings`` and ``EomtTrainConfig``; ``crop_size`` becomes ``config["image_size"]``."""
    from .training.settings import EomtTrainConfig

    settings = {**DEFAULT_EOMT_TRAIN, **(train or {})}
    config = dict(settings.pop("config", None) or {})
    crop = settings.pop("crop_size", None)
    if crop is not None:
        size = crop if isinstance(crop, int) else tuple(crop)
        if not isinstance(size, int) and (len(size) != 2 or size[0] != size[1]):
            raise ValueError(
                f"eomt_segmenter train crop_size={crop!r}: EoMT trains on square crops; give one "
                "side, e.g. 128."
            )
        config["image_size"] = int(size if isinstance(size, int) else size[0])
    _zoo_records(settings, EomtTrainConfig, "eomt_segmenter train=")  # refuses unknown names
    return {**settings, "config": config}


def eomt_records(train: dict | None = None):
    """``(small_eomt_config settings, TrainSettings, EomtTrainConfig, resolved)`` of the embedded
    EoMT for ``train=``: ``resolved`` is what decides its weights, every default filled in, as
    stored in ``zoo_train.json`` (without ``data_root``) and compared with the demo manifest."""
    from .training.settings import RECIPE_DEFAULTS, EomtTrainConfig

    settings = eomt_train_settings(train)
    config = settings.pop("config")
    shared, own = _zoo_records(settings, EomtTrainConfig, "eomt_segmenter train=")
    resolved = {
        **_resolved(shared, own, RECIPE_DEFAULTS["eomt"]),
        "config": _jsonable(_config_defaults(config)),
    }
    return config, shared, own, resolved


def _trained_eomt(
    ws: Workspace, train: dict | None, progress: bool, from_scratch: bool = False
) -> Path:
    from .models.eomt import small_eomt_config
    from .training.eomt import train_eomt

    config, shared, own, resolved = eomt_records(train)
    resolved["data_root"] = _data_root(ws)
    folder = Path(ws.checkpoints) / EOMT_DIR
    exported = folder / "model"
    resume = _weights_or_resume(
        "eomt", ws, folder, exported / "config.json", train, resolved, progress, from_scratch
    )
    if resume is None:
        return exported
    started = time.time()
    shared = replace(shared, resume=resume, progress=progress)
    out = train_eomt(small_eomt_config(**config), ws.cityscapes, folder, shared, own)
    if progress:
        print(f"trained the embedded EoMT in {time.time() - started:.0f} s -> {out}")
    return out


def _config_defaults(config: dict) -> dict:
    """``small_eomt_config``'s settings with every default filled in."""
    import inspect

    from .models.eomt import small_eomt_config

    params = inspect.signature(small_eomt_config).parameters
    return {
        **{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty},
        **config,
    }


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
    (what notebook 01 trains), trained now with ``train_erfnet`` when it does not exist yet:
    ``train`` holds fields of ``TrainSettings`` and ``ErfnetConfig`` (``input_size`` included).
    Otherwise ``checkpoint`` is an ERFNet weight file (the course's ``erfnet_pretrained.pth``, a
    training ``.ckpt`` or an exported ``.safetensors``). Frames are scored at ``input_size`` (H and
    W divisible by 8);
    ``None`` takes the size the embedded default was trained and evaluated at (its stored
    settings), else the course's 512x1024. Shipped demo weights stand in for the training as in
    ``eomt_segmenter``, unless ``train_from_scratch``.
    """
    from .models.erfnet import ErfnetSegmenter, load_erfnet

    device = resolve_device(device)
    if input_size is None:
        stored = _read_settings(Path(ws.checkpoints) / ERFNET_DIR) if checkpoint is None else None
        input_size = (
            tuple(stored["input_size"]) if stored and stored.get("input_size") else (512, 1024)
        )
    if checkpoint is None:
        path = _trained_erfnet(ws, train, input_size, progress, train_from_scratch)
    else:
        if train:
            raise ValueError(
                "erfnet_segmenter: train= applies to the embedded default only (checkpoint=None); "
                f"a given checkpoint ({checkpoint!r}) is loaded as it is. Fine-tune it with "
                "train_erfnet(..., ErfnetConfig(init_weights=...)) instead."
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"ERFNet checkpoint {str(checkpoint)!r} does not exist (or is not a file). "
                "Expected an ERFNet weight file: the course's erfnet_pretrained.pth, a "
                "train_erfnet .ckpt or an exported .safetensors; or checkpoint=None for the model "
                "notebook 01 trains."
            )
    segmenter = ErfnetSegmenter(
        load_erfnet(path),
        checkpoint=str(path),
        input_size=input_size,
        use_void=use_void,
        device=device,
    )
    segmenter.cache_tag = f"{getattr(segmenter, 'cache_tag', '')}|{_fingerprint(path)}"
    return segmenter


def erfnet_records(train: dict | None, input_size):
    """``(TrainSettings, ErfnetConfig, resolved)`` of the embedded ERFNet for ``train=`` at
    ``input_size``, as ``eomt_records``."""
    from .training.settings import RECIPE_DEFAULTS, ErfnetConfig

    settings = {"input_size": tuple(input_size), **(train or {})}
    shared, own = _zoo_records(settings, ErfnetConfig, "erfnet_segmenter train=")
    return shared, own, _resolved(shared, own, RECIPE_DEFAULTS["erfnet"])


def _trained_erfnet(
    ws: Workspace, train: dict | None, input_size, progress: bool, from_scratch: bool = False
) -> Path:
    from .training.erfnet import train_erfnet

    shared, own, resolved = erfnet_records(train, input_size)
    resolved["data_root"] = _data_root(ws)
    folder = Path(ws.checkpoints) / ERFNET_DIR
    path = folder / "erfnet.safetensors"
    resume = _weights_or_resume("erfnet", ws, folder, path, train, resolved, progress, from_scratch)
    if resume is None:
        return path
    return train_erfnet(
        ws.cityscapes, folder, replace(shared, resume=resume, progress=progress), own
    )


# ----------------------------------------------------------------------------- helpers
def _weights_or_resume(
    model: str,
    ws: Workspace,
    folder: Path,
    weights: Path,
    train: dict | None,
    resolved: dict,
    progress: bool,
    from_scratch: bool,
) -> bool | None:
    """The one rule of the embedded ``model`` ("eomt" or "erfnet") in ``folder``: None when its
    exported ``weights`` are there (a warning when ``train=`` asked for other settings than they
    were trained with) or the shipped demo weights were installed; else the training's
    ``resume`` (continue the folder's run only when it has the same settings, or none stored),
    after ``resolved`` is written to the folder."""
    if weights.is_file():
        if train is not None:
            _warn_if_other_settings(folder, resolved, {"eomt": "EoMT", "erfnet": "ERFNet"}[model])
        return None
    if not from_scratch and _install_demo_weights(model, ws, folder, resolved, progress):
        return None
    stored = _read_settings(folder)
    resume = stored is None or stored == resolved  # never continue a run of other settings
    folder.mkdir(parents=True, exist_ok=True)
    _write_settings(folder, resolved)
    return resume


def _install_demo_weights(
    model: str, ws: Workspace, folder: Path, resolved: dict, progress: bool
) -> bool:
    """The shipped demo weights of ``model`` into ``folder`` when they match ``resolved`` and
    the data."""
    from . import demo_models

    if (
        not ws.embedded or _read_settings(folder) is not None
    ):  # real data, or a training of ours underway
        return False
    if not demo_models.install(
        model, {k: v for k, v in resolved.items() if k != "data_root"}, ws.cityscapes, folder
    ):
        return False
    _write_settings(folder, resolved)
    if progress:
        entry = demo_models.read_manifest()[model]
        print(
            f"{model}: the shipped demo weights ({entry['steps']} steps, val mIoU "
            f"{100 * entry['val_miou']:.2f}%, made by `{entry['command']}`) -> {folder}; "
            "train_from_scratch=True trains it here instead"
        )
    return True


def _local_or_hub(checkpoint: str | Path, what: str, expected: str) -> str | Path:
    """A path that exists, or a string shaped like a hub id (``org/name``); anything else that
    names a local file or folder which is not there is refused before the hub is asked."""
    path = Path(checkpoint).expanduser()
    if path.exists():
        return path
    text = str(checkpoint)
    looks_local = (
        path.is_absolute()
        or text.startswith((".", "~"))
        or text.count("/") != 1
        or path.suffix in (".ckpt", ".bin", ".pt", ".pth", ".safetensors")
    )
    if looks_local or not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise FileNotFoundError(f"{what} checkpoint {text!r} does not exist. Expected {expected}.")
    return text


def _fingerprint(source) -> str:
    """Size and modification time of the weight files of ``source`` (a hub id: the id itself)."""
    path = Path(source)
    if not path.exists():
        return str(source)
    files = (
        sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        if path.is_dir()
        else [path]
    )
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def _zoo_records(settings: dict, config_cls: type, what: str):
    """``records_from_flat`` of a ``train=`` dict, which may not set what the zoo decides."""
    from .training.settings import records_from_flat

    reserved = sorted({"resume", "progress"} & set(settings))
    if reserved:
        raise ValueError(
            f"{what} cannot set {reserved}: the zoo decides them (delete the folder to retrain)."
        )
    return records_from_flat(settings, config_cls, what)


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def _resolved(shared, own, recipe: dict) -> dict:
    """The settings that decide the weights, with every default filled in (so that ``{}`` and the
    defaults written out compare equal), as JSON values: the shared record's
    (``TrainSettings.weight_settings``) and the method's."""
    return _jsonable({**shared.with_defaults(recipe).weight_settings(), **asdict(own)})


def _data_root(ws: Workspace) -> str:
    """The training data of a zoo model belong to its settings: a model trained on the embedded
    scenes is not reused silently for real Cityscapes written to the same output folder."""
    return str(Path(ws.cityscapes).expanduser().resolve())


def _read_settings(folder: Path) -> dict | None:
    """The stored settings of a zoo folder, as ``_resolved`` gives them: a file of an earlier
    version also held settings that do not decide the weights (workers, logger) and hook
    arguments that are gone (``training.settings.weight_settings`` drops both)."""
    from .training.settings import weight_settings

    path = folder / SETTINGS_FILE
    return weight_settings(json.loads(path.read_text())) if path.is_file() else None


def _write_settings(folder: Path, settings: dict) -> None:
    (folder / SETTINGS_FILE).write_text(json.dumps(_jsonable(settings), indent=1, sort_keys=True))


def _warn_if_other_settings(folder: Path, wanted: dict, what: str) -> None:
    stored = _read_settings(folder)
    if stored is not None and stored != wanted:
        diff = {
            k: (stored.get(k), wanted.get(k))
            for k in sorted(set(stored) | set(wanted))
            if stored.get(k) != wanted.get(k)
        }
        warnings.warn(
            f"Reusing the {what} already trained in {folder} with other settings "
            f"({', '.join(f'{k}: trained {a!r}, asked {b!r}' for k, (a, b) in diff.items())}). "
            f"Delete {folder} (or use another output_dir) to train it again with the new settings.",
            stacklevel=3,
        )


def seconds_per_frame(segmenter, dataset, frames: int = 24, warmup: int = 2) -> float:
    """Median wall time of one forward pass (``segmenter.raw_outputs``) over the first ``frames``
    items of ``dataset`` after ``warmup`` untimed ones: what an evaluation pass costs per frame."""
    n = min(len(dataset), warmup + frames)
    if n <= warmup:
        raise ValueError(
            f"seconds_per_frame needs more than {warmup} frames, the data set has {len(dataset)}."
        )
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
