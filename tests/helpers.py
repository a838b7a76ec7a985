"""Small builders shared by the EoMT, training, Outlier Exposure, anomaly-head and CLI tests."""

from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from anomalyseg.models.eomt import small_eomt_config

# small_eomt_config settings of an EoMT of a few thousand parameters: 32 px windows of 2x2
# patches, 6 queries in 2 blocks.
TINY_EOMT = dict(
    image_size=32,
    patch_size=16,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_blocks=2,
    num_queries=6,
    num_register_tokens=1,
)


def tiny_eomt_config(**kw):
    """The tiny EoMT's config (``TINY_EOMT``), with ``kw`` on top."""
    return small_eomt_config(**{**TINY_EOMT, **kw})


class Crash(Callback):
    """Kill training when step ``step`` starts, as a dying notebook kernel would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("kernel died")


def run_cli(argv, capsys):
    """``anomalyseg argv`` in this process: (exit code, stdout, stderr)."""
    from anomalyseg import cli

    try:
        cli.main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- shipped configs
REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def read_config(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def module_kind(config: dict) -> str:
    return config["model"]["class_path"].rsplit(".", 1)[1]


def tiny_overrides(config: dict, data: Path, out: Path, eomt: Path, steps: int = 2) -> list[str]:
    """Command-line overrides that run ``config`` ``steps`` steps on the tiny data on one CPU."""
    kind = module_kind(config)
    args = [
        f"--trainer.max_steps={steps}",
        f"--model.init_args.max_steps={steps}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.precision=32-true",
        f"--data.init_args.root={data / 'cityscapes'}",
        "--data.init_args.batch_size=2",
        "--data.init_args.num_workers=0",
    ]
    if kind == "ErfnetModule":
        args += [
            "--data.init_args.crop_size=[64,128]",
            "--data.init_args.val_size=[64,128]",
            f"--trainer.val_check_interval={steps}",
        ]
    else:
        args += ["--data.init_args.image_size=32"]
    if kind in ("EomtModule", "EomtOEModule"):
        args += [f"--trainer.val_check_interval={steps}", "--trainer.limit_val_batches=2"]
        if "small_config" in config["model"]["init_args"]:
            args += [f"--model.init_args.small_config={TINY_EOMT}"]
        else:
            args += [f"--model.init_args.model={eomt}"]
    if kind in ("EomtOEModule", "AnomalyHeadModule"):
        # tiny COCO objects are 40-136 px, the crops 32 px
        args += [
            f"--data.init_args.coco_root={data / 'coco'}",
            "--data.init_args.object_scale=0.25",
        ]
    if kind == "AnomalyHeadModule":
        args += [f"--model.init_args.eomt={eomt}"]
    return args


def exported_path(out: Path, kind: str) -> Path:
    return out / {
        "ErfnetModule": "erfnet.safetensors",
        "AnomalyHeadModule": "head.safetensors",
    }.get(kind, "model")


def exported_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors" if path.is_dir() else path)
