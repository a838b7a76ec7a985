"""Cityscapes as a Lightning data module, for ERFNet and EoMT training.

Batches are ``{"image": uint8 [B, 3, H, W], "target": int64 [B, H, W], "stem": list[str]}``
plus whatever tensors a ``sample_transform`` adds to each item (Outlier Exposure adds
``outlier_mask``). Images stay uint8 until the model's own preprocessing, so each model keeps
its normalisation in one place.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.cityscapes import CityscapesSegmentation
from ..data.transforms import eval_transforms, train_transforms
from ..labels import IGNORE_INDEX

SampleTransform = Callable[[dict], dict]


class _WithSampleTransform(Dataset):
    """Apply a per-item hook after the dataset's own (v2) transforms."""

    def __init__(self, dataset: Dataset, sample_transform: SampleTransform):
        self.dataset, self.sample_transform = dataset, sample_transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        item = self.sample_transform(self.dataset[i])
        if not isinstance(item, dict) or "image" not in item or "target" not in item:
            raise TypeError(
                f"sample_transform {self.sample_transform!r} returned {type(item).__name__}; "
                "expected the item dict it was given ({'image', 'target', 'stem'}), possibly with "
                "added tensors such as 'outlier_mask'."
            )
        return item


def collate(items: list[dict]) -> dict:
    """Stack tensors (tv_tensors become plain tensors) and list everything else, key by key."""
    batch = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack([v.as_subclass(torch.Tensor) for v in values])
        else:
            batch[key] = values
    return batch


class CityscapesDataModule(L.LightningDataModule):
    """Cityscapes train / val loaders with the shared transforms.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/`` (with ``*_gtFine_labelTrainIds.png``).
        crop_size: training crop ``(H, W)``.
        scale_range: scale jitter factors; relative to ``base_size`` when given, else to the frame.
        val_size: validation frames (and labels, nearest) are resized to it; None keeps them
            as stored.
        sample_transform: ``item dict -> item dict`` run on every training item after the
            transforms, e.g. to paste outlier objects and add ``outlier_mask``.
    """

    def __init__(
        self,
        root: str | Path,
        crop_size: tuple[int, int] = (512, 1024),
        batch_size: int = 8,
        num_workers: int = 2,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: tuple[int, int] | None = None,
        hflip: bool = True,
        color_jitter: bool = True,
        val_size: tuple[int, int] | None = None,
        val_batch_size: int | None = None,
        sample_transform: SampleTransform | None = None,
        train_split: str = "train",
        val_split: str | None = "val",
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        if int(batch_size) < 1 or int(num_workers) < 0:
            raise ValueError(
                "CityscapesDataModule: batch_size must be >= 1 and num_workers >= 0, got "
                f"{batch_size} and {num_workers}."
            )
        self.root = Path(root)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.train_split, self.val_split = train_split, val_split
        self.sample_transform = sample_transform
        self.train_transforms = train_transforms(
            crop_size, scale_range, hflip, color_jitter, ignore_index, base_size
        )
        self.val_transforms = eval_transforms(val_size)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            train = CityscapesSegmentation(
                self.root, self.train_split, transforms=self.train_transforms
            )
            self.train_set = (
                _WithSampleTransform(train, self.sample_transform)
                if self.sample_transform
                else train
            )
        if self.val_set is None and self.val_split and stage in (None, "fit", "validate"):
            self.val_set = CityscapesSegmentation(
                self.root, self.val_split, transforms=self.val_transforms
            )

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, sampler: Sampler | None = None
    ) -> DataLoader:
        # Workers are not persistent: they are re-seeded from torch's generator at each epoch,
        # which is what makes an epoch's augmentations reproducible after a resume.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
        )

    def _world(self) -> tuple[int, int]:
        """(rank, world size) of the trainer this module is attached to; (0, 1) without one."""
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation frames; on N processes each gets every N-th frame, none twice (Lightning's
        own sampler would pad the last round with repeats, which a summed confusion matrix would
        count)."""
        self.setup("validate")
        if self.val_set is None:
            return []
        rank, world = self._world()
        sampler = None
        if world > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(
                self.val_set, num_replicas=world, rank=rank, shuffle=False
            )
        return self._loader(self.val_set, self.val_batch_size, shuffle=False, sampler=sampler)


def read_training_checkpoint(ckpt: str | Path, trainer: str) -> tuple[object, dict]:
    """A training ``last.ckpt`` read with ``weights_only=True``, and its ``hyper_parameters``
    (``{}`` when it has none), for the exporters of the trainings. ``trainer`` names the function
    that writes such a checkpoint, for the ``CheckpointError`` raised when the file is missing.
    """
    from ..models.checkpoints import CheckpointError

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise CheckpointError(
            f"checkpoint {str(ckpt)!r} does not exist; expected the last.ckpt written by {trainer}."
        )
    obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    return obj, (obj.get("hyper_parameters", {}) if isinstance(obj, dict) else {})


def resume_from(out_dir: str | Path, max_steps: int, resume: bool = True) -> Path | None:
    """The ``last.ckpt`` in ``out_dir`` that a training of ``max_steps`` steps continues, or None.

    Refused (``CheckpointError``) rather than silently misread: a ``last.ckpt`` that cannot be
    read (truncated by a crash or a full disk; the message names the other checkpoints of the
    folder to resume from), and one already past ``max_steps`` (Lightning would stop at once,
    report ``max_steps`` reached and hand back the longer run's weights).
    """
    from ..models.checkpoints import CheckpointError

    last = Path(out_dir) / "last.ckpt"
    if not resume or not last.is_file():
        return None
    try:  # mmap: reads the step without loading the weights and optimizer state
        step = int(
            torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception as e:
        others = sorted(p.name for p in last.parent.glob("*.ckpt") if p != last)
        hint = (
            f"Resume from another checkpoint of the folder ({', '.join(others)}) by copying it "
            "over last.ckpt, "
            if others
            else "There is no other checkpoint in the folder to resume from; "
        )
        raise CheckpointError(
            f"The training checkpoint {last} cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is truncated or damaged. {hint}or "
            "delete it to train from the start."
        ) from None
    if step > int(max_steps):
        raise CheckpointError(
            f"{out_dir} holds a training run at step {step}, more than the {max_steps} steps "
            f"asked: resuming would return the {step}-step model. Ask for at least {step} steps to "
            f"continue it, use a new output folder to train {max_steps} steps from the start, or "
            "pass resume=False to overwrite it."
        )
    return last


def check_counts(**counts) -> None:
    """Each of ``counts`` (``max_steps=...``, ``batch_size=...``) an integer >= 1, else
    ValueError naming it."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an integer >= 1.")
