"""Progress on the console the user is watching.

In Jupyter, tqdm and Lightning draw widgets. Under ``anomalyseg run-all`` nobody sees those widgets:
papermill runs each kernel headless and shows only its cell counter, so a 5-minute training cell
looked frozen. ``run-all`` therefore sets ``ANOMALYSEG_CONSOLE_PROGRESS=1`` for its kernels; then
long loops also print a throttled one-line report (``[progress] ...``, at most one every
``EVERY_S`` seconds, plus the last step) that ``run-all`` forwards to its console as it arrives.
The same lines land in the executed notebook, a short log of where the time went.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm as _auto_tqdm

ENV = "ANOMALYSEG_CONSOLE_PROGRESS"
MARK = "[progress] "
EVERY_S = 15.0


def console_progress() -> bool:
    """True in a kernel started by ``anomalyseg run-all`` (see the module docstring)."""
    return os.environ.get(ENV) == "1"


def notice(text: str) -> None:
    """Print ``text``; in a ``run-all`` kernel as a progress line, so the console shows it too."""
    print(f"{MARK}{text}" if console_progress() else text, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressLine:
    """Throttled one-line reports of a loop of ``total`` steps: ``desc: done/total (pct) extra,
    time per step, ETA``. Prints when ``console_progress()`` or ``force``, else nothing."""

    def __init__(
        self,
        desc: str,
        total: int | None,
        every_s: float = EVERY_S,
        force: bool = False,
        start: int = 0,
        unit: str = "step",
    ):
        self.desc, self.total, self.every_s, self.unit = desc, total, every_s, unit
        self.enabled = force or console_progress()
        self._t0, self._n0, self._last, self._printed = (
            time.monotonic(),
            start,
            time.monotonic(),
            None,
        )

    def update(self, done: int, extra: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        last_step = self.total is not None and done >= self.total
        if done == self._printed or (not last_step and now - self._last < self.every_s):
            return
        self._last, self._printed = now, done
        parts = [
            f"{self.desc}: {done}"
            + (f"/{self.total} ({100 * done / max(self.total, 1):.0f}%)" if self.total else "")
        ]
        if extra:
            parts.append(extra)
        steps = done - self._n0
        if steps > 0:
            per = (now - self._t0) / steps
            parts.append(
                f"{per:.2f} s/{self.unit}" if per >= 0.1 else f"{1 / per:.1f} {self.unit}/s"
            )
            if self.total and not last_step:
                parts.append(f"ETA {_duration(per * (self.total - done))}")
            elif last_step:
                parts.append(f"took {_duration(now - self._t0)}")
        # Inside a Lightning fit, rich's progress bar has swapped sys.stdout for a proxy that turns
        # prints into notebook widgets; the proxied stream is the cell's own stdout.
        out = getattr(sys.stdout, "rich_proxied_file", sys.stdout)
        print(MARK + ", ".join(parts), file=out, flush=True)


class tqdm(_auto_tqdm):  # noqa: N801 (tqdm's own name, a drop-in replacement)
    """``tqdm.auto.tqdm`` that also reports through ``ProgressLine`` under ``run-all``."""

    _line = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._line = (
            None
            if self.disable
            else ProgressLine(self.desc or "progress", self.total, unit=self.unit)
        )

    def update(self, n=1):
        out = super().update(n)
        if self._line is not None:
            self._line.update(self.n)
        return out

    def close(self):
        if self._line is not None and self.total and self.n >= self.total:
            self._line.update(
                self.n
            )  # the final line, even when the last update fell in a throttle window
            self._line = None
        super().close()
