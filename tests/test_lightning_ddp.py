"""Two CPU processes (gloo) for every training under `anomalyseg fit -c` and for validation: the
DDP half of the LightningCLI tests, in its own file so that pytest-xdist's loadfile runs it beside
tests/test_lightning_cli.py instead of after it (each test starts two Python processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomalyseg.cli import main
from helpers import REPO, exported_path, exported_weights, module_kind, read_config, tiny_overrides


def _anomalyseg(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "anomalyseg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
DDP_CONFIGS = ["erfnet_demo", "eomt_demo", "eomt_oe_demo", "anomaly_head_stats_demo"]


@pytest.mark.slow
@pytest.mark.parametrize("name", DDP_CONFIGS)
def test_two_process_ddp_trains_and_resumes(name, tiny_data, tiny_eomt_folder, tmp_path):
    """2 CPU processes (gloo): a 3-step run stopped after 2 steps, resumed from last.ckpt with
    --ckpt_path (the checkpoint's stored settings come back beside the YAML's and must be accepted);
    one export, written by the first process, holding the resumed checkpoint's weights."""
    path = REPO / "configs" / f"{name}.yaml"
    config, out = read_config(path), tmp_path / "run"
    base = ["fit", "-c", str(path), *tiny_overrides(config, tiny_data, out, tiny_eomt_folder), *DDP]
    _anomalyseg(
        [*base, "--model.init_args.max_steps=3"]
    )  # the schedules' length; the trainer stops at 2
    first = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert first["global_step"] == 2 and first["hyper_parameters"]["max_steps"] == 3
    done = _anomalyseg([*base, "--trainer.max_steps=3", f"--ckpt_path={out / 'last.ckpt'}"])
    assert done.stdout.count("exported") == 1  # the first process only
    resumed = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 3
    kind = module_kind(config)
    prefix = "head." if kind == "AnomalyHeadModule" else "model."
    exported = exported_weights(exported_path(out, kind))
    changed = False
    for k, v in exported.items():
        assert torch.equal(v, resumed["state_dict"][prefix + k]), k
        changed |= not torch.equal(v, first["state_dict"][prefix + k])
    assert changed  # the resumed step trained


@pytest.mark.slow
def test_two_process_validation_equals_one_process(tiny_data, tiny_eomt_folder, tmp_path):
    """val mIoU of the same checkpoint on 1 and on 2 processes: one confusion matrix summed over the
    processes (each val frame counted once), so equal up to float32 summation order."""
    path = REPO / "configs" / "eomt_demo.yaml"
    config, out = read_config(path), tmp_path / "run"
    base = ["-c", str(path), *tiny_overrides(config, tiny_data, out, tiny_eomt_folder)]
    base = [a for a in base if not a.startswith("--trainer.limit_val_batches")]
    main(["fit", *base])
    ckpt = f"--ckpt_path={out / 'last.ckpt'}"

    def miou(logs: Path, *extra) -> float:
        done = _anomalyseg(
            [
                "validate",
                *base,
                f"--trainer.default_root_dir={logs}",
                f"--trainer.logger.init_args.save_dir={logs}",
                ckpt,
                *extra,
            ]
        )
        import pandas as pd

        frame = pd.concat(pd.read_csv(p) for p in logs.glob("logs/version_*/metrics.csv"))
        assert done.returncode == 0
        return float(frame["val_miou"].dropna().iloc[-1])

    one, two = miou(tmp_path / "one"), miou(tmp_path / "two", *DDP)
    assert two == pytest.approx(one, abs=1e-6) and 0 < one < 1
