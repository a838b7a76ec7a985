"""The ``anomalyseg`` command: ``make-data``, ``prepare-coco``, ``eval``, ``train``, ``run-all``.

Every subcommand is a thin entry to a package function; nothing imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _make_data(a):
    from .data.synthetic import make_data

    out = make_data(a.out, preset=a.preset, seed=a.seed)
    print(f"embedded data ({a.preset}, seed {a.seed}) written to {out}")


def _prepare_coco(a):
    from .data.coco import prepare_coco_ood

    prepare_coco_ood(a.coco_root, split=a.split, year=a.year, max_images=a.max_images,
                     min_area=a.min_area, seed=a.seed)


def _segmenter(a):
    if a.model == "erfnet":
        from .models.erfnet import ErfnetSegmenter, load_erfnet

        h, w = a.input_size
        return ErfnetSegmenter(load_erfnet(a.checkpoint), checkpoint=str(a.checkpoint), input_size=(h, w),
                               use_void="void_prob" in a.scores, device=a.device)
    from .models.eomt import EomtSegmenter, load_eomt

    model = load_eomt(a.checkpoint)
    return EomtSegmenter(model, checkpoint=str(a.checkpoint), window_size=a.window_size, device=a.device)


def _eval(a):
    from .data.benchmarks import load_benchmarks
    from .data.cityscapes import CityscapesSegmentation
    from .evaluate import OutputCache, evaluate_anomaly, evaluate_miou
    from .results import anomaly_table, read_results, to_markdown

    seg = _segmenter(a)
    cache = OutputCache(a.cache_dir) if a.cache_dir else None
    if a.benchmarks_root:
        evaluate_anomaly(seg, load_benchmarks(a.benchmarks_root, a.benchmarks), scores=a.scores,
                         temperatures=a.temperatures, temperature_on=a.temperature_on, results_path=a.results,
                         cache=cache, fpr_convention=a.fpr_convention, num_workers=a.workers)
    if a.cityscapes_root:
        rows, _ = evaluate_miou(seg, CityscapesSegmentation(a.cityscapes_root, "val"), results_path=a.results,
                                cache=cache, num_workers=a.workers)
        print(f"mIoU {100 * rows.miou.iloc[0]:.2f}")
    df = read_results(a.results)
    print(to_markdown(anomaly_table(df[df.model == seg.name])))


def _train(a):
    if a.model == "erfnet":
        from .training.erfnet import train_erfnet

        ckpt = train_erfnet(a.cityscapes_root, a.out, max_steps=a.steps, batch_size=a.batch_size,
                            crop_size=tuple(a.crop_size), input_size=tuple(a.crop_size))
    else:
        from .training.eomt import train_eomt

        ckpt = train_eomt(a.cityscapes_root, a.out, max_steps=a.steps, batch_size=a.batch_size,
                          crop_size=tuple(a.crop_size))
    print(f"checkpoint: {ckpt}")


def _demo_weights(a):
    from .demo_models import train

    entry = train(a.model, a.steps, a.data_root, a.work_dir / a.model, a.out, seed=a.seed,
                  val_every_n_steps=a.val_every, preset=a.preset)
    print(f"{a.model}: {entry['steps']} steps, val mIoU {100 * entry['val_miou']:.2f}% (fp16 weights), "
          f"{entry['wall_s']} s; written to {a.out / a.model} and {a.out / 'manifest.json'}")


def _run_all(a):
    from .pipeline import NotebookFailed, run_all

    try:
        run_dir = run_all(preset=a.preset, data_root=a.data_root, output_dir=a.output_dir, params_file=a.params,
                          start_at=a.start_at, stop_after=a.stop_after)
    except NotebookFailed as e:
        sys.exit(f"run-all stopped: {e}")
    print(f"executed notebooks in {run_dir}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="anomalyseg", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("make-data", help="generate the embedded procedural road benchmark")
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument("--out", type=Path, default=Path("data/demo"))
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_make_data)

    s = sub.add_parser("prepare-coco", help="write one-object OOD masks (value 254) from COCO instances")
    s.add_argument("--coco-root", type=Path, required=True)
    s.add_argument("--split", default="train")
    s.add_argument("--year", type=int, default=2017)
    s.add_argument("--max-images", type=int, default=400)
    s.add_argument("--min-area", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_prepare_coco)

    s = sub.add_parser("eval", help="evaluate a checkpoint on the benchmarks and/or Cityscapes val")
    s.add_argument("--model", choices=("erfnet", "eomt"), required=True)
    s.add_argument("--checkpoint", required=True, help="file (.pth/.ckpt/.safetensors), transformers folder or hub id")
    s.add_argument("--benchmarks-root", type=Path, help="the course's Validation_Dataset folder")
    s.add_argument("--benchmarks", nargs="*", default=None, help="folder names (default: all found)")
    s.add_argument("--cityscapes-root", type=Path, help="Cityscapes root, for mIoU on val")
    s.add_argument("--scores", nargs="+", default=["msp", "max_logit", "max_entropy", "energy"])
    s.add_argument("--temperatures", nargs="+", type=float, default=[1.0])
    s.add_argument("--temperature-on", choices=("pixel", "class"), default="pixel")
    s.add_argument("--fpr-convention", choices=("course", "smiyc"), default="course")
    s.add_argument("--input-size", nargs=2, type=int, default=(512, 1024), help="ERFNet input H W")
    s.add_argument("--window-size", type=int, default=1024, help="EoMT window size S")
    s.add_argument("--results", type=Path, default=Path("results/results.csv"))
    s.add_argument("--cache-dir", type=Path)
    s.add_argument("--device", default="cpu")
    s.add_argument("--workers", type=int, default=2)
    s.set_defaults(func=_eval)

    s = sub.add_parser("train", help="train ERFNet or a small EoMT on a Cityscapes-layout folder")
    s.add_argument("model", choices=("erfnet", "eomt"))
    s.add_argument("--cityscapes-root", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--steps", type=int, default=2000)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--crop-size", nargs=2, type=int, default=(256, 512))
    s.set_defaults(func=_train)

    from .demo_models import WEIGHTS_DIR

    s = sub.add_parser("demo-weights", help="train a demo segmenter and ship it as fp16 weights with a manifest entry")
    s.add_argument("--model", choices=("erfnet", "eomt"), required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--seed", type=int, default=0, help="seed of the embedded data set and of the training")
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument("--data-root", type=Path, default=Path("data"))
    s.add_argument("--work-dir", type=Path, default=Path("checkpoints/demo-weights"), help="training folder (resumable)")
    s.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    s.add_argument("--val-every", type=int, help="validate every N steps (default: once, at the end)")
    s.set_defaults(func=_demo_weights)

    s = sub.add_parser("run-all", help="execute notebooks 00-06 with papermill (the README's main job)")
    s.add_argument("--preset", choices=("tiny", "demo"), default="demo")
    s.add_argument("--data-root", type=Path, help="where the embedded data set lives (default: data/)")
    s.add_argument("--output-dir", type=Path, help="results/, checkpoints/, cache/, figures/ go here (default: the checkout)")
    s.add_argument("--params", type=Path, help="YAML file of notebook parameters overriding the preset's")
    s.add_argument("--from", dest="start_at", help="resume at this notebook (name or number, e.g. 03)")
    s.add_argument("--to", dest="stop_after", help="stop after this notebook")
    s.set_defaults(func=_run_all)

    a = p.parse_args(argv)
    a.func(a)


if __name__ == "__main__":
    main()
