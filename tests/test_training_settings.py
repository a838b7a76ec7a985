"""The settings records of a training run and the one trainer build they drive."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from jsonargparse import ArgumentParser
from transformers import EomtForUniversalSegmentation

from anomalyseg.training import settings as settings_module
from anomalyseg.training.settings import (
    RECIPE_DEFAULTS,
    EomtTrainConfig,
    ErfnetConfig,
    HeadConfig,
    OEConfig,
    TrainSettings,
    records_from_flat,
    weight_settings,
)
from helpers import tiny_eomt_config

RECORDS = (TrainSettings, ErfnetConfig, EomtTrainConfig, HeadConfig, OEConfig)


def test_every_field_is_documented():
    for record in (TrainSettings, ErfnetConfig, EomtTrainConfig, HeadConfig):
        for f in dataclasses.fields(record):
            assert f"    {f.name}: " in record.__doc__, (
                f"{record.__name__}.{f.name} has no line in the docstring"
            )


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_records_round_trip_through_a_yaml_config(record):
    """What issue 17's configs do: jsonargparse reads a record from YAML, and its dump reads
    back."""
    parser = ArgumentParser()
    parser.add_argument("--run", type=record)
    default = parser.parse_args([])
    again = parser.parse_string(parser.dump(default))
    assert parser.instantiate(again).run == record()


def test_a_yaml_config_sets_the_fields():
    parser = ArgumentParser()
    parser.add_argument("--train", type=TrainSettings)
    parser.add_argument("--config", type=HeadConfig)
    cfg = parser.instantiate(
        parser.parse_string(
            "train:\n  max_steps: 7\n  crop_size: [64, 64]\n  devices: [0, 1]\n  strategy: ddp\n"
            "  callbacks:\n  - class_path: lightning.pytorch.callbacks.LearningRateMonitor\n"
            "config:\n  variant: hybrid\n  object_scale: 0.5\n"
        )
    )
    assert (
        cfg.train.max_steps == 7
        and tuple(cfg.train.crop_size) == (64, 64)
        and cfg.train.devices == [0, 1]
    )
    assert (
        cfg.train.strategy == "ddp"
        and type(cfg.train.callbacks[0]).__name__ == "LearningRateMonitor"
    )
    assert cfg.config == HeadConfig(variant="hybrid", object_scale=0.5)


def test_recipe_defaults_fill_only_what_is_left_open():
    s = TrainSettings(max_steps=10, lr=None, num_workers=0).with_defaults(RECIPE_DEFAULTS["erfnet"])
    assert (s.max_steps, s.batch_size, s.crop_size, s.lr, s.num_workers) == (
        10,
        8,
        (512, 1024),
        5e-4,
        0,
    )
    with pytest.raises(ValueError, match="no fields"):
        TrainSettings().with_defaults({"steps": 3})
    with pytest.raises(ValueError, match=r"max_steps=0: expected an integer >= 1"):
        TrainSettings(max_steps=0).with_defaults(RECIPE_DEFAULTS["eomt"]).checked("train_eomt")


def test_flat_settings_split_into_the_two_records():
    train, config = records_from_flat(
        {"max_steps": 3, "variant": "hybrid", "num_workers": 1}, HeadConfig, "x"
    )
    assert train == TrainSettings(max_steps=3, num_workers=1) and config == HeadConfig(
        variant="hybrid"
    )
    with pytest.raises(ValueError, match=r"x has unknown settings \['steps'\].*max_steps.*variant"):
        records_from_flat({"steps": 3}, HeadConfig, "x")
    assert weight_settings({"lr": 1.0, "num_workers": 4, "module_cls": "x", "logger": "csv"}) == {
        "lr": 1.0
    }


class Built(Exception):
    """Raised by the stand-in Lightning trainer with the arguments it was built with."""


@pytest.fixture
def trainer_arguments(monkeypatch):
    def fake(**kwargs):
        raise Built(kwargs)

    monkeypatch.setattr(settings_module.L, "Trainer", fake)


def _tiny_eomt():
    torch.manual_seed(0)
    return EomtForUniversalSegmentation(tiny_eomt_config())


@pytest.mark.parametrize("method", ["erfnet", "eomt", "oe", "anomaly_head"])
def test_every_trainer_runs_on_the_records_devices(method, tiny_data, tmp_path, trainer_arguments):
    """Devices, strategy, precision and the recipe's steps reach Lightning for each of the four
    (EoMT, OE and the head hard-coded devices=1 before the records)."""
    from anomalyseg.training.anomaly_head import train_anomaly_head
    from anomalyseg.training.eomt import train_eomt
    from anomalyseg.training.erfnet import train_erfnet
    from anomalyseg.training.oe import finetune_oe

    train = TrainSettings(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        precision="bf16-mixed",
        progress=False,
        crop_size=(32, 64) if method == "erfnet" else None,
    )
    cs, coco, out = tiny_data / "cityscapes", tiny_data / "coco", tmp_path / method
    with pytest.raises(Built) as built:
        if method == "erfnet":
            train_erfnet(cs, out, train, ErfnetConfig(input_size=(32, 64), class_weights=None))
        elif method == "eomt":
            train_eomt(_tiny_eomt(), cs, out, train)
        elif method == "oe":
            finetune_oe(_tiny_eomt(), cs, coco, out, train)
        else:
            train_anomaly_head(_tiny_eomt(), cs, coco, out, train)
    kw = built.value.args[0]
    assert (kw["accelerator"], kw["devices"], kw["strategy"], kw["precision"]) == (
        "cpu",
        2,
        "ddp",
        "bf16-mixed",
    )
    assert kw["max_steps"] == RECIPE_DEFAULTS[method]["max_steps"]


# ----------------------------------------------------------------------------- Lightning's console
def test_quiet_lightning_drops_only_the_named_messages(tmp_path, caplog, recwarn):
    """Lightning's litlogger tip (logged as a Trainer is built) and torch's LeafSpec deprecation
    (Lightning's own ``_pytree`` makes a ``LeafSpec``) are dropped inside ``quiet_lightning``; an
    other warning or log message of the same kinds still shows, and nothing is dropped after."""
    import logging
    import warnings

    import lightning as L
    from lightning.pytorch.utilities import rank_zero_info
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from anomalyseg.training.callbacks import quiet_lightning

    def console():
        caplog.clear()
        recwarn.clear()
        L.Trainer(default_root_dir=tmp_path, accelerator="cpu", enable_progress_bar=False)
        _tree_flatten(1)
        rank_zero_info("an other message")
        warnings.warn("an other deprecation", FutureWarning)
        return caplog.text, [str(w.message) for w in recwarn]

    caplog.set_level(logging.INFO)
    warnings.simplefilter("always")
    text, warned = console()  # what Lightning prints unfiltered: the messages exist
    assert "litlogger" in text and any("LeafSpec" in w for w in warned)
    with quiet_lightning():
        text, warned = console()
    assert "litlogger" not in text and not any("LeafSpec" in w for w in warned)
    assert "an other message" in text and "an other deprecation" in warned
    text, warned = console()
    assert "litlogger" in text and any("LeafSpec" in w for w in warned)


@pytest.mark.parametrize("max_epochs, description", [(-1, "Epoch 0"), (3, "Epoch 0/2")])
def test_the_progress_bar_of_a_step_bounded_run_has_no_negative_epoch(
    max_epochs, description, tmp_path
):
    """Every training here stops at max_steps with max_epochs=-1: Lightning's rich bar read
    ``Epoch 0/-2``; an epoch-bounded run keeps Lightning's ``Epoch 0/2``."""
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar

    from anomalyseg.training.callbacks import StepsProgressBar, use_steps_progress_bar

    bar = RichProgressBar(refresh_rate=7)
    trainer = L.Trainer(
        max_steps=2, max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=[bar], logger=False
    )
    use_steps_progress_bar(trainer)
    assert trainer.progress_bar_callback is bar and isinstance(bar, StepsProgressBar)
    assert bar.refresh_rate == 7  # the bar's own settings kept
    bar.setup(trainer, L.LightningModule(), "fit")  # as the fit does, before the first epoch
    assert bar._get_train_description(0).strip() == description
