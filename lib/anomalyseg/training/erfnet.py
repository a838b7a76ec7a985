"""Training ERFNet on Cityscapes with Lightning, following the course's ``train/main.py``.

Recipe: class-weighted cross-entropy with ENet-style weights ``1 / ln(1.10 + p_c)`` from label
frequencies, the void channel (19) at weight 0, Adam(5e-4, betas (0.9, 0.999), eps 1e-8,
weight decay 1e-4) and a poly learning-rate schedule (power 0.9), stepped per iteration here
instead of per epoch so that short runs still anneal. Void (255) and pasted outliers (254) are
ignored. Validation reports the course mIoU: argmax over all 20 channels, IoU over the 19 classes.

``train_erfnet(data_root, out_dir, TrainSettings, ErfnetConfig)`` resumes from
``<out_dir>/last.ckpt`` when present (``training.settings.fit_and_export``, the one trainer build).
Lightning checkpoints are read back with ``weights_only=True``, so they hold only tensors and plain
Python values.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ..data.cityscapes import CityscapesSegmentation
from ..data.io import read_mask
from ..data.mix_ood import inlier_target
from ..labels import IGNORE_INDEX, NUM_CLASSES
from ..metrics import ConfusionMatrix
from ..models.checkpoints import fit_state_dict, load_state_dict_file
from ..models.erfnet import ERFNet
from ..progress import tqdm
from .data import CityscapesDataModule, resume_from
from .settings import RECIPE_DEFAULTS, ErfnetConfig, TrainSettings, fit_and_export

# ENet's constant: weights 1 / ln(c + p) lie in [1 / ln(c + 1), 1 / ln(c)], i.e. about 1.35..10.5.
ENET_C = 1.10


def enet_class_weights(
    histogram: Sequence[float] | torch.Tensor, c: float = ENET_C
) -> torch.Tensor:
    """ENet class weights ``w_c = 1 / ln(c + p_c)`` with ``p_c`` the pixel frequency of class c.

    ``histogram``: pixel counts ``[C]``. Returns float32 ``[C]``. Rare classes get up to
    ``1 / ln(c)`` (10.49 for c = 1.10); a class that never occurs gets that maximum too.
    """
    hist = torch.as_tensor(histogram, dtype=torch.float64)
    if hist.ndim != 1 or (hist < 0).any() or hist.sum() <= 0:
        raise ValueError(
            "enet_class_weights needs a histogram of non-negative pixel counts [C] with a "
            f"positive total, got shape {tuple(hist.shape)} and total "
            f"{float(hist.sum()) if hist.numel() else 0}."
        )
    if c <= 1:
        raise ValueError(f"enet_class_weights: c must be > 1 so that ln(c + p) > 0, got {c}.")
    return (1.0 / torch.log(c + hist / hist.sum())).float()


def label_histogram(
    root: str | Path, split: str = "train", num_classes: int = NUM_CLASSES, progress: bool = True
) -> torch.Tensor:
    """Pixel counts ``[num_classes]`` (int64) of the train-id labels of a Cityscapes split."""
    pairs = CityscapesSegmentation(root, split).pairs
    hist = np.zeros(num_classes, dtype=np.int64)
    for _, label_path in tqdm(pairs, desc=f"label histogram ({split})", disable=not progress):
        hist += np.bincount(read_mask(label_path).ravel(), minlength=256)[:num_classes]
    return torch.from_numpy(hist)


class ErfnetModule(L.LightningModule):
    """ERFNet trained as in the course.

    Batches: ``{"image": uint8 [B, 3, H, W], "target": int64 [B, H, W]}`` with H, W divisible by 8.
    ``class_weights``: 19 values (the void channel gets 0) or ``num_classes`` values; None = all 1;
    ``"enet"``: ENet weights of the data module's train labels, computed when the trainer sets the
    module up (by the first process, cached in ``default_root_dir/class_weights.json``, sent to
    the others), the course recipe and what a YAML config asks for.
    ``init_weights``: start from these ERFNet weights (the course's ``erfnet_pretrained.pth``, a
    safetensors file); a resumed checkpoint replaces them.
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES + 1,
        lr: float = 5e-4,
        weight_decay: float = 1e-4,
        max_steps: int = 1000,
        class_weights: Sequence[float] | str | None = None,
        poly_power: float = 0.9,
        ignore_index: int = IGNORE_INDEX,
        init_weights: str | None = None,
    ):
        super().__init__()
        if isinstance(class_weights, str) and class_weights != "enet":
            raise ValueError(
                f"ErfnetModule: class_weights={class_weights!r}; expected 'enet', None, or "
                f"{NUM_CLASSES} weights (one per Cityscapes class)."
            )
        if class_weights is not None and not isinstance(class_weights, str):
            # plain floats, so that checkpoints load with weights_only
            class_weights = [float(w) for w in torch.as_tensor(class_weights).flatten()]
        init_weights = None if init_weights is None else str(init_weights)
        if int(max_steps) < 1:
            raise ValueError(
                "ErfnetModule: max_steps sets the poly schedule's length and must be >= 1, got "
                f"{max_steps}."
            )
        self.save_hyperparameters()
        self.model = ERFNet(num_classes)
        # Used only when the encoder is pre-trained alone; frozen so that DDP does not wait for its
        # gradients.
        self.model.encoder.output_conv.requires_grad_(False)
        weights = torch.ones(num_classes)
        if class_weights is not None and not isinstance(class_weights, str):
            if len(class_weights) not in (NUM_CLASSES, num_classes):
                raise ValueError(
                    f"ErfnetModule: class_weights has {len(class_weights)} values; expected "
                    f"{NUM_CLASSES} (one per Cityscapes class) or {num_classes} (one per output "
                    "channel)."
                )
            weights[: len(class_weights)] = torch.tensor(class_weights)
        weights[NUM_CLASSES:] = 0.0  # the void channel is never a target, as in the course
        # Not persistent: the state dict stays a pure ERFNet one (prefixed "model."), loadable by
        # load_erfnet.
        self.register_buffer("class_weights", weights, persistent=False)
        if init_weights is not None:
            fit_state_dict(self.model, load_state_dict_file(init_weights), source=init_weights)
        self._val_cm: ConfusionMatrix | None = None

    def setup(self, stage: str) -> None:
        if self.hparams.class_weights != "enet":
            return
        data = getattr(self.trainer, "datamodule", None)
        if data is None or not hasattr(data, "root"):
            raise ValueError(
                "ErfnetModule: class_weights='enet' is computed from the train labels of the data "
                "module (CityscapesDataModule); train with one, or give the 19 weights."
            )
        out_dir = Path(self.trainer.default_root_dir)
        weights = None
        if self.trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            weights = _class_weights("enet", data.root, out_dir, progress=False)
        weights = self.trainer.strategy.broadcast(weights, src=0)
        self.class_weights[:NUM_CLASSES] = torch.tensor(weights, dtype=self.class_weights.dtype)

    def export_weights(self, ckpt: str | Path, out_dir: str | Path) -> Path:
        """The ERFNet of ``ckpt`` as ``out_dir/erfnet.safetensors`` (``load_erfnet`` reads it)."""
        return export_erfnet_weights(ckpt, Path(out_dir) / "erfnet.safetensors")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, H, W]`` -> logits ``[B, num_classes, H, W]`` (course input: /255, no
        mean/std)."""
        return self.model(images.float() / 255.0)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = self.hparams.ignore_index
        target = inlier_target(target, NUM_CLASSES, ignore)  # 254 (pasted outlier) -> ignore too
        if not (target != ignore).any():
            # A crop of pure void: the weighted mean would be 0/0; keep the graph for DDP.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=ignore)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch["image"]), batch["target"])
        n = batch["image"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=n)
        self.log("lr", self.optimizers().param_groups[0]["lr"], batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_cm = ConfusionMatrix(
            num_classes=NUM_CLASSES, ignore_index=self.hparams.ignore_index
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.log(
            "val_loss",
            self._loss(logits, batch["target"]),
            sync_dist=True,
            batch_size=logits.shape[0],
        )
        self._val_cm.update(logits.argmax(1), batch["target"])

    def on_validation_epoch_end(self) -> None:
        # ConfusionMatrix keeps numpy counts; add every process's pixels before taking the mIoU.
        counts = torch.as_tensor(self._val_cm._counts, device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self._val_cm._counts[:] = counts.cpu().numpy()
        self.log("val_miou", float(self._val_cm.miou()), prog_bar=True)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(
            self.parameters(), lr=hp.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=hp.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1.0 - step / hp.max_steps) ** hp.poly_power
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class EpochSeed(Callback):
    """Re-seed torch, numpy and random at each epoch start from (seed, epoch, rank).

    Shuffling, augmentations (in the main process and, through the per-epoch worker seeds, in
    DataLoader workers) and dropout then depend only on the epoch, so a run resumed from an
    end-of-epoch checkpoint continues exactly as the uninterrupted run would have.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % 2**32
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


def _class_weights(spec, data_root: Path, out_dir: Path, progress: bool) -> list[float] | None:
    """Resolve ``class_weights``: "enet" computes them once from the train labels and caches them
    in ``out_dir/class_weights.json`` (a resumed run reuses the same weights)."""
    if spec is None or not isinstance(spec, str):
        return None if spec is None else [float(w) for w in spec]
    if spec != "enet":
        raise ValueError(
            f"class_weights={spec!r}: expected 'enet', None, or a sequence of {NUM_CLASSES} "
            "weights."
        )
    cache = out_dir / "class_weights.json"
    if cache.is_file():
        return json.loads(cache.read_text())["weights"]
    hist = label_histogram(data_root, "train", progress=progress)
    weights = enet_class_weights(hist).tolist()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        cache.write_text(
            json.dumps(
                {"method": f"1/ln({ENET_C}+p)", "histogram": hist.tolist(), "weights": weights},
                indent=1,
            )
        )
    return weights


def train_erfnet(
    data_root: str | Path,
    out_dir: str | Path,
    train: TrainSettings | None = None,
    config: ErfnetConfig | None = None,
) -> Path:
    """Train ERFNet on the Cityscapes-layout folder ``data_root``; return the exported weights.

    ``train``: the shared settings (``TrainSettings``; fields left at None take ERFNet's recipe,
    ``RECIPE_DEFAULTS["erfnet"]``: 2000 steps, batch 8, 512x1024 crops, lr 5e-4, 2 workers);
    ``config``: ERFNet's own (``ErfnetConfig``: class weights, validation size, initial weights).

    Writes into ``out_dir``: Lightning checkpoints (``last.ckpt`` and the best by ``val_miou``,
    saved at each validation, by default each epoch, and ``last.ckpt`` at the end), logs under
    ``logs/``, the class weights, and ``erfnet.safetensors`` (the last weights, loadable by
    ``load_erfnet``), whose path is returned. With ``train.resume`` an existing ``last.ckpt`` is
    continued up to ``max_steps``.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    train = (
        (train or TrainSettings()).with_defaults(RECIPE_DEFAULTS["erfnet"]).checked("train_erfnet")
    )
    config = config or ErfnetConfig()
    crop = (
        train.crop_size
        if isinstance(train.crop_size, (tuple, list))
        else (train.crop_size, train.crop_size)
    )
    for setting, size in (
        ("TrainSettings.crop_size", crop),
        ("ErfnetConfig.input_size", config.input_size),
    ):
        if size is not None and (
            int(size[0]) <= 0 or int(size[1]) <= 0 or int(size[0]) % 8 or int(size[1]) % 8
        ):
            raise ValueError(
                f"train_erfnet {setting}={tuple(size)}: ERFNet needs a height and width > 0 and "
                "divisible by 8."
            )
    resume_from(
        out_dir, train.max_steps, train.resume
    )  # before any work: a run past max_steps is refused
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(train.seed, workers=True, verbose=False)
    weights = _class_weights(config.class_weights, data_root, out_dir, train.progress)
    module = ErfnetModule(lr=train.lr, max_steps=train.max_steps, class_weights=weights)
    if config.init_weights is not None:
        fit_state_dict(
            module.model, load_state_dict_file(config.init_weights), source=config.init_weights
        )
    data = CityscapesDataModule(
        data_root,
        crop_size=tuple(crop),
        batch_size=train.batch_size,
        num_workers=train.num_workers,
        scale_range=train.scale_range,
        base_size=train.base_size,
        val_size=config.input_size,
        val_split="val" if (data_root / "leftImg8bit" / "val").is_dir() else None,
    )
    has_val = data.val_split is not None
    checkpoint = ModelCheckpoint(
        dirpath=out_dir,
        filename="erfnet-{step}" + ("-{val_miou:.4f}" if has_val else ""),
        monitor="val_miou" if has_val else None,
        mode="max",
        save_top_k=1,
        save_last=True,
        every_n_train_steps=train.checkpoint_every_n_steps,
    )
    _, exported = fit_and_export(
        module,
        data,
        out_dir,
        train,
        export_erfnet_weights,
        out_dir / "erfnet.safetensors",
        name="erfnet",
        has_val=has_val,
        checkpoint=checkpoint,
        callbacks=[EpochSeed(train.seed)],
        validate_each_epoch=True,
        run_config={"erfnet": asdict(config)},
    )
    return exported


def export_erfnet_weights(ckpt: str | Path, path: str | Path) -> Path:
    """Write the ERFNet weights of a training checkpoint to a plain safetensors state dict.

    The result holds exactly ``ERFNet(num_classes).state_dict()`` keys (no ``model.`` prefix, no
    optimizer), so ``load_erfnet(path)`` and ``ErfnetSegmenter(path)`` read it directly.
    """
    from safetensors.torch import save_file

    state = load_state_dict_file(ckpt)
    head = next((v for k, v in state.items() if k.endswith("decoder.output_conv.weight")), None)
    if head is None:
        raise ValueError(
            f"{ckpt}: no decoder.output_conv.weight in the checkpoint; expected an ERFNet training "
            "checkpoint."
        )
    model = ERFNet(num_classes=head.shape[1])
    fit_state_dict(model, state, source=ckpt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp),
        metadata={"source": str(ckpt)},
    )
    os.replace(tmp, path)  # a reader never sees a half-written file
    return path
