"""The model zoo: the embedded default is trained once and reused; bad checkpoints are refused
clearly."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from anomalyseg import zoo
from anomalyseg.models.checkpoints import CheckpointError
from anomalyseg.models.erfnet import ERFNet, ErfnetSegmenter
from anomalyseg.results import training_log
from anomalyseg.workspace import Workspace

TINY_EOMT = dict(
    max_steps=2,
    batch_size=2,
    num_workers=0,
    val_every_n_steps=2,
    config=dict(
        image_size=32,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_queries=6,
    ),
)


@pytest.fixture
def ws(tiny_data, tmp_path) -> Workspace:
    out = tmp_path / "out"
    return Workspace(
        cityscapes=tiny_data / "cityscapes",
        benchmarks=tiny_data / "Validation_Dataset",
        coco=tiny_data / "coco",
        results_csv=out / "results" / "results.csv",
        checkpoints=out / "checkpoints",
        cache=out / "cache",
        figures=out / "figures",
        embedded=True,
    )


class Trained(Exception):
    """Raised by a stand-in trainer: the zoo tried to train."""


def refusing(trainer):
    """A stand-in for ``trainer`` with its signature that raises ``Trained`` with the fields of its
    two settings records (``train``: ``TrainSettings``, ``config``: the method's) in one dict."""

    @functools.wraps(trainer)
    def fake(*args, **kwargs):
        bound = inspect.signature(trainer).bind(*args, **kwargs).arguments
        raise Trained({**dataclasses.asdict(bound["train"]), **dataclasses.asdict(bound["config"])})

    return fake


@pytest.mark.slow
def test_embedded_eomt_is_trained_once_then_reused(ws, monkeypatch):
    first = zoo.eomt_segmenter(ws, train=TINY_EOMT, device="cpu", progress=False)
    weights = zoo.default_checkpoint(ws, "eomt") / "model.safetensors"
    assert weights.is_file() and first.checkpoint == str(weights.parent)
    assert first.window_size == 32 and first.model.attn_mask_probs.tolist() == [0.0, 0.0]
    stored = json.loads((ws.checkpoints / "eomt" / zoo.SETTINGS_FILE).read_text())
    assert (
        stored["max_steps"] == 2
        and stored["config"]["image_size"] == 32
        and stored["config"]["patch_size"] == 16
    )
    assert (
        stored["seed"] == 0 and "num_workers" not in stored and "resume" not in stored
    )  # defaults in, run-only out
    mtime = weights.stat().st_mtime_ns

    import anomalyseg.training.eomt as training

    monkeypatch.setattr(training, "train_eomt", refusing(training.train_eomt))
    again = zoo.eomt_segmenter(
        ws, train=TINY_EOMT, device="cpu", progress=False
    )  # no training: would raise
    assert weights.stat().st_mtime_ns == mtime and again.checkpoint == first.checkpoint
    assert again.cache_tag == first.cache_tag  # the output cache is shared between the two
    frame = torch.randint(0, 256, (3, 40, 80), dtype=torch.uint8)
    torch.testing.assert_close(again.predict(frame), first.predict(frame))

    with pytest.warns(UserWarning, match=r"Reusing the EoMT .*max_steps: trained 2, asked 5"):
        zoo.eomt_segmenter(ws, train={**TINY_EOMT, "max_steps": 5}, device="cpu", progress=False)
    other_data = dataclasses.replace(ws, cityscapes=ws.cityscapes.parent / "real_cityscapes")
    with pytest.warns(
        UserWarning,
        match=r"Reusing the EoMT .*data_root: trained '.*cityscapes', asked '.*real_cityscapes'",
    ):
        zoo.eomt_segmenter(other_data, train=TINY_EOMT, device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error"
        )  # no warning: settings that do not change the weights, or none at all
        zoo.eomt_segmenter(
            ws, train={**TINY_EOMT, "num_workers": 2, "val_every_n_steps": 1}, device="cpu"
        )
        zoo.eomt_segmenter(ws, device="cpu")

    log = training_log(ws.checkpoints / "eomt")
    assert {"step", "train_loss", "val_miou"} <= set(log.columns)
    assert log["train_loss"].notna().sum() >= 1 and log["val_miou"].notna().sum() == 1


def test_an_interrupted_run_resumes_only_with_its_own_settings(ws, monkeypatch):
    import anomalyseg.training.eomt as training

    monkeypatch.setattr(training, "train_eomt", refusing(training.train_eomt))
    with pytest.raises(Trained) as first:
        zoo.eomt_segmenter(ws, train=TINY_EOMT, progress=False)
    assert first.value.args[0]["resume"] is True and first.value.args[0]["max_steps"] == 2
    with pytest.raises(Trained) as same:  # the settings file is there, the export is not: resume
        zoo.eomt_segmenter(ws, train=TINY_EOMT, progress=False)
    assert same.value.args[0]["resume"] is True
    with pytest.raises(Trained) as other:  # a last.ckpt of other settings must not be continued
        zoo.eomt_segmenter(ws, train={**TINY_EOMT, "lr": 5e-4}, progress=False)
    assert other.value.args[0]["resume"] is False and other.value.args[0]["lr"] == 5e-4


def test_train_settings_are_checked():
    s = zoo.eomt_train_settings({"crop_size": 64, "max_steps": 7})
    assert s["config"] == {"image_size": 64} and s["max_steps"] == 7 and "crop_size" not in s
    assert zoo.eomt_train_settings(None)["max_steps"] == zoo.DEFAULT_EOMT_TRAIN["max_steps"]
    with pytest.raises(ValueError, match=r"unknown settings \['steps'\].*max_steps"):
        zoo.eomt_train_settings({"steps": 3})
    with pytest.raises(ValueError, match="square"):
        zoo.eomt_train_settings({"crop_size": (64, 128)})


def _random_erfnet(path):
    torch.manual_seed(0)
    model = ERFNet()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return model.eval()


def test_erfnet_default_is_loaded_without_training(ws, monkeypatch):
    import anomalyseg.training.erfnet as training

    monkeypatch.setattr(training, "train_erfnet", refusing(training.train_erfnet))
    with pytest.raises(
        Trained
    ) as called:  # nothing trained yet: train_erfnet is asked, at the eval size
        zoo.erfnet_segmenter(ws, train={"max_steps": 3}, input_size=(64, 128))
    assert (
        called.value.args[0]["input_size"] == (64, 128) and called.value.args[0]["max_steps"] == 3
    )

    path = zoo.default_checkpoint(ws, "erfnet")
    model = _random_erfnet(path)  # as notebook 01 leaves it
    seg = zoo.erfnet_segmenter(ws, input_size=(64, 128), device="cpu")
    assert seg.checkpoint == str(path) and seg.name == "erfnet"
    frame = torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)
    reference = ErfnetSegmenter(model, input_size=(64, 128))
    torch.testing.assert_close(
        seg.class_map(seg.raw_outputs(frame), (64, 128)),
        reference.class_map(reference.raw_outputs(frame), (64, 128)),
    )
    # input_size=None: the size the default was trained at (its stored settings), else the course's
    assert zoo.erfnet_segmenter(ws, input_size=None, device="cpu").input_size == (
        64,
        128,
    )  # stored by the call above
    (path.parent / zoo.SETTINGS_FILE).unlink()
    assert zoo.erfnet_segmenter(ws, input_size=None, device="cpu").input_size == (512, 1024)
    # a retrained file at the same path changes the cache key
    tag = seg.cache_tag
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert zoo.erfnet_segmenter(ws, input_size=(64, 128), device="cpu").cache_tag != tag


def test_bad_checkpoints_are_refused_clearly(ws, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"EoMT checkpoint '.*missing\.ckpt' does not exist.*save_pretrained",
    ):
        zoo.eomt_segmenter(ws, tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.eomt_segmenter(ws, "./checkpoints/no_such_folder")
    with pytest.raises(
        FileNotFoundError, match=r"ERFNet checkpoint .* does not exist.*erfnet_pretrained\.pth"
    ):
        zoo.erfnet_segmenter(ws, tmp_path / "erfnet_pretrained.pth")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt"):
        zoo.eomt_segmenter(ws, junk)
    with pytest.raises(CheckpointError, match=r"junk\.ckpt"):
        zoo.erfnet_segmenter(ws, junk)
    folder = tmp_path / "empty_folder"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="without config.json"):
        zoo.eomt_segmenter(ws, folder)
    with pytest.raises(ValueError, match="train= applies to the embedded default only"):
        zoo.eomt_segmenter(ws, folder, train={"max_steps": 1})
    with pytest.raises(ValueError, match="unknown model"):
        zoo.default_checkpoint(ws, "segformer")


def test_device_auto_follows_cuda():
    assert zoo.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert zoo.resolve_device("cpu") == torch.device("cpu")


def test_settings_stored_by_an_earlier_version_name_the_same_model(ws, monkeypatch):
    """A zoo_train.json written before the settings records (it also held train_eomt's hook
    arguments and the logger) is the same model: its interrupted run is continued."""
    import anomalyseg.training.eomt as training

    monkeypatch.setattr(training, "train_eomt", refusing(training.train_eomt))
    with pytest.raises(Trained):
        zoo.eomt_segmenter(ws, train=TINY_EOMT, progress=False)
    path = ws.checkpoints / "eomt" / zoo.SETTINGS_FILE
    earlier = {
        **json.loads(path.read_text()),
        "model_or_config": None,
        "module_kwargs": None,
        "sample_transform": None,
        "module_cls": "<class 'anomalyseg.training.eomt.EomtModule'>",
        "logger": "csv",
    }
    path.write_text(json.dumps(earlier))
    with pytest.raises(Trained) as again:
        zoo.eomt_segmenter(ws, train=TINY_EOMT, progress=False)
    assert again.value.args[0]["resume"] is True
    path.write_text(
        json.dumps({**earlier, "lr": 0.5})
    )  # a setting that decides the weights still counts
    with pytest.raises(Trained) as other:
        zoo.eomt_segmenter(ws, train=TINY_EOMT, progress=False)
    assert other.value.args[0]["resume"] is False


@pytest.mark.parametrize("model", ["erfnet", "eomt"])
def test_the_shipped_demo_weights_match_the_demo_notebooks_settings(model):
    """The manifest's settings (written by an earlier version of the zoo) equal what the demo
    notebooks resolve today: otherwise `make demo` would train instead of installing them."""
    from anomalyseg import demo_models
    from anomalyseg.pipeline import notebook_parameters
    from anomalyseg.training.settings import weight_settings

    entry = demo_models.read_manifest()[model]
    nb = "01_erfnet_baseline" if model == "erfnet" else "02_eomt_eval"
    params = {**notebook_parameters("demo", nb), "train_steps": entry["steps"], "seed": 0}
    train = demo_models.demo_train_settings(model, params)
    resolved = (
        zoo.erfnet_records(train, tuple(params["input_size"]))[2]
        if model == "erfnet"
        else zoo.eomt_records(train)[3]
    )
    assert weight_settings(entry["settings"]) == resolved
