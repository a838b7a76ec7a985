"""The settings of a training run: one shared record and one record per method.

Every training entry point takes the same shape::

    train_erfnet(data_root, out_dir, train: TrainSettings, config: ErfnetConfig)
    train_eomt(eomt, data_root, out_dir, train: TrainSettings, config: EomtTrainConfig)
    finetune_oe(eomt, data_root, coco_root, out_dir, train: TrainSettings, config: OEConfig)
    train_anomaly_head(eomt, data_root, coco_root, out_dir, train: TrainSettings, config:
    HeadConfig)

``TrainSettings`` holds what every run has (steps, batch, crops, optimiser lr, seed, workers,
resume, device, precision, logger, validation and checkpoint cadence, progress, callbacks); the
method's record holds what only that method has (``OEConfig`` lives in ``training/oe_config.py``
and is re-exported here). Fields are plain typed values, so a YAML file of them is read by
jsonargparse / LightningCLI (issue 17). A shared field left at ``None`` takes the method's
recipe default (``RECIPE_DEFAULTS``), so ``TrainSettings(max_steps=10)`` changes only the steps.

``fit_and_export`` is the one Lightning trainer build of the four: ``last.ckpt`` at a fixed
cadence and at the end, the one resume rule (``training.data.resume_from``), logs, devices and
strategy from the shared record, and the export of the final weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from ..devices import lightning_device
from .callbacks import console_callbacks, quiet_lightning, use_steps_progress_bar
from .data import check_counts, resume_from
from .oe_config import OEConfig

__all__ = [
    "LOGGERS",
    "RECIPE_DEFAULTS",
    "EomtTrainConfig",
    "ErfnetConfig",
    "HeadConfig",
    "OEConfig",
    "TrainSettings",
    "fit_and_export",
    "make_logger",
    "records_from_flat",
    "weight_settings",
]

LOGGERS = ("csv", "wandb")


@dataclass
class TrainSettings:
    """What every training run has, whatever the method (transformers-config style: one field,
    one documented meaning and unit).

    Args:
        max_steps: optimiser steps to train (the poly schedules' length; ``last.ckpt`` continues
            up to it). None: the method's recipe (ERFNet, EoMT, OE 2000; anomaly head 1000).
        batch_size: crops per optimiser step and per device. None: the recipe (ERFNet 8, EoMT 4,
            OE 16, head 8).
        crop_size: training crop in pixels, ``(H, W)`` or one side for a square. ERFNet: H and W
            divisible by 8, None = 512x1024. EoMT-based runs: only the model's ``image_size``
            square (transformers' EoMT has fixed position embeddings), None = that size.
        scale_range: scale-jitter factors ``(low, high)`` of the crops, relative to ``base_size``.
        base_size: frame size ``(H, W)`` in pixels the jitter is relative to. None: ERFNet the
            stored frame; EoMT-based runs the frame at evaluation scale (short side = the model's
            ``image_size``), which also sets the size of pasted objects.
        lr: peak learning rate (AdamW / Adam, before the poly decay). None: the recipe (ERFNet
            5e-4, EoMT and OE 1e-4, head 1e-3).
        seed: seeds the initial weights, the data stream, the augmentations and the pastes.
        num_workers: DataLoader worker processes. None: the recipe (ERFNet 2, others 0).
        resume: continue ``out_dir/last.ckpt`` up to ``max_steps`` when it exists (refused when it
            is damaged, past ``max_steps`` or, for OE and the head, of other method settings).
        accelerator: Lightning's (``"auto"``, ``"cpu"``, ``"gpu"``, ``"mps"``...) or a torch
            device string (``"cuda"``, ``"cuda:1"``; see ``anomalyseg.devices``). None:
            ``"auto"``, except that a run given an ``EomtSegmenter`` trains on its device.
        devices: Lightning's ``devices``: a count, a list of indices or ``"auto"``.
        strategy: Lightning's ``strategy`` (``"auto"``, ``"ddp"``...).
        precision: Lightning's ``precision`` (``"32-true"``, ``"bf16-mixed"``...).
        logger: ``"csv"`` (``out_dir/logs/version_*/metrics.csv``, read by
            ``results.training_log``), ``"wandb"`` (Weights & Biases, ``pip install wandb``; one
            run per ``out_dir``), a Lightning ``Logger``, or None (no logs).
        val_every_n_steps: validate every this many steps (and at the end). None: ERFNet each
            epoch; EoMT at the end; OE not at all; the head has no validation.
        limit_val_batches: Lightning's ``limit_val_batches`` (a count or a fraction); None: all.
        checkpoint_every_n_steps: write ``last.ckpt`` every this many steps (and at the end).
            None: every 5% of ``max_steps``; ERFNet at each validation.
        progress: show the progress bar and the model summary.
        callbacks: extra Lightning callbacks (appended after the run's own).
    """

    max_steps: int | None = None
    batch_size: int | None = None
    crop_size: int | tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None
    lr: float | None = None
    seed: int = 0
    num_workers: int | None = None
    resume: bool = True
    accelerator: str | None = None
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    logger: str | Logger | None = "csv"
    val_every_n_steps: int | None = None
    limit_val_batches: int | float | None = None
    checkpoint_every_n_steps: int | None = None
    progress: bool = True
    callbacks: list[Callback] = field(default_factory=list)

    def with_defaults(self, defaults: dict) -> TrainSettings:
        """A copy whose fields left at None take ``defaults`` (a method's ``RECIPE_DEFAULTS``)."""
        unknown = set(defaults) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"TrainSettings has no fields {sorted(unknown)}.")
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def weight_settings(self) -> dict:
        """The fields that decide the trained weights (not workers, devices, logs, cadence...)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_ONLY}

    def stream_settings(self) -> dict:
        """The data module's keyword arguments these settings decide (batch size, workers, seed,
        scale jitter and the size it is relative to), for ``EomtOEDataModule`` /
        ``oe_datamodule``."""
        names = ("batch_size", "num_workers", "seed", "scale_range", "base_size")
        return {name: getattr(self, name) for name in names}

    def checked(self, what: str) -> TrainSettings:
        """``self`` after the checks every trainer makes (``ValueError`` naming the field)."""
        check_counts(max_steps=self.max_steps, batch_size=self.batch_size)
        if (
            isinstance(self.num_workers, bool)
            or not isinstance(self.num_workers, int)
            or self.num_workers < 0
        ):
            raise ValueError(
                f"{what}: TrainSettings.num_workers={self.num_workers!r}; expected an integer >= 0."
            )
        return self

    def square_crop(self, size: int, what: str) -> None:
        """Refuse a ``crop_size`` other than the ``size`` x ``size`` windows of an EoMT."""
        crop = self.crop_size
        if crop is not None and tuple(
            crop if isinstance(crop, (tuple, list)) else (crop, crop)
        ) != (size, size):
            raise ValueError(
                f"{what} crop_size={crop!r}: this EoMT takes only {size}x{size} inputs (its "
                "config.image_size; the position embeddings are fixed), so training crops must be "
                f"{size}x{size}. Leave crop_size unset (None) to use the model's size, or build "
                "the model with another image_size."
            )


# Fields that never change the trained weights: not a reason to refuse a resume or to retrain.
RUN_ONLY = frozenset(
    {
        "resume",
        "num_workers",
        "accelerator",
        "devices",
        "strategy",
        "logger",
        "val_every_n_steps",
        "limit_val_batches",
        "checkpoint_every_n_steps",
        "progress",
        "callbacks",
    }
)

# Each method's recipe for the shared fields left at None.
RECIPE_DEFAULTS: dict[str, dict] = {
    "erfnet": {
        "max_steps": 2000,
        "batch_size": 8,
        "crop_size": (512, 1024),
        "lr": 5e-4,
        "num_workers": 2,
    },
    "eomt": {"max_steps": 2000, "batch_size": 4, "lr": 1e-4, "num_workers": 0},
    "oe": {"max_steps": 2000, "batch_size": 16, "lr": 1e-4, "num_workers": 0},
    "anomaly_head": {"max_steps": 1000, "batch_size": 8, "lr": 1e-3, "num_workers": 0},
}


@dataclass
class ErfnetConfig:
    """ERFNet's own settings (the course's ``train/main.py`` recipe).

    Args:
        class_weights: ``"enet"`` (``1 / ln(1.10 + p_c)`` from the train labels' pixel
            frequencies, cached in ``out_dir/class_weights.json``), 19 or 20 weights, or None
            (all 1). The void channel always gets 0.
        input_size: validation frames (labels nearest) are resized to ``(H, W)`` pixels, as the
            course evaluates; None keeps them as stored.
        init_weights: ERFNet weights to start from (e.g. the course's ``erfnet_pretrained.pth``);
            None: random initialisation.
    """

    class_weights: str | list[float] | None = "enet"
    input_size: tuple[int, int] | None = (512, 1024)
    init_weights: str | None = None


@dataclass
class EomtTrainConfig:
    """EoMT training's own settings (upstream tue-mps/eomt's recipe; ``EomtModule``).

    Args:
        trainable: ``"all"`` (the whole network, with masked attention annealed away) or
            ``"heads"`` (class head, mask head, upscaling and queries only).
    """

    trainable: str = "all"


@dataclass
class HeadConfig:
    """The anomaly head's own settings (seed 001; ``AnomalyHeadModule``), paste settings included.

    Args:
        variant: ``"stats"`` (4 statistics of the class map) or ``"hybrid"`` (+ patch features).
        pos_weight: weight of outlier pixels in the BCE (seed 001: 10).
        weight_decay: AdamW weight decay of the head.
        ood_prob: probability that a training frame gets a pasted COCO object. Higher than Outlier
            Exposure's 0.1-0.2 on purpose: pasted pixels are the head's only positive examples,
            and EoMT is frozen, so the segmentation cannot suffer. Default 0.5.
        road_only: paste only onto road pixels (seed 000's ``oe_road_only``).
        perspective_scale: scale objects with their row in the frame (``oe_perspective_scale``).
        object_scale: resize factor of the COCO objects; None scales them with the frames
            (``training.eomt.eval_scale``), exactly as Outlier Exposure does.
    """

    variant: str = "stats"
    pos_weight: float = 10.0
    weight_decay: float = 1e-4
    ood_prob: float = 0.5
    road_only: bool = False
    perspective_scale: bool = False
    object_scale: float | None = None


# ------------------------------------------------------------------------ records <-> flat settings
# Names that earlier versions stored among a zoo model's settings (zoo_train.json, the demo
# weights' manifest) and that are no settings any more: train_eomt's model / hook arguments.
LEGACY_KEYS = frozenset({"model_or_config", "module_cls", "module_kwargs", "sample_transform"})


def weight_settings(settings: dict) -> dict:
    """A flat dict of stored settings without the fields that do not decide the weights
    (``RUN_ONLY``) and the names of earlier versions (``LEGACY_KEYS``): what two runs must share
    to be the same model."""
    return {k: v for k, v in settings.items() if k not in RUN_ONLY and k not in LEGACY_KEYS}


def records_from_flat(settings: dict, config_cls: type, what: str) -> tuple[TrainSettings, object]:
    """Split a flat dict of settings (the zoo's ``train=``) into a ``TrainSettings`` and a
    ``config_cls`` record; ``ValueError`` naming the unknown keys and the known ones."""
    shared = {f.name for f in fields(TrainSettings)}
    own = {f.name for f in fields(config_cls)}
    unknown = sorted(set(settings) - shared - own)
    if unknown:
        raise ValueError(
            f"{what} has unknown settings {unknown}; expected fields of TrainSettings "
            f"({', '.join(sorted(shared))}) or of {config_cls.__name__} ({', '.join(sorted(own))})."
        )
    return (
        TrainSettings(**{k: v for k, v in settings.items() if k in shared}),
        config_cls(**{k: v for k, v in settings.items() if k in own}),
    )


# ---------------------------------------------------------------------------- the one trainer build
def make_logger(logger, out_dir: Path, name: str, run_config: dict | None = None) -> Logger | bool:
    """Lightning logger of ``TrainSettings.logger``: ``"csv"`` (``out_dir/logs``), ``"wandb"``
    (one W&B run per ``out_dir``, so that a resumed run continues its curves; ``run_config``
    recorded), a ``Logger`` as given, or None / False (no logs)."""
    if logger is None or logger is False:
        return False
    if isinstance(logger, Logger):
        return logger
    if logger == "csv":
        return CSVLogger(out_dir, name="logs")
    if logger == "wandb":
        try:
            import wandb  # noqa: F401  (optional: only this logger needs it)
        except ImportError:
            raise ImportError(
                "logger='wandb' logs to Weights & Biases, but the wandb package is not installed. "
                "Install it with `pip install wandb` (then `wandb login`), or use logger='csv' "
                f"(the default), which writes {out_dir / 'logs'}/version_*/metrics.csv."
            ) from None
        from lightning.pytorch.loggers import WandbLogger

        id_file = out_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        wb = WandbLogger(
            project="anomalyseg",
            name=f"{name}-{out_dir.name}",
            save_dir=str(out_dir),
            id=run_id,
            resume="allow",
            config=run_config or {},
        )
        if run_id is None:
            id_file.write_text(str(wb.version))
        return wb
    raise ValueError(
        f"TrainSettings.logger={logger!r}; expected one of {list(LOGGERS)}, a Lightning Logger, or "
        "None."
    )


def fit_and_export(
    module: L.LightningModule,
    data: L.LightningDataModule,
    out_dir: Path,
    train: TrainSettings,
    export: Callable[[Path, Path], Path],
    target: Path,
    *,
    name: str,
    has_val: bool,
    checkpoint: ModelCheckpoint | None = None,
    callbacks: Sequence[Callback] = (),
    validate_each_epoch: bool = False,
    follow_device: torch.device | None = None,
    run_config: dict | None = None,
) -> tuple[L.Trainer, Path]:
    """The Lightning run of every training: fit ``module`` on ``data`` as ``train`` (resolved:
    no None left in the recipe fields) says, then ``export(out_dir/"last.ckpt", target)`` on rank 0.

    - ``last.ckpt`` every ``train.checkpoint_every_n_steps`` (default 5% of ``max_steps``),
      unless ``checkpoint`` (e.g. ERFNet's best-by-``val_miou``) is given, and always at the end
      with the full state (optimizer too), so that it can be resumed.
    - Resumed by the one rule ``training.data.resume_from`` when ``train.resume``.
    - Devices: ``lightning_device(train.accelerator or follow_device, train.devices)`` with
      ``train.strategy`` and ``train.precision``.
    - Validation (``has_val``) every ``train.val_every_n_steps`` steps and at the end, or each
      epoch with ``validate_each_epoch`` when that is None.
    - ``callbacks``: the method's own, before ``train.callbacks``. Logs: ``make_logger``.
    Returns the trainer and ``target``; every rank waits for the export.
    """
    max_steps = int(train.max_steps)
    if checkpoint is None:
        every = train.checkpoint_every_n_steps or max(1, max_steps // 20)
        checkpoint = ModelCheckpoint(
            dirpath=out_dir, save_last=True, save_top_k=0, every_n_train_steps=every
        )
    if validate_each_epoch and not train.val_every_n_steps:
        val_check = {"val_check_interval": None, "check_val_every_n_epoch": 1}
    else:
        every_val = min(train.val_every_n_steps or max_steps, max_steps)
        val_check = {"val_check_interval": every_val, "check_val_every_n_epoch": None}
    accelerator, devices = lightning_device(train.accelerator or follow_device, train.devices)
    with quiet_lightning():
        trainer = L.Trainer(
            max_steps=max_steps,
            max_epochs=-1,
            accelerator=accelerator,
            devices=devices,
            strategy=train.strategy,
            precision=train.precision,
            default_root_dir=out_dir,
            logger=make_logger(train.logger, out_dir, name, run_config),
            callbacks=[checkpoint, *callbacks, *train.callbacks, *console_callbacks()],
            enable_progress_bar=train.progress,
            enable_model_summary=train.progress,
            log_every_n_steps=max(1, min(50, max_steps // 20)),
            num_sanity_val_steps=0,
            limit_val_batches=train.limit_val_batches if has_val else 0,
            **val_check,
        )
    use_steps_progress_bar(trainer)
    last = out_dir / "last.ckpt"
    with warnings.catch_warnings(), quiet_lightning():
        # Expected: a resumed run writes into its own non-empty folder; a resumed epoch end may pass
        # ModelCheckpoint before validation logs val_miou again; the head has no validation.
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        warnings.filterwarnings("ignore", message=r".*could not find the monitored key")
        warnings.filterwarnings(
            "ignore", message=r"You passed in a `val_dataloader` but have no `validation_step`"
        )
        trainer.fit(
            module,
            datamodule=data,
            ckpt_path=resume_from(out_dir, max_steps, train.resume),
            weights_only=True,
        )
    done = None
    if trainer.is_global_zero:
        done = (
            last.is_file()
            and torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            == trainer.global_step
        )
    if not trainer.strategy.broadcast(done, src=0):
        trainer.save_checkpoint(last)  # a collective under DDP: every rank calls it, rank 0 writes
    if trainer.is_global_zero:
        export(last, target)
    trainer.strategy.barrier()
    return trainer, target
