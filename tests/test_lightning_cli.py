"""`anomalyseg fit|validate -c CONFIG.yaml` (LightningCLI) for the four trainings: every shipped
config runs at tiny sizes, its settings reach the trained module, the demo configs agree with
the notebooks' presets, `--print_config` round-trips, and 2-process CPU DDP trains, resumes and
validates like one process."""

from __future__ import annotations

import pytest
import torch
import yaml

from anomalyseg.cli import main
from anomalyseg.training.eomt import StepSampler
from helpers import (
    CONFIGS,
    REPO,
    exported_path,
    exported_weights,
    module_kind,
    read_config,
    tiny_overrides,
)


# ----------------------------------------------------------------------------- every shipped config
@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_config_trains_and_its_settings_reach_the_module(
    path, tiny_data, tiny_eomt_folder, tmp_path
):
    config = read_config(path)
    kind, out = module_kind(config), tmp_path / "run"
    main(["fit", "-c", str(path), *tiny_overrides(config, tiny_data, out, tiny_eomt_folder)])
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2
    hp = ckpt["hyper_parameters"]
    assert hp["_class_path"] == config["model"]["class_path"]
    # the YAML's settings (those the tiny run does not override) are the module's
    oe_settings = hp.get("oe", {})
    for key, value in config["model"]["init_args"].items():
        if key in ("max_steps", "model", "eomt", "small_config", "recipe"):
            continue
        stored = oe_settings[key] if key in oe_settings else hp[key]
        assert stored == pytest.approx(value) if isinstance(value, float) else stored == value, key
    if kind == "EomtOEModule":  # the data side of the OE record comes from data.init_args
        for key in ("oe_enabled", "ood_prob", "oe_road_only", "oe_perspective_scale", "coco_split"):
            if key in config["data"]["init_args"]:
                assert oe_settings[key] == config["data"]["init_args"][key], key
    # the export holds exactly the checkpoint's weights
    exported = exported_weights(exported_path(out, kind))
    prefix = {"ErfnetModule": "model.", "AnomalyHeadModule": "head."}.get(kind, "model.")
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    assert exported.keys() <= state.keys() and len(exported) > 0
    for k, v in exported.items():
        assert torch.equal(v, state[k]), k
    assert list((out / "logs").glob("version_*/metrics.csv"))


@pytest.mark.slow
def test_print_config_round_trips(tmp_path, capsys):
    """Each config printed by --print_config, read back with -c, prints the same again."""
    for path in CONFIGS:
        with pytest.raises(SystemExit) as done:
            main(["fit", "-c", str(path), "--print_config"])
        assert done.value.code in (0, None)
        first = capsys.readouterr().out
        printed = tmp_path / f"{path.stem}.yaml"
        printed.write_text(first)
        with pytest.raises(SystemExit):
            main(["fit", "-c", str(printed), "--print_config"])
        assert capsys.readouterr().out == first, path.name
        # and the printed config holds every setting of the shipped file
        full, shipped = yaml.safe_load(first), read_config(path)
        for section in ("model", "data"):
            assert full[section]["class_path"] == shipped[section]["class_path"]
            for key, value in shipped[section]["init_args"].items():
                got = full[section]["init_args"][key]
                assert (list(got) if isinstance(got, (list, tuple)) else got) == value, (
                    path.name,
                    section,
                    key,
                )


def test_bad_config_is_one_paragraph(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    config = read_config(REPO / "configs" / "eomt_oe_demo.yaml")
    config["model"]["init_args"]["inlier_upper_threshold"] = (
        3.0  # outside the rba score's range [-19, 0]
    )
    config["data"]["init_args"]["root"] = str(tmp_path)
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(bad), "--trainer.accelerator=cpu"])
    err = capsys.readouterr().err
    assert done.value.code != 0 and "Traceback" not in err


# ----------------------------------------------------------------------------- presets agree
PRESET_KEYS = {  # notebook -> (config, {preset parameter: config key})
    "01_erfnet_baseline": (
        "erfnet_demo",
        {
            "train_steps": ["trainer.max_steps", "model.init_args.max_steps"],
            "batch_size": ["data.init_args.batch_size"],
            "crop_size": ["data.init_args.crop_size"],
            "scale_range": ["data.init_args.scale_range"],
            "lr": ["model.init_args.lr"],
            "input_size": ["data.init_args.val_size"],
            "num_workers": ["data.init_args.num_workers"],
        },
    ),
    "02_eomt_eval": (
        "eomt_demo",
        {
            "train_steps": ["trainer.max_steps", "model.init_args.max_steps"],
            "batch_size": ["data.init_args.batch_size"],
            "crop_size": ["data.init_args.image_size", "model.init_args.small_config.image_size"],
        },
    ),
    "04_outlier_exposure": (
        "eomt_oe_demo",
        {
            "finetune_steps": ["trainer.max_steps", "model.init_args.max_steps"],
            "batch_size": ["data.init_args.batch_size"],
            "lr": ["model.init_args.lr"],
        },
    ),
    "05_anomaly_head": (
        "anomaly_head_stats_demo",
        {
            "train_steps": ["trainer.max_steps", "model.init_args.max_steps"],
            "batch_size": ["data.init_args.batch_size"],
            "lr": ["model.init_args.lr"],
        },
    ),
}


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def test_demo_configs_agree_with_the_notebooks_demo_preset():
    presets = yaml.safe_load((REPO / "notebooks" / "presets.yaml").read_text())["demo"]
    for notebook, (name, keys) in PRESET_KEYS.items():
        config = read_config(REPO / "configs" / f"{name}.yaml")
        for param, targets in keys.items():
            assert param in presets[notebook], (notebook, param)
            for target in targets:
                assert _get(config, target) == presets[notebook][param], (
                    name,
                    target,
                    notebook,
                    param,
                )
    # both head variants train with the same settings; the EoMT-L configs of a method agree too
    stats, hybrid = (
        read_config(REPO / "configs" / f"anomaly_head_{v}_demo.yaml") for v in ("stats", "hybrid")
    )
    stats["model"]["init_args"].pop("variant"), hybrid["model"]["init_args"].pop("variant")
    assert stats["model"] == hybrid["model"] and stats["data"] == hybrid["data"]
    # notebook 05's pasting probability (a parameter-cell default, not in the preset)
    assert stats["data"]["init_args"]["ood_prob"] == 0.5


# ----------------------------------------------------------------------------- DDP
def test_step_sampler_shards_one_global_stream():
    """N processes at batch B see, step by step, the items one process sees at batch N * B, and a
    restart at any step continues the stream (positions are global)."""
    n, batch, world = 7, 3, 2
    one = StepSampler(n, seed=5)
    it = iter(one)
    single = [next(it) for _ in range(4 * batch * world)]
    shards = []
    for rank in range(world):
        it = iter(StepSampler(n, seed=5, rank=rank, world_size=world))
        shards.append([next(it) for _ in range(4 * batch)])
    for step in range(4):
        together = sorted(x for shard in shards for x in shard[step * batch : (step + 1) * batch])
        assert together == sorted(single[step * batch * world : (step + 1) * batch * world])
    # resumed after 2 steps: rank 1 continues where it was
    it = iter(StepSampler(n, seed=5, start=lambda: 2 * batch * world, rank=1, world_size=world))
    assert [next(it) for _ in range(batch)] == shards[1][2 * batch : 3 * batch]
    with pytest.raises(TypeError):
        len(one)


def test_oe_module_repeats_the_eomt_module_defaults():
    """EomtOEModule lists EomtModule's settings again (LightningCLI reads its signature for the
    YAML's model.init_args); the defaults it repeats must stay EomtModule's."""
    import inspect

    from anomalyseg.training.eomt import EomtModule
    from anomalyseg.training.oe import _MODULE_SETTINGS, EomtOEModule

    base = inspect.signature(EomtModule.__init__).parameters
    oe = inspect.signature(EomtOEModule.__init__).parameters
    repeated = set(base) & set(oe) - {"self", "model", "kwargs"} - set(_MODULE_SETTINGS)
    assert {"max_steps", "lr", "llrd", "poly_power", "warmup_steps", "seed"} <= repeated
    assert {n: oe[n].default for n in repeated} == {n: base[n].default for n in repeated}


def test_a_fit_whose_trainer_stops_off_the_schedule_is_warned():
    """--trainer.max_steps alone leaves the module's schedule at the config's length: warned,
    naming both settings; equal settings (or no trainer limit) are not."""
    from anomalyseg.training.lightning_cli import schedule_mismatch

    config = read_config(REPO / "configs" / "erfnet_demo.yaml")
    schedule = config["model"]["init_args"]["max_steps"]
    assert schedule_mismatch(config) is None  # the shipped config agrees with itself
    config["trainer"]["max_steps"] = 3
    text = schedule_mismatch(config)
    assert "trainer.max_steps = 3" in text and f"model.init_args.max_steps = {schedule}" in text
    assert "before" in text
    config["trainer"]["max_steps"] = -1
    assert schedule_mismatch(config) is None


@pytest.mark.parametrize(
    "accelerator, cuda, stays",
    [
        ("cpu", True, False),
        ("auto", False, False),
        ("gpu", False, False),
        ("mps", False, False),
        ("auto", True, True),
        ("gpu", True, True),
        ("cuda", True, True),
    ],
)
def test_sync_batchnorm_applies_only_on_cuda(accelerator, cuda, stays, monkeypatch):
    """ERFNet's Cityscapes config syncs batch norm over its GPUs; off CUDA (torch's SyncBatchNorm
    raises on CPU processes) the option is switched off with a warning that says why."""
    from anomalyseg.training.lightning_cli import sync_batchnorm_off_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    config = read_config(REPO / "configs" / "erfnet_cityscapes.yaml")
    assert config["trainer"]["sync_batchnorm"] is True
    config["trainer"]["accelerator"] = accelerator
    text = sync_batchnorm_off_cuda(config)
    assert config["trainer"]["sync_batchnorm"] is stays
    assert (text is None) == stays
    if not stays:
        assert "needs CUDA" in text and repr(accelerator) in text and "switched off" in text
    config["trainer"]["sync_batchnorm"] = False  # not asked for: nothing to say
    assert sync_batchnorm_off_cuda(config) is None
