"""Inference throughput (frames/s) and peak memory of ERFNet and EoMT, bare and with the scores.

Two modes per configuration, timed interleaved (round by round) so that a changing machine load
hits both alike:

- ``bare``: the network alone. ERFNet: ``model(x)`` on float frames ``[B, 3, H, W]`` already at
  the input size. EoMT: ``EomtSegmenter.forward_windows`` (ImageNet normalisation + transformers'
  ``EomtForUniversalSegmentation``) on the uint8 windows of ``B`` frames, cut beforehand.
- ``full``: what an on-line anomaly segmenter runs per frame. ERFNet: forward + the five scores
  (MSP, MaxLogit, MaxEntropy, Energy, RbA) on the 19 class channels. EoMT: ``split_windows`` of
  the uint8 frames (two 1024x1024 windows per 1024x2048 frame), one forward over all windows,
  then per frame ``EomtSegmenter.class_map`` (mask logits upsampled to the window,
  ``per_pixel_logits``, ``stitch_windows`` back to the frame) and the five scores on it.

``vs bare`` is the full mode's time over the bare mode's, minus one: the cost of the scores.
``CPU ms/frame`` and ``vs bare (CPU time)`` use the process CPU time (all threads) instead of the
wall clock: on a CPU shared with other jobs, run with ``--threads 1`` and read these, since the
wall clock also counts the waits for a core. (On the GPU, CPU time is only the host's share.)
The network runs under ``torch.autocast`` with ``--dtype bf16``; what follows it runs in float32,
as the package computes it. Weights are random (timing needs none). Each measurement: warm-up
calls excluded (the first, compilation included, is reported as ``first call``), then
``ceil(--frames / --batch)`` timed calls, ``torch.cuda.synchronize`` around each on the GPU.
``peak extra`` is the memory a call needs beyond the weights and inputs, over the last warm-up
call: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before it on the GPU, the
rise of the peak resident set on the CPU (see ``_common``); ``weights`` is the
parameters' size.

Sizes: ERFNet at 512x1024 (the course input), EoMT-L as released for Cityscapes (hidden 1024,
24 layers, 16 heads, patch 16, 4 blocks of 200 queries, 4 register tokens, 1024 windows) on
1024x2048 frames. ``--small``: ERFNet at 256x512 and the small embedded EoMT
(``small_eomt_config``: 128 windows) on 256x512 frames, for CPUs.

Goals on one H100 (REFERENCE §8: ERFNet 83 FPS on a Titan X, EoMT-L 25 FPS on an H100 with
torch.compile): ERFNet >= 400 frames/s at batch 8 with bf16 + compile; EoMT-L >= 25 frames/s;
the scores add <= 5% to the bare forward.

    python benchmarks/bench_models.py --device cuda --dtype bf16 --compile --model all --batch 1 8
    python benchmarks/bench_models.py --model erfnet --batch 1 8 --frames 16          # CPU
    python benchmarks/bench_models.py --model eomt --small --frames 8                  # CPU
    python benchmarks/bench_models.py --model eomt --frames 1 --warmup 1               # CPU,
    EoMT-L: minutes
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import torch

from _common import autocast, machine_line, markdown_table, run_timed, script_device
from anomalyseg.labels import NUM_CLASSES
from anomalyseg.scores import get_score

SCORES = ("msp", "max_logit", "max_entropy", "energy", "rba")
HEADERS = (
    "model",
    "config",
    "frame",
    "windows/frame",
    "batch",
    "dtype",
    "compile",
    "mode",
    "frames/s",
    "ms/frame",
    "CPU ms/frame",
    "vs bare",
    "vs bare (CPU time)",
    "first call (s)",
    "weights (MiB)",
    "peak extra (MiB)",
)


def eomt_large_config():
    """The released Cityscapes EoMT-L at 1024 (tue-mps/cityscapes_semantic_eomt_large_1024)."""
    from transformers import EomtConfig

    return EomtConfig(
        num_labels=NUM_CLASSES,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        patch_size=16,
        image_size=1024,
        num_blocks=4,
        num_queries=200,
        num_register_tokens=4,
        num_upscale_blocks=2,
        mlp_ratio=4,
    )


def five_scores(x: torch.Tensor) -> list[torch.Tensor]:
    return [get_score(s)(x) for s in SCORES]


def _compile(module, args):
    return torch.compile(module, mode=None if args.compile_mode == "default" else args.compile_mode)


# ----------------------------------------------------------------------------- ERFNet
def bench_erfnet(args, device: torch.device, batch: int) -> list[list]:
    from anomalyseg.models.erfnet import ERFNet

    h, w = args.erfnet_size
    torch.manual_seed(0)
    model = ERFNet().to(device).eval()
    x = torch.rand(batch, 3, h, w, device=device)
    if args.channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.contiguous(memory_format=torch.channels_last),
        )
    net = _compile(model, args) if args.compile else model

    def bare():
        with autocast(device, args.dtype):
            return net(x)

    def full():
        with autocast(device, args.dtype):
            logits = net(x)
        return five_scores(logits[:, :NUM_CLASSES])

    config = "ERFNet 20 cls" + (", channels_last" if args.channels_last else "")
    return _rows(
        args, device, "erfnet", config, f"{h}x{w}", 1, batch, {"bare": bare, "full": full}, model
    )


# ----------------------------------------------------------------------------- EoMT
def bench_eomt(args, device: torch.device, batch: int) -> list[list]:
    from anomalyseg.models.eomt import EomtSegmenter, build_eomt, small_eomt_config, split_windows

    config = small_eomt_config() if args.small else eomt_large_config()
    torch.manual_seed(0)
    with device:  # build in place: EoMT-L is 1.2 GB in float32
        model = build_eomt(config, for_eval=True)  # random weights, eval mode, masked attention off
    segmenter = EomtSegmenter(model, checkpoint="random-init", device=device)
    if args.compile:
        segmenter.model = _compile(segmenter.model, args)
    s = segmenter.window_size
    h, w = args.eomt_frame
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=gen).to(device)
    cut = [split_windows(f, s) for f in frames]
    windows = torch.cat([c[0] for c in cut])  # [B * N, 3, S, S] uint8, for the bare mode
    n = len(cut[0][0])

    def bare():
        with autocast(device, args.dtype):
            return segmenter.forward_windows(windows)

    def full():
        split = [split_windows(f, s) for f in frames]
        with autocast(device, args.dtype):
            out = segmenter.forward_windows(torch.cat([c[0] for c in split]))
        maps = []
        for b, (_, offsets, resized) in enumerate(split):
            raw = {
                "mask_logits": out["mask_logits"][b * n : (b + 1) * n],
                "class_logits": out["class_logits"][b * n : (b + 1) * n],
                "offsets": offsets,
                "resized_size": torch.tensor(resized),
                "frame_size": torch.tensor((h, w)),
            }
            maps.append(five_scores(segmenter.class_map(raw, (h, w))))
        return maps

    c = model.config
    name = "small (embedded)" if args.small else "EoMT-L"
    desc = (
        f"{name}: D{c.hidden_size} L{c.num_hidden_layers} H{c.num_attention_heads} p{c.patch_size} "
        f"{c.num_blocks}x{c.num_queries}q S{c.image_size}, attn {c._attn_implementation}"
    )
    return _rows(
        args, device, "eomt", desc, f"{h}x{w}", n, batch, {"bare": bare, "full": full}, model
    )


# ----------------------------------------------------------------------------- table
def _rows(args, device, model, config, frame, windows, batch, fns, net) -> list[list]:
    iters = max(1, math.ceil(args.frames / batch))
    with torch.inference_mode():
        timings = run_timed(fns, iters=iters, warmup=args.warmup, device=device)
    bare = timings["bare"]
    weights = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
    rows = []
    for mode, t in timings.items():
        overhead = "-" if mode == "bare" else f"{(t.total_s / bare.total_s - 1) * 100:+.1f}%"
        cpu_overhead = (
            "-" if mode == "bare" else f"{(t.total_cpu_s / bare.total_cpu_s - 1) * 100:+.1f}%"
        )
        rows.append(
            [
                model,
                config,
                frame,
                windows,
                batch,
                args.dtype,
                args.compile_mode if args.compile else "no",
                mode,
                f"{batch * iters / t.total_s:.3g}",
                f"{t.median_s / batch * 1e3:.3g}",
                f"{t.total_cpu_s / (batch * iters) * 1e3:.3g}",
                overhead,
                cpu_overhead,
                f"{t.first_call_s:.3g}",
                f"{weights:.0f}",
                f"{t.peak_mib:.0f}",
            ]
        )
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", choices=("erfnet", "eomt", "all"), default="all")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: torch.autocast around the network",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    ap.add_argument(
        "--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune")
    )
    ap.add_argument(
        "--channels-last", action="store_true", help="ERFNet in channels_last memory format"
    )
    ap.add_argument(
        "--frames",
        type=int,
        default=None,
        help="timed frames per configuration (default: 64 on cuda, 8 on cpu, 1 for EoMT-L on cpu)",
    )
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=None,
        help="frames per forward (default: ERFNet 1 8, EoMT 1)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="warm-up calls, excluded (default: 5 on cuda, 1 on cpu)",
    )
    ap.add_argument(
        "--small", action="store_true", help="small embedded EoMT and 256x512 frames (for CPUs)"
    )
    ap.add_argument(
        "--erfnet-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="ERFNet input (default 512 1024; 256 512 with --small)",
    )
    ap.add_argument(
        "--eomt-frame",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="EoMT frame (default 1024 2048; 256 512 with --small)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = ap.parse_args(argv)
    args.erfnet_size = args.erfnet_size or ((256, 512) if args.small else (512, 1024))
    args.eomt_frame = args.eomt_frame or ((256, 512) if args.small else (1024, 2048))
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark, print the markdown table and return it."""
    args = parse_args(argv)
    device = script_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 2 if args.compile else 1)
    args.warmup = warmup
    header = [
        machine_line(device),
        f"warm-up calls: {warmup} per mode (excluded; 'first call' is the first of them, "
        "compilation included); 'peak extra': memory beyond the weights and inputs over the last "
        "warm-up call, "
        + (
            "torch.cuda.max_memory_allocated minus memory_allocated before it"
            if cuda
            else "rise of the peak resident set (VmHWM, reset via /proc/self/clear_refs) over the "
            "resident set before it"
        ),
        "",
    ]
    print("\n".join(header), flush=True)
    rows = []
    models = ("erfnet", "eomt") if args.model == "all" else (args.model,)
    for model in models:
        batches = args.batch or ((1, 8) if model == "erfnet" else (1,))
        for b in batches:
            frames_arg = args.frames
            if frames_arg is None:
                frames_arg = 64 if cuda else (1 if model == "eomt" and not args.small else 8)
            local = argparse.Namespace(**{**vars(args), "frames": max(frames_arg, 1)})
            rows += (bench_erfnet if model == "erfnet" else bench_eomt)(local, device, b)
            if cuda:
                torch.cuda.empty_cache()
    table = markdown_table(HEADERS, rows)
    print(table, flush=True)
    return "\n".join(header) + "\n" + table


if __name__ == "__main__":
    main(sys.argv[1:])
