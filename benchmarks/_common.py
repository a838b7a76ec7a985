"""Helpers shared by the speed and memory benchmarks in ``benchmarks/`` (never used by the pipeline,
so they live beside the scripts, not in the package; a script run as ``python benchmarks/x.py``
finds this module because Python puts the script's folder first on ``sys.path``).

- ``machine_line``: one line naming the CPU, its cores, the load average, torch/transformers
  versions and the accelerator, printed above every table so a figure never loses its machine.
- ``script_device``: ``--device`` through the package's own vocabulary (``devices.resolve_device``),
  a device it refuses ending the script with its message.
- ``sync``: ``torch.cuda.synchronize`` on CUDA (a no-op on the CPU), around every GPU timing.
- ``PeakMemory``: the peak memory a block needs beyond what it starts with (weights and inputs
  allocated before it are not counted). On CUDA ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``, minus ``memory_allocated`` at the start (tensors only, not the
  caching allocator's reserve); on the CPU the rise of the peak resident set (``VmHWM`` of
  ``/proc/self/status``, reset to the current resident set through ``/proc/self/clear_refs``)
  over the resident set when the block starts. Memory that an earlier block freed into the C
  allocator without giving it back to the system can be reused unseen, so CPU figures are lower
  bounds for small blocks; the large buffers of a forward pass are mmap-backed and counted.
- ``run_timed``: warm-up runs (excluded; the last one is also the memory pass), then timed runs
  of several callables interleaved, so that a drifting machine load (shared CI runners, several
  engineers on two cores) hits each of them alike and their ratio stays meaningful.
- ``markdown_table``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from anomalyseg.devices import resolve_device

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_model() -> str:
    """CPU model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    path = Path("/proc/cpuinfo")
    if path.exists():
        for line in path.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average (NaN where the system has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} torch threads)"


def machine_line(device: torch.device | str) -> str:
    """``machine: <CPU>, <n> cores, load average <x>; torch <v>, transformers <v>; device:
    <name>``."""
    try:
        import transformers

        tf = f", transformers {transformers.__version__}"
    except ImportError:  # pragma: no cover - transformers is a dependency
        tf = ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, load average {load_average():.2f}; torch "
        f"{torch.__version__}{tf}, Python {platform.python_version()}; device: "
        f"{device_name(device)}"
    )


def script_device(name: str) -> torch.device:
    """``devices.resolve_device(name)`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); where the package
    refuses the device (e.g. ``cuda`` on a machine without one), the script exits with that
    one-paragraph message instead of a traceback."""
    try:
        return resolve_device(name)
    except ValueError as e:
        raise SystemExit(f"--device {name}: {e}") from None


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on the CPU), so that wall-clock timings cover it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device | str, dtype: str):
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a null context for ``fp32``."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[dtype])


# ----------------------------------------------------------------------------- memory
def _status_kib(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.mib``: peak MiB beyond the start (see the
    module docstring).

    ``pm.method`` names what was measured: ``cuda max_memory_allocated``, ``VmHWM rise`` or
    ``unavailable`` (no ``/proc``; ``mib`` is then NaN).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.mib = float("nan")
        self.method = "unavailable"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda max_memory_allocated"
        elif Path("/proc/self/status").exists() and _reset_peak_rss():
            self._base = _status_kib("VmRSS")
            self.method = "VmHWM rise"
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "cuda max_memory_allocated":
            sync(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        elif self.method == "VmHWM rise":
            self.mib = max(0, _status_kib("VmHWM") - self._base) / 1024


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Per-callable result of ``run_timed``: seconds of each timed run, the first (warm-up) call's
    seconds (compilation included) and the peak memory of the last warm-up call."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(
        default_factory=list
    )  # process CPU time (all threads) of each timed run
    first_call_s: float = float("nan")
    peak_mib: float = float("nan")
    memory_method: str = ""

    @property
    def total_s(self) -> float:
        return sum(self.seconds)

    @property
    def total_cpu_s(self) -> float:
        return sum(self.cpu_seconds)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)


def run_timed(
    fns: dict[str, Callable[[], object]], iters: int, warmup: int, device: torch.device | str
) -> dict[str, Timing]:
    """Run each callable ``warmup`` times (at least once), then ``iters`` timed rounds, each round
    calling every callable once in turn (interleaved), each timed in wall-clock seconds and in
    process CPU seconds (all threads: on a CPU shared with other jobs, a single thread's CPU time
    is the stable measure of its work, while the wall clock also counts the waits for a core).
    The first call is timed on its own (``first_call_s``: compilation and lazy initialisation
    included); the last warm-up call is the memory pass (``peak_mib``, with the first call when
    ``warmup`` is 1). The GPU is synchronised before and after every timed call. Callers wrap
    this in ``torch.inference_mode()``."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    warmup = max(warmup, 1)
    out = {name: Timing() for name in fns}
    for name, fn in fns.items():
        for i in range(warmup):
            with PeakMemory(device) if i == warmup - 1 else contextlib.nullcontext() as pm:
                sync(device)
                t = time.perf_counter()
                fn()
                sync(device)
                if i == 0:
                    out[name].first_call_s = time.perf_counter() - t
            if pm is not None:
                out[name].peak_mib, out[name].memory_method = pm.mib, pm.method
    sync(device)
    for _ in range(iters):
        for name, fn in fns.items():
            sync(device)
            c, t = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            out[name].seconds.append(time.perf_counter() - t)
            out[name].cpu_seconds.append(time.process_time() - c)
    return out


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are ``str()``-ed."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``text`` as dicts keyed by header (for tests)."""
    lines: list[str] = []
    for line in map(str.strip, text.splitlines()):
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the first table ended
    if len(lines) < 2:
        return []

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip("|").split("|")]

    headers = cells(lines[0])
    return [dict(zip(headers, cells(line))) for line in lines[2:]]
