"""Small EoMT on CPU: training steps/s and windowed-inference frames/s, to budget demo runs.

Training: one optimiser step of ``EomtModule`` (transformers' forward + Hungarian-matched loss over
the final and intermediate predictions + backward + AdamW) on a batch of ``S x S`` crops, with
``S`` the config's ``image_size``. Crops come from the embedded Cityscapes train split when
``--data`` is given (as training sees them, scale jitter and flips included), else from random
pixels with block-shaped targets of a few classes. Inference: ``EomtSegmenter.raw_outputs``
(resize, windows, one forward) and then ``class_map`` (per-pixel logits at frame size) on a
``--frame``-sized frame. Figures are medians over ``--repeat`` runs (the machine may be shared).

    python benchmarks/bench_eomt.py --threads 1 --data data/embedded/demo/cityscapes
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anomalyseg.models.eomt import EomtSegmenter, build_eomt, count_parameters, small_eomt_config
from anomalyseg.training.eomt import EomtModule


def median_rate(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def crops(args, size: int):
    if args.data:
        from anomalyseg.data.cityscapes import CityscapesSegmentation
        from anomalyseg.data.transforms import train_transforms
        from anomalyseg.models.eomt import scaled_size

        ds = CityscapesSegmentation(args.data, "train")
        base = scaled_size(tuple(ds[0]["image"].shape[-2:]), size)
        ds.transforms = train_transforms((size, size), base_size=base)
        items = [ds[i] for i in range(args.batch_size)]
        return torch.stack([it["image"] for it in items]), torch.stack(
            [it["target"] for it in items]
        )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    blocks = torch.randint(
        0, 8, (args.batch_size, 4, 4), generator=g
    )  # about 8 classes per crop, like road scenes
    return images, blocks.repeat_interleave(size // 4, 1).repeat_interleave(size // 4, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frame", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    parser.add_argument("--data", help="Cityscapes-layout root to take real training crops from")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = small_eomt_config()
    size = config.image_size
    module = EomtModule(config, max_steps=1000).train()
    optimizer = module.configure_optimizers()["optimizer"]
    images, targets = crops(args, size)

    def train_step():
        module._layer_losses.clear()
        loss = sum(
            module.compute_loss(
                {"image": images, "target": targets}, module(images, targets)
            ).values()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train = median_rate(train_step, args.repeat)
    seg = EomtSegmenter(build_eomt(config), checkpoint="random-init")
    frame = torch.randint(0, 256, (3, *args.frame), dtype=torch.uint8)
    forward = median_rate(lambda: seg.raw_outputs(frame), args.repeat)
    full = median_rate(lambda: seg.class_map(seg.raw_outputs(frame)), args.repeat)
    print(
        f"small EoMT ({count_parameters(module.model) / 1e6:.2f} M parameters, {size}x{size} "
        f"windows, patch {config.patch_size}, {config.num_hidden_layers} layers, "
        f"{config.num_queries} queries), {args.threads} thread(s), "
        f"{'real' if args.data else 'synthetic'} crops"
    )
    print(
        f"  train: {train:.2f} steps/s at batch {args.batch_size} ({train * args.batch_size:.1f} "
        "crops/s)"
    )
    print(
        f"  windowed inference on {args.frame[0]}x{args.frame[1]}: {forward:.1f} frames/s forward, "
        f"{full:.1f} frames/s with the class map"
    )


if __name__ == "__main__":
    main()
