"""Evaluation of large runs on N devices: forward passes sharded with Lightning, metrics once.

The forward pass is the expensive step of an evaluation (EoMT-L: ~50 MB of outputs a frame, a
few hundred milliseconds on a GPU), the metrics are cheap but pool every pixel of a data set, so
the two are split:

1. ``predict_to_cache``: ``lightning.Trainer.predict`` runs ``segmenter.raw_outputs`` over the
   frames of the benchmarks and of Cityscapes val, split across the processes by Lightning's
   distributed sampler for prediction (each frame on exactly one rank, none twice); a
   ``BasePredictionWriter`` (``CacheWriter``) writes each frame's outputs into the existing
   ``evaluate.OutputCache`` on disk, under the same key a one-device evaluation would use.
2. On global rank 0 only, ``evaluate.evaluate_anomaly`` / ``evaluate_miou`` (or
   ``evaluate_sharded``, which calls them) read every frame back from that cache, run no forward
   pass, pool the pixels and store the rows, once.

The numbers are identical to a one-device run: each frame's outputs come from the same function
under the same protocol settings (``protocol.applied``), are stored in the dtypes ``raw_outputs``
returns, and the pooled metrics are computed by the same code over the same frames in the same
order. Frames already in the cache are not computed again (a crashed run resumes). Frames that the
``course`` protocol skips (no anomaly pixel after the resize) are predicted too, and skipped by
the metrics as before: a few wasted forwards instead of a second copy of the skip rule.

Launch: with ``strategy="ddp"`` Lightning starts the other ranks by running the same command
again (``anomalyseg eval --devices N ...`` or ``python script.py``); every rank reaches
``predict_to_cache``, which returns ``True`` on the rank that then computes the metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .evaluate import OutputCache, _readable, evaluate_anomaly, evaluate_miou, frame_name
from .protocol import EvalProtocol, _segmenters, applied, get_protocol
from .results import MIOU_DATASET, new_run_id


class _Frames(Dataset):
    """Every frame of several data sets as one sequence: item ``{"dataset": name, "frame": str,
    "image": uint8 [3, H, W] or None}``; None for a frame whose outputs are already cached (checked
    in the loader's workers, beside the decoding)."""

    def __init__(self, datasets: dict[str, Dataset], cache: OutputCache, segmenter, key: str):
        self.datasets, self.cache, self.segmenter, self.key = datasets, cache, segmenter, key
        self.index = [(name, i) for name, ds in datasets.items() for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        name, j = self.index[i]
        item = self.datasets[name][j]
        frame = frame_name(item)
        path = self.cache.path(self.segmenter, name, frame, self.key)
        done = path.exists() and _readable(path)
        return {"dataset": name, "frame": frame, "image": None if done else item["image"]}


def _first(batch: list[dict]) -> dict:
    return batch[0]  # one frame per step: frames differ in size


def _move(segmenter, device: torch.device) -> None:
    """Put the networks of ``segmenter`` (and of the segmenters it wraps, heads held in dicts
    included) on ``device`` and point their ``device`` attribute at it."""
    for seg in _segmenters(segmenter):
        for name, value in list(vars(seg).items()):
            if isinstance(value, nn.Module):
                value.to(device)
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, nn.Module) for v in value.values())
            ):
                for v in value.values():
                    v.to(device)
            elif name == "device":
                setattr(seg, name, device)


class SegmenterPredictor(L.LightningModule):
    """A ``Segmenter`` (``models/base.py``) as a LightningModule for ``Trainer.predict``.

    ``predict_step`` takes one item of ``_Frames`` and returns ``{"dataset", "frame", "raw"}``,
    ``raw`` being ``segmenter.raw_outputs(image)`` (CPU tensors, e.g. EoMT's ``mask_logits``
    float16 ``[N, Q, S/4, S/4]`` and ``class_logits`` ``[N, Q, C+1]``, ERFNet's logits
    ``[C, h, w]``), or ``raw=None`` for a frame already cached. The segmenter's networks are moved
    to this rank's device when prediction starts (``predict_to_cache`` moves them back after)."""

    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def on_predict_start(self) -> None:
        _move(self.segmenter, self.trainer.strategy.root_device)

    def predict_step(self, item: dict, batch_idx: int) -> dict[str, Any]:
        raw = None if item["image"] is None else self.segmenter.raw_outputs(item["image"])
        return {"dataset": item["dataset"], "frame": item["frame"], "raw": raw}


class CacheWriter(BasePredictionWriter):
    """Writes each predicted frame's raw outputs into ``cache`` under ``key`` as soon as they exist
    (``OutputCache.put``: one safetensors file a frame, written atomically), so no rank holds a
    data set's outputs in memory and an interrupted run keeps what it finished."""

    def __init__(self, cache: OutputCache, segmenter, key: str):
        super().__init__(write_interval="batch")
        self.cache, self.segmenter, self.key = cache, segmenter, key
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if prediction["raw"] is not None:
            self.cache.put(
                self.segmenter,
                prediction["dataset"],
                prediction["frame"],
                prediction["raw"],
                self.key,
            )
            self.written += 1


def _trainer(
    accelerator: str, devices, strategy: str, callbacks: list, progress: bool
) -> L.Trainer:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            callbacks=callbacks,
            inference_mode=True,
        )
    except (MisconfigurationException, RuntimeError, ImportError, ValueError) as e:
        # an unknown accelerator, or one this machine lacks (no GPU, no torch_xla for tpu)
        raise ValueError(
            f"sharded evaluation: Lightning refused accelerator={accelerator!r}, devices="
            f"{devices!r}, strategy={strategy!r} (--accelerator / --devices / --strategy): "
            f"{' '.join(str(e).split())} Expected e.g. --accelerator gpu --devices 4 --strategy "
            "ddp on a machine with 4 GPUs, or --accelerator cpu --devices 2 --strategy ddp (gloo) "
            "for a test without one."
        ) from e


def evaluation_sets(
    benchmarks: dict[str, Dataset] | None, val: Dataset | None
) -> dict[str, Dataset]:
    """The data sets of an evaluation under the names its cache folders carry: the benchmarks'
    (``load_benchmarks`` keys) and ``MIOU_DATASET`` for Cityscapes val."""
    return {**(benchmarks or {}), **({MIOU_DATASET: val} if val is not None else {})}


def require_disk_cache(cache: OutputCache | None) -> None:
    """ValueError unless ``cache`` is an ``OutputCache`` on disk, the only thing the ranks share."""
    if cache is None or cache.root is None:
        raise ValueError(
            "sharded evaluation needs an output cache on disk (--cache-dir, or OutputCache(root)): "
            "each process writes its frames' outputs there and rank 0 computes the metrics from "
            "them. Give a folder with room for the outputs (EoMT-L at 1024: ~50 MB a frame)."
        )


def predict_to_cache(
    segmenter,
    datasets: dict[str, Dataset],
    cache: OutputCache,
    *,
    protocol: EvalProtocol | str | None = None,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    strategy: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
) -> bool:
    """Compute the raw outputs of every frame of ``datasets`` (``{name: Dataset}``, items with
    ``"image"`` uint8 ``[3, H, W]`` and ``"stem"``) not yet in ``cache``, sharded over ``devices``
    with ``Trainer.predict``, and write them into ``cache``.

    ``name`` must be the name the evaluation uses for that data set (the benchmarks' keys of
    ``load_benchmarks``, ``"cityscapes_val"`` for ``evaluate_miou``'s default), and ``protocol``
    (default ``course``) the evaluation's: its input resize and logits dtype are set on the
    segmenter for the forward passes and enter the cache key, as in ``evaluate.collect_outputs``.
    ``accelerator`` / ``devices`` / ``strategy`` are Lightning's (``"cpu"``, ``2``, ``"ddp"``:
    two processes over gloo). Every process waits for the others before returning, with the
    segmenter back on the device it came on.

    Returns True on global rank 0, the one process that then computes the metrics from the cache
    (``evaluate_sharded``), False on the others. Raises ValueError when ``cache`` is in memory (the
    ranks share nothing but the disk) or when Lightning refuses the device settings.
    """
    require_disk_cache(cache)
    protocol = get_protocol(protocol)
    with applied(segmenter, protocol):  # as collect_outputs: the forward settings and the cache key
        key = cache.key(segmenter)
        writer = CacheWriter(cache, segmenter, key)
        trainer = _trainer(accelerator, devices, strategy, [writer], progress)
        frames = _Frames(datasets, cache, segmenter, key)
        loader = DataLoader(
            frames, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_first
        )
        home = getattr(segmenter, "device", torch.device("cpu"))
        trainer.predict(SegmenterPredictor(segmenter), dataloaders=loader, return_predictions=False)
        # Back where the key was computed: the weights' fingerprint sums large tensors, and a GPU
        # may sum them in another order, which would give rank 0 another key than the writers'.
        _move(segmenter, home)
        trainer.strategy.barrier()  # rank 0 reads what every rank wrote
    return trainer.is_global_zero


def evaluate_sharded(
    segmenter,
    benchmarks: dict[str, Dataset] | None,
    val: Dataset | None,
    cache: OutputCache,
    *,
    accelerator: str = "auto",
    devices: int | str | Sequence[int] = "auto",
    strategy: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    results_path: str | Path | None = "results/results.csv",
    protocol: EvalProtocol | str | None = None,
    run_id: str | None = None,
    **anomaly_kwargs,
) -> pd.DataFrame | None:
    """``evaluate_anomaly`` on ``benchmarks`` and ``evaluate_miou`` on ``val`` (either may be None)
    with the forward passes sharded over ``devices`` (``predict_to_cache``) and the metrics
    computed once, on rank 0, from ``cache``. ``anomaly_kwargs`` go to ``evaluate_anomaly``
    (``scores``, ``temperatures``, ``fpr_convention``...). Returns the rows (one frame, the two
    evaluations' rows concatenated) on rank 0 and None on the other ranks."""
    if not predict_to_cache(
        segmenter,
        evaluation_sets(benchmarks, val),
        cache,
        protocol=protocol,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_workers=num_workers,
        progress=progress,
    ):
        return None
    run_id = run_id or new_run_id(segmenter.name)  # one run: anomaly and mIoU rows together
    common = {
        "results_path": results_path,
        "run_id": run_id,
        "cache": cache,
        "progress": progress,
        "protocol": protocol,
    }
    rows = []
    if benchmarks:
        rows.append(evaluate_anomaly(segmenter, benchmarks, **anomaly_kwargs, **common))
    if val is not None:
        rows.append(evaluate_miou(segmenter, val, dataset_name=MIOU_DATASET, **common)[0])
    return pd.concat(rows, ignore_index=True) if rows else None
