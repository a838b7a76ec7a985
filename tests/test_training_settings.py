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
