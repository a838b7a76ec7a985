"""Smoke tests of the benchmark scripts: each main() at its smallest size on the CPU prints a
markdown table with the expected columns and positive numbers. No timing is asserted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# As `python benchmarks/bench_x.py` does: the scripts' folder first on sys.path, so that their
# `from _common import ...` finds the shared helpers.
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from _common import parse_markdown_table  # noqa: E402 - importable only once the path is set


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _number(cell: str) -> float:
    match = re.match(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", cell.strip())
    assert match, f"not a number: {cell!r}"
    return float(match.group(0))


def test_bench_models_smoke(capsys):
    bench = _load("bench_models")
    out = bench.main(
        [
            "--model",
            "all",
            "--small",
            "--erfnet-size",
            "32",
            "64",
            "--eomt-frame",
            "64",
            "128",
            "--frames",
            "1",
            "--batch",
            "1",
            "--warmup",
            "1",
            "--threads",
            "1",
        ]
    )
    assert out.strip() in capsys.readouterr().out
    assert out.startswith("machine: ") and "torch " in out and "device: CPU" in out
    rows = parse_markdown_table(out)
    assert list(rows[0]) == list(bench.HEADERS)
    expected = [("erfnet", "bare"), ("erfnet", "full"), ("eomt", "bare"), ("eomt", "full")]
    assert [(r["model"], r["mode"]) for r in rows] == expected
    for r in rows:
        assert (
            _number(r["frames/s"]) > 0
            and _number(r["ms/frame"]) > 0
            and _number(r["first call (s)"]) > 0
        )
        assert _number(r["CPU ms/frame"]) >= 0  # process_time ticks coarsely on some systems
        assert _number(r["weights (MiB)"]) > 0
        assert _number(r["peak extra (MiB)"]) >= 0  # a reused allocation may add nothing
        for col in ("vs bare", "vs bare (CPU time)"):
            assert r[col] == "-" if r["mode"] == "bare" else r[col].endswith("%")
    assert [r["windows/frame"] for r in rows] == [
        "1",
        "1",
        "2",
        "2",
    ]  # EoMT: two windows per 1:2 frame


def test_bench_models_refuses_cuda_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        _load("bench_models").main(["--device", "cuda", "--model", "erfnet"])


def test_bench_eval_loop_smoke(tiny_data, capsys):
    bench = _load("bench_eval_loop")
    out = bench.main(
        [
            "--data",
            str(tiny_data),
            "--preset",
            "tiny",
            "--input-size",
            "32",
            "64",
            "--max-frames",
            "1",
            "--workers",
            "0",
            "1",
            "--threads",
            "1",
        ]
    )
    assert out.strip() in capsys.readouterr().out
    assert out.startswith("machine: ")
    rows = {r["step"]: r for r in parse_markdown_table(out)}
    cols = ["workers=0 ms/frame", "workers=1 ms/frame"]
    assert list(next(iter(rows.values()))) == ["step"] + cols
    assert set(bench.STAGES) <= set(rows)
    for stage in ("network", "class map + scores", "metric update"):
        assert all(_number(rows[stage][c]) > 0 for c in cols)
    for key in (
        "**sum of the steps**",
        "**frames/s, timed loop**",
        "**frames/s, evaluate_anomaly**",
    ):
        assert all(_number(rows[key][c]) > 0 for c in cols)


def test_bench_sweep_smoke(tiny_data, tmp_path, capsys):
    bench = _load("bench_sweep")
    out = bench.main(
        [
            "--data-root",
            str(tiny_data.parent),
            "--preset",
            "tiny",
            "--output-dir",
            str(tmp_path),
            "--train-steps",
            "2",
            "--temperatures",
            "0.5",
            "1.0",
            "--threads",
            "1",
        ]
    )
    assert out.strip() in capsys.readouterr().out
    rows = {r["model"]: r for r in parse_markdown_table(out)}
    assert set(rows) == {"eomt", "erfnet"} and list(rows["eomt"]) == list(bench.HEADERS)
    assert (
        rows["eomt"]["points"] == "4" and rows["erfnet"]["points"] == "2"
    )  # EoMT: pixel and class T
    for r in rows.values():
        assert (
            _number(r["pass (s)"]) > 0
            and _number(r["sweep exact (s)"]) > 0
            and _number(r["sweep binned (s)"]) > 0
        )
        assert _number(r["binned - exact AuPRC (max, points)"]) >= 0


def test_bench_frame_stats_smoke(tiny_data, capsys):
    bench = _load("bench_frame_stats")
    out = bench.main(
        [
            "--data",
            str(tiny_data / "Validation_Dataset"),
            "--input-size",
            "32",
            "64",
            "--max-frames",
            "2",
            "--n-boot",
            "20",
        ]
    )
    assert out.strip() in capsys.readouterr().out
    assert out.startswith("machine: ")
    rows = parse_markdown_table(out)
    assert list(rows[0]) == list(bench.HEADERS)
    assert [r["benchmark"] for r in rows][-1] == "**all**" and len(rows) == 6
    for r in rows[:-1]:
        assert _number(r["with frame stats (s)"]) > 0 and int(r["bins (max)"]) > 0
        assert (
            0 <= _number(r["binned - exact AuPRC (max, points)"]) < 0.5
        )  # tiny frames: bins are the scores
    assert "notebook 06's tables (intervals" in out


def test_diagnose_eomt_smoke(tiny_data, tmp_path, capsys):
    """Every variant builds, trains 2 steps and is scored; the table and the JSON agree, and the
    mIoU columns are the means of the per-class IoUs (absent classes 0, the course convention)."""
    import json

    bench = _load("diagnose_eomt")
    out_json = tmp_path / "diag.json"
    names = list(bench.VARIANTS)
    args = ["--data-root", str(tiny_data / "cityscapes"), "--steps", "2", "--batch-size", "1"]
    out = bench.main([*args, "--variants", *names, "--out", str(out_json)])
    assert out.strip() in capsys.readouterr().out and out.startswith("machine: ")
    rows = parse_markdown_table(out)
    assert list(rows[0]) == list(bench.HEADERS)
    assert [r["variant"] for r in rows] == names
    stored = {r["variant"]: r for r in json.loads(out_json.read_text())["results"]}
    assert list(stored) == names
    for row in rows:
        r = stored[row["variant"]]
        assert r["steps"] == 2 and r["params"] > 0 and r["s_per_step"] > 0
        iou = [0.0 if v is None else v for v in r["iou"].values()]
        assert len(iou) == 19 and all(0.0 <= v <= 1.0 for v in iou)
        assert r["val_miou"] == pytest.approx(sum(iou) / 19)
        assert r["stuff_miou"] == pytest.approx(sum(iou[:11]) / 11)  # road .. sky
        assert r["things_miou"] == pytest.approx(sum(iou[11:]) / 8)  # person .. bicycle
        assert _number(row["val mIoU (%)"]) == pytest.approx(100 * r["val_miou"], abs=0.06)
    # a second run with one variant keeps the others in the JSON
    bench.main([*args, "--variants", "baseline", "--out", str(out_json)])
    assert [r["variant"] for r in json.loads(out_json.read_text())["results"]] == names


def test_diagnose_eomt_variants_change_one_factor(tiny_data, capsys):
    """Each variant differs from the shipped recipe in exactly what it declares (plus the mask
    settings small_eomt_config derives from the patch and window sizes)."""
    bench = _load("diagnose_eomt")
    base = bench.build("baseline", 100, 1e-3, 0)
    base_config, base_hp = base.model.config.to_dict(), dict(base.hparams)
    derived = {"num_upscale_blocks", "train_num_points"}
    tiny = str(tiny_data / "cityscapes")
    base_jitter = bench.datamodule("baseline", tiny, 128, 2, 0).train_transforms
    for name, (_, config_overrides, module_overrides, *train) in bench.VARIANTS.items():
        module = bench.build(name, 100, 1e-3, 0)
        config = module.model.config.to_dict()
        changed = {k for k in config if config[k] != base_config[k]} - derived
        assert changed == set(config_overrides), name
        hp = dict(module.hparams)
        changed_hp = {k for k in hp if hp[k] != base_hp[k]} - {"model_config"}
        expected = set(module_overrides) | ({"attn_mask_annealing"} if name == "linear" else set())
        assert changed_hp == expected, name
        jitter = bench.datamodule(name, tiny, 128, 2, 0).train_transforms
        assert (repr(jitter) != repr(base_jitter)) == bool(train and train[0]), name
    with pytest.raises(SystemExit):
        bench.main(["--data-root", ".", "--variants", "nope"])
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_diagnose_eomt_help_lists_every_variant_and_the_readme_says_which_ran(capsys):
    """--help lists every variant of ``VARIANTS`` with what it changes; benchmarks/README.md
    names each one as measured or not run, once."""
    bench = _load("diagnose_eomt")
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    listing = capsys.readouterr().out.split("variants (--variants")[1]
    for name, (what, *_) in bench.VARIANTS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(what)}$", listing, re.M), name
    readme = (Path(__file__).resolve().parents[1] / "benchmarks" / "README.md").read_text()
    section = readme.split("## `diagnose_eomt.py`")[1].split("\n## ")[0]
    ran, not_run = section.split("Measured (the tables below):")[1].split("Defined but not run:")
    not_run = not_run.split("\n\n")[0]
    ran, not_run = (set(re.findall(r"`([\w.-]+)`", t)) for t in (ran, not_run))
    assert not ran & not_run and ran | not_run == set(bench.VARIANTS)


def test_diagnose_eomt_linear_windows():
    """The per-pixel linear diagnostic segments a 1:2 frame as two side-by-side windows (the frame
    is already at window scale, so windowing neither resizes nor overlaps)."""
    import torch

    bench = _load("diagnose_eomt")
    module = bench.build("linear", 10, 1e-3, 0).eval()
    image = torch.randint(0, 256, (3, 128, 256), dtype=torch.uint8, generator=torch.Generator())
    with torch.no_grad():
        expected = torch.cat(
            [module.logits(image[None, :, :, :128])[0], module.logits(image[None, :, :, 128:])[0]],
            dim=-1,
        )
    got = module.predict(image)
    assert got.shape == (19, 128, 256)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
