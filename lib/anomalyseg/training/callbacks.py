"""Lightning callbacks shared by every training: console progress under ``anomalyseg run-all``, a
progress bar that reads right for step-bounded runs, and ``quiet_lightning``, which keeps
Lightning's console to what concerns the run (``fit_and_export`` and ``anomalyseg fit``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from ..progress import EVERY_S, ProgressLine, console_progress

# Console messages of Lightning and torch that say nothing about the run, each matched exactly so
# that every other warning still shows: torch 2.10 deprecates ``LeafSpec``, which Lightning 2.6's
# own ``utilities/_pytree.py`` still checks for (not ours to change).
QUIET_WARNINGS = ((r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),)
# Lightning's advertisement of its cloud logger, logged (not warned) when a Trainer is built.
QUIET_LOG_MESSAGES = ("try installing [litlogger]",)
_RANK_ZERO_LOG = "lightning.pytorch.utilities.rank_zero"


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(quiet in text for quiet in QUIET_LOG_MESSAGES)


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Within: ``QUIET_WARNINGS`` are ignored and ``QUIET_LOG_MESSAGES`` dropped from Lightning's
    rank-zero log; every other warning and message is shown as before, and both filters are gone
    after."""
    log, drop = logging.getLogger(_RANK_ZERO_LOG), _DropMessages()
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message, category in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        log.removeFilter(drop)


class StepsProgressBar(RichProgressBar):
    """Lightning's rich progress bar, whose description reads ``Epoch 3`` where Lightning's reads
    ``Epoch 3/-2``: every training here is bounded by ``max_steps`` with ``max_epochs=-1``
    (Lightning's bar prints ``max_epochs - 1``). Put in place by ``use_steps_progress_bar``."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            description = f"Epoch {current_epoch}"
            return f"{description:{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)


def use_steps_progress_bar(trainer: L.Trainer) -> None:
    """Make ``trainer``'s ``RichProgressBar`` (Lightning's default, or one a config names; the
    Trainer constructed, not yet fitted) a ``StepsProgressBar``, its settings kept; any other bar,
    or none, stays as it is."""
    for callback in trainer.callbacks:
        if type(callback) is RichProgressBar:
            # the same object re-classed: every setting the bar was made with is kept as it is
            callback.__class__ = StepsProgressBar


class ConsoleProgress(L.Callback):
    """Lightning callback: the training step, loss and ETA as ``ProgressLine`` reports (validation
    metrics as they are logged), for the console of ``run-all``; added by
    ``console_callbacks()``."""

    def __init__(self, every_s: float = EVERY_S):
        self.every_s = every_s
        self._line: ProgressLine | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self._line = ProgressLine(
            f"training {type(pl_module).__name__}",
            total,
            self.every_s,
            force=True,
            start=trainer.global_step,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._line is None or not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        extra = [f"loss {float(loss):.4f}"] if loss is not None else []
        extra += [
            f"{k} {float(v):.4f}"
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val")
        ]
        self._line.update(trainer.global_step, ", ".join(extra))


def console_callbacks() -> list[L.Callback]:
    """``[ConsoleProgress()]`` under ``run-all``, else ``[]``: what every trainer adds to its
    callbacks."""
    return [ConsoleProgress()] if console_progress() else []
