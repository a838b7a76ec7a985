"""Model x benchmark x scores -> result rows, with one forward pass per frame.

The forward pass is the only expensive step, so its raw outputs are kept (in memory, or on disk
with ``cache_dir``) and every score, temperature and metric is computed from them. A sweep over
ten temperatures costs ten cheap passes over cached outputs, not ten evaluations.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import results as _results
from .labels import CLASS_NAMES, NUM_CLASSES
from .metrics import AnomalyAccumulator, ConfusionMatrix
from .models.base import Segmenter
from .scores import NEEDS_VOID_CHANNEL, TEMPERATURE_SENSITIVE, get_score


# ----------------------------------------------------------------------------- output cache
class OutputCache:
    """Raw model outputs per frame, as safetensors files under
    ``<root>/<model>/<checkpoint hash>/<dataset>/<stem>.safetensors`` (or in memory without root)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None
        self._memory: dict[tuple, dict[str, torch.Tensor]] = {}

    def _path(self, segmenter: Segmenter, dataset: str, stem: str) -> Path:
        tag = hashlib.sha1(f"{segmenter.name}|{segmenter.checkpoint}|{getattr(segmenter, 'cache_tag', '')}".encode()).hexdigest()[:12]
        return self.root / segmenter.name / tag / dataset / f"{stem}.safetensors"

    def get(self, segmenter: Segmenter, dataset: str, stem: str) -> dict[str, torch.Tensor] | None:
        if self.root is None:
            return self._memory.get((id(segmenter), dataset, stem))
        path = self._path(segmenter, dataset, stem)
        return load_file(path) if path.exists() else None

    def put(self, segmenter: Segmenter, dataset: str, stem: str, raw: dict[str, torch.Tensor]) -> None:
        if self.root is None:
            self._memory[(id(segmenter), dataset, stem)] = raw
            return
        path = self._path(segmenter, dataset, stem)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file({k: v.contiguous() for k, v in raw.items()}, tmp)
        os.replace(tmp, path)


@dataclass
class Frame:
    """One evaluated frame: its raw outputs and its label at evaluation size."""

    stem: str
    raw: dict[str, torch.Tensor]
    label: torch.Tensor  # uint8 [H, W] at eval size (0 / 1 / 255, or train ids for mIoU)
    size: tuple[int, int] = field(init=False)

    def __post_init__(self):
        self.size = tuple(self.label.shape[-2:])


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a label map ``[H, W]`` (course convention for masks).

    The course resizes masks with PIL's ``Resize(NEAREST)``, which samples at pixel centres;
    torch's ``"nearest-exact"`` is that rule (plain ``"nearest"`` takes ``floor(i * scale)`` and
    shifts the boundaries by up to a pixel)."""
    if tuple(label.shape) == tuple(size):
        return label
    return F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(label.dtype)


def _loader(dataset: Dataset, num_workers: int) -> Iterable[dict]:
    # batch_size=None hands items through unbatched; workers overlap decoding with the forward.
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def collect_outputs(
    segmenter: Segmenter,
    dataset: Dataset,
    dataset_name: str,
    cache: OutputCache | None = None,
    label_key: str = "label",
    num_workers: int = 0,
    progress: bool = True,
) -> list[Frame]:
    """Run ``segmenter`` once per frame of ``dataset`` (skipping frames already cached) and return
    every frame's raw outputs with its label resized to the segmenter's evaluation size."""
    cache = cache if cache is not None else OutputCache()
    frames = []
    for item in tqdm(_loader(dataset, num_workers), total=len(dataset), desc=f"{segmenter.name} on {dataset_name}",
                     disable=not progress, leave=False):
        stem = item["stem"]
        label = item[label_key]
        size = segmenter.eval_size(tuple(label.shape[-2:]))
        raw = cache.get(segmenter, dataset_name, stem)
        if raw is None:
            raw = segmenter.raw_outputs(item["image"])
            cache.put(segmenter, dataset_name, stem, raw)
        frames.append(Frame(stem, raw, resize_label(torch.as_tensor(label), size)))
    return frames


# ----------------------------------------------------------------------------- anomaly evaluation
@dataclass(frozen=True)
class _Combo:
    score: str
    temperature: float  # nan for scores without temperature (learned heads)


def _score_maps(segmenter: Segmenter, frame: Frame, combos: Sequence[_Combo], class_t: float,
                pixel_t: bool, extra_names: Sequence[str]) -> dict[_Combo, torch.Tensor]:
    maps: dict[_Combo, torch.Tensor] = {}
    from_classes = [c for c in combos if c.score not in extra_names]
    if from_classes:
        class_map = segmenter.class_map(frame.raw, frame.size, class_temperature=class_t)
        for c in from_classes:
            x = class_map if c.score in NEEDS_VOID_CHANNEL else class_map[:NUM_CLASSES]
            maps[c] = get_score(c.score)(x, temperature=c.temperature if pixel_t else 1.0)
    if len(from_classes) < len(combos):
        extras = segmenter.extra_scores(frame.raw, frame.size)
        maps.update({c: extras[c.score] for c in combos if c.score in extra_names})
    return maps


def evaluate_anomaly(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    scores: Sequence[str] = ("msp", "max_logit", "max_entropy", "energy"),
    temperatures: Sequence[float] = (1.0,),
    temperature_on: str = "pixel",
    results_path: str | Path | None = "results/results.csv",
    run_id: str | None = None,
    cache: OutputCache | None = None,
    fpr_convention: str = "course",
    curve_points: int = 256,
    num_workers: int = 0,
    max_bytes: int = 4 << 30,
    maps_frames: int = 4,
    progress: bool = True,
    notes: str = "",
) -> pd.DataFrame:
    """Evaluate ``scores`` of ``segmenter`` on each benchmark, pooled over each data set's pixels.

    ``temperature_on``: ``"pixel"`` divides the per-pixel class map by T before a score's softmax;
    ``"class"`` divides the class logits by T before the mask-classification fusion (EoMT only).
    Learned scores (``segmenter.extra_score_names``, e.g. ``anomaly_head``) are evaluated once.
    Rows are appended to ``results_path`` (None: not stored) and returned as a DataFrame;
    PR/ROC points go to ``<results dir>/curves/<run_id>.npz``, and the image, label and score maps
    (at T=1) of the first ``maps_frames`` frames of each data set to
    ``<results dir>/maps/<run_id>/<dataset>/<stem>.npz`` for the report and the explorer.
    """
    if temperature_on not in ("pixel", "class"):
        raise ValueError(f"temperature_on must be 'pixel' or 'class', got {temperature_on!r}.")
    if temperature_on == "class" and not segmenter.supports_class_temperature:
        raise ValueError(f"{segmenter.name} has no class logits to scale; use temperature_on='pixel'.")
    extra_names = tuple(getattr(segmenter, "extra_score_names", ()))
    for s in scores:
        if s not in extra_names:
            get_score(s)  # fail early on a typo
    run_id = run_id or _results.new_run_id(segmenter.name)
    cache = cache if cache is not None else OutputCache()
    commit, now = _results.git_commit(), _dt.datetime.now().isoformat(timespec="seconds")
    rows, curves = [], {}

    for name, dataset in benchmarks.items():
        frames = collect_outputs(segmenter, dataset, name, cache, num_workers=num_workers, progress=progress)
        if results_path is not None and maps_frames:
            _save_maps(Path(results_path).parent / "maps" / run_id / name, segmenter, dataset, frames[:maps_frames],
                       [s for s in scores], extra_names)
        n_valid = sum(int(((f.label == 0) | (f.label == 1)).sum()) for f in frames)
        skipped = len(getattr(dataset, "skipped", ()))
        # (class temperature, combos) passes; pixel-temperature-free scores are computed once.
        passes: list[tuple[float, list[_Combo]]] = []
        for i, t in enumerate(temperatures if temperature_on == "class" else (1.0,)):
            combos = []
            for s in scores:
                if s in extra_names:
                    if i == 0:
                        combos.append(_Combo(s, float("nan")))
                elif temperature_on == "pixel" and s in TEMPERATURE_SENSITIVE:
                    combos += [_Combo(s, float(tp)) for tp in temperatures]
                else:
                    combos.append(_Combo(s, float(t) if temperature_on == "class" else 1.0))
            per_pass = max(1, max_bytes // max(5 * n_valid, 1))
            passes += [(t, combos[i : i + per_pass]) for i in range(0, len(combos), per_pass)]

        for class_t, combos in passes:
            accs = {c: AnomalyAccumulator() for c in combos}
            for frame in frames:
                for c, m in _score_maps(segmenter, frame, combos, class_t, temperature_on == "pixel", extra_names).items():
                    accs[c].update(m, frame.label)
            for c, acc in accs.items():
                m = acc.compute(convention=fpr_convention)
                t_on = "none" if math.isnan(c.temperature) else temperature_on
                key = f"{segmenter.name}|{name}|{c.score}|{c.temperature:g}|{t_on}"
                if curve_points:
                    curves.update({f"{key}|{k}": np.asarray(v) for k, v in acc.pr_roc_points(curve_points).items()})
                # A score that ignores the pixel temperature gets one (identical) row per swept T,
                # so that curves over T are complete.
                same_for_all_t = temperature_on == "pixel" and c.score not in TEMPERATURE_SENSITIVE and c.score not in extra_names
                for t in (list(temperatures) if same_for_all_t else [c.temperature]):
                    rows.append(dict(
                        run_id=run_id, time=now, git_commit=commit, model=segmenter.name, checkpoint=segmenter.checkpoint,
                        dataset=name, score=c.score, temperature=t, temperature_on=t_on,
                        auprc=m["auprc"], fpr_at_95_tpr=m["fpr_at_95_tpr"], auroc=m["auroc"], miou="",
                        frames_used=len(frames), frames_skipped=skipped, fpr_convention=fpr_convention,
                        eval_size="x".join(map(str, frames[0].size)) if frames else "",
                        curves=f"curves/{run_id}.npz#{key}" if curve_points else "", notes=notes,
                    ))
    if results_path is not None:
        results_path = Path(results_path)
        if curves:
            _save_npz(results_path.parent / "curves" / f"{run_id}.npz", curves)
        _results.append_rows(rows, results_path)
    return pd.DataFrame(rows, columns=_results.COLUMNS)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _save_maps(folder: Path, segmenter, dataset, frames, scores, extra_names) -> None:
    combos = [_Combo(s, float("nan") if s in extra_names else 1.0) for s in scores]
    for i, f in enumerate(frames):
        maps = _score_maps(segmenter, f, combos, 1.0, True, extra_names)
        item = dataset[i]
        image = item["image"] if item["stem"] == f.stem else None
        arrays = {f"map|{c.score}": m.numpy().astype(np.float16) for c, m in maps.items()}
        arrays["label"] = f.label.numpy().astype(np.uint8)
        if image is not None:
            img = F.interpolate(image[None].float(), size=f.size, mode="bilinear", align_corners=False)[0]
            arrays["image"] = img.clamp(0, 255).byte().numpy()
        _save_npz(folder / f"{f.stem}.npz", arrays)


def load_maps(results_path: str | Path, run_id: str, dataset: str) -> dict[str, dict]:
    """Stored frames of one run and data set: ``{stem: {"image", "label", "maps": {score: [H, W]}}}``."""
    folder = Path(results_path).parent / "maps" / run_id / dataset
    out = {}
    for path in sorted(folder.glob("*.npz"), key=lambda p: (len(p.stem), p.stem)):
        with np.load(path) as z:
            out[path.stem] = {"image": z["image"] if "image" in z.files else None, "label": z["label"],
                              "maps": {k.split("|", 1)[1]: z[k].astype(np.float32) for k in z.files if k.startswith("map|")},
                              "stem": path.stem}
    return out


def load_curves(results_path: str | Path, row: dict | pd.Series) -> dict[str, np.ndarray] | None:
    """PR/ROC points stored for one result row (``recall``, ``precision``, ``fpr``, ``tpr``), or None."""
    ref = row.get("curves")
    if not isinstance(ref, str) or "#" not in ref:
        return None
    file, key = ref.split("#", 1)
    path = Path(results_path).parent / file
    if not path.exists():
        return None
    with np.load(path) as z:
        found = {k[len(key) + 1 :]: z[k] for k in z.files if k.startswith(key + "|")}
    return found or None


# ----------------------------------------------------------------------------- mIoU
def evaluate_miou(
    segmenter: Segmenter,
    dataset: Dataset,
    class_temperatures: Sequence[float] = (1.0,),
    results_path: str | Path | None = "results/results.csv",
    run_id: str | None = None,
    cache: OutputCache | None = None,
    dataset_name: str = "cityscapes_val",
    num_workers: int = 0,
    progress: bool = True,
    notes: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cityscapes mIoU (course convention: all 19 classes, ignore 255) for each class temperature.

    The prediction is the argmax over all channels of ``class_map``; the course's ERFNet figure
    (72.20) takes it over 20 channels, void included: use ``ErfnetSegmenter(use_void=True)``.

    Returns ``(rows, per_class)`` where ``per_class`` holds the IoU of each class (fractions) per T.
    A pixel temperature never changes the argmax, so only class temperatures are swept.
    """
    if any(t != 1.0 for t in class_temperatures) and not segmenter.supports_class_temperature:
        raise ValueError(f"{segmenter.name} has no class logits to scale; mIoU does not depend on a pixel temperature.")
    run_id = run_id or _results.new_run_id(segmenter.name)
    frames = collect_outputs(segmenter, dataset, dataset_name, cache, label_key="target", num_workers=num_workers, progress=progress)
    commit, now = _results.git_commit(), _dt.datetime.now().isoformat(timespec="seconds")
    rows, per_class = [], {}
    for t in class_temperatures:
        cm = ConfusionMatrix(num_classes=NUM_CLASSES, ignore_index=255)
        for f in frames:
            # Argmax over every channel the model gives: with ERFNet's void channel (use_void=True)
            # a pixel won by void counts as a miss, as in the course's iouEval.
            pred = segmenter.class_map(f.raw, f.size, class_temperature=t).argmax(0)
            cm.update(pred, f.label)
        per_class[f"T={t:g}"] = cm.iou()
        rows.append(dict(
            run_id=run_id, time=now, git_commit=commit, model=segmenter.name, checkpoint=segmenter.checkpoint,
            dataset=dataset_name, score="miou", temperature=t,
            temperature_on="class" if segmenter.supports_class_temperature else "none",
            auprc="", fpr_at_95_tpr="", auroc="", miou=cm.miou(), frames_used=len(frames), frames_skipped=0,
            fpr_convention="", eval_size="x".join(map(str, frames[0].size)) if frames else "", curves="", notes=notes,
        ))
    if results_path is not None:
        _results.append_rows(rows, results_path)
    return pd.DataFrame(rows, columns=_results.COLUMNS), pd.DataFrame(per_class, index=list(CLASS_NAMES))


# ----------------------------------------------------------------------------- maps for figures
def frame_maps(
    segmenter: Segmenter,
    item: dict,
    scores: Sequence[str] = ("msp", "max_logit"),
    temperature: float = 1.0,
    class_temperature: float = 1.0,
    label_key: str = "label",
) -> dict:
    """Score maps of one data set item for figures: ``{"image", "label", "pred", "maps": {score: [H, W]}}``
    at the segmenter's evaluation size (image resized bilinearly to match)."""
    label = torch.as_tensor(item[label_key])
    size = segmenter.eval_size(tuple(label.shape[-2:]))
    raw = segmenter.raw_outputs(item["image"])
    class_map = segmenter.class_map(raw, size, class_temperature=class_temperature)
    extra_names = tuple(getattr(segmenter, "extra_score_names", ()))
    extras = segmenter.extra_scores(raw, size) if any(s in extra_names for s in scores) else {}
    maps = {s: extras[s] if s in extra_names else get_score(s)(
        class_map if s in NEEDS_VOID_CHANNEL else class_map[:NUM_CLASSES], temperature=temperature) for s in scores}
    image = F.interpolate(item["image"][None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return {"image": image.clamp(0, 255).byte(), "label": resize_label(label, size),
            "pred": class_map[:NUM_CLASSES].argmax(0), "maps": maps, "stem": item.get("stem", "")}
