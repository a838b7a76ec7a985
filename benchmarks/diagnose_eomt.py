"""Why is the from-scratch small EoMT of the demo weak? Controlled runs, one factor at a time.

Each variant changes ONE thing against the shipped recipe (``small_eomt_config()``: hidden 128,
4 layers, 2 query blocks, 4 heads, patch 8, 24 queries, 128 px windows; ``EomtModule`` with
lr 1e-3, batch 4, scale jitter 0.5-2, seed 0, the demo's recipe of ``zoo.eomt_records``) and
trains it for the same ``--steps`` on the same step-indexed data stream (``eomt_datamodule``,
seed 0), each with its complete schedule (warm-up, poly decay and masked-attention annealing
scaled to ``--steps``). Then every val frame is segmented as the package evaluates (windowed
inference, ``EomtSegmenter``, class maps at the frame's size) and scored with the package's
``ConfusionMatrix`` (mIoU over the 19 classes, absent classes 0, the course convention).

The variants (``VARIANTS``) are built with the package's own model and training code; only
``linear`` lives here: the same ViT (patch embedding, layers, width, final norm) with a per-pixel
linear classifier on its final patch tokens (logits upsampled bilinearly to the window,
cross-entropy, void ignored) instead of queries and masks. It is a diagnostic, not a method: if
it beats EoMT at equal steps, the mask-classification part (matching, no-object class, mask
resolution, fusion) is the bottleneck; if it does not, the backbone is.

    OMP_NUM_THREADS=1 python benchmarks/diagnose_eomt.py \\
        --data-root data/embedded/demo/cityscapes --steps 800 --variants baseline linear \\
        --out diagnose_eomt.json

The JSON at ``--out`` is updated after every variant (earlier variants of the file are kept),
so a long series can be run variant by variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from _common import machine_line, markdown_table
from anomalyseg.data.benchmarks import AnomalyBenchmark
from anomalyseg.labels import ANOMALY, CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from anomalyseg.metrics import ConfusionMatrix
from anomalyseg.models.eomt import (
    EomtSegmenter,
    count_parameters,
    normalize,
    small_eomt_config,
    split_windows,
    stitch_windows,
)
from anomalyseg.training.eomt import EomtModule, eomt_datamodule
from anomalyseg.training.settings import TrainSettings

# The demo's EoMT recipe (notebooks/presets.yaml, demo 02_eomt_eval; the manifest's settings).
BASE_LR, BASE_BATCH = 1e-3, 4
# Cityscapes' stuff classes (road .. sky) and things (person .. bicycle), by train id.
STUFF = tuple(range(11))
THINGS = tuple(range(11, NUM_CLASSES))

# name -> (what changed, small_eomt_config overrides, EomtModule overrides[, TrainSettings
# overrides: the data stream])
VARIANTS: dict[str, tuple] = {
    "baseline": ("the shipped recipe", {}, {}),
    "linear": ("per-pixel linear head on the same ViT (no queries, masks, matching)", {}, {}),
    "no_anneal": ("masked attention off from the start", {}, {"attn_mask_annealing": False}),
    "noobj_1": ("no-object class weight 0.1 -> 1.0", {"no_object_weight": 1.0}, {}),
    "class_w5": ("class loss weight 2 -> 5", {"class_weight": 5.0}, {}),
    "lr_2e-3": ("lr 1e-3 -> 2e-3", {}, {"lr": 2e-3}),
    "scale_1": (
        "no scale jitter (0.5-2 -> 1: crops at the evaluation scale, as ERFNet's recipe)",
        {},
        {},
        {"scale_range": (1.0, 1.0)},
    ),
    # not one factor: the two recipe changes that helped, together (a candidate recipe)
    "lr_2e-3_scale_1": (
        "lr 2e-3 and no scale jitter (the two together)",
        {},
        {"lr": 2e-3},
        {"scale_range": (1.0, 1.0)},
    ),
    "lr_5e-4": ("lr 1e-3 -> 5e-4", {}, {"lr": 5e-4}),
    "queries_48": ("24 -> 48 queries", {"num_queries": 48}, {}),
    "wide_256": ("hidden 128 -> 256 (8 heads)", {"hidden_size": 256, "num_attention_heads": 8}, {}),
    "deep_8": ("4 -> 8 layers", {"num_hidden_layers": 8}, {}),
    "patch_4": ("patch 8 -> 4 (32x32 tokens, masks at stride 2)", {"patch_size": 4}, {}),
    "win_256_p16": (
        "256 px windows, patch 16 (native frame resolution, 16x16 tokens)",
        {"image_size": 256, "patch_size": 16},
        {},
    ),
    "win_256": (
        "256 px windows, patch 8 (native resolution, 32x32 tokens)",
        {"image_size": 256},
        {},
    ),
}
HEADERS = (
    "variant",
    "what changed",
    "params",
    "s/step",
    "CPU s/step",
    "val mIoU (%)",
    "no-object queries dropped (%)",
    "stuff mIoU (%)",
    "things mIoU (%)",
)


class PixelLinearModule(EomtModule):
    """The EoMT's ViT with a per-pixel linear classifier on its final patch tokens.

    ``logits(images)``: uint8 ``[B, 3, S, S]`` -> ``[B, 19, S, S]`` (patch logits upsampled
    bilinearly). The queries, the mask head and the class head of the wrapped EoMT are never run;
    the optimiser, warm-up and layer-wise lr decay are ``EomtModule``'s (the linear head counts as
    a head)."""

    def __init__(self, model, **kwargs):
        super().__init__(model, attn_mask_annealing=False, **kwargs)
        self.pixel_head = nn.Conv2d(self.model.config.hidden_size, NUM_CLASSES, 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        hidden = m.embeddings(normalize(images))
        for layer in m.layers:
            hidden = layer(hidden, None)
        # patch_features skips num_queries tokens first: the queries are absent here
        tokens = m.layernorm(hidden)[:, m.embeddings.num_prefix_tokens :]
        feats = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *m.grid_size)
        return F.interpolate(self.pixel_head(feats), size=images.shape[-2:], mode="bilinear")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        target = batch["target"].masked_fill(batch["target"] >= NUM_CLASSES, IGNORE_INDEX)
        loss = F.cross_entropy(self.logits(batch["image"]), target, ignore_index=IGNORE_INDEX)
        self.log("train_loss", loss)
        return loss

    def param_groups(self) -> list[dict]:
        used = ("embeddings.", "layers.", "layernorm.")
        groups = [g for g in super().param_groups() if g["name"].startswith(used)]
        head = {"params": list(self.pixel_head.parameters()), "lr": self.hparams.lr}
        return groups + [{**head, "name": "pixel_head", "backbone": False}]

    def used_parameters(self) -> int:
        return sum(p.numel() for g in self.param_groups() for p in g["params"])

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits ``[19, H, W]`` of a uint8 frame ``[3, H, W]``, windowed as EoMT is."""
        windows, offsets, resized = split_windows(image, self.model.config.image_size)
        return stitch_windows(self.logits(windows), offsets, resized, tuple(image.shape[-2:]))


class _Progress(L.Callback):
    def __init__(self, name: str, every: int):
        self.name, self.every, self.start = name, every, time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            loss = float(trainer.callback_metrics.get("train_loss", float("nan")))
            elapsed = time.perf_counter() - self.start
            print(f"  {self.name}: step {step}/{trainer.max_steps} loss {loss:.3f} {elapsed:.0f} s")


def build(name: str, steps: int, lr: float, seed: int) -> EomtModule:
    """The ``EomtModule`` (or ``PixelLinearModule``) of one variant, weights seeded by ``seed``
    (as ``train_eomt`` seeds before building)."""
    if name not in VARIANTS:
        raise SystemExit(
            f"--variants: unknown variant {name!r}; expected some of {list(VARIANTS)}."
        )
    _, config_overrides, module_overrides = VARIANTS[name][:3]
    L.seed_everything(seed, workers=True, verbose=False)
    config = small_eomt_config(**config_overrides)
    kwargs = {"max_steps": steps, "lr": lr, "seed": seed, **module_overrides}
    cls = PixelLinearModule if name == "linear" else EomtModule
    return cls(config, **kwargs)


def evaluate(module: EomtModule, data) -> tuple[ConfusionMatrix, ConfusionMatrix | None]:
    """Confusion matrices of the val frames at their stored size, windowed inference: with the
    package's fusion (every query's class probabilities times its mask), and for EoMT variants
    also with the queries whose most likely class is the no-object class left out of the fusion
    (as Mask2Former's panoptic inference drops them), a fusion that needs no training."""
    cm = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    dropped = None
    predict = predictor(module)
    segmenter = getattr(predict, "__self__", None)
    if isinstance(segmenter, EomtSegmenter):
        dropped = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
    with torch.no_grad():
        for batch in data.val_dataloader():
            for image, target in zip(batch["image"], batch["target"]):
                if dropped is None:
                    cm.update(predict(image).argmax(0), target)
                    continue
                raw = segmenter.raw_outputs(image)
                cm.update(segmenter.class_map(raw).argmax(0), target)
                logits = raw["class_logits"].clone()
                empty = logits.argmax(-1) == logits.shape[-1] - 1  # [N, Q]
                logits[..., :-1] = logits[..., :-1].masked_fill(empty[..., None], -1e4)
                dropped.update(
                    segmenter.class_map(dict(raw, class_logits=logits)).argmax(0), target
                )
    return cm, dropped


def predictor(module: EomtModule):
    """``uint8 [3, H, W] -> [19, H, W]`` class map of a trained variant, windowed inference."""
    module.eval()
    if isinstance(module, PixelLinearModule):
        return module.predict
    return EomtSegmenter(module.model, checkpoint="diagnose").predict


def anomaly_classes(predict, folder: str | Path) -> dict[str, float]:
    """Fraction of the anomaly pixels of the benchmark ``folder`` that the argmax assigns to each
    class (largest first): what an anomaly is mistaken for."""
    counts = torch.zeros(NUM_CLASSES, dtype=torch.int64)
    with torch.no_grad():
        for item in AnomalyBenchmark(folder):
            pred = predict(item["image"]).argmax(0)
            counts += torch.bincount(pred[item["label"] == ANOMALY], minlength=NUM_CLASSES)
    frac = counts.double() / max(1, int(counts.sum()))
    order = torch.argsort(frac, descending=True).tolist()
    return {CLASS_NAMES[i]: float(frac[i]) for i in order if frac[i] > 0}


def top_classes(fractions: dict[str, float], k: int = 3) -> str:
    return ", ".join(f"{name} {100 * f:.0f}%" for name, f in list(fractions.items())[:k])


def datamodule(name: str, data_root, size: int, batch_size: int, seed: int):
    """The package's EoMT data stream (``eomt_datamodule``) with the variant's TrainSettings."""
    overrides = VARIANTS[name][3] if len(VARIANTS[name]) > 3 else {}
    train = TrainSettings(batch_size=batch_size, seed=seed, num_workers=0, **overrides)
    return eomt_datamodule(data_root, size, train)


def run_variant(name: str, args) -> dict:
    module = build(name, args.steps, args.lr, args.seed)
    size = module.model.config.image_size
    data = datamodule(name, args.data_root, size, args.batch_size, args.seed)
    trainer = L.Trainer(
        max_steps=args.steps,
        max_epochs=-1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[_Progress(name, max(1, args.steps // 8))],
    )
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    cm, dropped = evaluate(module, data)
    iou = cm.iou()
    params = (
        module.used_parameters()
        if isinstance(module, PixelLinearModule)
        else count_parameters(module.model)
    )

    def mean(ids) -> float:
        return float(sum(0.0 if iou[i] != iou[i] else iou[i] for i in ids) / len(ids))

    anomalies = {}
    if args.anomaly_root is not None:
        anomalies = anomaly_classes(predictor(module), args.anomaly_root)
    return {
        "variant": name,
        "what": VARIANTS[name][0],
        "params": int(params),
        "steps": args.steps,
        "s_per_step": wall / args.steps,
        "cpu_s_per_step": cpu / args.steps,
        "val_miou": float(cm.miou()),
        "val_miou_no_object_dropped": None if dropped is None else float(dropped.miou()),
        "stuff_miou": mean(STUFF),
        "things_miou": mean(THINGS),
        "iou": {CLASS_NAMES[i]: (None if iou[i] != iou[i] else float(iou[i])) for i in range(19)},
        "anomaly_pixels_predicted_as": anomalies,
        "config": module.model.config.to_dict() | {"lr": module.hparams.lr},
    }


def table(results: list[dict]) -> str:
    rows = [
        (
            r["variant"],
            r["what"],
            f"{r['params'] / 1e6:.2f} M",
            f"{r['s_per_step']:.2f}",
            f"{r['cpu_s_per_step']:.2f}",
            f"{100 * r['val_miou']:.1f}",
            "-"
            if r.get("val_miou_no_object_dropped") is None
            else f"{100 * r['val_miou_no_object_dropped']:.1f}",
            f"{100 * r['stuff_miou']:.1f}",
            f"{100 * r['things_miou']:.1f}",
        )
        for r in results
    ]
    return markdown_table(HEADERS, rows)


def variants_help() -> str:
    """``--help``'s list of the variants: name and what it changes, from ``VARIANTS``."""
    width = max(map(len, VARIANTS))
    lines = [f"  {name:{width}}  {spec[0]}" for name, spec in VARIANTS.items()]
    return "variants (--variants; benchmarks/README.md says which were measured):\n" + "\n".join(
        lines
    )


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=variants_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-root", required=True, help="Cityscapes-layout folder (train and val splits)"
    )
    parser.add_argument("--steps", type=int, default=800, help="optimiser steps per variant")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["baseline", "linear"],
        metavar="VARIANT",
        help="variants to run, one after the other (listed below; default: baseline linear)",
    )
    parser.add_argument("--out", type=Path, help="JSON file of the results (updated per variant)")
    parser.add_argument(
        "--anomaly-root",
        type=Path,
        help="a benchmark folder (images/, labels_masks/) whose anomaly pixels' predicted classes "
        "are counted; default <data-root>/../Validation_Dataset/RoadAnomaly21 when present",
    )
    parser.add_argument("--batch-size", type=int, default=BASE_BATCH)
    parser.add_argument("--lr", type=float, default=BASE_LR, help="the recipe's lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    for name in args.variants:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; expected some of {list(VARIANTS)}")
    if not (Path(args.data_root) / "leftImg8bit" / "val").is_dir():
        parser.error(f"--data-root {args.data_root}: expected leftImg8bit/val/ under it")
    if args.anomaly_root is None:
        ra21 = Path(args.data_root).parent / "Validation_Dataset" / "RoadAnomaly21"
        args.anomaly_root = ra21 if ra21.is_dir() else None
    torch.set_num_threads(args.threads)
    machine = machine_line("cpu")
    print(machine, flush=True)
    stored = {}
    if args.out is not None and args.out.is_file():
        stored = {r["variant"]: r for r in json.loads(args.out.read_text())["results"]}
    results = []
    for name in args.variants:
        print(f"{name}: {VARIANTS[name][0]}, {args.steps} steps", flush=True)
        r = run_variant(name, args) | {"machine": machine}
        results.append(r)
        print(f"  {name}: val mIoU {100 * r['val_miou']:.2f}%", flush=True)
        if args.out is not None:
            stored[name] = r
            args.out.write_text(json.dumps({"results": list(stored.values())}, indent=1))
    out = f"{machine}\n\n{table(results)}\n"
    if args.anomaly_root is not None:
        rows = [(r["variant"], top_classes(r["anomaly_pixels_predicted_as"])) for r in results]
        out += f"\nanomaly pixels of {args.anomaly_root}, predicted as (argmax):\n\n"
        out += markdown_table(("variant", "top classes"), rows) + "\n"
    print(out)
    return out


if __name__ == "__main__":
    main()
