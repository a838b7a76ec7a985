"""Sharded evaluation (``evaluate_sharded``): forward passes over N Lightning processes into the
output cache, metrics once on rank 0. The reference is the plain one-process ``anomalyseg eval``
(and, for the cached outputs, the segmenter's own ``raw_outputs``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.evaluate import OutputCache, evaluate_anomaly, evaluate_miou, frame_name
from anomalyseg.evaluate_sharded import evaluate_sharded, predict_to_cache
from anomalyseg.protocol import applied, get_protocol
from anomalyseg.results import MIOU_DATASET, read_results
from anomalyseg.zoo import erfnet_segmenter
from helpers import run_cli as run

REPO = Path(__file__).resolve().parents[1]
METRICS = ["auprc", "fpr_at_95_tpr", "auroc", "miou"]


@pytest.fixture(scope="module")
def eomt_folder(tiny_eomt_folder) -> Path:
    return tiny_eomt_folder


def eval_args(tiny_data, model, checkpoint, results):
    size = ["--input-size", 64, 128] if model == "erfnet" else []
    return [
        "eval",
        "--model",
        model,
        "--checkpoint",
        checkpoint,
        "--benchmarks-root",
        tiny_data / "Validation_Dataset",
        "--cityscapes-root",
        tiny_data / "cityscapes",
        "--results",
        results,
        "--workers",
        0,
        "--scores",
        "msp",
        "max_logit",
        *size,
    ]


def metrics(results: Path):
    df = read_results(results)
    keys = [
        "dataset",
        "score",
        "temperature",
        "frames_used",
        "frames_skipped",
        "eval_size",
        "protocol",
    ]
    return df[keys + METRICS].sort_values(["dataset", "score"]).reset_index(drop=True)


def test_cached_outputs_are_the_segmenters_own_and_not_computed_twice(
    erfnet_file, tiny_data, tmp_path
):
    """evaluate_sharded on one Lightning process: its rows equal evaluate_anomaly + evaluate_miou
    with an in-memory cache, every frame of the benchmarks and val is in the disk cache exactly as
    raw_outputs gives it under the protocol, and a second run finds them all and writes nothing."""
    seg = erfnet_segmenter(None, checkpoint=erfnet_file, input_size=(64, 128), device="cpu")
    benchmarks = load_benchmarks(tiny_data / "Validation_Dataset")
    val = CityscapesSegmentation(tiny_data / "cityscapes", "val")
    cache = OutputCache(tmp_path / "cache")
    rows = evaluate_sharded(
        seg,
        benchmarks,
        val,
        cache,
        accelerator="cpu",
        devices=1,
        progress=False,
        results_path=None,
        scores=("msp", "energy"),
    )
    plain = pd.concat(
        [
            evaluate_anomaly(seg, benchmarks, ("msp", "energy"), results_path=None, progress=False),
            evaluate_miou(seg, val, results_path=None, progress=False)[0],
        ],
        ignore_index=True,
    )
    assert len(rows) == 5 * 2 + 1 and rows.run_id.nunique() == 1
    assert rows[["dataset", "score", *METRICS]].equals(plain[["dataset", "score", *METRICS]])
    sets = {**benchmarks, MIOU_DATASET: val}
    with applied(seg, get_protocol("course")):
        key = cache.key(seg)
        for name, ds in sets.items():
            for item in ds:
                stored = load_file(cache.path(seg, name, frame_name(item), key))
                expected = seg.raw_outputs(item["image"])
                assert stored.keys() == expected.keys()
                for k in expected:
                    assert torch.equal(stored[k], expected[k]), (name, item["stem"], k)
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == sum(len(ds) for ds in sets.values())
    stamps = [f.stat().st_mtime_ns for f in files]
    assert predict_to_cache(seg, sets, cache, accelerator="cpu", devices=1, progress=False) is True
    assert [f.stat().st_mtime_ns for f in files] == stamps


@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_lightning_eval_equals_plain_eval(
    model, erfnet_file, eomt_folder, tiny_data, tmp_path, capsys
):
    """`anomalyseg eval --accelerator cpu --devices 1` (the Lightning path, in this process) stores
    exactly the metrics of the plain evaluation, for both models."""
    checkpoint = erfnet_file if model == "erfnet" else eomt_folder
    code, _, err = run(eval_args(tiny_data, model, checkpoint, tmp_path / "plain.csv"), capsys)
    assert code == 0, err
    code, out, err = run(
        [
            *eval_args(tiny_data, model, checkpoint, tmp_path / "sharded.csv"),
            "--cache-dir",
            tmp_path / "cache",
            "--accelerator",
            "cpu",
            "--devices",
            1,
        ],
        capsys,
    )
    assert code == 0, err
    assert "SMIYC RA-21" in out
    plain, sharded = metrics(tmp_path / "plain.csv"), metrics(tmp_path / "sharded.csv")
    assert len(plain) == 5 * 2 + 1
    assert plain.equals(sharded), (plain, sharded)


@pytest.mark.slow
def test_two_cpu_processes_equal_one(erfnet_file, tiny_data, tmp_path, capsys):
    """`anomalyseg eval --devices 2 --strategy ddp --accelerator cpu` (gloo; Lightning starts the
    second process by running the command again): each frame is computed by one rank, rank 0 alone
    stores the rows, and AuPRC, FPR95, AUROC and mIoU equal the one-process run exactly."""
    code, _, err = run(eval_args(tiny_data, "erfnet", erfnet_file, tmp_path / "one.csv"), capsys)
    assert code == 0, err
    argv = [
        sys.executable,
        "-m",
        "anomalyseg.cli",
        *map(str, eval_args(tiny_data, "erfnet", erfnet_file, tmp_path / "two.csv")),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--accelerator",
        "cpu",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1"}
    # importing torch and starting gloo twice under a loaded test run: minutes, not seconds
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stderr + done.stdout
    assert done.stdout.count("rows appended to") == 1  # the metrics were computed once
    one, two = metrics(tmp_path / "one.csv"), metrics(tmp_path / "two.csv")
    assert len(two) == 5 * 2 + 1 and read_results(tmp_path / "two.csv").run_id.nunique() == 1
    assert one.equals(two), (one, two)
    frames = sum(
        len(ds) for ds in load_benchmarks(tiny_data / "Validation_Dataset").values()
    ) + len(CityscapesSegmentation(tiny_data / "cityscapes", "val"))
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == frames


def test_sharded_settings_are_checked_before_the_model_loads(
    erfnet_file, tiny_data, tmp_path, capsys
):
    """Without --cache-dir, with --device beside --devices, or with an accelerator Lightning
    refuses: one paragraph naming the setting, exit 1. The first two name a checkpoint that does
    not exist: they are refused before the model is read."""
    base = [
        "eval",
        "--model",
        "erfnet",
        "--benchmarks-root",
        tiny_data / "Validation_Dataset",
        "--results",
        tmp_path / "r.csv",
        "--workers",
        0,
    ]
    absent = ["--checkpoint", tmp_path / "absent.pth"]
    code, _, err = run([*base, *absent, "--devices", 2], capsys)
    assert code == 1 and "--cache-dir" in err and "absent.pth" not in err and "Traceback" not in err
    code, _, err = run(
        [*base, *absent, "--devices", 2, "--cache-dir", tmp_path / "c", "--device", "cuda:1"],
        capsys,
    )
    assert code == 1 and "--device cuda:1" in err and "--accelerator gpu --devices 4" in err
    code, _, err = run(
        [
            *base,
            "--checkpoint",
            erfnet_file,
            "--input-size",
            64,
            128,
            "--devices",
            1,
            "--cache-dir",
            tmp_path / "c",
            "--accelerator",
            "tpu",
        ],
        capsys,
    )
    assert code == 1 and "accelerator='tpu'" in err and "Traceback" not in err, err
    assert not (tmp_path / "c").exists()  # refused before any forward pass
