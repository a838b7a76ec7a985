"""The ``anomalyseg`` command: data, evaluation, training (also from YAML configs), notebooks.

Subcommands: ``make-data``, ``prepare-coco``, ``eval``, ``compare-conventions``, ``train``,
``demo-weights``, ``run-all``, ``fit`` / ``validate``.

``fit`` and ``validate`` hand the rest of the command line to Lightning's CLI
(``training.lightning_cli``): ``anomalyseg fit -c configs/eomt_oe_demo.yaml``.

Every subcommand is a thin entry to a package function; nothing imports this module.

One error boundary (``main``) turns every error a user can cause (a missing or damaged file, a
wrong setting, a full disk) into one paragraph on stderr and exit code 1, without a Python
traceback; ``--debug`` or ``ANOMALYSEG_DEBUG=1`` re-raises instead, traceback included. An error
raised in a DataLoader worker arrives wrapped by torch ("Caught DatasetError in DataLoader worker
process 0 ... Original Traceback ..."); the boundary prints the original message.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from pathlib import Path

DEBUG_ENV = "ANOMALYSEG_DEBUG"
EXIT_ERROR = 1


# ----------------------------------------------------------------------------- argument types
def _number(kind, low: float, strict: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}"
            ) from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or value < low
            or (strict and value == low)
        ):
            raise argparse.ArgumentTypeError(f"{text!r}: {what}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, True, "must be an integer > 0")
nonnegative_int = _number(int, 0, False, "must be an integer >= 0")
positive_float = _number(
    float, 0.0, True, "must be a finite number > 0 (a temperature divides the logits)"
)


def _name_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the ``--help`` of each option of ``parser`` and its subcommands
    that has a default (not None, not a flag left off) its help does not already describe; X as
    it would be typed (``512 1024`` for a pair)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sub in [parser, *(p for a in subparsers for p in a.choices.values())]:
        for action in sub._actions:
            default, text = action.default, action.help or ""
            if (
                not action.option_strings
                or default is None
                or default is False
                or default is argparse.SUPPRESS
                or "default" in text
            ):
                continue
            shown = " ".join(map(str, default)) if isinstance(default, list | tuple) else default
            action.help = f"{text} (default: {shown})".lstrip().replace("%", "%%")


# ----------------------------------------------------------------------------- subcommands
def _make_data(a):
    from .data.synthetic import make_data

    out = make_data(a.out or Path("data") / a.preset, preset=a.preset, seed=a.seed)
    print(f"embedded data ({a.preset}, seed {a.seed}) written to {out}")


def _prepare_coco(a):
    from .data.coco import prepare_coco_ood

    prepare_coco_ood(
        a.coco_root,
        split=a.split,
        year=a.year,
        max_images=a.max_images,
        min_area=a.min_area,
        seed=a.seed,
    )


def _segmenter(a, device: str | None = None):
    """The segmenter of ``--model`` / ``--checkpoint``, loaded as the notebooks load it (``zoo``),
    on ``device`` (default ``--device``)."""
    from .zoo import eomt_segmenter, erfnet_segmenter

    device = device or a.device
    if a.model == "erfnet":
        return erfnet_segmenter(
            None,
            checkpoint=a.checkpoint,
            input_size=tuple(a.input_size),
            use_void="void_prob" in a.scores,
            device=device,
        )
    return eomt_segmenter(None, checkpoint=a.checkpoint, window_size=a.window_size, device=device)


def _eval(a):
    import pandas as pd

    from .data.benchmarks import load_benchmarks
    from .data.cityscapes import CityscapesSegmentation
    from .evaluate import OutputCache, evaluate_anomaly, evaluate_miou
    from .report.tables import anomaly_table, markdown, miou_table, with_titles
    from .results import COLUMNS, check_store, new_run_id
    from .scores import default_scores

    a.scores = a.scores or list(default_scores(a.model))
    if a.benchmarks_root is None and a.cityscapes_root is None:
        raise ValueError(
            "nothing to evaluate. Give --benchmarks-root (the course's Validation_Dataset folder) "
            "and/or --cityscapes-root (a Cityscapes folder, for mIoU on val)."
        )
    check_store(a.results)  # before any forward pass: a bad output path must not cost an evaluation
    # Open the data before the model: a wrong folder is reported in a second, not after loading
    # EoMT-L.
    benchmarks = load_benchmarks(a.benchmarks_root, a.benchmarks) if a.benchmarks_root else None
    val = CityscapesSegmentation(a.cityscapes_root, "val") if a.cityscapes_root else None
    sharded = (a.devices, a.accelerator, a.strategy) != (None, None, None)
    if sharded and a.device != "auto":
        raise ValueError(
            f"--device {a.device} picks the device of a one-process evaluation; with --devices / "
            "--accelerator / --strategy Lightning places each process (e.g. --accelerator gpu "
            "--devices 4)."
        )
    cache = OutputCache(a.cache_dir) if a.cache_dir else None
    if sharded:
        from .evaluate_sharded import evaluation_sets, predict_to_cache, require_disk_cache

        require_disk_cache(cache)  # before loading the model
    # sharded: loaded on the CPU, Lightning moves it to each rank's device
    seg = _segmenter(a, device="cpu" if sharded else a.device)
    run_id = new_run_id(seg.name)
    if sharded:
        if not predict_to_cache(
            seg,
            evaluation_sets(benchmarks, val),
            cache,
            protocol=a.protocol,
            accelerator=a.accelerator or "auto",
            devices=a.devices or "auto",
            strategy=a.strategy or "auto",
            num_workers=a.workers,
        ):
            return  # not rank 0: rank 0 computes the metrics below, once, from the cache
    frames = []
    if benchmarks:
        frames.append(
            evaluate_anomaly(
                seg,
                benchmarks,
                scores=a.scores,
                temperatures=a.temperatures,
                temperature_on=a.temperature_on,
                results_path=a.results,
                run_id=run_id,
                cache=cache,
                fpr_convention=a.fpr_convention,
                num_workers=a.workers,
                protocol=a.protocol,
            )
        )
    if val is not None:
        rows, _ = evaluate_miou(
            seg,
            val,
            results_path=a.results,
            run_id=run_id,
            cache=cache,
            num_workers=a.workers,
            protocol=a.protocol,
        )
        frames.append(rows)
    # The table of this run only: rows of other runs in the same store are not this checkpoint's.
    mine = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))
    for col in ("temperature", "auprc", "fpr_at_95_tpr", "miou"):
        mine[col] = pd.to_numeric(mine[col], errors="coerce")
    # "smiyc" for course + --fpr-convention smiyc: the rows name the protocol they were made under
    protocol = mine["protocol"].iloc[0] if len(mine) else a.protocol
    print(f"run {run_id}: {seg.name} {seg.checkpoint}; rows appended to {a.results}")
    if benchmarks:
        temperature = a.temperatures[0] if len(a.temperatures) == 1 else None
        table = anomaly_table(
            mine,
            index=("model", "score", "temperature") if temperature is None else ("model", "score"),
            temperature=temperature,
            protocol=protocol,
        )
        print(markdown(with_titles(table)))
    if val is not None:
        print(("\n" if benchmarks else "") + markdown(with_titles(miou_table(mine))))


def _compare_conventions(a):
    from .data.benchmarks import load_benchmarks
    from .data.cityscapes import CityscapesSegmentation
    from .evaluate import OutputCache, compare_conventions
    from .protocol import describe
    from .report.tables import convention_settings, conventions_table, markdown
    from .results import check_store

    if a.benchmarks_root is None:
        raise ValueError(
            "compare-conventions needs --benchmarks-root (the course's Validation_Dataset folder)."
        )
    check_store(a.results)
    benchmarks = load_benchmarks(a.benchmarks_root, a.benchmarks)
    val = CityscapesSegmentation(a.cityscapes_root, "val") if a.cityscapes_root else None
    seg = _segmenter(a)
    rows = compare_conventions(
        seg,
        benchmarks,
        val,
        scores=a.scores,
        protocols=a.protocols,
        results_path=a.results,
        cache=OutputCache(a.cache_dir) if a.cache_dir else None,
        num_workers=a.workers,
    )
    print(markdown(conventions_table(rows, seg.name)))
    print()
    print(markdown(convention_settings(a.protocols)))
    print()
    print("\n".join(f"- {describe(p)}" for p in a.protocols))


def _train(a):
    from .training.settings import ErfnetConfig, TrainSettings

    crop = tuple(a.crop_size) if a.crop_size else None
    if a.model == "erfnet":
        crop = crop or (256, 512)  # the help's ERFNet default
    train = TrainSettings(
        max_steps=a.steps, batch_size=a.batch_size, crop_size=crop, num_workers=a.workers
    )
    if a.model == "erfnet":
        from .training.erfnet import train_erfnet

        ckpt = train_erfnet(a.cityscapes_root, a.out, train, ErfnetConfig(input_size=crop))
    else:
        from .training.eomt import train_eomt

        ckpt = train_eomt(None, a.cityscapes_root, a.out, train)
    print(f"checkpoint: {ckpt}")


def _demo_weights(a):
    from .demo_models import MODELS, WEIGHTS_DIR
    from .pipeline import train_demo_weights

    if a.out.resolve() == WEIGHTS_DIR.resolve():
        print(f"Replacing the shipped demo weights in {a.out} (--out writes elsewhere).")
    for model in MODELS if a.model == "all" else (a.model,):
        entry = train_demo_weights(
            model,
            a.steps,
            a.data_root,
            a.work_dir / model,
            a.out,
            seed=a.seed,
            val_every_n_steps=a.val_every,
            preset=a.preset,
        )
        metric = (
            f"val mIoU {100 * entry['val_miou']:.2f}% (fp16 weights)"
            if "val_miou" in entry
            else f"last training loss {entry['final_train_loss']:.4f}"
        )
        print(
            f"{model}: {entry['steps']} steps, {metric}, {entry['wall_s']} s; written to "
            f"{a.out / model} and {a.out / 'manifest.json'}",
            flush=True,
        )


def _run_all(a):
    from .pipeline import run_all

    run_dir = run_all(
        preset=a.preset,
        data_root=a.data_root,
        output_dir=a.output_dir,
        params_file=a.params,
        start_at=a.start_at,
        stop_after=a.stop_after,
        runs_dir=a.runs_dir,
        jobs=a.jobs,
    )
    print(f"executed notebooks in {run_dir}")


# ----------------------------------------------------------------------------- the error boundary
_WORKER_WRAPPER = re.compile(
    r"^Caught \w+ in DataLoader worker process \d+\.\s*Original Traceback", re.S
)


def original_message(exc: BaseException) -> str:
    """The message of ``exc``; for an error torch re-raised from a DataLoader worker, the message
    of the original error (the last lines of the worker's traceback)."""
    text = str(exc)
    if _WORKER_WRAPPER.match(text):
        lines = text.rstrip().splitlines()
        # The worker's traceback ends with "<Type>: <message>" after its indented frame lines.
        last = max(
            i
            for i, line in enumerate(lines)
            if line.startswith((" ", "\t")) or line.startswith("Original Traceback")
        )
        tail = "\n".join(lines[last + 1 :]).strip()
        text = re.sub(r"^[\w.]+: ", "", tail, count=1) or text
    if isinstance(exc, KeyError) and text.startswith("'") and text.endswith("'"):
        text = text[1:-1]
    return text


def _is_user_error(exc: BaseException) -> bool:
    """Errors a user can cause with a file, a folder or a setting: our DatasetError and
    CheckpointError (ValueErrors), missing or unwritable files, a full disk, bad YAML, a failed
    notebook."""
    from .pipeline import NotebookFailed

    try:
        import yaml

        yaml_errors: tuple = (yaml.YAMLError,)
    except ImportError:  # pragma: no cover - yaml is a dependency
        yaml_errors = ()
    return isinstance(exc, (ValueError, OSError, NotebookFailed, *yaml_errors))


def describe_error(exc: BaseException) -> str:
    """One paragraph for ``exc``: its message, with the file named for an OS error that lacks it."""
    text = original_message(exc)
    if (
        isinstance(exc, OSError) and exc.strerror
    ):  # "[Errno 28] ...: 'file'" -> the words and the file once
        text = exc.strerror
        if exc.errno == errno.ENOSPC and "No space left" not in text:
            text = f"No space left on device: {text}"
        if exc.filename and str(exc.filename) not in text:
            text = f"{text}: {exc.filename}"
    text = " ".join(text.split())  # one paragraph, whatever the message's layout
    if not _is_user_error(exc):
        text = (
            f"unexpected {type(exc).__name__}: {text}. This looks like a bug in anomalyseg, not in "
            f"your input; rerun with --debug (or {DEBUG_ENV}=1) for the traceback and report it."
        )
    return text


def _debug_env() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _on_sigterm(signum, frame):
    # Unwind like Ctrl-C so that cleanup runs (make-data removes its temporary folder).
    raise KeyboardInterrupt


# Subcommands handed to Lightning's CLI with the rest of the command line.
LIGHTNING_COMMANDS = ("fit", "validate")


def build_parser() -> argparse.ArgumentParser:
    from .protocol import PROTOCOLS
    from .scores import baseline_scores, default_scores

    # --debug is accepted before or after the subcommand (SUPPRESS: a subcommand's default never
    # overwrites a --debug given before it).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the Python traceback of an error (or set {DEBUG_ENV}=1)",
    )
    p = argparse.ArgumentParser(
        prog="anomalyseg",
        description=__doc__.splitlines()[0],
        parents=[debug],
        epilog="Trainings from YAML configs (Lightning's CLI, configs/ of the repository): "
        "anomalyseg fit -c CONFIG.yaml, anomalyseg validate -c CONFIG.yaml --ckpt_path "
        "RUN/last.ckpt; anomalyseg fit --help lists every option.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_parser = sub.add_parser
    sub.add_parser = lambda *args, **kw: _add_parser(*args, parents=[debug], **kw)

    s = sub.add_parser("make-data", help="generate the embedded procedural road benchmark")
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument(
        "--out",
        type=Path,
        help="folder to write (default: data/<preset>, where run-all and demo-weights look with "
        "their default --data-root data)",
    )
    s.add_argument(
        "--seed", type=nonnegative_int, default=0, help="seed of the drawn scenes and anomalies"
    )
    s.set_defaults(func=_make_data)

    s = sub.add_parser(
        "prepare-coco", help="write one-object OOD masks (value 254) from COCO instances"
    )
    s.add_argument("--coco-root", type=Path, required=True)
    s.add_argument("--split", default="train")
    s.add_argument("--year", type=positive_int, default=2017)
    s.add_argument("--max-images", type=positive_int, default=400)
    s.add_argument("--min-area", type=nonnegative_int, default=1000)
    s.add_argument("--seed", type=nonnegative_int, default=0)
    s.set_defaults(func=_prepare_coco)

    s = eval_parser = sub.add_parser(
        "eval", help="evaluate a checkpoint on the benchmarks and/or Cityscapes val"
    )
    s.add_argument("--model", choices=("erfnet", "eomt"), required=True)
    s.add_argument(
        "--checkpoint",
        required=True,
        help="file (.pth/.ckpt/.safetensors), transformers folder or hub id",
    )
    s.add_argument("--benchmarks-root", type=Path, help="the course's Validation_Dataset folder")
    s.add_argument(
        "--benchmarks", nargs="*", default=None, help="folder names (default: all found)"
    )
    s.add_argument("--cityscapes-root", type=Path, help="Cityscapes root, for mIoU on val")
    s.add_argument(
        "--scores",
        nargs="+",
        default=None,
        help="anomaly scores (anomalyseg.scores.SCORE_TABLE; default: the model's standard ones, "
        f"{', '.join(default_scores('erfnet'))} for ERFNet, with {default_scores('eomt')[-1]} "
        "for EoMT)",
    )
    s.add_argument("--temperatures", nargs="+", type=positive_float, default=[1.0])
    s.add_argument("--temperature-on", choices=("pixel", "class"), default="pixel")
    s.add_argument(
        "--fpr-convention",
        choices=("course", "smiyc"),
        default=None,
        help="FPR95 convention (default: the protocol's; course + smiyc is the smiyc protocol)",
    )
    s.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="course",
        help="evaluation protocol (anomalyseg.protocol): course (default) matches the course's "
        "scripts",
    )
    s.add_argument(
        "--input-size",
        nargs=2,
        type=positive_int,
        default=(512, 1024),
        metavar=("H", "W"),
        help="ERFNet input H W (divisible by 8)",
    )
    s.add_argument(
        "--window-size",
        type=positive_int,
        default=None,
        help="EoMT window size S (default: the model's own input size, config.image_size)",
    )
    s.add_argument("--results", type=Path, default=Path("results/results.csv"))
    s.add_argument("--cache-dir", type=Path)
    s.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU when there is one, else cpu), cpu, cuda, cuda:1 ...",
    )
    s.add_argument("--workers", type=nonnegative_int, default=2)
    s.add_argument(
        "--devices",
        type=positive_int,
        default=None,
        help="shard the forward passes over N devices with Lightning (needs "
        "--cache-dir); the metrics are computed once, on rank 0, from the cache",
    )
    s.add_argument(
        "--accelerator", default=None, help="Lightning accelerator of a sharded run: gpu, cpu, auto"
    )
    s.add_argument(
        "--strategy",
        default=None,
        help="Lightning strategy of a sharded run, e.g. ddp (gloo on cpu)",
    )
    s.set_defaults(func=_eval)

    s = sub.add_parser(
        "compare-conventions",
        help="one checkpoint under every evaluation protocol, side by side (explains gaps between "
        "reports)",
    )
    eval_only = (
        "help",
        "debug",
        "temperatures",
        "temperature_on",
        "fpr_convention",
        "protocol",
        "scores",
        "devices",
        "accelerator",
        "strategy",
    )
    for action in [x for x in eval_parser._actions if x.dest not in eval_only]:
        s._add_action(action)  # eval's model, data and run options, shared
    s.add_argument("--scores", nargs="+", default=list(baseline_scores()))
    s.add_argument("--protocols", nargs="+", choices=list(PROTOCOLS), default=list(PROTOCOLS))
    s.set_defaults(func=_compare_conventions)

    s = sub.add_parser("train", help="train ERFNet or a small EoMT on a Cityscapes-layout folder")
    s.add_argument("model", choices=("erfnet", "eomt"))
    s.add_argument("--cityscapes-root", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--steps", type=positive_int, default=2000)
    s.add_argument("--batch-size", type=positive_int, default=8)
    s.add_argument(
        "--crop-size",
        nargs=2,
        type=positive_int,
        default=None,
        metavar=("H", "W"),
        help="training crop (ERFNet default 256 512; EoMT: only its image_size square)",
    )
    s.add_argument(
        "--workers",
        type=nonnegative_int,
        default=None,
        help="DataLoader workers (default: the trainer's)",
    )
    s.set_defaults(func=_train)

    from .demo_models import MODELS, WEIGHTS_DIR

    s = sub.add_parser(
        "demo-weights", help="train a demo model and ship it as fp16 weights with a manifest entry"
    )
    s.add_argument(
        "--model",
        choices=(*MODELS, "all"),
        required=True,
        help="eomt_oe (notebook 04) and the heads (05) train on the shipped eomt: "
        "make that one first; all: every model, in that order",
    )
    s.add_argument(
        "--steps",
        type=positive_int,
        help="training steps (default: what the preset's notebook asks for, as the shipped "
        "weights were trained)",
    )
    s.add_argument(
        "--seed",
        type=nonnegative_int,
        default=0,
        help="seed of the embedded data set and of the training",
    )
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument("--data-root", type=Path, default=Path("data"))
    s.add_argument(
        "--work-dir",
        type=Path,
        default=Path("checkpoints/demo-weights"),
        help="training folder (resumable)",
    )
    s.add_argument(
        "--out",
        type=Path,
        default=WEIGHTS_DIR,
        help="where the weights and manifest.json go (default: the package's shipped "
        "demo_weights folder, whose files are replaced: pass another folder to try it out)",
    )
    s.add_argument(
        "--val-every", type=positive_int, help="validate every N steps (default: once, at the end)"
    )
    s.set_defaults(func=_demo_weights)

    s = sub.add_parser(
        "run-all", help="execute notebooks 00-06 with papermill (the README's main job)"
    )
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument(
        "--data-root", type=Path, help="where the embedded data set lives (default: data/)"
    )
    s.add_argument(
        "--output-dir",
        type=Path,
        help="results/, checkpoints/, cache/, figures/ go here (default: the checkout)",
    )
    s.add_argument(
        "--params", type=Path, help="YAML file of notebook parameters overriding the preset's"
    )
    s.add_argument(
        "--from",
        dest="start_at",
        help="resume at this notebook (name or number, e.g. 03); the ones before it count as done",
    )
    s.add_argument("--to", dest="stop_after", help="stop after this notebook")
    s.add_argument(
        "--runs-dir",
        type=Path,
        help="where the executed notebooks go (default: runs/ of the checkout)",
    )
    s.add_argument(
        "--jobs",
        type=positive_int,
        default=2,
        help="notebooks run at once, each in its own kernel once the notebooks it reads have "
        "finished (anomalyseg.pipeline.NEEDS; 06 runs last), with cores / N torch threads "
        "(OMP_NUM_THREADS, unless set); 1 runs them one after the other in numbered order, with "
        "papermill's cell counter (default: 2, the cores `make demo` targets)",
    )
    s.set_defaults(func=_run_all)
    _name_defaults(p)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        # fit / validate: the rest of the line is Lightning's CLI's (training.lightning_cli)
        debug = "--debug" in argv or _debug_env()
        rest = [arg for arg in argv if arg != "--debug"]
        command, run = argv[0], lambda: _lightning(rest)
    else:
        a = build_parser().parse_args(argv)  # usage errors: argparse's message and exit code 2
        if a.command == "train" and a.crop_size is None and a.model == "erfnet":
            a.crop_size = (256, 512)
        debug = getattr(a, "debug", False) or _debug_env()
        command, run = a.command, lambda: a.func(a)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        run()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"anomalyseg {command}: interrupted.", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # the boundary: one paragraph, no traceback (unless --debug)
        if debug:
            raise
        print(f"anomalyseg {command}: {describe_error(e)}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _lightning(argv: list[str]) -> None:
    """``anomalyseg fit|validate -c CONFIG.yaml [--trainer.* ...]``: Lightning's CLI."""
    from .training.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    main()
