"""Model x benchmark x scores -> result rows, with one forward pass per frame.

The forward pass is the only expensive step, so its raw outputs are kept (in memory, or on disk
with ``cache_dir``) and every score, temperature and metric is computed from them. A sweep over
ten temperatures costs ten cheap passes over cached outputs, not ten evaluations.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from . import results as _results
from .components import SMIYC_TRACKS
from .frame_stats import FrameStatsAccumulator
from .labels import CLASS_NAMES, NUM_CLASSES
from .metrics import (
    AnomalyAccumulator,
    BinnedAnomalyAccumulator,
    ConfusionMatrix,
    PerImageAccumulator,
)
from .models.base import Segmenter
from .progress import tqdm
from .protocol import EvalProtocol, applied, get_protocol, resize_label, scored_label, scored_map
from .scores import (
    NEEDS_VOID_CHANNEL,
    SOFTMAX_SCORES,
    TEMPERATURE_SENSITIVE,
    applies,
    baseline_scores,
    default_scores,
    get_score,
    softmax_scores,
)


# ----------------------------------------------------------------------------- output cache
class OutputCache:
    """Raw model outputs per frame, as safetensors files under
    ``<root>/<model>/<key>/<dataset>/<frame>.safetensors`` (or in memory without root).

    ``key`` hashes the segmenter's name, checkpoint, ``cache_tag`` and a fingerprint of its
    weights, so a model trained further or fine-tuned in place never reads the outputs of its
    former self, even under the same checkpoint path; ``<frame>`` is ``frame_name(item)``, the
    frame's stem and a hash of its pixels, so a data set regenerated or replaced under the same
    file names never gets the outputs of its former frames."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else None
        self._memory: dict[tuple, dict[str, torch.Tensor]] = {}

    def key(self, segmenter: Segmenter) -> str:
        """The folder name of ``segmenter``'s outputs; computed once per ``collect_outputs``
        call."""
        fields = (segmenter.name, segmenter.checkpoint, getattr(segmenter, "cache_tag", ""))
        parts = "|".join(str(x) for x in (*fields, weights_fingerprint(segmenter)))
        return hashlib.sha1(parts.encode()).hexdigest()[:12]

    def path(self, segmenter: Segmenter, dataset: str, frame: str, key: str | None = None) -> Path:
        """Where ``segmenter``'s outputs of ``frame`` (``frame_name(item)``) are kept."""
        return (
            self.root
            / segmenter.name
            / (key or self.key(segmenter))
            / dataset
            / f"{frame}.safetensors"
        )

    def get(
        self, segmenter: Segmenter, dataset: str, frame: str, key: str | None = None
    ) -> dict[str, torch.Tensor] | None:
        """The cached outputs of one frame, or None; a damaged file is removed (and None
        returned)."""
        if self.root is None:
            return self._memory.get(
                (id(segmenter), getattr(segmenter, "cache_tag", ""), dataset, frame)
            )
        path = self.path(segmenter, dataset, frame, key)
        if not path.exists():
            return None
        try:
            return load_file(path)
        except Exception as e:  # safetensors raises several types for a truncated or foreign file
            _evict(path, e)
            return None

    def put(
        self,
        segmenter: Segmenter,
        dataset: str,
        frame: str,
        raw: dict[str, torch.Tensor],
        key: str | None = None,
    ) -> None:
        if self.root is None:
            self._memory[(id(segmenter), getattr(segmenter, "cache_tag", ""), dataset, frame)] = raw
            return
        path = self.path(segmenter, dataset, frame, key)
        _results.atomic_write(
            path, lambda tmp: save_file({k: v.contiguous() for k, v in raw.items()}, tmp)
        )


def frame_name(item: dict) -> str:
    """The output cache's name of a data set item (``{"stem": str, "image": uint8 [3, H, W]}``):
    ``<stem>-<first 10 hex digits of the SHA-1 of its decoded pixels>``."""
    pixels = item["image"].contiguous().numpy().tobytes()
    return f"{item['stem']}-{hashlib.sha1(pixels).hexdigest()[:10]}"


def _evict(path: Path, error: Exception) -> None:
    """Remove a damaged output-cache file, so that its frame is computed again."""
    warnings.warn(
        f"The output-cache file {path} is damaged ({type(error).__name__}: {error}); removed it, "
        "the frame is computed again.",
        stacklevel=3,
    )
    path.unlink(missing_ok=True)


def _readable(path: Path) -> bool:
    """True when ``path`` is a complete safetensors file (its header and the data it announces);
    reads the header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return True
    except Exception:
        return False


def _load_cached(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as e:
        raise OSError(
            f"The output-cache file {path} could not be read ({type(e).__name__}: {e}); it was "
            "damaged after it was written. Delete it (or the whole cache folder) and run again."
        ) from None


def _modules(obj, seen: set) -> Iterator[torch.nn.Module]:
    """The modules an object holds, looking into the segmenters it wraps
    (``HeadSegmenter.base``)."""
    for v in vars(obj).values():
        if isinstance(v, torch.nn.Module):
            yield v
        elif hasattr(v, "raw_outputs") and hasattr(v, "__dict__") and id(v) not in seen:
            seen.add(id(v))
            yield from _modules(v, seen)


def weights_fingerprint(segmenter, sample: int = 1 << 16) -> str:
    """A short hash of the weights of every ``torch.nn.Module`` the segmenter holds ("" if none).

    Tensors up to ``sample`` elements are hashed whole; larger ones through ``sample`` evenly
    strided elements and their float64 sum, so EoMT-L costs milliseconds, not a pass over 1.2 GB.
    """
    modules = list({id(m): m for m in _modules(segmenter, set())}.values())
    if not modules:
        return ""
    h = hashlib.sha1()
    for m in modules:
        for name, t in m.state_dict().items():
            t = t.detach()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            if not t.numel():
                continue
            flat = t.reshape(-1)
            if flat.numel() > sample:
                h.update(repr(float(flat.double().sum())).encode())
                flat = flat[:: flat.numel() // sample]
            # contiguous: a strided sample cannot be reinterpreted as bytes in place
            h.update(flat.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Frame:
    """One evaluated frame: its raw outputs and its label at evaluation size.

    ``raw`` is either held in memory or read back from the output cache on each access, so
    that a data set of EoMT-L outputs (~50 MB a frame) never has to fit in memory at once."""

    def __init__(
        self,
        stem: str,
        raw: dict[str, torch.Tensor] | None,
        label: torch.Tensor,
        load=None,
        native_size: tuple[int, int] | None = None,
    ):
        self.stem = stem
        self.label = label  # uint8 [H, W] at eval size (0 / 1 / 255, or train ids for mIoU)
        self.size = tuple(label.shape[-2:])
        self.native_size = native_size  # (H, W) of the stored label, before the resize
        self._raw, self._load = raw, load

    @property
    def raw(self) -> dict[str, torch.Tensor]:
        return self._raw if self._raw is not None else self._load()


def _loader(dataset: Dataset, num_workers: int) -> Iterable[dict]:
    # batch_size=None hands items through unbatched; workers overlap decoding with the forward.
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def collect_outputs(
    segmenter: Segmenter,
    dataset: Dataset,
    dataset_name: str,
    cache: OutputCache | None = None,
    label_key: str = "label",
    num_workers: int = 0,
    progress: bool = True,
    protocol: EvalProtocol | str | None = None,
    skipped: list[str] | None = None,
) -> list[Frame]:
    """Run ``segmenter`` once per frame of ``dataset`` (skipping frames already cached) and return
    every frame's raw outputs with its label resized to the segmenter's evaluation size (the
    frame's own size under a ``full_resolution`` protocol; PIL nearest, as the course).

    ``protocol`` (default ``course``) sets the segmenter's input resize and logits dtype for the
    forward passes. Under a protocol that skips after the resize (``course``), an anomaly label
    (``label_key="label"``) without an anomaly pixel at the scored resolution drops its frame
    before the forward pass, and its stem is appended to ``skipped``.
    With a disk cache the frames read their outputs back when used; with the in-memory cache they
    hold them.
    """
    protocol = get_protocol(protocol)
    with applied(segmenter, protocol):
        return _collect(
            segmenter,
            dataset,
            dataset_name,
            cache,
            label_key,
            num_workers,
            progress,
            protocol,
            skipped,
        )


def _collect(
    segmenter, dataset, dataset_name, cache, label_key, num_workers, progress, protocol, skipped
) -> list[Frame]:
    cache = cache if cache is not None else OutputCache()
    key = cache.key(segmenter) if cache.root is not None else None
    frames = []
    for item in tqdm(
        _loader(dataset, num_workers),
        total=len(dataset),
        desc=f"{segmenter.name} on {dataset_name}",
        unit="frame",
        disable=not progress,
        leave=False,
    ):
        stem = item["stem"]
        full = tuple(item[label_key].shape[-2:])
        label = resize_label(
            torch.as_tensor(item[label_key]),
            full if protocol.scoring == "full_resolution" else segmenter.eval_size(full),
        )
        if (
            label_key == "label"
            and protocol.skip_after_resize
            and not (scored_label(label, protocol) == 1).any()
        ):
            if skipped is not None:
                skipped.append(
                    stem
                )  # the course drops a frame whose anomaly vanished in the resize
            continue
        name = frame_name(item)
        if cache.root is None:
            raw = cache.get(segmenter, dataset_name, name)
            if raw is None:
                raw = segmenter.raw_outputs(item["image"])
                cache.put(segmenter, dataset_name, name, raw)
            frames.append(Frame(stem, raw, label, native_size=full))
            continue
        path = cache.path(segmenter, dataset_name, name, key)
        if path.exists() and not _readable(
            path
        ):  # truncated by a crash or a full disk: compute it again
            _evict(path, ValueError("incomplete safetensors file"))
        if not path.exists():
            cache.put(segmenter, dataset_name, name, segmenter.raw_outputs(item["image"]), key)
        frames.append(Frame(stem, None, label, load=partial(_load_cached, path), native_size=full))
    return frames


# ----------------------------------------------------------------------------- anomaly evaluation
# What a binned accumulator holds, for sizing passes: its histogram covers only the bins its scores
# touch, a few hundred thousand for the usual scores at 24 bits.
BINNED_BYTES = 64 << 20


@dataclass(frozen=True)
class _Combo:
    score: str
    temperature: float  # pixel temperature; nan for scores without temperature (learned heads)
    class_t: float = 1.0  # class temperature (mask classification)


def class_maps(
    segmenter: Segmenter, raw: dict, size: tuple[int, int], class_temperatures: Sequence[float]
) -> Iterator[torch.Tensor]:
    """``segmenter.class_map`` at each class temperature in turn; segmenters with a ``class_maps``
    method (EoMT) share the work that does not depend on T."""
    if hasattr(segmenter, "class_maps"):
        yield from segmenter.class_maps(raw, size, class_temperatures)
    else:
        for t in class_temperatures:
            yield segmenter.class_map(raw, size, class_temperature=t)


def class_argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(0)`` for a class map ``[C, H, W]`` (first maximum on ties) as int64 ``[H, W]``.

    A running maximum over the C channels: each step is one contiguous pass, 3x faster on the
    CPU than torch's argmax over the strided class dimension."""
    best, idx = (
        x[0].clone(),
        torch.zeros(
            x.shape[1:], dtype=torch.uint8 if x.shape[0] <= 256 else torch.int64, device=x.device
        ),
    )
    for c in range(1, x.shape[0]):
        idx.masked_fill_(x[c] > best, c)
        torch.maximum(best, x[c], out=best)
    return idx.long()


def _score_maps(
    segmenter: Segmenter,
    frame: Frame,
    combos: Sequence[_Combo],
    extra_names: Sequence[str],
    msp_form: str = "expm1",
) -> Iterator[tuple[_Combo, torch.Tensor]]:
    """Every combo's score map of one frame: one class map per class temperature, one
    log-softmax per pixel temperature for MSP, MaxEntropy and Energy together."""
    from_classes = [c for c in combos if c.score not in extra_names]
    raw = frame.raw  # read once: with a disk cache each access loads the file
    if len(from_classes) < len(combos):
        extras = segmenter.extra_scores(raw, frame.size)
        yield from ((c, extras[c.score]) for c in combos if c.score in extra_names)
    if not from_classes:
        return
    class_ts = list(dict.fromkeys(c.class_t for c in from_classes))
    for class_t, class_map in zip(class_ts, class_maps(segmenter, raw, frame.size, class_ts)):
        by_t: dict[float, list[_Combo]] = {}
        for c in (c for c in from_classes if c.class_t == class_t):
            if c.score in SOFTMAX_SCORES:
                by_t.setdefault(c.temperature, []).append(c)
            else:
                x = class_map if c.score in NEEDS_VOID_CHANNEL else class_map[:NUM_CLASSES]
                yield c, get_score(c.score)(x, temperature=c.temperature)
        for t, group in by_t.items():
            found = softmax_scores(
                class_map[:NUM_CLASSES], [c.score for c in group], temperature=t, msp_form=msp_form
            )
            yield from ((c, found[c.score]) for c in group)


def evaluate_anomaly(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    scores: Sequence[str] = default_scores(),
    temperatures: Sequence[float] = (1.0,),
    temperature_on: str = "pixel",
    results_path: str | Path | None = "results/results.csv",
    run_id: str | None = None,
    cache: OutputCache | None = None,
    fpr_convention: str | None = None,
    curve_points: int = 256,
    num_workers: int = 0,
    max_bytes: int = 4 << 30,
    maps_frames: int = 4,
    histogram_bits: int | None = None,
    progress: bool = True,
    notes: str = "",
    frame_stats: bool = True,
    protocol: EvalProtocol | str | None = None,
) -> pd.DataFrame:
    """Evaluate ``scores`` of ``segmenter`` on each benchmark, pooled over each data set's pixels.

    ``protocol``: the ``EvalProtocol`` (or its name in ``protocol.PROTOCOLS``; default ``course``,
    the course's evalAnomaly.py to the last digit) that fixes the input resize, the frame skip
    rule, the scoring resolution (2x2 blocks, full resolution), pooling and FPR95; its name is
    stored in every row. ``fpr_convention`` (None: the protocol's) overrides the protocol's FPR95
    convention (``course`` with ``"smiyc"`` is the ``smiyc`` protocol).

    ``temperature_on``: ``"pixel"`` divides the per-pixel class map by T before a score's softmax;
    ``"class"`` divides the class logits by T before the mask-classification fusion (EoMT only).
    Learned scores (``segmenter.extra_score_names``, e.g. ``anomaly_head``) are evaluated once.
    ``histogram_bits``: None (default) computes the metrics exactly (sklearn's values, from a sort
    of every pooled pixel); an int b takes them from histograms (``BinnedAnomalyAccumulator``:
    cheaper, memory independent of the pixel count, but approximate where a score crowds into a
    narrow band). Binned rows carry ``metric_bins`` so that tables prefer exact ones.
    Rows are appended to ``results_path`` (None: not stored) and returned as a DataFrame;
    PR/ROC points go to ``<results dir>/curves/<run_id>.npz``, and the image, label and score maps
    (at T=1) of the first ``maps_frames`` frames of each data set to
    ``<results dir>/maps/<run_id>/<dataset>/<stem>.npz`` for the report and the explorer.
    ``frame_stats`` (exact metrics only): per-frame histograms for bootstrap intervals, recall by
    anomaly size and, on RoadAnomaly21 / RoadObstacle21, SMIYC's component metrics (``siou_gt``,
    ``ppv``, ``f1_mean`` columns), from the same visit of each frame (``frame_stats`` module),
    stored in ``<results dir>/frame_stats/<run_id>/<dataset>.npz``.
    """
    protocol = _with_fpr(get_protocol(protocol), fpr_convention)
    fpr_convention = protocol.fpr_convention
    if temperature_on not in ("pixel", "class"):
        raise ValueError(f"temperature_on must be 'pixel' or 'class', got {temperature_on!r}.")
    if temperature_on == "class" and not segmenter.supports_class_temperature:
        raise ValueError(
            f"{segmenter.name} has no class logits to scale; use temperature_on='pixel'."
        )
    extra_names = tuple(getattr(segmenter, "extra_score_names", ()))
    for s in scores:
        if s not in extra_names:
            get_score(s)  # fail early on a typo
    temperatures = check_temperatures(temperatures, f"{temperature_on} temperature")
    if results_path is not None:
        results_path = _results.check_store(results_path)  # before any forward pass
    run_id = run_id or _results.new_run_id(segmenter.name)
    cache = cache if cache is not None else OutputCache()
    run = _results.run_columns(run_id)
    new_acc = (
        AnomalyAccumulator
        if histogram_bits is None
        else partial(BinnedAnomalyAccumulator, histogram_bits)
    )
    new_acc = PerImageAccumulator if protocol.pooling == "per_image" else new_acc
    rows, curves, stats_arrays = [], {}, {}
    # per-frame statistics pool pixels as the pooled metrics do; per-image means have none
    with_stats = (
        frame_stats
        and histogram_bits is None
        and results_path is not None
        and protocol.pooling == "pixels"
    )

    # Every (score, pixel T, class T) to evaluate; a score that ignores the pixel temperature
    # is computed once and reported for each swept T.
    combos = []
    for s in scores:
        if s in extra_names:
            combos.append(_Combo(s, float("nan")))
        elif temperature_on == "class":
            combos += [_Combo(s, 1.0, float(t)) for t in temperatures]
        elif s in TEMPERATURE_SENSITIVE:
            combos += [_Combo(s, float(t)) for t in temperatures]
        else:
            combos.append(_Combo(s, 1.0))

    all_rows = []
    for name, dataset in benchmarks.items():
        if len(dataset) == 0:
            skipped = len(getattr(dataset, "skipped", ()))
            warnings.warn(
                f"{name}: all {skipped} frames were skipped (no mask holds an anomaly pixel, label "
                f"1 after the {getattr(getattr(dataset, 'spec', None), 'title', name)} "
                "conversion), so it has no rows. Check that its labels_masks/ are this "
                "benchmark's masks.",
                stacklevel=2,
            )
            continue
        rows = []
        dropped: list[str] = []  # frames the protocol's skip rule drops after the resize
        frames = collect_outputs(
            segmenter,
            dataset,
            name,
            cache,
            num_workers=num_workers,
            progress=progress,
            protocol=protocol,
            skipped=dropped,
        )
        if not frames:
            warnings.warn(
                f"{name}: every frame was skipped under protocol {protocol.name!r} (no anomaly "
                "pixel left at the evaluation size), so it has no rows.",
                stacklevel=2,
            )
            continue
        if results_path is not None and maps_frames:
            _save_maps(
                results_path,
                run_id,
                name,
                segmenter,
                dataset,
                frames[:maps_frames],
                scores,
                extra_names,
            )
        labels = {
            f.stem: scored_label(f.label, protocol) for f in frames
        }  # 2x2 blocks under blocks2x2
        n_valid = sum(int(((lab == 0) | (lab == 1)).sum()) for lab in labels.values())
        skipped = len(getattr(dataset, "skipped", ())) + len(dropped)
        # Exact metrics keep 4 bytes per valid pixel and combo: split the combos into passes over
        # the frames that fit max_bytes. Histograms have a fixed size.
        per_combo = 5 * n_valid if histogram_bits is None else BINNED_BYTES
        per_pass = max(1, max_bytes // max(per_combo, 1))
        for start in range(0, len(combos), per_pass):
            if with_stats:
                gt_cache: dict = {}  # ground-truth components, once per frame for every combination
                accs = {
                    c: FrameStatsAccumulator(SMIYC_TRACKS.get(name), gt_cache=gt_cache)
                    for c in combos[start : start + per_pass]
                }
            else:
                accs = {c: new_acc() for c in combos[start : start + per_pass]}
            for frame in frames:
                for c, m in _score_maps(
                    segmenter, frame, list(accs), extra_names, protocol.msp_form
                ):
                    m, label = scored_map(m, protocol), labels[frame.stem]
                    if with_stats:
                        accs[c].add_frame(m, label, frame.stem, frame.native_size)
                    else:
                        accs[c].update(m, label)
            for c, acc in accs.items():
                m = acc.compute(convention=fpr_convention)
                t_on = "none" if math.isnan(c.temperature) else temperature_on
                t_row = c.class_t if temperature_on == "class" else c.temperature
                key = f"{segmenter.name}|{name}|{c.score}|{t_row:g}|{t_on}"
                points = acc.pr_roc_points(curve_points) if curve_points else {}  # none per image
                curves.update({f"{key}|{k}": np.asarray(v) for k, v in points.items()})
                stats_row = {}
                if with_stats and m["anomaly_fraction"] > 0:
                    arrays, summary = acc.frame_stats()
                    stats_arrays.update({f"{key}|{k}": v for k, v in arrays.items()})
                    stats_row = dict(
                        summary, frame_stats=f"{_results.frame_stats_ref(run_id, name)}#{key}"
                    )
                same_for_all_t = (
                    temperature_on == "pixel"
                    and c.score not in TEMPERATURE_SENSITIVE
                    and c.score not in extra_names
                )
                for t in list(temperatures) if same_for_all_t else [t_row]:
                    rows.append(
                        _results.result_row(
                            run,
                            segmenter.name,
                            segmenter.checkpoint,
                            name,
                            c.score,
                            temperature=t,
                            temperature_on=t_on,
                            auprc=m["auprc"],
                            fpr_at_95_tpr=m["fpr_at_95_tpr"],
                            auroc=m["auroc"],
                            miou="",
                            frames_used=len(frames),
                            frames_skipped=skipped,
                            fpr_convention=fpr_convention,
                            eval_size="x".join(map(str, labels[frames[0].stem].shape))
                            if frames
                            else "",
                            curves=f"{_results.curves_ref(run_id)}#{key}" if points else "",
                            metric_bins=f"2^{histogram_bits}" if histogram_bits else "",
                            notes=notes,
                            **stats_row,
                            protocol=protocol.name,
                            data_fingerprint=_results.data_fingerprint(dataset),
                        )
                    )
        # Each benchmark's rows are stored as soon as they exist: a later benchmark that fails
        # (a bad frame, a full disk) never costs the ones already done.
        if results_path is not None:
            if curves:
                _results.save_curves(results_path, run_id, curves)
            if stats_arrays:  # one file per benchmark: earlier ones are not written again
                _results.save_frame_stats(results_path, run_id, name, stats_arrays)
                stats_arrays = {}
            _results.append_rows(rows, results_path)
        all_rows += rows
    return pd.DataFrame(all_rows, columns=_results.COLUMNS)


def _with_fpr(protocol: EvalProtocol, fpr_convention: str | None) -> EvalProtocol:
    """``protocol`` with another FPR95 convention, named for it (``course`` + smiyc = ``smiyc``)."""
    if fpr_convention is None or fpr_convention == protocol.fpr_convention:
        return protocol
    if protocol.name == "course" and fpr_convention == "smiyc":
        return get_protocol("smiyc")
    return replace(
        protocol, name=f"{protocol.name}+fpr_{fpr_convention}", fpr_convention=fpr_convention
    )


def check_temperatures(temperatures: Sequence[float], what: str = "temperature") -> list[float]:
    """``temperatures`` as floats, each finite and > 0 (a temperature divides the logits), else
    ValueError."""
    out = []
    for t in temperatures:
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise ValueError(f"{what} {t!r} is not a number; expected finite values > 0.") from None
        if not math.isfinite(value) or value <= 0:
            raise ValueError(
                f"{what} {t!r}: a temperature divides the logits and must be a finite number > 0."
            )
        out.append(value)
    if not out:
        raise ValueError(
            f"no {what} given; expected at least one finite value > 0 (T = 1 leaves the logits as "
            "they are)."
        )
    return out


def _save_maps(
    results_path: Path, run_id: str, name: str, segmenter, dataset, frames, scores, extra_names
) -> None:
    """Score maps at T = 1 of ``frames`` (of ``dataset``, called ``name``), stored by
    ``results.save_maps``."""
    combos = [_Combo(s, float("nan") if s in extra_names else 1.0) for s in scores]
    j = 0  # the dataset item of each frame: frames the protocol dropped leave gaps
    for f in frames:
        maps = dict(_score_maps(segmenter, f, combos, extra_names))
        item = dataset[j]  # decoded once per step
        while item["stem"] != f.stem and j < len(dataset) - 1:
            j += 1
            item = dataset[j]
        image = None
        if item["stem"] == f.stem:
            img = F.interpolate(
                item["image"][None].float(), size=f.size, mode="bilinear", align_corners=False
            )[0]
            image = img.clamp(0, 255).byte().numpy()
        by_score = {c.score: maps[c].numpy() for c in combos}  # in the order asked
        _results.save_maps(results_path, run_id, name, f.stem, by_score, f.label.numpy(), image)


# ----------------------------------------------------------------------------- mIoU
def evaluate_miou(
    segmenter: Segmenter,
    dataset: Dataset,
    class_temperatures: Sequence[float] = (1.0,),
    results_path: str | Path | None = "results/results.csv",
    run_id: str | None = None,
    cache: OutputCache | None = None,
    dataset_name: str = _results.MIOU_DATASET,
    num_workers: int = 0,
    progress: bool = True,
    notes: str = "",
    protocol: EvalProtocol | str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cityscapes mIoU (course convention: all 19 classes, ignore 255) for each class temperature.

    The prediction is the argmax over the channels of ``class_map``. Under ``protocol`` ``course``
    (default) ERFNet's void channel takes part, as in the course's ``iouEval`` (the 72.20 figure):
    a pixel won by void is a miss of its true class; ``legacy`` takes it over the 19 classes. The
    protocol also sets the input resize, the logits dtype and (``full_resolution``) the resolution.

    Returns ``(rows, per_class)`` where ``per_class`` holds the IoU of each class (fractions) per T.
    A pixel temperature never changes the argmax, so only class temperatures are swept.
    """
    class_temperatures = check_temperatures(class_temperatures, "class temperature")
    if any(t != 1.0 for t in class_temperatures) and not segmenter.supports_class_temperature:
        raise ValueError(
            f"{segmenter.name} has no class logits to scale; mIoU does not depend on a pixel "
            "temperature."
        )
    if results_path is not None:
        results_path = _results.check_store(results_path)
    protocol = get_protocol(protocol)
    run_id = run_id or _results.new_run_id(segmenter.name)
    frames = collect_outputs(
        segmenter,
        dataset,
        dataset_name,
        cache,
        label_key="target",
        num_workers=num_workers,
        progress=progress,
        protocol=protocol,
    )
    run = _results.run_columns(run_id)
    rows, per_class = [], {}
    cms = [ConfusionMatrix(num_classes=NUM_CLASSES, ignore_index=255) for _ in class_temperatures]
    with applied(
        segmenter, protocol, miou=True
    ):  # course: ERFNet's class maps keep the void channel
        for f in frames:
            # Argmax over every channel the model gives: with ERFNet's void channel (use_void=True)
            # a pixel won by void counts as a miss, as in the course's iouEval.
            for cm, class_map in zip(cms, class_maps(segmenter, f.raw, f.size, class_temperatures)):
                cm.update(class_argmax(class_map), f.label)
    for t, cm in zip(class_temperatures, cms):
        per_class[f"T={t:g}"] = cm.iou()
        rows.append(
            _results.result_row(
                run,
                segmenter.name,
                segmenter.checkpoint,
                dataset_name,
                "miou",
                temperature=t,
                temperature_on="class" if segmenter.supports_class_temperature else "none",
                auprc="",
                fpr_at_95_tpr="",
                auroc="",
                miou=cm.miou(),
                frames_used=len(frames),
                frames_skipped=0,
                fpr_convention="",
                eval_size="x".join(map(str, frames[0].size)) if frames else "",
                curves="",
                notes=notes,
                protocol=protocol.name,
                data_fingerprint=_results.data_fingerprint(dataset),
            )
        )
    if results_path is not None:
        _results.append_rows(rows, results_path)
    return pd.DataFrame(rows, columns=_results.COLUMNS), pd.DataFrame(
        per_class, index=list(CLASS_NAMES)
    )


# ----------------------------------------------------------------------------- temperature sweeps
def evaluation_pass(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    val: Dataset | None,
    scores: Sequence[str] | None = None,
    max_frames: int | None = None,
) -> float:
    """Seconds of one uncached evaluation at T = 1, what each temperature point would cost without
    the output cache: a forward of every frame, the class maps, ``scores`` (RbA only for mask
    classification) with exact metrics on ``benchmarks``, and the mIoU on ``val``. Stores nothing.
    ``scores``: None for ``scores.default_scores(segmenter)``; those not meant for this model
    (``scores.applies``) are left out. ``max_frames``: time only the first ``max_frames`` frames of
    each data set and scale the time by the share of frames timed (an estimate: the cost per frame
    is nearly constant); None: all."""
    from torch.utils.data import Subset

    def first(ds: Dataset) -> Dataset:
        return ds if max_frames is None or len(ds) <= max_frames else Subset(ds, range(max_frames))

    sets = [*benchmarks.values(), *([val] if val is not None else [])]
    timed = sum(len(first(ds)) for ds in sets)
    started = time.perf_counter()
    scores = default_scores(segmenter) if scores is None else scores
    scores = [s for s in scores if applies(s, segmenter)]
    evaluate_anomaly(
        segmenter,
        {n: first(ds) for n, ds in benchmarks.items()},
        scores,
        results_path=None,
        cache=OutputCache(),
        maps_frames=0,
        progress=False,
        frame_stats=False,
    )
    if val is not None:
        evaluate_miou(segmenter, first(val), results_path=None, cache=OutputCache(), progress=False)
    return (time.perf_counter() - started) * sum(len(ds) for ds in sets) / max(timed, 1)


def temperature_sweep(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    val: Dataset | None,
    temperatures: Sequence[float],
    scores: Sequence[str] | None = None,
    results_path: str | Path | None = "results/results.csv",
    cache: OutputCache | None = None,
    histogram_bits: int | None = None,
    progress: bool = False,
    protocol: EvalProtocol | str | None = None,
) -> pd.DataFrame:
    """Every temperature point of notebook 03 on cached outputs: the per-pixel temperature for the
    scores it changes (MSP, MaxEntropy, Energy) and, for mask classification, the class temperature
    for every score and the mIoU on ``val``. Exact metrics, or ``histogram_bits``-bit histograms
    (see ``evaluate_anomaly``). Returns the rows (anomaly and mIoU), appended to ``results_path``
    unless None. ``protocol``: see ``evaluate_anomaly`` (default ``course``). ``scores``: None for
    ``scores.default_scores(segmenter)``."""
    scores = default_scores(segmenter) if scores is None else scores
    kw = dict(
        results_path=results_path,
        cache=cache,
        maps_frames=0,
        histogram_bits=histogram_bits,
        progress=progress,
        frame_stats=False,
        protocol=protocol,
    )
    sensitive = [s for s in scores if s in TEMPERATURE_SENSITIVE]
    frames = (
        [evaluate_anomaly(segmenter, benchmarks, sensitive, temperatures, "pixel", **kw)]
        if sensitive
        else []
    )
    if segmenter.supports_class_temperature:
        frames.append(evaluate_anomaly(segmenter, benchmarks, scores, temperatures, "class", **kw))
        if val is not None:
            frames.append(
                evaluate_miou(
                    segmenter,
                    val,
                    temperatures,
                    results_path=results_path,
                    cache=cache,
                    progress=progress,
                    protocol=protocol,
                )[0]
            )
    return (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_results.COLUMNS)
    )


def sweep_points(segmenter: Segmenter, temperatures: Sequence[float]) -> int:
    """Temperature points of ``temperature_sweep``: per-pixel, plus class for mask
    classification."""
    return len(temperatures) * (2 if segmenter.supports_class_temperature else 1)


# ------------------------------------------------------------------ stored rows, or an evaluation
def anomaly_rows_or_evaluate(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    results_csv: str | Path,
    scores: Sequence[str] | None = None,
    cache: OutputCache | None = None,
    progress: bool = True,
    notes: str = "",
    protocol: str = "course",
) -> tuple[pd.DataFrame, str]:
    """The benchmark rows of ``segmenter`` at T = 1 for ``scores`` (None:
    ``scores.default_scores(segmenter)``): taken from the store when every (benchmark, score) is
    there for its checkpoint under ``protocol`` (``results.stored_anomaly_rows``), else evaluated
    (only the missing scores) and appended. Returns ``(rows, how)`` with ``how`` saying which, for
    the notebook to print."""
    scores = list(default_scores(segmenter) if scores is None else scores)
    name, checkpoint = segmenter.name, segmenter.checkpoint
    datasets = list(benchmarks)
    # Rows of other frames under the same names (data regenerated, masks corrected) are not reused.
    prints = {d: _results.data_fingerprint(ds) for d, ds in benchmarks.items()}
    have = _results.stored_anomaly_rows(
        results_csv, name, checkpoint, scores, datasets, protocol, prints
    )
    done = set(zip(have["dataset"], have["score"])) if len(have) else set()
    missing = [s for s in scores if any((d, s) not in done for d in benchmarks)]
    if not missing:
        return have, f"{name}: all {len(have)} rows reused from {results_csv}"
    evaluate_anomaly(
        segmenter,
        benchmarks,
        scores=missing,
        results_path=results_csv,
        cache=cache,
        progress=progress,
        notes=notes,
        protocol=protocol,
    )
    rows = _results.stored_anomaly_rows(
        results_csv, name, checkpoint, scores, datasets, protocol, prints
    )
    how = f"{name}: evaluated {', '.join(missing)}" + (
        f"; {len(have)} rows reused from {results_csv}" if len(have) else ""
    )
    return rows, how


def miou_or_evaluate(
    segmenter: Segmenter,
    dataset: Dataset,
    results_csv: str | Path,
    cache: OutputCache | None = None,
    progress: bool = True,
    notes: str = "",
    protocol: str = "course",
) -> tuple[float, str]:
    """Cityscapes-val mIoU (fraction) of ``segmenter`` at class temperature 1 under ``protocol``:
    stored for its checkpoint (``results.stored_miou``), or evaluated and appended. Returns
    ``(miou, how)``."""
    stored = _results.stored_miou(
        results_csv,
        segmenter.name,
        segmenter.checkpoint,
        protocol,
        fingerprint=_results.data_fingerprint(dataset),
    )
    if stored is not None:
        return stored, f"{segmenter.name}: mIoU reused from {results_csv}"
    rows, _ = evaluate_miou(
        segmenter,
        dataset,
        results_path=results_csv,
        cache=cache,
        dataset_name=_results.MIOU_DATASET,
        progress=progress,
        notes=notes,
        protocol=protocol,
    )
    return float(rows["miou"].iloc[0]), f"{segmenter.name}: mIoU evaluated on {len(dataset)} frames"


# ----------------------------------------------------------------------------- maps for figures
def frame_maps(
    segmenter: Segmenter,
    item: dict,
    scores: Sequence[str] = baseline_scores(),
    temperature: float = 1.0,
    class_temperature: float = 1.0,
    label_key: str = "label",
) -> dict:
    """Score maps of one data set item for figures:
    ``{"image", "label", "pred", "maps": {score: [H, W]}}``
    at the segmenter's evaluation size (image resized bilinearly to match)."""
    label = torch.as_tensor(item[label_key])
    size = segmenter.eval_size(tuple(label.shape[-2:]))
    raw = segmenter.raw_outputs(item["image"])
    class_map = segmenter.class_map(raw, size, class_temperature=class_temperature)
    extra_names = tuple(getattr(segmenter, "extra_score_names", ()))
    extras = segmenter.extra_scores(raw, size) if any(s in extra_names for s in scores) else {}
    maps = {
        s: extras[s]
        if s in extra_names
        else get_score(s)(
            class_map if s in NEEDS_VOID_CHANNEL else class_map[:NUM_CLASSES],
            temperature=temperature,
        )
        for s in scores
    }
    image = F.interpolate(
        item["image"][None].float(), size=size, mode="bilinear", align_corners=False
    )[0]
    return {
        "image": image.clamp(0, 255).byte(),
        "label": resize_label(label, size),
        "pred": class_argmax(class_map[:NUM_CLASSES]),
        "maps": maps,
        "stem": item.get("stem", ""),
    }


# ------------------------------------------------------------------------- conventions side by side
def compare_conventions(
    segmenter: Segmenter,
    benchmarks: dict[str, Dataset],
    val: Dataset | None = None,
    scores: Sequence[str] = baseline_scores(),
    protocols: Sequence[str | EvalProtocol] = (
        "course",
        "smiyc",
        "blocks2x2",
        "full_resolution",
        "per_image",
        "legacy",
    ),
    results_path: str | Path | None = "results/results.csv",
    cache: OutputCache | None = None,
    num_workers: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """The same model under each evaluation protocol (``anomalyseg.protocol``), at T = 1: anomaly
    rows for ``scores`` on ``benchmarks`` and, with ``val``, the mIoU, each row carrying its
    protocol's name. One output cache serves every protocol that resizes and stores the logits
    alike, so the extra protocols cost metrics, not forward passes (``legacy`` runs its own).
    Rows are appended to ``results_path`` (None: not stored); ``report.conventions_table`` sets
    them side by side."""
    cache = cache if cache is not None else OutputCache()
    out = []
    for p in protocols:
        out.append(
            evaluate_anomaly(
                segmenter,
                benchmarks,
                scores,
                results_path=results_path,
                cache=cache,
                maps_frames=0,
                num_workers=num_workers,
                progress=progress,
                protocol=p,
            )
        )
        if val is not None:
            out.append(
                evaluate_miou(
                    segmenter,
                    val,
                    results_path=results_path,
                    cache=cache,
                    num_workers=num_workers,
                    progress=progress,
                    protocol=p,
                )[0]
            )
    return pd.concat(out, ignore_index=True)
