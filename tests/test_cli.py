"""The ``anomalyseg`` command end to end on the tiny data, for both models, and its error boundary:
a user's mistake is one paragraph on stderr and exit code 1, never a traceback (issue 12)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from anomalyseg import cli
from anomalyseg.data.benchmarks import load_benchmarks
from anomalyseg.models.erfnet import ERFNet
from anomalyseg.results import read_results
from anomalyseg.scores import default_scores
from helpers import run_cli as run

REPO = Path(__file__).resolve().parents[1]
TITLES = ["SMIYC RA-21", "SMIYC RO-21", "FS L&F", "FS Static", "Road Anomaly"]


def assert_one_paragraph(err: str, *needles: str):
    assert "Traceback" not in err and "Caught" not in err, err
    # progress bars (tqdm, "...%|...") may precede it on stderr
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """``anomalyseg train`` of both models on the tiny Cityscapes: {model: (out folder, stdout)}."""
    out = {}
    root = tmp_path_factory.mktemp("trained")
    for model, extra in (
        ("erfnet", ["--crop-size", 32, 64, "--batch-size", 2]),
        ("eomt", ["--batch-size", 1]),
    ):
        folder = root / model
        argv = [
            "train",
            model,
            "--cityscapes-root",
            tiny_data / "cityscapes",
            "--out",
            folder,
            "--steps",
            2,
            "--workers",
            0,
            *extra,
        ]
        cli.main([str(a) for a in argv])
        out[model] = folder
    return out


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_train_then_eval_end_to_end(model, trained, tiny_data, tmp_path, capsys):
    """train writes the checkpoint it prints; eval of exactly that checkpoint (a save_pretrained
    folder for EoMT: the former `'EomtSegmenter' object has no attribute 'config'` crash) stores one
    row per benchmark and score plus the mIoU, and prints the table of those rows."""
    ckpt = trained[model] / ("erfnet.safetensors" if model == "erfnet" else "model")
    assert ckpt.exists()
    results = tmp_path / "results" / "results.csv"
    size = (
        ["--input-size", 64, 128] if model == "erfnet" else []
    )  # EoMT: the window defaults to the model's own
    code, out, err = run(
        [
            "eval",
            "--model",
            model,
            "--checkpoint",
            ckpt,
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
        ],
        capsys,
    )
    assert code == 0, err
    df = read_results(results)
    anomaly = df[df.score != "miou"]
    assert sorted(anomaly.dataset.unique()) == sorted(
        load_benchmarks(tiny_data / "Validation_Dataset")
    )
    assert (
        len(anomaly) == 5 * 2
        and (anomaly.checkpoint == str(ckpt)).all()
        and df.run_id.nunique() == 1
    )
    assert len(df[df.score == "miou"]) == 1
    for title in TITLES:
        assert title in out
    # the printed cells are the stored figures
    row = anomaly[(anomaly.dataset == "RoadAnomaly21") & (anomaly.score == "msp")].iloc[0]
    assert f"{100 * row.auprc:.2f} / {100 * row.fpr_at_95_tpr:.2f}" in out


@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_eval_scores_default_to_the_models_standard_scores(
    model, trained, tiny_data, tmp_path, capsys
):
    """Without --scores, EoMT is scored with RbA too (it was left out: the default was the scores
    shared by both models)."""
    ckpt = trained[model] / ("erfnet.safetensors" if model == "erfnet" else "model")
    results = tmp_path / "results.csv"
    bench = ["--benchmarks-root", tiny_data / "Validation_Dataset", "--benchmarks", "fs_static"]
    size = ["--input-size", 64, 128] if model == "erfnet" else []
    argv = ["eval", "--model", model, "--checkpoint", ckpt, *bench, "--results", results, *size]
    code, _, err = run([*argv, "--workers", 0], capsys)
    assert code == 0, err
    assert tuple(read_results(results).score) == default_scores(model)
    assert ("rba" in default_scores(model)) == (model == "eomt")


def _train_erfnet(tiny_data, folder, steps, capsys):
    """`anomalyseg train erfnet` on the tiny data into ``folder``: (exit code, stdout, stderr)."""
    data = tiny_data / "cityscapes"
    argv = ["train", "erfnet", "--cityscapes-root", data, "--out", folder, "--steps", steps]
    return run([*argv, "--crop-size", 32, 64, "--workers", 0], capsys)


def test_train_refuses_fewer_steps_than_the_folder_holds(trained, tiny_data, capsys):
    """A folder holding a 2-step run asked for 1 step: refused, instead of returning the 2-step
    model while Lightning reports `max_steps=1 reached`."""
    folder = trained["erfnet"]
    before = (folder / "erfnet.safetensors").read_bytes()
    code, _, err = _train_erfnet(tiny_data, folder, 1, capsys)
    assert code == 1
    assert_one_paragraph(err, "step 2", "1 steps", str(folder))
    assert (folder / "erfnet.safetensors").read_bytes() == before


def test_truncated_last_ckpt_is_named_with_the_other_checkpoints(
    trained, tiny_data, tmp_path, capsys
):
    folder = tmp_path / "run"
    shutil.copytree(trained["erfnet"], folder)
    others = sorted(p.name for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    code, _, err = _train_erfnet(tiny_data, folder, 4, capsys)
    assert code == 1
    assert_one_paragraph(err, str(folder / "last.ckpt"), "truncated", *others)


def test_table_after_eval_shows_only_this_run(erfnet_file, tiny_data, tmp_path, capsys):
    """Two checkpoints in one store: the second run (one benchmark) prints only its own figures,
    not the first checkpoint's other columns."""
    results = tmp_path / "results.csv"
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_file(ERFNet().state_dict(), str(other))
    common = [
        "--benchmarks-root",
        tiny_data / "Validation_Dataset",
        "--results",
        results,
        "--workers",
        0,
        "--input-size",
        32,
        64,
        "--scores",
        "msp",
        "--model",
        "erfnet",
    ]
    assert run(["eval", "--checkpoint", erfnet_file, *common], capsys)[0] == 0
    code, out, err = run(
        ["eval", "--checkpoint", other, "--benchmarks", "RoadAnomaly", *common], capsys
    )
    assert code == 0, err
    assert "Road Anomaly" in out and "SMIYC RA-21" not in out and "FS L&F" not in out
    df = read_results(results)
    mine = df[(df.checkpoint == str(other))].iloc[0]
    assert f"{100 * mine.auprc:.2f} / {100 * mine.fpr_at_95_tpr:.2f}" in out
    assert len(df) == 5 + 1  # the store keeps both runs
    # the reader's names and a caption saying what the cells are, under which convention
    assert "**AuPRC / FPR95 (%) per benchmark, `course` convention**" in out
    assert "| Model | Score | Road Anomaly |" in out and "| ERFNet | MSP | " in out
    assert "| erfnet |" not in out and "| msp |" not in out


def test_make_data_writes_where_run_all_looks(tmp_path, monkeypatch, capsys):
    # run-all and demo-weights read <--data-root data>/<preset>: make-data's default is the same
    # folder, so `make-data --preset tiny` never fills data/demo with the tiny preset.
    from anomalyseg.data.synthetic import _read_marker

    monkeypatch.chdir(tmp_path)
    code, out, err = run(["make-data", "--preset", "tiny"], capsys)
    assert code == 0, err
    assert _read_marker(tmp_path / "data" / "tiny")["preset"]["name"] == "tiny"
    assert not (tmp_path / "data" / "demo").exists()


def test_make_data_and_prepare_coco_end_to_end(tiny_data, tmp_path, capsys):
    code, out, err = run(
        ["make-data", "--preset", "tiny", "--out", tmp_path / "d", "--seed", 3], capsys
    )
    assert code == 0, err
    assert (tmp_path / "d" / "EMBEDDED_DATA.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    coco = tmp_path / "coco"
    shutil.copytree(tiny_data / "coco", coco)
    for prepared in coco.rglob("*ood*"):
        shutil.rmtree(prepared) if prepared.is_dir() else prepared.unlink()
    code, out, err = run(
        ["prepare-coco", "--coco-root", coco, "--max-images", 3, "--min-area", 50], capsys
    )
    assert code == 0, err
    assert list((coco / "annotations").rglob("*.png"))


def test_help_names_every_default():
    """Each option with a default shows it in --help, as typed; None (described in the help, or
    no default) is never shown."""
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: " ".join(p.format_help().split()) for name, p in sub.choices.items()}
    for expected in (
        "--workers WORKERS (default: 2)",
        "--results RESULTS (default: results/results.csv)",
        "--temperature-on {pixel,class} (default: pixel)",
        "--input-size H W ERFNet input H W (divisible by 8) (default: 512 1024)",
        "--temperatures TEMPERATURES [TEMPERATURES ...] (default: 1.0)",
    ):
        assert expected in helps["eval"], expected
    for expected in (
        "--preset {tiny,demo} (default: demo)",
        "--data-root DATA_ROOT (default: data)",
        "--seed SEED seed of the embedded data set and of the training (default: 0)",
        "--work-dir WORK_DIR training folder (resumable) (default: checkpoints/demo-weights)",
    ):
        assert expected in helps["demo-weights"], expected
    assert "(default: data/<preset>" in helps["make-data"]
    for name, text in helps.items():
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert "%(" not in text, name
        assert not re.search(r"\(default: [^)]*\) \(default:", text), name  # once, if shared
    assert "--workers WORKERS (default: 2)" in helps["compare-conventions"]  # eval's, shared


# ----------------------------------------------------------------------------- the error boundary
def test_eval_without_data_is_refused(erfnet_file, tmp_path, capsys):
    code, _, err = run(
        ["eval", "--model", "erfnet", "--checkpoint", erfnet_file, "--results", tmp_path / "r.csv"],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, "--benchmarks-root", "--cityscapes-root")
    assert not (tmp_path / "r.csv").exists()


def test_missing_checkpoint_and_folder_are_one_paragraph(erfnet_file, tiny_data, tmp_path, capsys):
    code, _, err = run(
        [
            "eval",
            "--model",
            "eomt",
            "--checkpoint",
            tmp_path / "nope",
            "--benchmarks-root",
            tiny_data / "Validation_Dataset",
            "--results",
            tmp_path / "r.csv",
        ],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, str(tmp_path / "nope"))
    code, _, err = run(
        [
            "eval",
            "--model",
            "erfnet",
            "--checkpoint",
            erfnet_file,
            "--benchmarks-root",
            tmp_path / "no_such_root",
            "--results",
            tmp_path / "r.csv",
        ],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, str(tmp_path / "no_such_root"))


def test_worker_errors_are_unwrapped(erfnet_file, tiny_data, tmp_path, capsys):
    """A damaged image read in a DataLoader worker: the original message, not torch's wrapper."""
    root = tmp_path / "Validation_Dataset"
    shutil.copytree(tiny_data / "Validation_Dataset" / "RoadAnomaly", root / "RoadAnomaly")
    image = load_benchmarks(root)["RoadAnomaly"].frames[0][1]
    image.write_bytes(image.read_bytes()[:40])
    code, _, err = run(
        [
            "eval",
            "--model",
            "erfnet",
            "--checkpoint",
            erfnet_file,
            "--benchmarks-root",
            root,
            "--results",
            tmp_path / "r.csv",
            "--workers",
            1,
            "--input-size",
            32,
            64,
        ],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, f"Could not read the image {image}")


def test_debug_switch_keeps_the_traceback(erfnet_file, tmp_path, monkeypatch):
    argv = [
        "eval",
        "--model",
        "erfnet",
        "--checkpoint",
        str(erfnet_file),
        "--benchmarks-root",
        str(tmp_path / "x"),
    ]
    with pytest.raises(FileNotFoundError, match="No benchmark root"):
        cli.main([*argv, "--debug"])
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", *argv])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(FileNotFoundError):
        cli.main(argv)


def test_unexpected_errors_say_it_is_a_bug(monkeypatch, capsys):
    def boom(a):
        raise AttributeError("'X' object has no attribute 'y'")

    monkeypatch.setattr(cli, "_make_data", boom)
    code, _, err = run(["make-data", "--preset", "tiny", "--out", "unused"], capsys)
    assert code == 1
    assert_one_paragraph(err, "AttributeError", "--debug", "bug")


def test_original_message_of_a_worker_error():
    from torch._utils import ExceptionWrapper

    from anomalyseg.data.io import DatasetError

    try:
        raise DatasetError("The mask /d/0.png holds values [7]; expected only [0, 1, 255].")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as info:
        wrapped.reraise()
    assert str(info.value).startswith("Caught DatasetError")  # what torch gives
    assert (
        cli.original_message(info.value)
        == "The mask /d/0.png holds values [7]; expected only [0, 1, 255]."
    )


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--temperatures", "-1"], "must be a finite number > 0"),
        (["--temperatures", "0"], "must be a finite number > 0"),
        (["--temperatures", "nan"], "must be a finite number > 0"),
        (["--input-size", "0", "0"], "must be an integer > 0"),
        (["--window-size", "-4"], "must be an integer > 0"),
        (["--workers", "-1"], "must be an integer >= 0"),
    ],
)
def test_numeric_settings_are_checked_where_they_enter(argv, needle, capsys):
    code, _, err = run(
        ["eval", "--model", "erfnet", "--checkpoint", "x", "--benchmarks-root", "y", *argv], capsys
    )
    assert code == 2 and needle in err and "Traceback" not in err


def test_device_and_window_size_defaults(monkeypatch):
    from anomalyseg.zoo import resolve_device

    a = cli.build_parser().parse_args(
        ["eval", "--model", "eomt", "--checkpoint", "c", "--benchmarks-root", "b"]
    )
    assert a.device == "auto" and a.window_size is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(a.device).type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(a.device).type == "cpu"


def test_a_real_process_exits_non_zero_without_traceback(tmp_path):
    """The console command as a user runs it: exit code 1 and one line (``--debug`` and the
    environment
    switch are tested in process, above)."""
    argv = [
        sys.executable,
        "-m",
        "anomalyseg.cli",
        "eval",
        "--model",
        "erfnet",
        "--checkpoint",
        str(tmp_path / "missing.pth"),
        "--benchmarks-root",
        str(tmp_path),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib")}
    env.pop(cli.DEBUG_ENV, None)
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=600
    )  # importing torch under load
    assert done.returncode == 1
    assert_one_paragraph(done.stderr, "anomalyseg eval:", str(tmp_path))


# --------------------------------------------------------------------------- models under bad input
def _tiny_eomt_folder(folder: Path, **config) -> Path:
    from transformers import EomtForUniversalSegmentation

    from helpers import tiny_eomt_config

    torch.manual_seed(0)
    EomtForUniversalSegmentation(tiny_eomt_config(**config)).save_pretrained(folder)
    return folder


def test_eomt_from_pretrained_is_evaluated_without_masked_attention(tmp_path):
    """transformers' own way to load a model keeps attn_mask_probs at ones; the segmenter switches
    masked attention off itself, so it gives exactly what load_eomt gives."""
    from transformers import EomtForUniversalSegmentation

    from anomalyseg.models.eomt import EomtSegmenter, load_eomt

    folder = _tiny_eomt_folder(tmp_path / "eomt")
    image = torch.randint(
        0, 256, (3, 40, 72), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    reference = load_eomt(folder).class_map(load_eomt(folder).raw_outputs(image))
    model = EomtForUniversalSegmentation.from_pretrained(folder)
    assert (model.attn_mask_probs > 0).all()  # as transformers hands it over
    masked = EomtSegmenter(
        EomtForUniversalSegmentation.from_pretrained(folder), "f", masked_attention=True
    )
    assert not torch.allclose(
        masked.class_map(masked.raw_outputs(image)), reference
    )  # the difference is real
    seg = EomtSegmenter(model, checkpoint=str(folder))
    assert (model.attn_mask_probs == 0).all()
    torch.testing.assert_close(seg.class_map(seg.raw_outputs(image)), reference)


def test_models_of_another_class_count_are_refused(tiny_data, tmp_path, capsys):
    """A 150-class EoMT (ADE20K-like) or ERFNet would be scored on its first 19 channels."""
    from transformers import EomtForUniversalSegmentation

    from anomalyseg.models.eomt import EomtSegmenter
    from helpers import tiny_eomt_config

    with pytest.raises(ValueError, match="150 classes"):
        EomtSegmenter(EomtForUniversalSegmentation(tiny_eomt_config(num_labels=150)), "ade")
    folder = _tiny_eomt_folder(tmp_path / "ade", num_labels=150)
    common = [
        "--benchmarks-root",
        tiny_data / "Validation_Dataset",
        "--results",
        tmp_path / "r.csv",
        "--workers",
        0,
    ]
    code, _, err = run(["eval", "--model", "eomt", "--checkpoint", folder, *common], capsys)
    assert code == 1
    assert_one_paragraph(err, "150 classes", "19 Cityscapes")
    erfnet = tmp_path / "erfnet151.safetensors"
    save_file(ERFNet(num_classes=151).state_dict(), str(erfnet))
    code, _, err = run(
        ["eval", "--model", "erfnet", "--checkpoint", erfnet, "--input-size", 32, 64, *common],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, str(erfnet), "shape mismatch")
    assert not (tmp_path / "r.csv").exists()


def test_truncated_eomt_weights_and_wrong_window_name_the_folder(tiny_data, tmp_path, capsys):
    folder = _tiny_eomt_folder(tmp_path / "eomt")
    common = [
        "--benchmarks-root",
        tiny_data / "Validation_Dataset",
        "--results",
        tmp_path / "r.csv",
        "--workers",
        0,
    ]
    code, _, err = run(
        ["eval", "--model", "eomt", "--checkpoint", folder, "--window-size", 64, *common], capsys
    )
    assert code == 1
    assert_one_paragraph(err, "window_size=64", "image_size=32")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, _, err = run(["eval", "--model", "eomt", "--checkpoint", folder, *common], capsys)
    assert code == 1
    assert_one_paragraph(err, str(folder), "model.safetensors", "truncated")


@pytest.mark.slow
def test_run_all_end_to_end_and_its_refusals(tiny_data, tmp_path, capsys):
    """run-all on the tiny data (the first notebook; tests/test_notebooks.py runs all of them)."""
    common = [
        "run-all",
        "--preset",
        "tiny",
        "--data-root",
        tiny_data.parent,
        "--output-dir",
        tmp_path / "out",
        "--runs-dir",
        tmp_path / "runs",
    ]
    code, out, err = run([*common, "--from", "00", "--to", "00", "--jobs", "2"], capsys)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "00_data_prep.ipynb").is_file() and str(run_dir) in out
    code, _, err = run([*common, "--from", "05", "--to", "02"], capsys)
    assert code == 1
    assert_one_paragraph(err, "05_anomaly_head", "02_eomt_eval")
    code, _, err = run([*common, "--jobs", "0"], capsys)
    assert code == 2 and "--jobs: '0': must be an integer > 0" in err  # argparse's usage error
    params = tmp_path / "p.yaml"
    params.write_text("benchmark_root: /data/Validation_Dataset\n")
    code, _, err = run([*common, "--params", params], capsys)
    assert code == 1
    assert_one_paragraph(err, str(params), "['benchmark_root']", "benchmarks_root")
    params.write_text("a: [1\n")
    code, _, err = run([*common, "--params", params], capsys)
    assert code == 1
    assert_one_paragraph(err, str(params), "not valid YAML")
    assert len(list((tmp_path / "runs").iterdir())) == 1  # the refusals ran nothing


def test_eomt_training_past_the_asked_steps_is_refused_before_any_work(trained, tiny_data):
    from anomalyseg.models.checkpoints import CheckpointError
    from anomalyseg.training.eomt import train_eomt
    from anomalyseg.training.settings import TrainSettings

    exported = trained["eomt"] / "model" / "model.safetensors"
    before = exported.read_bytes()
    with pytest.raises(CheckpointError, match="at step 2, more than the 1 steps asked"):
        train_eomt(
            None,
            tiny_data / "cityscapes",
            trained["eomt"],
            TrainSettings(max_steps=1, progress=False),
        )
    assert exported.read_bytes() == before


def test_input_size_is_checked_in_the_api():
    from anomalyseg.models.erfnet import ErfnetSegmenter

    with pytest.raises(ValueError, match="> 0 and divisible by 8"):
        ErfnetSegmenter(ERFNet(), input_size=(0, 0))


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_read_only_results_folder_is_refused_before_the_forward_passes(
    erfnet_file, tiny_data, tmp_path, capsys
):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = run(
            [
                "eval",
                "--model",
                "erfnet",
                "--checkpoint",
                erfnet_file,
                "--benchmarks-root",
                tiny_data / "Validation_Dataset",
                "--results",
                folder / "results.csv",
                "--workers",
                0,
            ],
            capsys,
        )
    finally:
        folder.chmod(0o755)
    assert code == 1
    assert_one_paragraph(err, str(folder / "results.csv"), "read-only")
    assert "%|" not in err  # refused before the first forward pass


def test_results_that_is_a_folder_is_refused_before_the_forward_passes(
    erfnet_file, tiny_data, tmp_path, capsys
):
    code, _, err = run(
        [
            "eval",
            "--model",
            "erfnet",
            "--checkpoint",
            erfnet_file,
            "--benchmarks-root",
            tiny_data / "Validation_Dataset",
            "--results",
            tmp_path,
            "--workers",
            0,
        ],
        capsys,
    )
    assert code == 1
    assert_one_paragraph(err, str(tmp_path), "is a folder")
    assert "%|" not in err
