"""Training the pixel-wise anomaly head on a frozen EoMT (seed 001; REFERENCE §6).

Only the head learns. EoMT runs in eval mode under ``torch.no_grad`` with masked attention off,
exactly as at evaluation, and its weights are checked to be unchanged at the end of training. The
training frames are Cityscapes-layout *train* frames with one COCO object pasted by
``data.mix_ood.paste_outliers``, the wrapper Outlier Exposure uses, so that both trainings paste
objects of the same size for the same settings (never a benchmark's frames); the loss is
``losses.anomaly_head_loss``: BCE-with-logits against the outlier mask with ``pos_weight`` 10, void
pixels masked out (seed 001 trained on them; here they carry no label and no gradient).

Per step, on crops ``[B, 3, S, S]`` (``S`` = EoMT's window size, the only input size its position
embeddings take): EoMT's mask logits ``[B, Q, S/4, S/4]`` are upsampled to ``S`` and fused into
the class map ``[B, C, S, S]`` (``per_pixel_logits``), the patch features ``[B, D, g, g]`` are
kept for a hybrid head, and both are rounded to float16 first, as ``EomtSegmenter`` caches them,
so that the head sees in training exactly what windowed evaluation feeds it. The head returns
``[B, 1, S, S]`` logits.

``train_anomaly_head(eomt, data_root, coco_root, out_dir, TrainSettings, HeadConfig)`` runs through
the one trainer build (``training.settings.fit_and_export``): it writes ``last.ckpt`` (head and
optimiser only; the frozen EoMT stays out of it), logs and the head as ``head.safetensors``, and
resumes exactly (a checkpoint of other ``HeadConfig`` settings, pastes included, is refused):
the data come from EoMT training's step-indexed stream (``EomtDataModule``) and dropout is seeded
by the step, so an interrupted and resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from transformers import EomtForUniversalSegmentation

from ..data.leakage import CACHE_FILE as LEAKAGE_CACHE
from ..data.leakage import guard_training_data
from ..losses import anomaly_head_loss
from ..models.anomaly_head import VARIANT_SCORES, build_anomaly_head, save_anomaly_head
from ..models.checkpoints import CheckpointError, fit_state_dict
from ..models.eomt import (
    EomtSegmenter,
    build_eomt,
    normalize,
    patch_features,
    per_pixel_logits,
    zero_attn_mask_probs,
)
from .data import read_training_checkpoint
from .eomt import WarmupPoly
from .oe import EomtOEDataModule
from .settings import RECIPE_DEFAULTS, HeadConfig, TrainSettings, fit_and_export

HEAD_FILE = "head.safetensors"
# The HeadConfig of a run, among its checkpoint's hyper-parameters (the resume check reads it).
HEAD_CONFIG_KEY = "head_config"


class AnomalyHeadModule(L.LightningModule):
    """The head (trained) on a frozen EoMT (not trained, not checkpointed).

    Args:
        eomt: the frozen ``EomtForUniversalSegmentation``, or a ``build_eomt`` source (hub id,
            ``save_pretrained`` folder, checkpoint file; what a YAML config names, recorded as
            ``eomt_checkpoint``). It is held outside the module's sub-modules, so Lightning
            neither trains it, nor switches it to train mode, nor writes it into checkpoints (nor
            DDP synchronises it: every process reads the same weights); it is moved to the
            training device when training starts and back when it ends. Its masked attention is
            switched off, as for evaluation.
        variant: ``"stats"`` or ``"hybrid"`` (``models.anomaly_head``).
        pos_weight: weight of outlier pixels in the BCE (seed 001: 10).
        lr, weight_decay, poly_power: AdamW on the head's parameters with a per-step poly schedule.
        eomt_checkpoint: where the frozen EoMT came from (recorded, so that a resume on another
            EoMT is refused); None when unknown.
        feature_dim: the EoMT width the head was built for (stored; checked when given back).

    Batches: ``{"image": uint8 [B, 3, S, S], "outlier_mask": uint8 [B, S, S], ...}``.
    """

    def __init__(
        self,
        eomt: EomtForUniversalSegmentation | str | Path,
        variant: str = "stats",
        *,
        max_steps: int = 1000,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        poly_power: float = 0.9,
        pos_weight: float = 10.0,
        dropout: float = 0.1,
        seed: int | None = None,
        eomt_checkpoint: str | None = None,
        feature_dim: int | None = None,
    ):
        super().__init__()
        if isinstance(eomt, (str, Path)):
            eomt, _, source = _as_eomt(eomt)
            eomt_checkpoint = eomt_checkpoint or source
        if not isinstance(eomt, EomtForUniversalSegmentation):
            raise TypeError(
                "AnomalyHeadModule needs a transformers EomtForUniversalSegmentation, got "
                f"{type(eomt).__name__}."
            )
        if int(max_steps) < 1:
            raise ValueError(
                "AnomalyHeadModule: max_steps sets the poly schedule's length and must be >= 1, "
                f"got {max_steps}."
            )
        if float(pos_weight) <= 0:
            raise ValueError(
                f"AnomalyHeadModule: pos_weight must be > 0 (seed 001: 10), got {pos_weight}."
            )
        if feature_dim is not None and int(feature_dim) != int(eomt.config.hidden_size):
            raise ValueError(
                f"AnomalyHeadModule: feature_dim={feature_dim} (stored with a head trained on "
                f"another EoMT) but this EoMT is {eomt.config.hidden_size} wide; a head reads one "
                "model's outputs and does not transfer."
            )
        self.save_hyperparameters(ignore=["eomt"])
        self.hparams["feature_dim"] = int(eomt.config.hidden_size)
        self.head = build_anomaly_head(variant, eomt.config.hidden_size, dropout)
        self.__dict__["eomt"] = zero_attn_mask_probs(eomt.eval())  # bypasses nn.Module registration
        self._home_device: torch.device | None = None
        self._frozen_checksum: torch.Tensor | None = None

    def export_weights(self, ckpt: str | Path, out_dir: str | Path) -> Path:
        """The head of ``ckpt`` as ``out_dir/head.safetensors`` (``load_anomaly_head`` reads it)."""
        return export_anomaly_head(ckpt, Path(out_dir) / HEAD_FILE)

    # ------------------------------------------------------------------ frozen EoMT
    @torch.no_grad()
    def frozen_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 ``[B, 3, S, S]`` -> EoMT's class map ``[B, C, S, S]`` and, for a hybrid head,
        the patch features ``[B, D, g, g]`` (both float32 of float16-rounded values), no grad."""
        self.eomt.eval()
        out = self.eomt(pixel_values=normalize(images))
        masks = F.interpolate(
            out.masks_queries_logits.half().float(), size=images.shape[-2:], mode="bilinear"
        )
        class_map = per_pixel_logits(masks, out.class_queries_logits.float())
        features = None
        if self.head.needs_features:
            features = patch_features(self.eomt, out.last_hidden_state).half().float()
        return class_map, features

    def frozen_checksum(self) -> torch.Tensor:
        """Per-parameter sums of EoMT's weights (float64 ``[P]``): equal before and after
        training."""
        return torch.stack([p.detach().double().sum() for p in self.eomt.parameters()]).cpu()

    def on_train_start(self) -> None:
        self._home_device = next(self.eomt.parameters()).device
        self.eomt.to(self.device)
        self._frozen_checksum = self.frozen_checksum()

    def on_train_end(self) -> None:
        if self._frozen_checksum is not None and not torch.equal(
            self.frozen_checksum(), self._frozen_checksum
        ):
            raise RuntimeError(
                "The frozen EoMT's weights changed while the anomaly head trained; only the head "
                "may learn. Something outside AnomalyHeadModule updated the model passed to it (a "
                "shared optimiser?)."
            )

    def teardown(self, stage: str) -> None:
        if self._home_device is not None:
            self.eomt.to(self._home_device)

    # ------------------------------------------------------------------ training
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` -> anomaly logits ``[B, 1, S, S]``."""
        class_map, features = self.frozen_outputs(images)
        return self.head(class_map, features)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.hparams.seed is not None:
            # dropout draws from torch's global generator: seeding it by step makes a resumed run
            # drop the same units as an uninterrupted one
            torch.manual_seed((self.hparams.seed * 6_700_417 + self.global_step) % 2**63)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if "outlier_mask" not in batch:
            raise KeyError(
                "AnomalyHeadModule: the batch has no 'outlier_mask'; train on Outlier Exposure "
                "frames (CityscapesDataModule with "
                "sample_transform=data.mix_ood.paste_outliers(...), as train_anomaly_head builds "
                "them)."
            )
        logits = self(batch["image"])
        loss = anomaly_head_loss(logits, batch["outlier_mask"], pos_weight=self.hparams.pos_weight)
        mask = batch["outlier_mask"]
        self.log("train_loss", loss, prog_bar=True)
        self.log("outlier_fraction", (mask == 1).sum() / (mask != 255).sum().clamp(min=1))
        self.log("lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            self.head.parameters(), lr=hp.lr, weight_decay=hp.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, WarmupPoly(0, 0, hp.max_steps, hp.poly_power)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# ----------------------------------------------------------------------------- entry points
def _as_eomt(source) -> tuple[EomtForUniversalSegmentation, torch.device | None, str | None]:
    """(model, device of the segmenter or None, checkpoint label or None)."""
    if isinstance(source, EomtSegmenter):
        return source.model, source.device, source.checkpoint
    if isinstance(source, EomtForUniversalSegmentation):
        return source, None, None
    if isinstance(source, (str, Path)):
        return build_eomt(source, for_eval=True), None, str(source)
    raise TypeError(
        "train_anomaly_head needs the frozen EoMT as an EomtSegmenter, an "
        "EomtForUniversalSegmentation or a build_eomt source (folder, checkpoint file, hub id); "
        f"got {type(source).__name__}."
    )


def _check_resumable(
    last: Path, feature_dim: int, eomt_checkpoint: str | None, config: HeadConfig
) -> None:
    """Refuse to resume a ``last.ckpt`` of another head: other variant or EoMT width, another
    EoMT, or other ``HeadConfig`` settings (loss or pastes: resuming would mix two experiments)."""
    hp = torch.load(last, map_location="cpu", weights_only=True).get("hyper_parameters", {})
    saved = {k: hp.get(k) for k in ("variant", "feature_dim")}
    if saved != {"variant": config.variant, "feature_dim": feature_dim}:
        raise CheckpointError(
            f"{last} belongs to an anomaly head with {saved}, not variant={config.variant!r} on a "
            f"{feature_dim}-wide EoMT, so it cannot be resumed. Give each variant its own out_dir, "
            "or pass resume=False to start over."
        )
    saved_eomt = hp.get("eomt_checkpoint")
    if saved_eomt and eomt_checkpoint and saved_eomt != eomt_checkpoint:
        raise CheckpointError(
            f"{last} is a head trained on the EoMT {saved_eomt!r}, but the EoMT given now is "
            f"{eomt_checkpoint!r}: a head reads one model's class maps and does not transfer. Use "
            "another out_dir, or resume=False to start over."
        )
    stored = hp.get(HEAD_CONFIG_KEY)
    if (
        stored is None
    ):  # written before the settings were recorded: only the loss settings can be compared
        stored = {k: hp[k] for k in ("pos_weight", "weight_decay") if k in hp}
    now = asdict(config)
    diff = {k: (stored[k], now[k]) for k in stored if k in now and stored[k] != now[k]}
    if diff:
        raise CheckpointError(
            f"{last} is a head trained with other settings (checkpoint vs now: {diff}); resuming "
            "would mix two experiments. Use another out_dir for these settings, or resume=False "
            "to start this folder over."
        )


def train_anomaly_head(
    eomt: EomtSegmenter | EomtForUniversalSegmentation | str | Path,
    data_root: str | Path,
    coco_root: str | Path,
    out_dir: str | Path,
    train: TrainSettings | None = None,
    config: HeadConfig | None = None,
    *,
    benchmarks_root: str | Path | None = None,
) -> Path:
    """Train an anomaly head on the frozen EoMT with Outlier Exposure frames; returns the
    ``head.safetensors`` path (``load_anomaly_head`` reads it).

    Args:
        eomt: the frozen EoMT: an ``EomtSegmenter`` (``train.accelerator`` None trains on its
            device), a model, or a ``build_eomt`` source. It is never updated.
        data_root: Cityscapes-layout folder; its ``train`` split is used (never a benchmark).
        coco_root: COCO folder with the objects prepared by ``prepare_coco_ood`` (``OODObjects``).
        out_dir: ``last.ckpt``, ``logs/`` and ``head.safetensors`` go here; one folder per variant.
        train: the shared settings (``TrainSettings``; fields left at None take the head's recipe,
            ``RECIPE_DEFAULTS["anomaly_head"]``: 1000 steps, batch 8, lr 1e-3). Crops are squares of
            EoMT's window size (``config.image_size``; its position embeddings take no other), so
            ``crop_size`` may only restate it; scale jitter is relative to ``base_size``, by default
            a frame at evaluation scale. ``resume`` continues ``out_dir/last.ckpt`` up to
            ``max_steps`` (a finished run is not retrained); the data stream and dropout are
            functions of the step, so the result equals an uninterrupted run's. A checkpoint of
            another ``HeadConfig`` (variant, loss or paste settings) or EoMT is refused.
        config: the head's own settings (``HeadConfig``: variant, ``pos_weight``, the paste
            settings ``ood_prob``, ``road_only``, ``perspective_scale``, ``object_scale``).
            Objects are pasted with ``data.mix_ood.paste_outliers``, as Outlier Exposure pastes.
        benchmarks_root: the benchmarks the head will be evaluated on: training refuses to start
            (``LeakageError`` naming the files) when the training frames or COCO images hold one
            of their frames (``data.leakage``; hashes cached in ``out_dir/leakage_check.json``).
            None skips the check.
    """
    config = config or HeadConfig()
    if config.variant not in VARIANT_SCORES:
        raise ValueError(
            f"train_anomaly_head: unknown variant {config.variant!r}; expected one of "
            f"{list(VARIANT_SCORES)}."
        )
    data_root, out_dir = Path(data_root), Path(out_dir)
    if not (data_root / "leftImg8bit" / "train").is_dir():
        raise FileNotFoundError(
            "train_anomaly_head trains on the train split of a Cityscapes-layout folder, but "
            f"{data_root / 'leftImg8bit' / 'train'} does not exist. Pass the folder holding "
            "leftImg8bit/ and gtFine/ (workspace.cityscapes), never a benchmark's frames: the "
            "head must not see the data it is evaluated on."
        )
    train = (
        (train or TrainSettings())
        .with_defaults(RECIPE_DEFAULTS["anomaly_head"])
        .checked("train_anomaly_head")
    )
    L.seed_everything(
        train.seed, workers=True, verbose=False
    )  # before building: the head's initial weights depend on it
    model, seg_device, eomt_checkpoint = _as_eomt(eomt)
    size = model.config.image_size
    train.square_crop(size, "train_anomaly_head")
    out_dir.mkdir(parents=True, exist_ok=True)
    guard_training_data(
        data_root,
        coco_root,
        benchmarks_root,
        "train_anomaly_head's training data",
        out_dir / LEAKAGE_CACHE,
    )
    last = out_dir / "last.ckpt"
    if train.resume and last.is_file():
        _check_resumable(last, int(model.config.hidden_size), eomt_checkpoint, config)
    # the data module a config names (configs/anomaly_head_*.yaml): OE's pasting, no validation
    data = EomtOEDataModule(
        data_root,
        size,
        coco_root,
        ood_prob=config.ood_prob,
        oe_road_only=config.road_only,
        oe_perspective_scale=config.perspective_scale,
        object_scale=config.object_scale,
        with_val=False,
        **train.stream_settings(),
    )
    module = AnomalyHeadModule(
        model,
        config.variant,
        max_steps=train.max_steps,
        lr=train.lr,
        weight_decay=config.weight_decay,
        pos_weight=config.pos_weight,
        seed=train.seed,
        eomt_checkpoint=eomt_checkpoint,
    )
    module.hparams[HEAD_CONFIG_KEY] = asdict(
        config
    )  # plain values: checkpoints are read with weights_only=True
    _, exported = fit_and_export(
        module,
        data,
        out_dir,
        train,
        export_anomaly_head,
        out_dir / HEAD_FILE,
        name="anomaly_head",
        has_val=False,
        follow_device=seg_device,
        run_config={"anomaly_head": asdict(config)},
    )
    return exported


def export_anomaly_head(ckpt: str | Path, path: str | Path) -> Path:
    """Write the head of a ``train_anomaly_head`` checkpoint as safetensors
    (``save_anomaly_head``)."""
    obj, hp = read_training_checkpoint(ckpt, "train_anomaly_head")
    if "variant" not in hp or "feature_dim" not in hp:
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} has no anomaly-head hyper-parameters (variant, "
            "feature_dim); expected a last.ckpt written by train_anomaly_head / AnomalyHeadModule."
        )
    head = build_anomaly_head(hp["variant"], hp["feature_dim"], hp.get("dropout", 0.1))
    state = {
        k.removeprefix("head."): v for k, v in obj["state_dict"].items() if k.startswith("head.")
    }
    fit_state_dict(head, state, source=ckpt)
    return save_anomaly_head(head, path)
