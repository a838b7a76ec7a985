"""``anomalyseg run-all``: execute the numbered notebooks with papermill, each once the notebooks
it reads (``NEEDS``) have finished, up to ``jobs`` at once; and
``anomalyseg demo-weights`` (``train_demo_weights``): train the demo's shipped weights as the
notebooks would (through the zoo, with the preset's notebook parameters) and write them to
``demo_models``' folder and manifest.

Each notebook gets the same common parameters (data and output folders, preset) plus its preset's
overrides from ``notebooks/presets.yaml`` and the user's ``--params`` file, so the tests run
exactly the notebooks a user runs, with smaller numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import yaml

from . import progress as _progress
from .results import new_run_id

NOTEBOOKS = (
    "00_data_prep",
    "01_erfnet_baseline",
    "02_eomt_eval",
    "03_temperature_scaling",
    "04_outlier_exposure",
    "05_anomaly_head",
    "06_comparison_report",
)

# What each notebook reads that an earlier one writes: run-all starts a notebook once these have
# finished. Every need comes earlier in NOTEBOOKS, so the numbered order is one valid order and
# `--jobs 1` runs exactly that.
NEEDS: dict[str, tuple[str, ...]] = {
    # Every notebook opens the workspace, which generates the embedded data set when it is
    # missing: 00 does it first (and a run that starts later runs its first notebook alone).
    "00_data_prep": (),
    "01_erfnet_baseline": ("00_data_prep",),
    # 02 also prints 01's stored ERFNet rows beside its own (mIoU lines, anomaly table, the
    # eomt_auprc_bars figure) when they are there; it does not wait for them.
    "02_eomt_eval": ("00_data_prep",),
    # 01's ERFNet (its checkpoint, input size and cached logits) and 02's EoMT: without them 03
    # leaves ERFNet out and installs or trains the EoMT into checkpoints/eomt a second time.
    "03_temperature_scaling": ("01_erfnet_baseline", "02_eomt_eval"),
    # 02's EoMT is the base; its 'before' rows are reused from the store (else evaluated again).
    "04_outlier_exposure": ("02_eomt_eval",),
    # 02's frozen EoMT; 04 prepares the COCO objects the heads paste (ensure_ood_objects: needed
    # on real COCO, and a coco_max_images other than the embedded data's rewrites them) and
    # stores the eomt_oe rows 05's comparison table reads.
    "05_anomaly_head": ("02_eomt_eval", "04_outlier_exposure"),
    # The report reads everything in the store.
    "06_comparison_report": NOTEBOOKS[:6],
}


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the checkout the package is installed from."""
    here = Path(__file__).resolve().parents[2] / "notebooks"
    if not here.is_dir():
        raise FileNotFoundError(
            f"No notebooks folder at {here}: run-all needs the project checkout (pip install -e . "
            "from a clone), not a bare wheel install."
        )
    return here


def preset_parameters(preset: str, notebook: str, presets_file: Path | None = None) -> dict:
    """Common and per-notebook parameters of ``preset`` from ``notebooks/presets.yaml``."""
    presets = yaml.safe_load((presets_file or notebooks_dir() / "presets.yaml").read_text()) or {}
    if preset not in presets:
        raise ValueError(
            f"Unknown preset {preset!r}; notebooks/presets.yaml defines {sorted(presets)}."
        )
    p = presets[preset] or {}
    return {**(p.get("common") or {}), **(p.get(notebook) or {})}


def notebook_parameters(preset: str, notebook: str) -> dict:
    """What ``notebook`` runs with under ``preset``: its ``parameters`` cell's defaults (read by
    papermill, literal values only) overridden by the preset's."""
    import ast

    import papermill as pm

    defaults = {}
    for name, p in pm.inspect_notebook(str(notebooks_dir() / f"{notebook}.ipynb")).items():
        try:
            defaults[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            pass  # an expression: not needed outside the notebook
    return {**defaults, **preset_parameters(preset, notebook)}


# Notebooks that run at once share the console: every line is written whole, under this lock.
_CONSOLE = threading.Lock()


def _say(line: str, out=None) -> None:
    out = out or sys.stdout
    with _CONSOLE:
        out.write(line + "\n")
        out.flush()


class _ProgressEcho:
    """papermill's ``stdout_file``: receives each cell's stdout as the kernel sends it and echoes
    the package's ``[progress]`` lines to the console, tagged with the notebook's number."""

    def __init__(self, tag: str, out=None):
        self.tag, self.out, self._partial = tag, out or sys.stdout, ""

    def write(self, text: str) -> None:
        lines = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.startswith(_progress.MARK):
                _say(f"[run-all] {self.tag} {line[len(_progress.MARK) :]}", self.out)

    def flush(self) -> None:
        with _CONSOLE:
            self.out.flush()


@contextmanager
def _kernel_environment(values: dict[str, str]):
    """Kernels started inside inherit ``values`` as environment variables (the process's, which
    run-all's threads share: set once around the whole run); the old ones come back after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _kernel_threads(jobs: int) -> dict[str, str]:
    """``OMP_NUM_THREADS`` for kernels that run ``jobs`` at once: the cores this process may use,
    shared out (at least 1), unless the user set it. torch takes its intra-op threads from it; by
    default each kernel would start one per core, and two kernels on two cores then spend CPU
    time waiting on each other's threads (tiny preset, 2 shared cores: 331 CPU s with two
    threads per kernel against 194 with one)."""
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"OMP_NUM_THREADS": str(max(1, (cores or 1) // jobs))}


# The kernel's own log would print "Kernel is running over TCP without encryption" in every
# notebook: papermill talks to it on loopback only, so its warnings are noise on the console.
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


def parameter_names() -> set[str]:
    """Every parameter name a notebook of the pipeline takes (their ``parameters`` cells), plus the
    common ones run-all sets (``preset``, ``data_root``, ``output_dir``)."""
    import papermill as pm

    names = {"preset", "data_root", "output_dir"}
    for name in NOTEBOOKS:
        path = notebooks_dir() / f"{name}.ipynb"
        if path.exists():
            names |= set(pm.inspect_notebook(str(path)))
    return names


def read_params(path: str | Path) -> dict:
    """The ``--params`` YAML file as a dict; a syntax error or a non-mapping is a ValueError naming
    the file (and the line)."""
    path = Path(path)
    try:
        user = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(
            f"{path} is not valid YAML{where}: {problem}. Expected lines `name: value`, "
            "e.g. `benchmarks_root: /data/Validation_Dataset`."
        ) from None
    if user is None:
        return {}
    if not isinstance(user, dict):
        raise ValueError(
            f"{path} must hold a mapping of parameter names to values (`name: value` lines), "
            f"not a {type(user).__name__}."
        )
    return user


class NotebookFailed(RuntimeError):
    """Notebooks of the pipeline raised; the message names each with its failing cell's error and
    the ``--from`` that resumes the run."""


# How long an interrupted run-all waits for its kernels after a KeyboardInterrupt in their cells,
# and again after killing them, before it gives up on them.
_STOP_S = 15.0


def _tracked_kernel_manager(started: list):
    """nbclient's ``kernel_manager_class`` for papermill: jupyter_client's own, which also appends
    itself to ``started`` once its kernel runs, so that an interrupted run-all can stop it."""
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        async def _async_post_start_kernel(self, **kw) -> None:
            await super()._async_post_start_kernel(**kw)
            started.append(self)

    return TrackedKernelManager


def _signal_kernels(managers: list, signum: int) -> None:
    """``signum`` to the process group of each kernel in ``managers`` that still runs. A kernel
    runs in a session of its own (jupyter_client starts it so): the terminal's Ctrl-C reaches
    run-all only, never the kernels."""
    for km in list(managers):
        process = getattr(getattr(km, "provisioner", None), "process", None)
        if process is None or process.poll() is not None:
            continue
        try:
            os.killpg(os.getpgid(process.pid), signum)
        except OSError:  # gone meanwhile
            pass


def _run_scheduled(todo: list[str], finished: set[str], jobs: int, execute, kernels: list):
    """``execute(name)`` for each notebook of ``todo`` (numbered order), in up to ``jobs`` threads,
    each started once every notebook it ``NEEDS`` is in ``finished`` (which grows as they
    finish) and the first of ``todo`` has finished; the lowest number first among those ready.
    After a failure nothing new starts and the running ones finish. Returns ``{name: exception}``
    of the failed ones.

    A KeyboardInterrupt (Ctrl-C; the CLI turns SIGTERM into one) reaches this thread only: it
    sends the running kernels SIGINT (a KeyboardInterrupt in their cell, which papermill records
    in the executed copy, and nbclient then shuts the kernel down), waits ``_STOP_S`` for them,
    SIGKILLs what still runs (also at a second Ctrl-C), waits again and raises."""
    # Every notebook generates the embedded data set when it is missing or of an older generator
    # version (open_workspace), replacing the folder: the first notebook of a run (00, or the
    # --from one) does it alone, so that two kernels never generate it into one folder.
    needs = {n: set(NEEDS[n]) | ({todo[0]} if n != todo[0] else set()) for n in todo}
    failed, running, pending = {}, {}, list(todo)
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run-all")
    try:
        while pending or running:
            while not failed and len(running) < jobs:
                ready = next((n for n in pending if needs[n] <= finished), None)
                if ready is None:
                    break
                pending.remove(ready)
                running[pool.submit(execute, ready)] = ready
            if not running:  # after a failure, what is left waits on it or is not started
                break
            # A timeout, so that a Ctrl-C that woke another thread is seen here within 1 s.
            completed, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in sorted(completed, key=running.get):
                name, error = running.pop(future), future.exception()
                if error is None:
                    finished.add(name)
                    continue
                failed[name] = error
                if running:
                    _say(
                        f"[run-all] {name} failed; starting nothing new, waiting for "
                        f"{', '.join(sorted(running.values()))} to finish"
                    )
    except BaseException:
        _say(
            f"[run-all] interrupted: stopping {', '.join(sorted(running.values())) or 'nothing'}"
            " (a KeyboardInterrupt in the running cell)"
        )
        _signal_kernels(kernels, signal.SIGINT)
        try:
            left = wait(running, timeout=_STOP_S).not_done
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once
            left = {f for f in running if not f.done()}
        if left:
            _signal_kernels(kernels, signal.SIGKILL)
            wait(left, timeout=_STOP_S)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if pending and not failed:  # cannot happen while every need comes earlier in NOTEBOOKS
        raise RuntimeError(f"run-all: {pending} wait on notebooks that never run")
    return failed


def _failure_text(name: str, error: BaseException, copy: Path) -> str:
    import papermill as pm

    if isinstance(error, pm.PapermillExecutionError):
        return (
            f"notebook {name} failed in cell {error.exec_count}: {error.ename}: {error.evalue} "
            f"(the executed copy with the traceback is {copy})"
        )
    return f"notebook {name} stopped: {type(error).__name__}: {error}"


def run_all(
    preset: str = "demo",
    data_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    params_file: str | Path | None = None,
    start_at: str | None = None,
    stop_after: str | None = None,
    runs_dir: str | Path | None = None,
    run_id: str | None = None,
    extra_parameters: dict | None = None,
    kernel_name: str | None = None,
    progress: bool = True,
    jobs: int = 2,
) -> Path:
    """Execute notebooks 00 to 06, each in its own kernel once the notebooks it ``NEEDS`` have
    finished, up to ``jobs`` at once (1: one after the other in numbered order); executed copies
    go to ``runs/<run id>/``.

    ``start_at`` / ``stop_after`` take a notebook name or its number (``"03"``) to resume or cut a
    run: the notebooks from ``start_at`` to ``stop_after`` in numbered order run, those before
    ``start_at`` count as done, and the first one runs alone (it generates the embedded data set
    when it is missing, as 00 does). When a notebook fails, the running ones finish (their work is
    kept), nothing new starts, and ``NotebookFailed`` names each failed notebook, its cell and
    error, and the ``--from`` to resume with: the earliest notebook that did not finish.

    ``progress``: papermill's cell counter (with ``jobs == 1`` only: bars of two notebooks from
    two threads overwrite each other on one console line) and the notebooks' ``[progress]``
    lines, tagged with their number. ``ANOMALYSEG_CONSOLE_PROGRESS`` is set once for the whole
    run (environment variables are the process's, shared by the threads), and with ``jobs > 1``
    ``OMP_NUM_THREADS`` (cores / jobs; see ``_kernel_threads``) unless the user set it.
    """
    import papermill as pm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(
            f"run-all: jobs is the number of notebooks run at once (>= 1), got {jobs!r}."
        )
    root = notebooks_dir()
    repo = root.parent
    names = list(NOTEBOOKS)

    def _index(key: str) -> int:
        for i, n in enumerate(names):
            if n == key or n.split("_", 1)[0] == key.zfill(2):
                return i
        raise ValueError(f"No notebook {key!r}; the pipeline runs {names}.")

    first = _index(start_at) if start_at else 0
    last = _index(stop_after) if stop_after else len(names) - 1
    if first > last:
        raise ValueError(
            f"--from {start_at} ({names[first]}) comes after --to {stop_after} ({names[last]}): "
            "nothing would run. The pipeline runs in the order "
            f"{', '.join(n.split('_', 1)[0] for n in names)}."
        )
    user = read_params(params_file) if params_file else {}
    unknown = sorted(set(user) - set(parameter_names()))
    if unknown:
        raise ValueError(
            f"{params_file}: unknown parameters {unknown}; no notebook has them, so they would be "
            f"ignored. Valid names: {', '.join(sorted(parameter_names()))}."
        )
    # Absolute: papermill writes the executed copy while the kernel runs in notebooks/.
    run_dir = Path(runs_dir or repo / "runs").resolve() / (run_id or new_run_id(f"run-{preset}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    common = {
        "preset": preset,
        "data_root": str(Path(data_root or repo / "data").resolve()),
        "output_dir": str(Path(output_dir or repo).resolve()),
    }
    kernels: list = []
    manager_class = _tracked_kernel_manager(kernels)

    def execute(name: str) -> None:
        params = {
            **preset_parameters(preset, name),
            **common,
            **(user or {}),
            **(extra_parameters or {}),
        }
        started = time.time()
        _say(f"[run-all] {name} ...")
        pm.execute_notebook(
            str(root / f"{name}.ipynb"),
            str(run_dir / f"{name}.ipynb"),
            parameters=params,
            kernel_name=kernel_name,
            progress_bar=progress and jobs == 1,
            log_output=False,
            stdout_file=_ProgressEcho(name.split("_", 1)[0]) if progress else None,
            extra_arguments=_KERNEL_ARGS,
            # The kernel's working directory: papermill's cwd= would os.chdir the whole process
            # around each notebook, which threads running two notebooks share.
            resources={"metadata": {"path": str(root)}},
            kernel_manager_class=manager_class,
        )
        _say(f"[run-all] {name} done in {time.time() - started:.0f} s")

    todo, finished = names[first : last + 1], set(names[:first])

    # The resume command repeats the folders and files the run was given: without them it would
    # read and write the checkout's data/, results/ and checkpoints/ instead.
    given = [
        ("--data-root", data_root),
        ("--output-dir", output_dir),
        ("--runs-dir", runs_dir),
        ("--params", params_file),
        ("--jobs", jobs if jobs != 2 else None),
    ]
    options = "".join(f" {flag} {shlex.quote(str(v))}" for flag, v in given if v is not None)

    def resume() -> str:
        cut = f" --to {names[last].split('_', 1)[0]}" if stop_after else ""
        since = next((n for n in todo if n not in finished), todo[-1]).split("_", 1)[0]
        return f"`anomalyseg run-all --preset {preset}{options} --from {since}{cut}`"

    with _kernel_environment({_progress.ENV: "1", **_kernel_threads(jobs)}):
        try:
            failed = _run_scheduled(todo, finished, jobs, execute, kernels)
        except KeyboardInterrupt:
            _say(f"[run-all] interrupted; resume with {resume()}")
            raise
    if failed:
        told = "; ".join(
            _failure_text(n, failed[n], run_dir / f"{n}.ipynb") for n in sorted(failed)
        )
        raise NotebookFailed(
            f"{told[0].upper()}{told[1:]}. Fix the cause and resume with {resume()} (the "
            "earliest notebook that did not finish)."
        )
    return run_dir


# -------------------------------------------------------------------------- anomalyseg demo-weights
def train_demo_weights(
    model: str,
    steps: int | None,
    data_root: str | Path,
    work_dir: str | Path,
    out: str | Path | None = None,
    seed: int = 0,
    val_every_n_steps: int | None = None,
    preset: str = "demo",
) -> dict:
    """Train the demo's ``model`` (one of ``dm.MODELS``) for ``steps`` (None: the steps the
    preset's notebook asks for, those the shipped weights must match) with ``preset``'s recipe
    (``notebooks/presets.yaml``, the parameters of the notebook that trains it) on the embedded
    data at ``<data_root>/<preset>`` (generated when missing), in ``work_dir`` (resumable), then
    write its fp16 weights, training log and manifest entry to ``out``. Returns the entry.

    ``eomt_oe`` and the heads train on the EoMT that ``out`` ships (its fp16 weights, as the
    notebooks load them); make that one first. The entry's val mIoU (segmenters) is that of the
    fp16 weights; a head's entry gives its last training loss instead."""
    import torch

    from . import demo_models as dm
    from .results import training_log
    from .workspace import open_workspace

    if model not in dm.MODELS:
        raise ValueError(f"demo-weights: unknown model {model!r}; expected one of {dm.MODELS}.")
    started, out, work_dir = time.time(), Path(out or dm.WEIGHTS_DIR), Path(work_dir)
    ws = open_workspace(data_root=data_root, preset=preset, seed=seed, output_dir=work_dir)
    steps_key = {"eomt_oe": "finetune_steps"}.get(model, "train_steps")
    params = notebook_parameters(preset, dm._NOTEBOOK[model])
    steps = int(steps or params[steps_key])
    params = {**params, steps_key: steps, "seed": seed}
    train_settings = dm.demo_train_settings(model, params)
    if model in dm.SEGMENTERS:
        train_settings["val_every_n_steps"] = val_every_n_steps or steps
        zoo_dir, settings, metrics = _train_segmenter(model, ws, params, train_settings, work_dir)
    else:
        coco_max_images = notebook_parameters(preset, "04_outlier_exposure")["coco_max_images"]
        zoo_dir, settings, metrics = _train_on_eomt(
            model, ws, params, train_settings, coco_max_images, work_dir, out
        )
    dst = out / model
    for rel in dm._FILES[model]:
        if rel.endswith(".safetensors"):
            dm._convert(zoo_dir / rel, dst / rel, torch.float16)
        else:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(zoo_dir / rel, dst / rel)
    log = training_log(zoo_dir)
    if model in dm.SEGMENTERS:
        log = log[["step", "train_loss", "val_miou"]]
    log.to_csv(dst / dm._LOG, index=False)
    metrics = metrics(dst)
    if "val_miou" in log:
        metrics["val_miou_by_step"] = dm.val_miou_by_step(log)
    entry = {
        "command": f"anomalyseg demo-weights --model {model} --steps {steps} --seed {seed}"
        + (f" --preset {preset}" if preset != "demo" else "")
        + (f" --val-every {val_every_n_steps}" if val_every_n_steps else ""),
        "data": dm.data_identity(ws.cityscapes),
        "settings": settings,
        "steps": steps,
        **metrics,
        "trained": time.strftime("%Y-%m-%d"),
        "wall_s": round(time.time() - started),
        "machine": f"{torch.get_num_threads()} torch thread(s), CPU",
        "files": dm._file_table(dst, model),
    }
    dm._write_entry(out, model, entry)
    return entry


def _train_segmenter(model: str, ws, params: dict, train_settings: dict, work_dir: Path):
    """ERFNet or the small EoMT as notebooks 01 / 02 train them: (zoo folder, settings, metrics)."""
    from . import demo_models as dm
    from . import zoo

    if model == "erfnet":
        seg = zoo.erfnet_segmenter(
            ws,
            train=train_settings,
            input_size=tuple(params["input_size"]),
            device="cpu",
            train_from_scratch=True,
        )
        zoo_dir = Path(seg.checkpoint).parent
    else:
        zoo.eomt_segmenter(ws, train=train_settings, device="cpu", train_from_scratch=True)
        zoo_dir = zoo.default_checkpoint(ws, "eomt").parent
    stored = json.loads((zoo_dir / zoo.SETTINGS_FILE).read_text())
    settings = {k: v for k, v in stored.items() if k != "data_root"}

    def metrics(dst: Path) -> dict:
        # The figure the manifest states is that of the weights as shipped: evaluate the fp16 copy.
        check = work_dir / "fp16-check"
        shutil.rmtree(check, ignore_errors=True)
        dm._copy_in(dst, dm._FILES[model], check)
        if model == "erfnet":
            shipped = zoo.erfnet_segmenter(
                ws,
                check / "erfnet.safetensors",
                input_size=tuple(params["input_size"]),
                device="cpu",
            )
        else:
            shipped = zoo.eomt_segmenter(ws, check / "model", device="cpu")
        return {"val_miou": _val_miou(ws, shipped)}

    return zoo_dir, settings, metrics


def _train_on_eomt(
    model: str,
    ws,
    params: dict,
    train_settings: dict,
    coco_max_images: int,
    work_dir: Path,
    out: Path,
):
    """Notebook 04's Outlier Exposure or one of notebook 05's heads, on the fp16 EoMT that ``out``
    ships, with the notebook's settings, after preparing ``coco_max_images`` COCO objects as
    notebook 04 does (05 pastes the same ones): (training folder, settings, metrics)."""
    from . import demo_models as dm
    from . import zoo
    from .evaluate import weights_fingerprint
    from .results import training_log
    from .training.anomaly_head import train_anomaly_head
    from .training.oe import ensure_ood_objects, finetune_oe
    from .training.settings import HeadConfig, TrainSettings, records_from_flat

    if "eomt" not in dm.read_manifest(out):
        raise ValueError(
            f"demo-weights --model {model} trains on the shipped EoMT, but "
            f"{out / dm.MANIFEST} has no `eomt` entry yet. Make it first: "
            f"anomalyseg demo-weights --model eomt --steps N --out {out}"
        )
    dm.verify("eomt", out)
    base_dir = work_dir / "base-eomt"
    shutil.rmtree(base_dir, ignore_errors=True)
    dm._copy_in(out / "eomt", dm._FILES["eomt"], base_dir)
    base = zoo.eomt_segmenter(ws, base_dir / "model", device="cpu")
    config = dm.oe_config(params) if model == "eomt_oe" else None
    ensure_ood_objects(
        ws.coco, coco_max_images, params["seed"], split=config.coco_split if config else "train"
    )
    run_dir = work_dir / model
    if model == "eomt_oe":
        settings = {**train_settings, "oe": config.to_dict(), "coco_max_images": coco_max_images}
        train = TrainSettings(
            **train_settings, num_workers=params["num_workers"], accelerator="cpu"
        )
        result = finetune_oe(
            base, ws.cityscapes, ws.coco, run_dir, train, config, benchmarks_root=ws.benchmarks
        )
    else:
        settings = {**train_settings, "variant": model.removeprefix("head_")}
        train, head = records_from_flat(settings, HeadConfig, f"demo-weights --model {model}")
        result = train_anomaly_head(
            base, ws.cityscapes, ws.coco, run_dir, train, head, benchmarks_root=ws.benchmarks
        )
    settings = dm._jsonable({**settings, "base_weights": weights_fingerprint(base)})

    def metrics(dst: Path) -> dict:
        if model != "eomt_oe":
            loss = training_log(run_dir)["train_loss"].dropna()
            return {"final_train_loss": round(float(loss.iloc[-1]), 4)}
        check = work_dir / "fp16-check"
        shutil.rmtree(check, ignore_errors=True)
        dm._copy_in(dst, dm._FILES[model], check)
        return {
            "val_miou": _val_miou(ws, zoo.eomt_segmenter(ws, check / "model", device="cpu")),
            "base_val_miou": dm.read_manifest(out)["eomt"]["val_miou"],
        }

    assert result == run_dir / dm._RESULT[model], result
    return run_dir, settings, metrics


def _val_miou(ws, segmenter) -> float:
    from .data.cityscapes import CityscapesSegmentation
    from .evaluate import evaluate_miou

    val = CityscapesSegmentation(ws.cityscapes, "val")
    rows, _ = evaluate_miou(segmenter, val, results_path=None)
    return round(float(rows.miou.iloc[0]), 4)
