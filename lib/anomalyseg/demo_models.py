"""Pretrained weights of the embedded demo's segmenters, shipped in ``anomalyseg/demo_weights/``.

Training ERFNet and the small EoMT well on 2 CPU cores takes longer than a demo should, so the
repository carries the weights that ``anomalyseg demo-weights`` trained on the embedded data set
(preset ``demo``, its fixed seed), as fp16 safetensors, with ``manifest.json``: for each model the
command that made it, the data (preset, seed, generator version), the training settings the zoo
resolves (steps, batch, crops, lr...), the val mIoU of the shipped fp16 weights, the wall time, and
the sha256 and size of each file.

``zoo`` uses them through ``install()``: a notebook that asks for the embedded default with exactly
the manifest's settings, on exactly the manifest's data, gets the shipped weights copied into its
checkpoints folder (checked against the manifest's sha256 first) instead of a training run;
``train_from_scratch=True`` in the notebooks, other settings or other data train as before.
Making them (``pipeline.train_demo_weights``) trains through the zoo, so it lives above it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

WEIGHTS_DIR = Path(__file__).parent / "demo_weights"
MANIFEST = "manifest.json"
MODELS = ("erfnet", "eomt")
# The files of each model under WEIGHTS_DIR/<model>/ (the EoMT one is a save_pretrained folder).
_FILES = {"erfnet": ("erfnet.safetensors",), "eomt": ("model/config.json", "model/model.safetensors")}
_LOG = "metrics.csv"  # the training's CSV log, so notebooks can still plot its curve


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
            raise DemoWeightsError(f"{path} is missing; {folder / MANIFEST} lists it. Restore it with "
                                   f"`git checkout -- {path}` or retrain with: {entry['command']}")
        got = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        if got != want:
            raise DemoWeightsError(
                f"{path} does not match {folder / MANIFEST} (sha256 {got['sha256'][:12]}..., {got['bytes']} bytes; "
                f"the manifest says {want['sha256'][:12]}..., {want['bytes']} bytes). Restore it with "
                f"`git checkout -- {path}` or retrain with: {entry['command']}"
            )
    return entry


def data_identity(cityscapes_root: str | Path) -> dict | None:
    """Preset, seed and generator version of the embedded data set that holds ``cityscapes_root``
    (its ``EMBEDDED_DATA.json`` marker), or None for real data."""
    from .data.synthetic import _read_marker

    marker = _read_marker(Path(cityscapes_root).parent)
    if marker is None:
        return None
    return {"preset": marker.get("preset", {}).get("name"), "seed": marker.get("seed"), "version": marker.get("version")}


def install(model: str, settings: dict, cityscapes_root: str | Path, target: Path, folder: str | Path | None = None) -> bool:
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


def _copy_in(src: Path, files, target: Path) -> None:
    """``files`` of the shipped folder ``src`` into ``target``, fp16 tensors back to float32, with the
    training log where ``results.training_log`` reads it."""
    target.mkdir(parents=True, exist_ok=True)
    for rel in files:
        out = target / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".safetensors"):
            save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(src / rel).items()}, out)
        else:
            shutil.copyfile(src / rel, out)
    if (src / _LOG).is_file():
        (target / "logs" / "version_0").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / _LOG, target / "logs" / "version_0" / "metrics.csv")


def _fp16(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(src).items()}, dst)


def demo_train_settings(model: str, params: dict) -> dict:
    """The zoo ``train=`` dict that notebook 01 (ERFNet) or 02 (EoMT) builds from its parameters."""
    if model == "erfnet":
        return dict(max_steps=params["train_steps"], batch_size=params["batch_size"], crop_size=tuple(params["crop_size"]),
                    scale_range=tuple(params["scale_range"]), lr=params["lr"], seed=params["seed"],
                    num_workers=params["num_workers"])
    return dict(max_steps=params["train_steps"], batch_size=params["batch_size"], crop_size=params["crop_size"],
                seed=params["seed"], num_workers=params["num_workers"])


def _file_table(dst: Path, model: str) -> dict:
    return {rel: {"bytes": (dst / rel).stat().st_size, "sha256": sha256(dst / rel)} for rel in _FILES[model]}


def _write_entry(out: str | Path, model: str, entry: dict) -> None:
    manifest = read_manifest(out)
    manifest[model] = entry
    path = Path(out) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
