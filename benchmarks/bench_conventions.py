"""How much each evaluation convention moves the figures, one convention at a time.

Issue 13's three differences between the course's scripts and the pre-protocol evaluation
(``legacy``), and the float16 logits, each measured alone: every row evaluates the same
random-weight ERFNet (its void channel raised to win ``--void-share`` of the pixels) on generated
frames in
the course's layout, under ``course`` and under ``course`` with that one setting changed
(``dataclasses.replace``), and prints the difference in points.

- ``skip rule``: frames whose only anomaly is a few pixels that vanish at 512x1024 (PIL nearest),
  dropped after the resize (course) or kept as inlier pixels (decided at full resolution);
- ``input resize``: 1280x720 frames resized as a PIL image (course) or as a torchvision tensor
  with antialiasing; also the grey-level difference of the resized frames;
- ``mIoU channels``: the argmax over the 20 ERFNet channels (course's iouEval: a void win is a
  miss) or over 19;
- ``logits dtype``: float32 or float16 cached logits.

    python benchmarks/bench_conventions.py                  # 512x1024, as the course
    python benchmarks/bench_conventions.py --size 256 512 --frames 4
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from _common import machine_line, markdown_table
from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.evaluate import OutputCache, evaluate_anomaly, evaluate_miou
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter
from anomalyseg.protocol import PROTOCOLS, resize_image


def _frame(rng, h, w) -> np.ndarray:
    coarse = rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3)).astype(np.uint8)
    img = np.array(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return np.clip(img + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)


def make_data(root: Path, frames: int, seed: int = 0) -> Path:
    """``Validation_Dataset/fs_static`` (1280x720 jpg, 0/1/255) with one anomaly box per frame,
    ``RoadAnomaly`` (1024x2048 jpg, 0/2) where every other frame's only anomaly is a 2x2-pixel
    speck at an even row and column (gone at 512x1024 under PIL's nearest), and a Cityscapes val
    split."""
    rng = np.random.default_rng(seed)
    bench = root / "Validation_Dataset"
    for name, (h, w), value in (("fs_static", (720, 1280), 1), ("RoadAnomaly", (1024, 2048), 2)):
        for d in ("images", "labels_masks"):
            (bench / name / d).mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            mask = np.zeros((h, w), np.uint8)
            mask[int(0.9 * h) :] = 255 if value == 1 else 0
            if name == "RoadAnomaly" and i % 2:
                y, x = 2 * int(rng.integers(h // 4, h // 2)), 2 * int(rng.integers(w // 4, w // 2))
                mask[y, x] = (
                    # a lone pixel at an even row / column: PIL's nearest at half size skips it
                    value
                )
            else:
                y, x = int(rng.integers(h // 3, h // 2)), int(rng.integers(w // 5, w // 2))
                mask[y : y + h // 8, x : x + w // 10] = value
            Image.fromarray(_frame(rng, h, w)).save(
                bench / name / "images" / f"{i}.jpg", quality=90
            )
            Image.fromarray(mask).save(bench / name / "labels_masks" / f"{i}.png")
    for d in ("leftImg8bit", "gtFine"):
        (root / "cityscapes" / d / "val" / "city").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.fromarray(_frame(rng, 1024, 2048)).save(
            root / "cityscapes" / "leftImg8bit" / "val" / "city" / f"c_{i}_leftImg8bit.png"
        )
        lab = np.array(
            Image.fromarray(rng.integers(0, 19, (8, 16)).astype(np.uint8)).resize(
                (2048, 1024), Image.NEAREST
            )
        )
        Image.fromarray(lab).save(
            root / "cityscapes" / "gtFine" / "val" / "city" / f"c_{i}_gtFine_labelTrainIds.png"
        )
    return root


def main(argv: Sequence[str] | None = None) -> str:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--size", nargs=2, type=int, default=(512, 1024), help="ERFNet input H W (course: 512 1024)"
    )
    ap.add_argument("--frames", type=int, default=6, help="frames per benchmark")
    ap.add_argument(
        "--void-share",
        type=float,
        default=0.10,
        help="share of Cityscapes val pixels the void channel is made to win (its bias is raised "
        "to it)",
    )
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = ERFNet(20).eval()
    course = PROTOCOLS["course"]
    variants = {
        "skip rule": (
            "RoadAnomaly",
            dataclasses.replace(course, name="skip_full_res", skip_after_resize=False),
        ),
        "input resize": (
            "fs_static",
            dataclasses.replace(course, name="tensor_resize", input_resize="tensor"),
        ),
        "logits dtype": (
            "fs_static",
            dataclasses.replace(course, name="float16", logits_dtype="float16"),
        ),
    }
    started = time.time()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_data(Path(tmp), a.frames)
        seg = ErfnetSegmenter(model, checkpoint="random-init", input_size=tuple(a.size))
        val = CityscapesSegmentation(root / "cityscapes", "val")
        with torch.no_grad():  # raise the void bias until void wins --void-share of the val pixels
            z = seg.forward_batch(torch.stack([val[i]["image"] for i in range(len(val))]))
            gap = (z[:, :19].amax(1) - z[:, 19]).flatten()
            model.decoder.output_conv.bias[19] += float(
                torch.quantile(gap[:: max(1, gap.numel() // 1_000_000)], a.void_share)
            )
            # labels = the model's own 19-class prediction (a random model scores ~1% mIoU on
            # random labels,
            # where no convention shows): every non-void pixel is a hit, except where void wins
            # the argmax
            for i in range(len(val)):
                pred = z[i, :19].argmax(0).byte()
                h, w = val[i]["target"].shape
                full = pred.repeat_interleave(h // pred.shape[0], 0).repeat_interleave(
                    w // pred.shape[1], 1
                )
                Image.fromarray(full.numpy()).save(val.pairs[i][1])
        cache = OutputCache()
        rows = []
        for what, (bench, variant) in variants.items():
            benches = load_benchmarks(root / "Validation_Dataset", [bench])
            ref = evaluate_anomaly(
                seg,
                benches,
                ("msp", "max_logit"),
                results_path=None,
                cache=cache,
                maps_frames=0,
                progress=False,
                protocol=course,
            )
            alt = evaluate_anomaly(
                seg,
                benches,
                ("msp", "max_logit"),
                results_path=None,
                cache=cache,
                maps_frames=0,
                progress=False,
                protocol=variant,
            )
            for (_, r), (_, v) in zip(ref.iterrows(), alt.iterrows()):
                rows.append(
                    [
                        what,
                        bench,
                        r.score,
                        f"{r.frames_used}/{v.frames_used}",
                        f"{100 * r.auprc:.4f}",
                        f"{100 * v.auprc:.4f}",
                        f"{100 * (v.auprc - r.auprc):+.4f}",
                        f"{100 * r.fpr_at_95_tpr:.4f}",
                        f"{100 * v.fpr_at_95_tpr:.4f}",
                        f"{100 * (v.fpr_at_95_tpr - r.fpr_at_95_tpr):+.4f}",
                    ]
                )
        m20 = evaluate_miou(
            seg, val, results_path=None, cache=cache, progress=False, protocol=course
        )[0].miou.iloc[0]
        m19 = evaluate_miou(
            seg,
            val,
            results_path=None,
            cache=cache,
            progress=False,
            protocol=dataclasses.replace(course, name="argmax19", miou_void_channel=False),
        )[0].miou.iloc[0]
        frames = load_benchmarks(root / "Validation_Dataset", ["fs_static"])["fs_static"]
        diffs = [
            (
                resize_image(frames[i]["image"], tuple(a.size), "pil").int()
                - resize_image(frames[i]["image"], tuple(a.size), "tensor").int()
            ).abs()
            for i in range(len(frames))
        ]
        diff = torch.stack(diffs)
        with torch.no_grad():
            logits = seg.forward_batch(torch.stack([val[i]["image"] for i in range(len(val))]))
        void_share = (logits.argmax(1) == 19).float().mean().item()
        frame_h, frame_w = frames[0]["image"].shape[1:]
    headers = (
        "difference",
        "benchmark",
        "score",
        "frames course/alt",
        "AuPRC course",
        "AuPRC alt",
        "AuPRC alt - course",
        "FPR95 course",
        "FPR95 alt",
        "FPR95 alt - course",
    )
    lines.append(markdown_table(headers, rows))
    lines.append("")
    lines.append(
        f"input resize, {frame_w}x{frame_h} -> {a.size[1]}x{a.size[0]}: "
        f"PIL vs torchvision tensor differ by up to {int(diff.max())} grey levels on "
        f"{100 * (diff > 0).float().mean().item():.2f}% of values"
    )
    lines.append(
        f"mIoU channels: argmax over 20 (course) {100 * m20:.4f}, over 19 {100 * m19:.4f}, "
        f"difference {100 * (m19 - m20):+.4f} points; the void channel wins "
        f"{100 * void_share:.1f}% of val pixels"
    )
    lines.append(f"{machine_line('cpu')}; {time.time() - started:.0f} s")
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
