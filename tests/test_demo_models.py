"""Shipped demo weights: made by `anomalyseg demo-weights`, checked against their manifest, and
used by the zoo instead of a training only for exactly the settings and data they were made with."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from anomalyseg import demo_models, zoo
from anomalyseg.cli import main
from anomalyseg.results import training_log
from anomalyseg.workspace import open_workspace

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONVERT_SCRIPT = REPO / "data_scripts" / "convert_val_miou_by_step.py"


def test_shipped_files_match_their_manifest():
    manifest = demo_models.read_manifest()
    assert set(manifest) == set(demo_models.MODELS)
    for model in manifest:
        entry = demo_models.verify(model)  # size and sha256 of every file, recomputed here
        assert entry["command"].startswith(f"anomalyseg demo-weights --model {model} ")
        assert entry["data"]["preset"] == "demo"
        if model in ("erfnet", "eomt", "eomt_oe"):
            assert 0 < entry["val_miou"] <= 1
        else:
            assert entry["final_train_loss"] > 0
        if model in demo_models.SEGMENTERS:  # validated every --val-every optimizer steps
            every = int(entry["command"].split("--val-every ")[1].split()[0])
            steps = [s for s, _ in entry["val_miou_by_step"]]
            assert steps == list(range(every, entry["steps"] + 1, every))
            assert all(0 < miou <= 1 for _, miou in entry["val_miou_by_step"])
        for rel in entry["files"]:
            if rel.endswith(".safetensors"):
                assert {
                    t.dtype
                    for t in load_file(demo_models.WEIGHTS_DIR / model / rel).values()
                    if t.is_floating_point()
                } == {torch.float16}


@pytest.fixture(scope="module")
def shipped_tiny(tmp_path_factory):
    """`anomalyseg demo-weights` for every model on the tiny preset (2 steps), the command a
    maintainer runs on the demo preset to make the shipped weights (the EoMT first: the others
    train on it)."""
    root = tmp_path_factory.mktemp("demo_weights")
    folders = ["--data-root", root / "data", "--work-dir", root / "work", "--out", root / "out"]
    argv = ["demo-weights", "--model", "all", "--steps", 2, "--preset", "tiny", *folders]
    main([str(a) for a in argv])
    return root


@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_val_miou_by_step_counts_steps_done_in_order(shipped_tiny, model):
    """2 steps validated once at the end: the entry says [[2, its mIoU]], the mIoU of the row
    Lightning's CSV log holds at its 0-based step 1."""
    entry = demo_models.read_manifest(shipped_tiny / "out")[model]
    log = pd.read_csv(shipped_tiny / "out" / model / "metrics.csv").dropna(subset=["val_miou"])
    assert log["step"].tolist() == [1]
    assert entry["val_miou_by_step"] == [[2, round(float(log["val_miou"].iloc[0]), 4)]]


def test_old_manifests_convert_to_pairs_only_in_that_field(tmp_path):
    spec = importlib.util.spec_from_file_location("convert", CONVERT_SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old = {"1499": 0.3, "499": 0.1, "999": 0.2}  # JSON's sorted keys, 0-based steps
    assert script.converted(old) == [[500, 0.1], [1000, 0.2], [1500, 0.3]]
    manifest = {
        "erfnet": {"steps": 1500, "val_miou_by_step": old, "files": {"a": {"sha256": "x"}}},
        "eomt": {"steps": 1000, "val_miou_by_step": [[1000, 0.4]]},
        "head_stats": {"final_train_loss": 0.5},
    }
    (tmp_path / demo_models.MANIFEST).write_text(json.dumps(manifest))
    assert script.convert(tmp_path) == ["erfnet"]
    manifest["erfnet"]["val_miou_by_step"] = [[500, 0.1], [1000, 0.2], [1500, 0.3]]
    assert demo_models.read_manifest(tmp_path) == manifest
    assert script.convert(tmp_path) == []  # rerun: nothing left to convert


@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_zoo_installs_matching_weights_instead_of_training(
    shipped_tiny, monkeypatch, tmp_path, model, capsys
):
    root = shipped_tiny
    monkeypatch.setattr(demo_models, "WEIGHTS_DIR", root / "out")
    entry = demo_models.read_manifest()[model]
    assert (
        entry["command"]
        == f"anomalyseg demo-weights --model {model} --steps 2 --seed 0 --preset tiny"
    )
    ws = open_workspace(data_root=root / "data", preset="tiny", output_dir=tmp_path)
    from anomalyseg.pipeline import notebook_parameters

    params = notebook_parameters(
        "tiny", "01_erfnet_baseline" if model == "erfnet" else "02_eomt_eval"
    )
    train = demo_models.demo_train_settings(model, {**params, "train_steps": 2})
    if model == "erfnet":
        seg = zoo.erfnet_segmenter(
            ws, train=train, input_size=tuple(params["input_size"]), device="cpu"
        )
        shipped = root / "out" / "erfnet" / "erfnet.safetensors"
        installed = zoo.default_checkpoint(ws, "erfnet")
    else:
        seg = zoo.eomt_segmenter(ws, train=train, device="cpu")
        shipped = root / "out" / "eomt" / "model" / "model.safetensors"
        installed = zoo.default_checkpoint(ws, "eomt") / "model.safetensors"
    assert "shipped demo weights" in capsys.readouterr().out
    folder = zoo.default_checkpoint(ws, model).parent
    assert not (folder / "last.ckpt").exists()  # nothing was trained
    want, got = load_file(shipped), load_file(installed)
    assert want.keys() == got.keys()
    for k in want:
        assert got[k].dtype == (torch.float32 if want[k].is_floating_point() else want[k].dtype)
        assert torch.equal(got[k], want[k].to(got[k].dtype)), k
    # the notebooks' training curve comes along
    assert len(training_log(folder)) >= 1
    assert seg is not None


def test_other_settings_or_from_scratch_train_instead(shipped_tiny, monkeypatch, tmp_path):
    root = shipped_tiny
    monkeypatch.setattr(demo_models, "WEIGHTS_DIR", root / "out")
    ws = open_workspace(data_root=root / "data", preset="tiny", output_dir=tmp_path / "a")
    from anomalyseg.pipeline import notebook_parameters

    params = notebook_parameters("tiny", "01_erfnet_baseline")
    train = demo_models.demo_train_settings("erfnet", {**params, "train_steps": 2})
    zoo.erfnet_segmenter(
        ws, train={**train, "lr": 1e-3}, input_size=tuple(params["input_size"]), device="cpu"
    )
    assert (
        zoo.default_checkpoint(ws, "erfnet").parent / "last.ckpt"
    ).is_file()  # trained: lr differs
    ws = open_workspace(data_root=root / "data", preset="tiny", output_dir=tmp_path / "b")
    zoo.erfnet_segmenter(
        ws,
        train=train,
        input_size=tuple(params["input_size"]),
        device="cpu",
        train_from_scratch=True,
    )
    assert (zoo.default_checkpoint(ws, "erfnet").parent / "last.ckpt").is_file()


def test_a_damaged_weight_file_is_named(shipped_tiny, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(shipped_tiny / "out", out)
    path = out / "erfnet" / "erfnet.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        demo_models.DemoWeightsError, match=r"erfnet\.safetensors does not match .*manifest\.json"
    ):
        demo_models.verify("erfnet", out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert demo_models.verify("eomt", out) == manifest["eomt"]


@pytest.mark.parametrize("model", ["eomt_oe", "head_stats", "head_hybrid"])
def test_models_on_the_shipped_eomt_install_only_on_it(
    shipped_tiny, monkeypatch, tmp_path, model, capsys
):
    """Notebooks 04 and 05 get the shipped fine-tuned EoMT and heads for their own settings on top
    of the shipped EoMT; other settings, or another base EoMT, get None (they train)."""
    from anomalyseg.models.anomaly_head import load_anomaly_head
    from anomalyseg.pipeline import notebook_parameters

    root = shipped_tiny
    monkeypatch.setattr(demo_models, "WEIGHTS_DIR", root / "out")
    ws = open_workspace(data_root=root / "data", preset="tiny", output_dir=tmp_path)
    eomt_params = {**notebook_parameters("tiny", "02_eomt_eval"), "train_steps": 2}
    eomt_train = demo_models.demo_train_settings("eomt", eomt_params)
    base = zoo.eomt_segmenter(ws, train=eomt_train, device="cpu")
    entry = demo_models.read_manifest()[model]
    command = f"anomalyseg demo-weights --model {model} --steps 2 --seed 0 --preset tiny"
    assert entry["command"] == command
    if model == "eomt_oe":
        params = {**notebook_parameters("tiny", "04_outlier_exposure"), "finetune_steps": 2}
        settings = {
            **demo_models.demo_train_settings(model, params),
            "oe": demo_models.oe_config(params).to_dict(),
            "coco_max_images": params["coco_max_images"],
        }
    else:
        params = {**notebook_parameters("tiny", "05_anomaly_head"), "train_steps": 2}
        settings = {
            **demo_models.demo_train_settings(model, params),
            "variant": model.removeprefix("head_"),
        }
    capsys.readouterr()
    got = demo_models.install_trained(model, tmp_path / model, ws, base, settings)
    assert "shipped demo weights" in capsys.readouterr().out
    weights = "model/model.safetensors" if model == "eomt_oe" else "head.safetensors"
    assert got == tmp_path / model / weights.split("/")[0]
    assert not (tmp_path / model / "last.ckpt").exists()  # nothing was trained
    want, have = load_file(root / "out" / model / weights), load_file(tmp_path / model / weights)
    assert want.keys() == have.keys()
    for k in want:
        assert torch.equal(have[k], want[k].to(have[k].dtype)), k
    if model == "eomt_oe":
        assert "train_loss_outlier" in training_log(tmp_path / model)  # notebook 04 plots it
        loaded = zoo.eomt_segmenter(ws, got, device="cpu")
        assert loaded.model.config.image_size == base.model.config.image_size
    else:
        # the variant lives in the file's metadata, kept through the fp16 round trip
        assert load_anomaly_head(got).config()["variant"] == settings["variant"]
        assert "outlier_fraction" in training_log(tmp_path / model)  # notebook 05 plots it
    other = tmp_path / "other"
    assert demo_models.install_trained(model, other, ws, base, {**settings, "lr": 0.5}) is None
    # the float32 EoMT the shipped fp16 one was made from is another base
    float32 = root / "work" / "eomt" / "checkpoints" / "eomt" / "model"
    other_base = zoo.eomt_segmenter(ws, float32, device="cpu")
    assert demo_models.install_trained(model, other, ws, other_base, settings) is None
    with pytest.raises(ValueError, match="not trained on the shipped EoMT"):
        demo_models.install_trained("erfnet", tmp_path / "x", ws, base, settings)


def test_steps_default_to_what_the_notebook_asks_for(shipped_tiny, tmp_path):
    from anomalyseg.pipeline import notebook_parameters, train_demo_weights

    out = tmp_path / "out"
    shutil.copytree(shipped_tiny / "out", out)
    data = shipped_tiny / "data"
    entry = train_demo_weights("head_stats", None, data, tmp_path / "work", out, preset="tiny")
    assert entry["steps"] == notebook_parameters("tiny", "05_anomaly_head")["train_steps"]
    assert f"--steps {entry['steps']} " in entry["command"]


def test_models_on_the_eomt_need_the_shipped_eomt_first(tmp_path):
    from anomalyseg.pipeline import train_demo_weights

    with pytest.raises(ValueError, match="has no `eomt` entry yet"):
        train_demo_weights(
            "head_stats", 2, tmp_path / "data", tmp_path / "work", tmp_path / "out", preset="tiny"
        )
