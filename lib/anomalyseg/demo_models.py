"""Pretrained weights of the embedded demo's segmenters, shipped in ``anomalyseg/demo_weights/``.

Training ERFNet and the small EoMT well on 2 CPU cores takes longer than a demo should, so the
repository carries the weights that ``anomalyseg demo-weights`` trained on the embedded data set
(preset ``demo``, its fixed seed), as fp16 safetensors, with ``manifest.json``: for each model the
command that made it, the data (preset, seed, training-data version), the training settings the zoo
resolves (steps, batch, crops, lr...), the val mIoU of the shipped fp16 weights, the wall time, and
the sha256 and size of each file.

``zoo`` uses them through ``install()``: a notebook that asks for the embedded default with exactly
the manifest's settings, on exactly the manifest's data, gets the shipped weights copied into its
checkpoints folder (checked against the manifest's sha256 first) instead of a training run;
``train_from_scratch=True`` in the notebooks, other settings or other data train as before.
Making them (``pipeline.train_demo_weights``) trains through the zoo, so it lives above it.

The models trained on top of the shipped EoMT ship too: ``eomt_oe`` (notebook 04's Outlier
Exposure fine-tuning) and ``head_stats`` / ``head_hybrid`` (notebook 05's anomaly heads). Their
settings include a fingerprint of the base EoMT's weights (``evaluate.weights_fingerprint``), so
they stand in only on top of exactly the shipped EoMT; notebooks 04 and 05 ask
``install_trained()`` first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).parent / "demo_weights"
MANIFEST = "manifest.json"
SEGMENTERS = ("erfnet", "eomt")
# Trained on the shipped EoMT: notebook 04's Outlier Exposure and notebook 05's two anomaly heads.
ON_EOMT = ("eomt_oe", "head_stats", "head_hybrid")
MODELS = SEGMENTERS + ON_EOMT
# The files of each model under WEIGHTS_DIR/<model>/ (the EoMT ones are save_pretrained folders).
_FILES = {
    "erfnet": ("erfnet.safetensors",),
    "eomt": ("model/config.json", "model/model.safetensors"),
    "eomt_oe": ("model/config.json", "model/model.safetensors", "model/oe_config.json"),
    "head_stats": ("head.safetensors",),
    "head_hybrid": ("head.safetensors",),
}
# What the model's trainer returns, relative to its folder (finetune_oe: the exported folder).
_RESULT = {
    "erfnet": "erfnet.safetensors",
    "eomt": "model",
    "eomt_oe": "model",
    "head_stats": "head.safetensors",
    "head_hybrid": "head.safetensors",
}
_LOG = "metrics.csv"  # the training's CSV log, so notebooks can still plot its curve
_NOTEBOOK = {
    "erfnet": "01_erfnet_baseline",
    "eomt": "02_eomt_eval",
    "eomt_oe": "04_outlier_exposure",
    "head_stats": "05_anomaly_head",
    "head_hybrid": "05_anomaly_head",
}


class DemoWeightsError(RuntimeError):
    """The shipped weights do not match their manifest (a damaged or hand-edited file)."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict:
    """``manifest.json`` of ``folder`` (default ``WEIGHTS_DIR``; ``{}`` when there is none)."""
    path = Path(folder or WEIGHTS_DIR) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def verify(model: str, folder: str | Path | None = None) -> dict:
    """The manifest entry of ``model`` after checking each of its files' size and sha256.

    Raises ``DemoWeightsError`` naming the file that differs, and ``KeyError`` when the manifest
    has no entry for ``model``."""
    folder = Path(folder or WEIGHTS_DIR)
    entry = read_manifest(folder)[model]
    for rel, want in entry["files"].items():
        path = folder / model / rel
        if not path.is_file():
            raise DemoWeightsError(
                f"{path} is missing; {folder / MANIFEST} lists it. Restore it with "
                f"`git checkout -- {path}` or retrain with: {entry['command']}"
            )
        got = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        if got != want:
            raise DemoWeightsError(
                f"{path} does not match {folder / MANIFEST} (sha256 {got['sha256'][:12]}..., "
                f"{got['bytes']} bytes; the manifest says {want['sha256'][:12]}..., "
                f"{want['bytes']} bytes). Restore it with `git checkout -- {path}` or retrain "
                f"with: {entry['command']}"
            )
    return entry


def data_identity(cityscapes_root: str | Path) -> dict | None:
    """Preset, seed and training-data version of the embedded data set that holds
    ``cityscapes_root`` (its ``EMBEDDED_DATA.json`` marker), or None for real data: what decides
    the frames a model trains on. The benchmark frames may change (``GENERATOR_VERSION``) without
    invalidating weights trained on the same training frames (``TRAINING_DATA_VERSION``)."""
    from .data.synthetic import _read_marker

    marker = _read_marker(Path(cityscapes_root).parent)
    if marker is None:
        return None
    return {
        "preset": marker.get("preset", {}).get("name"),
        "seed": marker.get("seed"),
        # Markers of generator version 1 have no training_data_version: theirs was 1.
        "training_data_version": marker.get("training_data_version", 1),
    }


def install(
    model: str,
    settings: dict,
    cityscapes_root: str | Path,
    target: Path,
    folder: str | Path | None = None,
) -> bool:
    """Copy the shipped ``model`` into the zoo folder ``target`` when it was trained with exactly
    ``settings`` (the zoo's resolved settings, without ``data_root``) on the embedded data set at
    ``cityscapes_root``; fp16 weights are stored back as float32. Returns False when nothing
    matches (the zoo then trains), True once installed. Raises ``DemoWeightsError`` when the
    matching entry's files fail their checksum."""
    from .training.settings import weight_settings

    entry = read_manifest(folder).get(model)
    # Compared as weight settings: the manifest may name settings of an earlier version that do
    # not decide the weights (workers, logger, hook arguments that are gone).
    if entry is None or entry["data"] != data_identity(cityscapes_root):
        return False
    if weight_settings(entry["settings"]) != settings:
        return False
    verify(model, folder)
    _copy_in(Path(folder or WEIGHTS_DIR) / model, entry["files"], target)
    return True


def install_trained(
    model: str,
    target: str | Path,
    ws,
    base,
    settings: dict,
    progress: bool = True,
    folder: str | Path | None = None,
) -> Path | None:
    """The shipped ``model`` (``"eomt_oe"``, ``"head_stats"`` or ``"head_hybrid"``) copied into
    ``target``, the folder its trainer would write, when it was trained with exactly ``settings``
    (``demo_train_settings`` of the notebook's parameters, plus ``oe`` / ``coco_max_images`` for
    ``eomt_oe``) on top of ``base`` (the EoMT segmenter it trains on, compared by
    ``evaluate.weights_fingerprint``) on the workspace's embedded data. Returns what the trainer
    would return (``target/model`` or ``target/head.safetensors``), or None when nothing matches,
    the data are real, or ``target`` holds a training of ours (``last.ckpt``: resume that instead).
    Raises ``DemoWeightsError`` when the matching entry's files fail their checksum."""
    from .evaluate import weights_fingerprint

    if model not in ON_EOMT:
        raise ValueError(
            f"install_trained: {model!r} is not trained on the shipped EoMT; expected "
            f"one of {ON_EOMT}."
        )
    target = Path(target)
    if not ws.embedded or (target / "last.ckpt").is_file():
        return None
    wanted = _jsonable({**settings, "base_weights": weights_fingerprint(base)})
    if not install(model, wanted, ws.cityscapes, target, folder):
        return None
    if progress:
        entry = read_manifest(folder)[model]
        print(
            f"{model}: the shipped demo weights ({entry['steps']} steps on the shipped EoMT, "
            f"made by `{entry['command']}`) -> {target}; train_from_scratch=True trains it "
            "here instead"
        )
    return target / _RESULT[model]


def _jsonable(settings: dict) -> dict:
    return json.loads(json.dumps(settings, default=str))


def _copy_in(src: Path, files, target: Path) -> None:
    """``files`` of the shipped folder ``src`` into ``target``, fp16 tensors back to float32, with
    the
    training log where ``results.training_log`` reads it."""
    target.mkdir(parents=True, exist_ok=True)
    for rel in files:
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".safetensors"):
            _convert(src / rel, out, torch.float32)
        else:
            shutil.copyfile(src / rel, out)
    if (src / _LOG).is_file():
        (target / "logs" / "version_0").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / _LOG, target / "logs" / "version_0" / "metrics.csv")


def _convert(src: Path, dst: Path, dtype: torch.dtype) -> None:
    """``src``'s floating tensors as ``dtype`` into ``dst``, the file's metadata kept (an anomaly
    head's variant and width live there)."""
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tensors = load_file(src)
    save_file(
        {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
        dst,
        metadata=metadata,
    )


def oe_config(params: dict):
    """The ``OEConfig`` notebook 04 builds from its parameters: ``oe_recipe`` with every OEConfig
    setting the parameters give (not None) on top."""
    from dataclasses import fields

    from .training.oe_config import OEConfig

    names = {f.name for f in fields(OEConfig)}
    given = {k: v for k, v in params.items() if k in names and v is not None}
    return OEConfig.recipe(params["oe_recipe"], **given)


def demo_train_settings(model: str, params: dict) -> dict:
    """The settings that decide the weights, as the notebook that trains ``model`` builds them from
    its parameters: the zoo ``train=`` dict of notebook 01 (ERFNet) or 02 (EoMT), the
    ``finetune_oe`` keywords of notebook 04 (``eomt_oe``) or the ``train_anomaly_head`` keywords
    of notebook 05 (heads; the variant apart)."""
    if model not in _SETTINGS:
        raise ValueError(f"demo_train_settings: unknown model {model!r}; expected one of {MODELS}.")
    steps = "finetune_steps" if model == "eomt_oe" else "train_steps"
    out = {"max_steps": params[steps], **{k: params[k] for k in _SETTINGS[model]}}
    for k in ("crop_size", "scale_range"):  # lists in YAML, tuples in the notebooks
        if isinstance(out.get(k), list):
            out[k] = tuple(out[k])
    return out


# The parameters (besides the steps) each notebook hands its trainer, under the trainer's names.
_SETTINGS = {
    "erfnet": ("batch_size", "crop_size", "scale_range", "lr", "seed", "num_workers"),
    "eomt": ("batch_size", "crop_size", "scale_range", "lr", "seed", "num_workers"),
    "eomt_oe": ("batch_size", "crop_size", "lr", "seed"),
    "head_stats": ("batch_size", "crop_size", "ood_prob", "pos_weight", "lr", "seed"),
    "head_hybrid": ("batch_size", "crop_size", "ood_prob", "pos_weight", "lr", "seed"),
}


def _file_table(dst: Path, model: str) -> dict:
    return {
        rel: {"bytes": (dst / rel).stat().st_size, "sha256": sha256(dst / rel)}
        for rel in _FILES[model]
    }


def val_miou_by_step(log) -> list[list]:
    """The validations of a training log (``results.training_log``'s DataFrame, with ``step`` and
    ``val_miou`` columns): ``[[steps_done, val_miou], ...]`` in training order, ``steps_done``
    counting optimizer steps done (Lightning logs the validation after N steps at ``step`` N - 1),
    the mIoU a fraction rounded to 4 decimals. A list of pairs, not a mapping: the manifest's
    sorted JSON keys would put "1499" before "499"."""
    done = log.dropna(subset=["val_miou"])[["step", "val_miou"]].values
    return [[int(step) + 1, round(float(miou), 4)] for step, miou in done]


def _write_entry(out: str | Path, model: str, entry: dict) -> None:
    manifest = read_manifest(out)
    manifest[model] = entry
    path = Path(out) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
