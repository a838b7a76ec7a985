"""ERFNet training: class weights, the loss, the schedule, the data module, resume, DDP, export."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from PIL import Image
from safetensors.torch import load_file

from anomalyseg.data.cityscapes import CityscapesSegmentation
from anomalyseg.data.transforms import eval_transforms
from anomalyseg.metrics import ConfusionMatrix
from anomalyseg.models.erfnet import load_erfnet
from anomalyseg.results import training_log
from anomalyseg.training.data import CityscapesDataModule
from anomalyseg.training.erfnet import (
    ErfnetModule,
    enet_class_weights,
    export_erfnet_weights,
    label_histogram,
    train_erfnet,
)
from anomalyseg.training.settings import ErfnetConfig, TrainSettings

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 128)
LABEL_SET = np.array([0, 1, 2, 8, 10, 13, 255], dtype=np.uint8)


def write_cityscapes(root: Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> Path:
    """A tiny Cityscapes-layout folder: 16x16 cells of train ids, each coloured by its id plus
    noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(1).integers(0, 256, (256, 3))
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            city = ("aachen", "bremen")[i % 2]
            stem = f"{city}_{i:06d}_000000"
            cells = rng.choice(LABEL_SET, size=(SIZE[0] // 16, SIZE[1] // 16))
            label = cells.repeat(16, 0).repeat(16, 1)
            image = (
                (palette[label] + rng.integers(-20, 20, (*SIZE, 3))).clip(0, 255).astype(np.uint8)
            )
            for sub, suffix, arr in (
                ("leftImg8bit", "leftImg8bit", image),
                ("gtFine", "gtFine_labelTrainIds", label),
            ):
                folder = root / sub / split / city
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(folder / f"{stem}_{suffix}.png")
    return root


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory) -> Path:
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"))


# --- class weights ----------------------------------------------------------------------------


def test_enet_class_weights_hand_computed():
    w = enet_class_weights([300, 100, 0])
    expected = [1 / math.log(1.10 + 0.75), 1 / math.log(1.10 + 0.25), 1 / math.log(1.10)]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float32))
    # The course's published decoder weight for road (2.8149) corresponds to p = 32.66 % of pixels.
    road = enet_class_weights([0.3266, 1 - 0.3266])[0]
    assert abs(float(road) - 2.8149) < 2e-3


@pytest.mark.parametrize(
    "hist, match", [([0, 0], "positive total"), ([[1, 2]], r"\[C\]"), ([1, -1, 3], "non-negative")]
)
def test_enet_class_weights_bad_histogram(hist, match):
    with pytest.raises(ValueError, match=match):
        enet_class_weights(hist)


def test_label_histogram_counts_train_ids(cityscapes):
    hist = label_histogram(cityscapes, "train", progress=False)
    labels = [
        np.asarray(Image.open(p)) for p in sorted((cityscapes / "gtFine" / "train").rglob("*.png"))
    ]
    expected = np.bincount(np.concatenate([label.ravel() for label in labels]), minlength=256)[:19]
    assert (
        hist.tolist() == expected.tolist() and hist.sum() < 4 * SIZE[0] * SIZE[1]
    )  # void left out


# --- the module -------------------------------------------------------------------------------


def test_loss_is_weighted_cross_entropy_ignoring_void_and_pasted():
    torch.manual_seed(0)
    module = ErfnetModule(class_weights=[float(c + 1) for c in range(19)])
    assert module.class_weights.tolist() == [float(c + 1) for c in range(19)] + [0.0]
    logits = torch.randn(2, 20, 8, 16, requires_grad=True)
    target = torch.randint(0, 19, (2, 8, 16))
    target[0, :2] = 255
    target[1, 3:5, :4] = 254  # a pasted outlier object
    loss = module._loss(logits, target)
    # Reference: sum_i w_{y_i} * -log p_{y_i} / sum_i w_{y_i} over pixels that are neither void nor
    # pasted.
    logp = F.log_softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, 20)
    y = target.reshape(-1)
    keep = y < 19
    w = torch.arange(1, 20, dtype=torch.float32)[y[keep]]
    expected = (w * -logp[keep, y[keep]]).sum() / w.sum()
    torch.testing.assert_close(loss, expected)
    void_only = module._loss(logits, torch.full((2, 8, 16), 255))
    assert void_only.item() == 0.0 and void_only.requires_grad


def test_class_weight_length_is_checked():
    assert ErfnetModule(class_weights=[2.0] * 20).class_weights[19] == 0.0
    with pytest.raises(ValueError, match="class_weights has 7 values"):
        ErfnetModule(class_weights=[1.0] * 7)


def test_optimizer_and_poly_schedule():
    module = ErfnetModule(max_steps=10, lr=5e-4, weight_decay=1e-4)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.Adam) and conf["lr_scheduler"]["interval"] == "step"
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["weight_decay"] == 1e-4
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [5e-4 * (1 - k / 10) ** 0.9 for k in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert opt.param_groups[0]["lr"] == 0.0
    assert "class_weights" not in module.state_dict()  # the state dict stays a pure ERFNet one


# --- the data module ---------------------------------------------------------------------------


def test_data_module_batches(cityscapes):
    def add_outlier_mask(item):
        return {**item, "outlier_mask": (item["target"] == 0).to(torch.uint8)}

    dm = CityscapesDataModule(
        cityscapes,
        crop_size=(32, 64),
        batch_size=3,
        num_workers=0,
        sample_transform=add_outlier_mask,
        val_size=(32, 64),
    )
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "target", "stem", "outlier_mask"}
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 32, 64)
    assert batch["target"].dtype == torch.int64 and batch["target"].shape == (3, 32, 64)
    assert type(batch["image"]) is torch.Tensor and len(batch["stem"]) == 3
    assert torch.equal(batch["outlier_mask"], (batch["target"] == 0).to(torch.uint8))
    assert set(batch["target"].unique().tolist()) <= set(LABEL_SET.tolist())
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 32, 64) and "outlier_mask" not in val

    bad = CityscapesDataModule(
        cityscapes,
        crop_size=(32, 64),
        batch_size=1,
        num_workers=0,
        sample_transform=lambda item: item["image"],
    )
    with pytest.raises(
        TypeError, match="sample_transform .* returned Image; expected the item dict"
    ):
        next(iter(bad.train_dataloader()))


# --- training, resume, export ------------------------------------------------------------------


class StopAt(Callback):
    """Simulate an interrupted session: stop once ``global_step`` reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def _train(data, out, **kw):
    args = dict(
        max_steps=4,
        batch_size=2,
        crop_size=(48, 96),
        num_workers=0,
        progress=False,
        accelerator="cpu",
    )
    return train_erfnet(data, out, TrainSettings(**{**args, **kw}), ErfnetConfig(input_size=SIZE))


def _step_and_losses(out: Path):
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    losses = training_log(out).dropna(subset=["train_loss"]).set_index("step")["train_loss"]
    return ckpt["global_step"], losses


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(cityscapes, tmp_path):
    # 4 frames at batch 2: two steps per epoch, so the interruption falls on an epoch end.
    _train(cityscapes, tmp_path / "a", callbacks=[StopAt(2)])
    assert _step_and_losses(tmp_path / "a")[0] == 2
    exported = _train(cityscapes, tmp_path / "a")  # resumes from a/last.ckpt up to 4 steps
    _train(cityscapes, tmp_path / "b")
    step_a, loss_a = _step_and_losses(tmp_path / "a")
    step_b, loss_b = _step_and_losses(tmp_path / "b")
    assert step_a == step_b == 4
    np.testing.assert_allclose(
        loss_a.sort_index().to_numpy(), loss_b.sort_index().to_numpy(), rtol=1e-4
    )
    wa, wb = load_file(str(exported)), load_file(str(tmp_path / "b" / "erfnet.safetensors"))
    assert set(wa) == set(wb)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)
    # Training moved the weights, and the export loads as a plain ERFNet.
    start = load_erfnet(tmp_path / "b" / "erfnet.safetensors").state_dict()
    assert not torch.equal(
        start["decoder.output_conv.weight"], torch.zeros_like(start["decoder.output_conv.weight"])
    )
    assert load_erfnet(tmp_path / "a" / "last.ckpt") is not None


@pytest.mark.slow
def test_module_fits_a_colour_coded_batch():
    """Cells coloured by their label: a few optimiser steps must cut the weighted loss by half."""
    torch.manual_seed(0)
    module = ErfnetModule(max_steps=15, lr=5e-3)
    opt = module.configure_optimizers()["optimizer"]
    ids = torch.tensor([0, 2, 8, 13])
    cells = torch.randint(0, 4, (2, 4, 8), generator=torch.Generator().manual_seed(0))
    target = ids[cells].repeat_interleave(8, 1).repeat_interleave(8, 2)  # [2, 32, 64]
    palette = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]])
    image = (
        palette[cells.repeat_interleave(8, 1).repeat_interleave(8, 2)]
        .permute(0, 3, 1, 2)
        .to(torch.uint8)
    )
    losses = []
    for _ in range(15):
        loss = module._loss(module(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_export_refuses_non_erfnet_checkpoint(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.backbone.weight": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match="other.ckpt: no decoder.output_conv.weight"):
        export_erfnet_weights(path, tmp_path / "out.safetensors")


def test_train_erfnet_rejects_sizes_not_divisible_by_8(tmp_path):
    with pytest.raises(ValueError, match=r"crop_size=\(50, 96\).*divisible by 8"):
        train_erfnet(tmp_path, tmp_path / "out", TrainSettings(crop_size=(50, 96)))


DDP_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from anomalyseg.training.erfnet import train_erfnet
from anomalyseg.training.settings import ErfnetConfig, TrainSettings

if __name__ == "__main__":
    train_erfnet(sys.argv[1], sys.argv[2], TrainSettings(max_steps=2, batch_size=1, crop_size=(48,
    96), accelerator="cpu",
                 devices=2, strategy="ddp", num_workers=0, progress=False),
                 ErfnetConfig(input_size=(64, 128)))
    import torch.distributed as dist
    print(f"rank {dist.get_rank() if dist.is_initialized() else 'none'} of 2 finished", flush=True)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes_with_gloo(cityscapes, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO / "lib"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(cityscapes), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2 finished" in proc.stdout and "rank 1 of 2 finished" in proc.stdout, (
        proc.stdout
    )
    ckpt = torch.load(tmp_path / "out" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # 4 frames over 2 processes at batch 1: 2 synchronised steps
    # Each process validated one of the two val frames; the logged mIoU must cover both.
    model = load_erfnet(tmp_path / "out" / "erfnet.safetensors")
    cm = ConfusionMatrix(num_classes=19, ignore_index=255)
    for item in CityscapesSegmentation(cityscapes, "val", transforms=eval_transforms(SIZE)):
        with torch.no_grad():
            cm.update(model(item["image"][None].float() / 255).argmax(1), item["target"][None])
    logs = training_log(tmp_path / "out")
    assert logs["val_miou"].dropna().iloc[-1] == pytest.approx(cm.miou(), abs=1e-6)
