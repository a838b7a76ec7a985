"""The four trainings from YAML configs: ``anomalyseg fit -c CONFIG.yaml`` and ``validate``.

Lightning's own ``LightningCLI`` (jsonargparse) reads the config: ``model`` and ``data`` name a
``class_path`` (``ErfnetModule``, ``EomtModule``, ``EomtOEModule``, ``AnomalyHeadModule``;
``CityscapesDataModule``, ``EomtDataModule``, ``EomtOEDataModule``) and their ``init_args``, with
seed 000's key names where it has them (``model.init_args.outlier_weight``,
``data.init_args.ood_prob``); every ``--trainer.*`` option (devices, strategy, num_nodes,
precision, accumulate_grad_batches, logger), ``--print_config`` and ``--ckpt_path`` (resume) come
with it. The shipped recipes are in the repository's ``configs/``.

On N processes (``--trainer.devices=N --trainer.strategy=ddp``, or ``srun`` on a SLURM cluster)
every training shards its data per process (``StepSampler``; validation frames split, none
repeated), sums the validation confusion matrix over the processes before the mIoU, and only the
first process writes the checkpoint export (``RunCheckpoint``) and the logs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .callbacks import quiet_lightning, use_steps_progress_bar

SUBCOMMANDS = ("fit", "validate")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps a run in one folder and exports the trained weights.

    ``dirpath`` None: the trainer's ``default_root_dir`` (not a per-version log folder), so that
    ``--ckpt_path <folder>/last.ckpt`` resumes. At the end of training ``last.ckpt`` is written
    with the final state and the first process exports the weights with the module's
    ``export_weights(ckpt, folder)`` (``erfnet.safetensors``, ``model/``, ``head.safetensors``),
    the files ``load_erfnet``, ``load_eomt`` and ``load_anomaly_head`` read.
    Defaults: ``last.ckpt`` only (``save_top_k=0``), every ``every_n_train_steps`` steps.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        every_n_train_steps: int | None = None,
        save_top_k: int = 0,
        monitor: str | None = None,
        mode: str = "max",
        export: bool = True,
    ):
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=save_top_k,
            monitor=monitor,
            mode=mode,
            every_n_train_steps=every_n_train_steps,
        )
        self.export = export

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = str(trainer.default_root_dir)
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer, pl_module) -> None:
        last = Path(self.dirpath) / "last.ckpt"
        trainer.save_checkpoint(
            last, weights_only=False
        )  # the full state; every process calls it, the first writes
        if self.export and trainer.is_global_zero:
            exported = pl_module.export_weights(last, self.dirpath)
            print(f"exported {type(pl_module).__name__} weights to {exported}")
        trainer.strategy.barrier("RunCheckpoint.export")


class AnomalysegCLI(LightningCLI):
    """``LightningCLI`` with subclass configs (``class_path`` / ``init_args``) for the model and
    the data, the config saved beside the logs (overwritten on resume), and the modules' own
    optimizers. ``--ckpt_path`` is read with ``weights_only=True`` (checkpoints are untrusted)."""

    def __init__(self, args: list[str]):
        super().__init__(
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
        )

    def instantiate_trainer(self, **kwargs):
        with quiet_lightning():  # Lightning's tips as it builds the Trainer
            trainer = super().instantiate_trainer(**kwargs)
        use_steps_progress_bar(trainer)
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if config.get("weights_only") is None:  # Lightning's None would load a full pickle
            config["weights_only"] = True
        if self.subcommand == "fit":
            message = schedule_mismatch(config)
            if message:
                warnings.warn(message, UserWarning, stacklevel=2)
        message = sync_batchnorm_off_cuda(config)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)


def schedule_mismatch(config) -> str | None:
    """A warning text when a fit's ``trainer.max_steps`` differs from the module's
    ``model.init_args.max_steps`` (the length of its learning-rate and annealing schedules), else
    None: overriding only ``--trainer.max_steps`` would stop a 4000-step schedule after 3 steps, or
    run past its end. A stop before the end can be intended (resume tests), so it is a warning."""
    trainer = config.get("trainer") or {}
    init_args = (config.get("model") or {}).get("init_args") or {}
    stop, schedule = trainer.get("max_steps"), init_args.get("max_steps")
    if stop is None or schedule is None or int(stop) < 0 or int(stop) == int(schedule):
        return None
    side = "before" if int(stop) < int(schedule) else "after"
    return (
        f"trainer.max_steps = {stop} but model.init_args.max_steps = {schedule}: the module's "
        f"learning-rate and annealing schedules run over {schedule} steps and the trainer stops "
        f"after {stop}. Set both (e.g. --trainer.max_steps={stop} "
        f"--model.init_args.max_steps={stop}) unless stopping {side} the schedule's end is "
        "intended."
    )


def sync_batchnorm_off_cuda(config) -> str | None:
    """Switch ``trainer.sync_batchnorm`` off in ``config`` where it cannot work, and say so;
    None when it stays as it is.

    Lightning's ``sync_batchnorm`` turns every batch norm into torch's ``SyncBatchNorm``, which
    syncs over CUDA (NCCL) only: on N > 1 CPU processes (gloo) its forward raises ("expected
    input tensor to be on GPU"). ERFNet's Cityscapes config asks for it for its GPU runs, so on
    an accelerator other than CUDA (``cpu``, ``mps``, or ``auto`` / ``gpu`` on a machine without
    CUDA) each process keeps its own batch statistics instead, as without the option."""
    import torch

    trainer = config.get("trainer") or {}
    accelerator = trainer.get("accelerator") or "auto"
    if not trainer.get("sync_batchnorm") or not isinstance(accelerator, str):
        return None
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return None
    trainer["sync_batchnorm"] = False
    return (
        f"trainer.sync_batchnorm = true needs CUDA (torch's SyncBatchNorm syncs over NCCL), and "
        f"this run's accelerator is {accelerator!r}"
        + ("" if accelerator == "cpu" else " without CUDA")
        + ": switched off, each process normalises with its own batch's statistics."
    )


def run_lightning_cli(argv: list[str]) -> None:
    """``argv`` = ``["fit" | "validate", "-c", CONFIG, ...overrides]``, as after ``anomalyseg``."""
    if not argv or argv[0] not in SUBCOMMANDS:
        raise ValueError(
            f"anomalyseg: expected one of {list(SUBCOMMANDS)} before the config, got {argv[:1]}."
        )
    with warnings.catch_warnings(), quiet_lightning():
        # `anomalyseg` hands on its own argv: the same list as sys.argv[1:], which is intended here
        warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
        AnomalysegCLI(list(argv))
