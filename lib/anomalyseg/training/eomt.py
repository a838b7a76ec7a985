"""Training and fine-tuning EoMT with Lightning, following upstream tue-mps/eomt.

Recipe (upstream ``training/lightning_module.py``): transformers' own mask-classification loss
(Hungarian matching; class 2.0, mask 5.0, dice 5.0, no-object 0.1) on the final prediction and on
every intermediate prediction of the query blocks; AdamW (weight decay 0.05) with layer-wise lr
decay 0.8 over the ViT blocks; a two-stage warm-up (heads first, then the backbone) followed by a
poly schedule (power 0.9); masked attention annealed block by block from 1 to 0 with a polynomial
(power 0.9), so that the trained model runs without it.

Targets: each semantic map ``[H, W]`` becomes one binary mask per class present. Void (255) and
pasted outliers (254) belong to no mask, so every query learns to leave them uncovered.

``train_eomt(eomt, data_root, out_dir, TrainSettings, EomtTrainConfig)`` resumes from
``<out_dir>/last.ckpt`` (``training.settings.fit_and_export``, the one trainer build) and exports a
``save_pretrained`` folder that
``build_eomt`` / ``load_eomt`` read. Subclasses add loss terms by extending ``compute_loss``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import EomtConfig, EomtForUniversalSegmentation

from ..data.cityscapes import CityscapesSegmentation
from ..data.io import read_rgb
from ..labels import IGNORE_INDEX, NUM_CLASSES
from ..metrics import ConfusionMatrix
from ..models.checkpoints import CheckpointError, fit_state_dict
from ..models.dinov2 import DINOV2_PREFIX, eomt_from_dinov2
from ..models.eomt import EomtSegmenter, build_eomt, normalize, scaled_size, small_eomt_config
from .data import CityscapesDataModule, collate, read_training_checkpoint, resume_from
from .settings import RECIPE_DEFAULTS, EomtTrainConfig, TrainSettings, fit_and_export

# Only these train under trainable="heads" (Outlier Exposure fine-tuning): the class head, the
# mask head, the upscaling of patch features for the masks, and the learned queries.
HEAD_PREFIXES = ("class_predictor.", "mask_head.", "upscale_block.", "query.")
# The ViT proper: its parameters warm up after the heads and get layer-wise lr decay.
BACKBONE_PREFIXES = ("embeddings.", "layers.", "layernorm.")


def semantic_to_mask_labels(
    target: torch.Tensor, num_classes: int = NUM_CLASSES
) -> tuple[torch.Tensor, torch.Tensor]:
    """One binary mask per class present in a semantic map.

    ``target`` int ``[H, W]`` (train ids, 255 void, 254 pasted outlier) -> ``mask_labels`` float
    ``[K, H, W]`` and ``class_labels`` int64 ``[K]``, the per-image inputs of transformers' EoMT
    loss. Values ``>= num_classes`` are in no mask.
    """
    classes = torch.unique(target)
    classes = classes[(classes >= 0) & (classes < num_classes)]
    masks = (target[None] == classes[:, None, None]).float()
    return masks, classes.long()


def annealing_schedule(num_blocks: int, max_steps: int) -> tuple[list[int], list[int]]:
    """Per-block (start, end) steps of the masked-attention annealing.

    Upstream's Cityscapes config anneals block i over ``[0.10 + 0.15 i, 0.20 + 0.15 i]`` of
    training (steps 3317..6634, 8292..11609, ... of 33170), the first query block first.
    """
    starts = [round((0.10 + 0.15 * i) * max_steps) for i in range(num_blocks)]
    ends = [round((0.20 + 0.15 * i) * max_steps) for i in range(num_blocks)]
    return starts, ends


def mask_annealing_prob(step: int, start: int, end: int, power: float = 0.9) -> float:
    """Probability of masked attention at ``step``: 1 before ``start``, 0 from ``end`` on, and
    ``(1 - progress) ** power`` in between (upstream ``mask_annealing``)."""
    if step < start:
        return 1.0
    if step >= end:
        return 0.0
    return (1.0 - (step - start) / (end - start)) ** power


class WarmupPoly:
    """lr factor at a step: linear warm-up over ``warmup`` steps after ``delay`` steps of 0, then
    poly decay to 0 at ``total`` (upstream ``TwoStageWarmupPolySchedule``, one stage per group).
    A callable object, so that its settings travel in the scheduler's state dict."""

    def __init__(self, delay: int, warmup: int, total: int, power: float):
        self.delay, self.warmup, self.total, self.power = (
            int(delay),
            int(warmup),
            int(total),
            float(power),
        )

    def __call__(self, step: int) -> float:
        if step < self.delay:
            return 0.0
        if step < self.delay + self.warmup:
            return (step - self.delay) / self.warmup
        done = step - self.delay - self.warmup
        return max(0.0, 1.0 - done / max(1, self.total - self.delay - self.warmup)) ** self.power


class EomtModule(L.LightningModule):
    """EoMT (transformers) trained or fine-tuned on Cityscapes-layout batches.

    Batches: ``{"image": uint8 [B, 3, S, S], "target": int64 [B, S, S]}`` with ``S`` the model's
    ``image_size`` (optionally ``outlier_mask``, used by subclasses). Validation batches hold
    whole frames, run through the windowed inference used for evaluation.

    Args:
        model: an ``EomtForUniversalSegmentation``, an ``EomtConfig``, a ``build_eomt`` source to
            fine-tune (hub id such as ``tue-mps/cityscapes_semantic_eomt_large_1024``, a
            ``save_pretrained`` folder, a checkpoint file: what a YAML config names), or None with
            ``model_config`` or ``small_config``.
        model_config: a complete ``EomtConfig`` dict, as stored in a checkpoint's hyper-parameters.
        small_config: settings of ``small_eomt_config`` (``{}``: the demo's small EoMT), a model
            trained from scratch; the YAML way to ask for a small model.
        trainable: ``"all"``, or ``"heads"`` (class head, mask head, upscaling, queries).
        warmup_steps: (heads, backbone) warm-up; None scales upstream's (500, 1000) to short runs.
        attn_mask_annealing: anneal masked attention from 1 to 0 over ``annealing_steps`` (None:
            ``annealing_schedule``); off keeps it at 0. Default: on for ``"all"``, off for
            ``"heads"``.
    """

    def __init__(
        self,
        model: EomtForUniversalSegmentation | EomtConfig | str | Path | None = None,
        *,
        model_config: dict | None = None,
        small_config: dict | None = None,
        max_steps: int = 1000,
        lr: float = 1e-4,
        llrd: float = 0.8,
        weight_decay: float = 0.05,
        poly_power: float = 0.9,
        warmup_steps: Sequence[int] | None = None,
        trainable: str = "all",
        attn_mask_annealing: bool | None = None,
        annealing_steps: tuple[Sequence[int], Sequence[int]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
    ):
        super().__init__()
        if trainable not in ("all", "heads"):
            raise ValueError(
                f"EomtModule: trainable={trainable!r}; expected 'all' (whole network) or 'heads' "
                f"(only {', '.join(p.rstrip('.') for p in HEAD_PREFIXES)}, for Outlier Exposure "
                "fine-tuning)."
            )
        if int(max_steps) < 1:
            raise ValueError(
                "EomtModule: max_steps sets the schedules' length and must be >= 1, got "
                f"{max_steps}."
            )
        model = eomt_to_train(model, model_config, small_config)
        self.model = model
        blocks = model.config.num_blocks
        if attn_mask_annealing is None:
            attn_mask_annealing = trainable == "all"
        if annealing_steps is None:
            annealing_steps = annealing_schedule(blocks, int(max_steps))
        starts, ends = ([int(s) for s in seq] for seq in annealing_steps)
        if len(starts) != blocks or len(ends) != blocks or any(e < s for s, e in zip(starts, ends)):
            raise ValueError(
                f"EomtModule: annealing_steps={annealing_steps!r}; expected (starts, ends) with "
                f"{blocks} steps each (one per query block, config.num_blocks) and every end >= "
                "its start."
            )
        if warmup_steps is None:
            warmup_steps = (min(500, int(max_steps) // 20), min(1000, int(max_steps) // 10))
        # Plain values only: checkpoints are read back with weights_only=True.
        self.save_hyperparameters(ignore=["model", "model_config", "small_config"])
        self.hparams.update(
            model_config=model.config.to_dict(),
            attn_mask_annealing=bool(attn_mask_annealing),
            annealing_steps=(starts, ends),
            warmup_steps=[int(w) for w in warmup_steps],
        )
        if trainable == "heads":
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(HEAD_PREFIXES))
        # transformers sums the loss of every prediction inside forward; this hook keeps each
        # term so that compute_loss can return them by name.
        self._layer_losses: list[dict[str, torch.Tensor]] = []
        model.criterion.register_forward_hook(lambda _m, _args, out: self._layer_losses.append(out))
        self._val_cm: ConfusionMatrix | None = None

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        crop = getattr(data, "crop_size", None)
        check_window(self.model.config.image_size, crop, type(self).__name__)

    def export_weights(self, ckpt: str | Path, out_dir: str | Path) -> Path:
        """The trained model of ``ckpt`` as ``out_dir/model``, a ``save_pretrained`` folder."""
        return export_eomt(ckpt, Path(out_dir) / "model")

    # ------------------------------------------------------------------ loss
    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        """uint8 ``[B, 3, S, S]`` (and int64 targets ``[B, S, S]``) -> transformers' output."""
        if targets is None:
            return self.model(pixel_values=normalize(images))
        labels = [semantic_to_mask_labels(t, self.model.config.num_labels) for t in targets]
        return self.model(
            pixel_values=normalize(images),
            mask_labels=[m for m, _ in labels],
            class_labels=[c for _, c in labels],
        )

    def compute_loss(self, batch: dict, outputs) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms whose sum is the training loss.

        ``loss_cross_entropy``, ``loss_mask`` and ``loss_dice`` are summed over the final and the
        intermediate predictions, exactly as transformers sums them into ``outputs.loss``.
        ``outputs`` also carries ``masks_queries_logits`` ``[B, Q, S/4, S/4]`` and
        ``class_queries_logits`` ``[B, Q, C+1]`` of the final prediction for extra terms.
        """
        names = self._layer_losses[0].keys()
        return {name: sum(layer[name] for layer in self._layer_losses) for name in names}

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self.hparams.seed is not None:
            # transformers' loss samples its points from torch's global generator: seeding it by
            # step makes a resumed run draw the same points as an uninterrupted one.
            torch.manual_seed((self.hparams.seed * 6_700_417 + self.global_step) % 2**63)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._layer_losses.clear()
        outputs = self(batch["image"], batch["target"])
        losses = self.compute_loss(batch, outputs)
        loss = sum(losses.values())
        self.log("train_loss", loss, prog_bar=True)
        self.log_dict({f"train_{k}": v.detach() for k, v in losses.items()})
        self.log("lr", self.optimizers().param_groups[-1]["lr"])
        return loss

    # ------------------------------------------------------------------ masked attention
    def _anneal(self) -> None:
        probs = self.model.attn_mask_probs
        if not self.hparams.attn_mask_annealing:
            probs.zero_()
            return
        for i, (start, end) in enumerate(zip(*self.hparams.annealing_steps)):
            probs[i] = mask_annealing_prob(self.global_step, start, end, self.hparams.poly_power)

    def on_train_start(self) -> None:
        # A model from from_pretrained (a folder to fine-tune) arrives in eval mode, where
        # transformers' EoMT skips the intermediate predictions and so their loss terms;
        # Lightning keeps the mode it finds.
        self.model.train()
        # a resumed or fine-tuned model starts from the schedule, not from its buffer
        self._anneal()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._anneal()
        for i, p in enumerate(self.model.attn_mask_probs):
            self.log(f"attn_mask_prob_{i}", p)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_cm = ConfusionMatrix(
            num_classes=self.model.config.num_labels, ignore_index=self.hparams.ignore_index
        )

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Masked attention stays as the schedule has it: upstream validates the same way.
        seg = EomtSegmenter(
            self.model, checkpoint="training", device=self.device, masked_attention=True
        )
        for image, target in zip(batch["image"], batch["target"]):
            self._val_cm.update(seg.predict(image).argmax(0), target)

    def on_validation_epoch_end(self) -> None:
        counts = torch.as_tensor(self._val_cm._counts, device=self.device)
        self._val_cm._counts[:] = (
            self.trainer.strategy.reduce(counts, reduce_op="sum").cpu().numpy()
        )
        self.log("val_miou", float(self._val_cm.miou()), prog_bar=True)

    # ------------------------------------------------------------------ optimiser
    def param_groups(self) -> list[dict]:
        """AdamW groups with upstream's layer-wise lr decay: ViT block i gets
        ``lr * llrd ** (L - 1 - i)``, the embeddings as block 0, the final norm, the queries and
        the heads ``lr``. Each group records whether it belongs to the backbone (for warm-up)."""
        hp, n_layers = self.hparams, self.model.config.num_hidden_layers
        groups = []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            depth = 0
            if name.startswith("layers."):
                depth = n_layers - 1 - int(name.split(".")[1])
            elif name.startswith("embeddings."):
                depth = n_layers - 1
            groups.append(
                {
                    "params": [p],
                    "lr": hp.lr * hp.llrd**depth,
                    "name": name,
                    "backbone": name.startswith(BACKBONE_PREFIXES),
                }
            )
        return groups

    def configure_optimizers(self):
        hp = self.hparams
        groups = self.param_groups()
        optimizer = torch.optim.AdamW(
            [{k: v for k, v in g.items() if k != "backbone"} for g in groups],
            lr=hp.lr,
            weight_decay=hp.weight_decay,
        )
        heads_warmup, backbone_warmup = hp.warmup_steps
        heads = WarmupPoly(0, heads_warmup, hp.max_steps, hp.poly_power)
        backbone = WarmupPoly(heads_warmup, backbone_warmup, hp.max_steps, hp.poly_power)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [backbone if g["backbone"] else heads for g in groups]
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# ---------------------------------------------------------------------------- resumable data stream
class StepSampler(DistributedSampler):
    """An endless stream of ``(position, index)``: epoch ``e`` visits the ``n`` items in the order
    ``randperm(n)`` seeded by ``(seed, e)``, and the stream starts at ``start()`` (the number of
    items already trained on, by all processes), read when iteration begins. Which item a step
    sees is then a function of the step alone, so a run resumed at any step continues exactly
    where the interrupted one stopped; Lightning's own epoch bookkeeping cannot promise that after
    a mid-epoch checkpoint.

    Sharded for ``world_size`` processes: process ``rank`` takes the positions ``start() + rank``,
    ``+ world_size``, ... of the one global stream, so N processes at batch B see together, step
    by step, the items one process would see at batch N * B. It is a ``DistributedSampler`` only
    so that Lightning leaves it as it is (Lightning would wrap any other sampler in its own and
    read the endless stream to its end); it has no length, so a training epoch never ends."""

    def __init__(self, n: int, seed: int, start=lambda: 0, rank: int = 0, world_size: int = 1):
        super().__init__(range(int(n)), num_replicas=int(world_size), rank=int(rank), shuffle=False)
        self.n, self.seed, self.start = int(n), int(seed), start

    def __len__(self) -> int:
        raise TypeError("StepSampler is an endless stream; training ends at max_steps")

    def __iter__(self):
        pos = int(self.start()) + self.rank
        while True:
            epoch, index_in_epoch = divmod(pos, self.n)
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            )
            yield pos, int(order[index_in_epoch])
            pos += self.num_replicas


class _SeededItems(Dataset):
    """Seeds torch's generator from ``(seed, position)`` before each item, so that augmentations
    (which draw from it) depend on the position in the stream, not on process or worker state."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        pos, index = key
        torch.manual_seed((self.seed * 7_919 + pos * 104_729 + 1) % 2**63)
        return self.dataset[index]


class EomtDataModule(CityscapesDataModule):
    """``CityscapesDataModule`` whose training loader is the resumable ``StepSampler`` stream
    (one endless epoch; ``max_steps`` ends training), sharded over the trainer's processes.

    Args (besides ``CityscapesDataModule``'s):
        image_size: the EoMT's input size S (``config.image_size``): crops are S x S and, unless
            ``base_size`` is given, scale jitter is relative to the frame at evaluation scale
            (short side S, ``eval_scale``), as ``train_eomt`` trains. None: ``crop_size`` as given.
        seed: seed of the stream's order and of each item's augmentations.
    """

    def __init__(self, *args, image_size: int | None = None, seed: int = 0, **kwargs):
        if image_size is not None:
            kwargs["crop_size"] = (int(image_size), int(image_size))
            if kwargs.get("base_size") is None:
                root = kwargs.get("root", args[0] if args else None)
                kwargs["base_size"] = eval_scale(root, int(image_size))[0]
        super().__init__(*args, **kwargs)
        self.seed = int(seed)

    def _trained_items(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        return trainer.global_step * self.batch_size * trainer.world_size

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        rank, world = self._world()
        return DataLoader(
            _SeededItems(self.train_set, self.seed),
            batch_size=self.batch_size,
            sampler=StepSampler(len(self.train_set), self.seed, self._trained_items, rank, world),
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
        )


def check_window(image_size: int, crop_size, who: str) -> None:
    """``ValueError`` unless the training crops ``crop_size`` (H, W) are the model's
    ``image_size`` square (transformers' EoMT has fixed position embeddings); None passes."""
    if crop_size is not None and tuple(crop_size) != (image_size, image_size):
        raise ValueError(
            f"{who}: the data module crops {tuple(crop_size)} but this EoMT takes only "
            f"{image_size}x{image_size} inputs (config.image_size; its position embeddings are "
            f"fixed). Set data.init_args.image_size: {image_size} in the config."
        )


# ----------------------------------------------------------------------------- entry points
def eval_scale(
    data_root: str | Path, image_size: int, base_size: tuple[int, int] | None = None
) -> tuple[tuple[int, int], float]:
    """``(base_size, scale)``: the size ``(H, W)`` at which a model with ``image_size`` windows sees
    the ``train`` frames of ``data_root`` at evaluation scale (``scaled_size`` of the first
    frame, or ``base_size`` when given), and ``scale = H / frame height``. Training scale jitter is
    relative to ``base_size``; pasted objects are resized by ``scale`` to keep their size relative
    to the scene (the same for Outlier Exposure and the anomaly head)."""
    frame_size = read_rgb(CityscapesSegmentation(data_root, "train").pairs[0][0]).shape[:2]
    base_size = tuple(base_size) if base_size is not None else scaled_size(frame_size, image_size)
    return base_size, base_size[0] / frame_size[0]


def eomt_to_train(
    model=None, model_config: dict | None = None, small_config: dict | None = None
) -> EomtForUniversalSegmentation:
    """The EoMT an ``EomtModule`` trains, from the first of: ``model_config`` (a complete config
    dict: the architecture stored in a checkpoint, which Lightning's CLI hands back beside the
    YAML's ``model`` when resuming with ``--ckpt_path``; the checkpoint then supplies the weights),
    ``model`` (a model, an ``EomtConfig``, or a ``build_eomt`` source: hub id, folder, checkpoint
    file), ``small_config`` (``small_eomt_config`` settings)."""
    if model_config is not None:
        return EomtForUniversalSegmentation(EomtConfig.from_dict(model_config))
    if model is not None and small_config is not None:
        raise ValueError(
            "EomtModule: give one of model (a model, an EomtConfig, or a hub id / folder / "
            "checkpoint to fine-tune) and small_config (settings of small_eomt_config, {} for the "
            "demo's small EoMT), not both."
        )
    if small_config is not None:
        return EomtForUniversalSegmentation(small_eomt_config(**small_config))
    if model is None:
        raise ValueError(
            "EomtModule needs a model: model (a model, an EomtConfig, or a hub id such as "
            "tue-mps/cityscapes_semantic_eomt_large_1024, a save_pretrained folder or a checkpoint "
            "to fine-tune), model_config (a complete EomtConfig dict) or small_config (settings of "
            "small_eomt_config)."
        )
    return _as_model(model)


def eomt_datamodule(
    data_root: str | Path,
    image_size: int,
    train: TrainSettings,
    sample_transform=None,
    with_val: bool = True,
) -> EomtDataModule:
    """The data of an EoMT-based run (EoMT, Outlier Exposure, anomaly head): ``EomtDataModule``'s
    resumable step-indexed stream of ``image_size`` square crops, with ``train``'s batch size,
    workers, seed and scale jitter relative to the frame at evaluation scale (``eval_scale``, or
    ``train.base_size``), ``sample_transform`` after the transforms, and whole ``val`` frames
    (batch 1) for validation when ``with_val`` and the folder has them."""
    data_root = Path(data_root)
    base_size, _ = eval_scale(data_root, image_size, train.base_size)
    has_val = with_val and (data_root / "leftImg8bit" / "val").is_dir()
    return EomtDataModule(
        data_root,
        crop_size=(image_size, image_size),
        batch_size=train.batch_size,
        num_workers=train.num_workers,
        scale_range=train.scale_range,
        base_size=base_size,
        val_batch_size=1,
        sample_transform=sample_transform,
        val_split="val" if has_val else None,
        seed=train.seed,
    )


def _as_model(eomt) -> EomtForUniversalSegmentation:
    if eomt is None:
        return EomtForUniversalSegmentation(small_eomt_config())
    if isinstance(eomt, EomtForUniversalSegmentation):
        return eomt
    if isinstance(eomt, EomtConfig):
        return EomtForUniversalSegmentation(eomt)
    if isinstance(eomt, str) and eomt.startswith(DINOV2_PREFIX):
        return eomt_from_dinov2(eomt)  # upstream's start: DINOv2 through timm
    return build_eomt(eomt, for_eval=False)  # a folder, checkpoint file or hub id to fine-tune


def train_eomt(
    eomt: EomtForUniversalSegmentation | EomtConfig | str | Path | None,
    data_root: str | Path,
    out_dir: str | Path,
    train: TrainSettings | None = None,
    config: EomtTrainConfig | None = None,
) -> Path:
    """Train (or fine-tune) EoMT on the Cityscapes-layout folder ``data_root``.

    ``eomt``: the EoMT to start from: a model (trained in place), an ``EomtConfig`` (None:
    ``small_eomt_config()``), a ``build_eomt`` source (folder, checkpoint file, hub id) to
    fine-tune, or ``"dinov2:<timm model name>[@<weight file>]"`` to start as upstream does from
    DINOv2 weights through timm (``models.dinov2.eomt_from_dinov2``: 1024 windows, patch 16, 200
    queries). ``train``: the shared settings (``TrainSettings``; fields left at None take
    EoMT's recipe, ``RECIPE_DEFAULTS["eomt"]``: 2000 steps, batch 4, lr 1e-4, no workers);
    ``config``: EoMT's own (``EomtTrainConfig``: which parameters train).

    Crops are squares of the model's ``image_size`` (its position embeddings are fixed);
    ``train.crop_size`` may only restate it. Scale jitter is ``train.scale_range`` relative to
    ``train.base_size``, by default the frame at evaluation scale (short side = ``image_size``),
    so training sees objects at the sizes windowed inference shows them. The recipe's lr 1e-4 is
    upstream's, meant for a pretrained backbone; the small config trained from scratch learns
    the embedded scenes faster at 1e-3.

    Writes into ``out_dir``: ``last.ckpt`` (every ``checkpoint_every_n_steps`` steps, by default
    every 5% of ``max_steps``, and at the end; ``resume`` continues it up to ``max_steps``,
    exactly as an uninterrupted run would have gone on), logs, and ``model/``, a
    ``save_pretrained`` folder of the final weights, which is returned (``load_eomt(path)``
    evaluates it). Validation (mIoU of windowed inference on the ``val`` split) runs every
    ``val_every_n_steps`` steps and at the end.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    train = (train or TrainSettings()).with_defaults(RECIPE_DEFAULTS["eomt"]).checked("train_eomt")
    config = config or EomtTrainConfig()
    resume_from(
        out_dir, train.max_steps, train.resume
    )  # refuses a damaged last.ckpt or one past max_steps, before any work
    L.seed_everything(
        train.seed, workers=True, verbose=False
    )  # before building: the initial weights depend on it
    model = _as_model(eomt)
    size = model.config.image_size
    train.square_crop(size, "train_eomt")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = eomt_datamodule(data_root, size, train)
    has_val = data.val_split is not None
    module = EomtModule(
        model, max_steps=train.max_steps, lr=train.lr, trainable=config.trainable, seed=train.seed
    )
    _, exported = fit_and_export(
        module,
        data,
        out_dir,
        train,
        export_eomt,
        out_dir / "model",
        name="eomt",
        has_val=has_val,
        run_config={"eomt": asdict(config)},
    )
    return exported


def export_eomt(ckpt: str | Path, folder: str | Path) -> Path:
    """Write the EoMT of a training checkpoint as a ``save_pretrained`` folder (config.json +
    model.safetensors) that ``build_eomt(folder)`` and ``load_eomt(folder)`` read."""
    obj, hp = read_training_checkpoint(ckpt, "train_eomt")
    config = hp.get("model_config")
    if config is None:
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} has no hyper_parameters['model_config']; expected a "
            "checkpoint written by train_eomt / EomtModule. For an upstream tue-mps/eomt "
            "checkpoint use build_eomt(path) instead."
        )
    model = EomtForUniversalSegmentation(EomtConfig.from_dict(config))
    fit_state_dict(model, obj["state_dict"], source=ckpt)
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    if folder.exists():  # replace as a whole, so a reader never sees a mix of two exports
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    os.replace(tmp, folder)
    return folder
