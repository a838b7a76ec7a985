"""Lightning callbacks shared by every training: console progress under ``anomalyseg run-all``."""

from __future__ import annotations

import lightning as L

from ..progress import EVERY_S, ProgressLine, console_progress


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
