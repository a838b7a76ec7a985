"""Outlier Exposure fine-tuning of EoMT (seed 000 and RbA; REFERENCE §6).

A trained EoMT is fine-tuned on Cityscapes frames into which ``MixOOD`` pastes COCO objects, with
one extra loss term: RbA's ``outlier_loss`` on the per-pixel class map ``L`` of the final
prediction, which pushes ``s = -sum_c tanh(L_c)`` below ``inlier_upper_threshold`` on inlier
pixels and above ``outlier_lower_threshold`` on pasted ones. The usual mask-classification
losses stay on, and pasted pixels belong to no inlier mask (they hold 254 in the target), so
every query also learns to leave them uncovered. By default only the class and mask heads train
(RbA's recipe), so segmentation barely moves.

Every setting has seed 000's name and lives in one ``OEConfig``:

- ``EomtOEModule``: ``EomtModule`` plus ``outlier_weight * outlier_loss(...)`` as ``loss_outlier``.
- ``oe_sample_transform`` / ``oe_datamodule``: the data side, the project's one pasting wrapper
  (``data.mix_ood.paste_outliers``, which the anomaly head uses too) with the config's settings,
  after the train transforms of ``EomtDataModule`` (whose step-indexed stream makes a resumed run
  draw the same crops and pastes); every item carries an
  ``outlier_mask`` (0 / 255 without a paste). Objects keep their size relative to the scene when
  the model sees the frames smaller than they are stored (``object_scale``).
- ``ensure_ood_objects``: ``prepare_coco_ood`` once; ``pasted_samples``: crops to look at.
- ``finetune_oe``: the whole run with Lightning (progress bar, CSV or Weights & Biases logs,
  ``last.ckpt`` resumed exactly), exported as a ``save_pretrained`` folder for ``load_eomt``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from transformers import EomtForUniversalSegmentation

from ..data.leakage import CACHE_FILE as LEAKAGE_CACHE
from ..data.leakage import guard_training_data
from ..data.mix_ood import PasteOutliers, ScaledObjects, paste_outliers  # noqa: F401  (re-exported)
from ..losses import outlier_loss
from ..models.eomt import EomtSegmenter, build_eomt, per_pixel_logits
from .eomt import (
    EomtDataModule,
    EomtModule,
    annealing_schedule,
    eomt_to_train,
    eval_scale,
    export_eomt,
)
from .oe_config import OE_RECIPES, OEConfig
from .settings import RECIPE_DEFAULTS, TrainSettings, fit_and_export

# The OEConfig settings each side of a YAML config holds, under seed 000's names: the data module
# (data.init_args) pastes, the module (model.init_args) trains.
DATA_SETTINGS = ("oe_enabled", "ood_prob", "oe_road_only", "oe_perspective_scale", "coco_split")
_MODULE_SETTINGS = tuple(
    f.name for f in dataclasses.fields(OEConfig) if f.name not in DATA_SETTINGS
)

OE_CONFIG_FILE = "oe_config.json"


def oe_annealing_steps(
    config: OEConfig, num_blocks: int, max_steps: int
) -> tuple[list[int], list[int]] | None:
    """Per-block (starts, ends) of the masked-attention annealing of an Outlier Exposure run, or
    None when ``attn_mask_annealing_enabled`` is off (masked attention then stays off).

    Without explicit steps: upstream's schedule scaled to ``max_steps`` (``annealing_schedule``).
    Explicit steps (seed 000: starts 1401/3501/5602, ends 2801/4902/7000) are used as given when
    there is one per query block and they end by ``max_steps``; otherwise they are read as
    fractions of their last end, resampled linearly over the model's blocks and scaled to
    ``max_steps`` (a ``UserWarning`` says so), so that masked attention is off when training ends,
    as the exported model is evaluated without it.
    """
    if not config.attn_mask_annealing_enabled:
        return None
    if config.attn_mask_annealing_start_steps is None:
        return annealing_schedule(num_blocks, max_steps)
    starts, ends = (
        list(config.attn_mask_annealing_start_steps),
        list(config.attn_mask_annealing_end_steps),
    )
    if len(starts) == num_blocks and max(ends) <= max_steps:
        return starts, ends
    total = max(ends)
    at = torch.linspace(0, len(starts) - 1, num_blocks).tolist()

    def resample(steps: list[int]) -> list[int]:
        out = []
        for x in at:
            i = min(int(x), len(steps) - 2) if len(steps) > 1 else 0
            frac = x - i
            value = steps[i] if len(steps) == 1 else steps[i] * (1 - frac) + steps[i + 1] * frac
            out.append(round(value / total * max_steps))
        return out

    new_starts, new_ends = resample(starts), resample(ends)
    warnings.warn(
        f"Outlier Exposure: the masked-attention annealing steps {starts} -> {ends} are for "
        f"{len(starts)} query blocks and a run of at least {total} steps; this run has "
        f"{num_blocks} blocks and max_steps={max_steps}, so they are scaled to {new_starts} -> "
        f"{new_ends} (same fractions of the run). Set attn_mask_annealing_start_steps / _end_steps "
        "in the OEConfig to choose them yourself.",
        UserWarning,
        stacklevel=2,
    )
    return new_starts, new_ends


def _plain(value):
    """Tuples as lists, recursively: stored hyper-parameters compare equal to computed ones."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def as_oe_config(config: OEConfig | dict | None) -> OEConfig:
    """An ``OEConfig`` from itself, a plain dict of settings (``OEConfig.from_dict``) or None
    (defaults)."""
    if config is None:
        return OEConfig()
    if isinstance(config, OEConfig):
        return config
    if isinstance(config, dict):
        return OEConfig.from_dict(config)
    raise TypeError(
        "Outlier Exposure settings must be an OEConfig or a dict of its fields, got "
        f"{type(config).__name__}."
    )


# ----------------------------------------------------------------------------- loss
class EomtOEModule(EomtModule):
    """``EomtModule`` with seed 000's outlier loss, configured by one ``OEConfig``.

    Batches must carry ``outlier_mask`` ``[B, S, S]`` in {0, 1, 255} (``oe_sample_transform``)
    when ``outlier_loss_enabled``. From the config: ``trainable`` (``heads``: class head, mask
    head, upscaling and queries, the ViT frozen; ``all``), ``weight_decay`` and the masked-attention
    annealing (``oe_annealing_steps``; off by default, as the model being fine-tuned was trained to
    run without it; seed 000's recipe switches it back on and anneals it away again).

    Args:
        model, model_config, small_config: as ``EomtModule`` (for a YAML config: the hub id or
            folder of the EoMT to fine-tune).
        oe: an ``OEConfig`` or its dict; stored in the checkpoint's hyper-parameters as a dict.
        recipe, outlier_loss_enabled ... attn_mask_annealing_end_steps: the settings one by one,
            with seed 000's names (``model.init_args`` of a YAML config): ``OEConfig.recipe(recipe
            or "rba", **the ones given)``. Only without ``oe`` (``ValueError`` with both).
        max_steps, lr, llrd, poly_power, warmup_steps, ignore_index, seed: ``EomtModule``'s.
        **kwargs: ``EomtModule``'s other settings, except ``trainable``, ``weight_decay``,
            ``attn_mask_annealing`` and ``annealing_steps``, which the config sets (``ValueError``
            when they disagree with it).

    The data side of the config (``oe_enabled``, ``ood_prob``, ...) belongs to the data module
    (``EomtOEDataModule``); when the trainer sets the module up, the data module's values are
    written into the stored ``oe`` record, so that a checkpoint holds the run's whole config.
    """

    def __init__(
        self,
        model: EomtForUniversalSegmentation | str | Path | None = None,
        *,
        oe: OEConfig | dict | None = None,
        model_config: dict | None = None,
        small_config: dict | None = None,
        max_steps: int = 1000,
        lr: float = 1e-4,
        llrd: float = 0.8,
        poly_power: float = 0.9,
        warmup_steps: Sequence[int] | None = None,
        seed: int | None = None,
        recipe: str | None = None,
        outlier_loss_enabled: bool | None = None,
        outlier_weight: float | None = None,
        outlier_loss_target: str | None = None,
        score_norm: str | None = None,
        outlier_loss_func: str | None = None,
        inlier_upper_threshold: float | None = None,
        outlier_lower_threshold: float | None = None,
        margin: float | None = None,
        trainable: str | None = None,
        weight_decay: float | None = None,
        attn_mask_annealing_enabled: bool | None = None,
        attn_mask_annealing_start_steps: Sequence[int] | None = None,
        attn_mask_annealing_end_steps: Sequence[int] | None = None,
        **kwargs,
    ):
        given = {k: v for k, v in locals().items() if k in _MODULE_SETTINGS and v is not None}
        flat = OEConfig.recipe(recipe or "rba", **given)
        cfg = flat if oe is None else as_oe_config(oe)
        if oe is not None:
            # Settings given both ways (Lightning's CLI hands a checkpoint's stored record back
            # beside the YAML's settings when resuming) must agree.
            named = set(given) | set(OE_RECIPES[recipe or "rba"])
            clash = sorted(k for k in named if getattr(flat, k) != getattr(cfg, k))
            if clash:
                mine = ", ".join(f"{k}={getattr(flat, k)!r}" for k in clash)
                theirs = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in clash)
                raise ValueError(
                    f"EomtOEModule: {mine} given beside oe= (which has {theirs}); set it in the "
                    "OEConfig only (one place for every Outlier Exposure setting). When resuming a "
                    "checkpoint, its stored settings are the run's."
                )
        model = eomt_to_train(model, model_config, small_config)
        steps = oe_annealing_steps(cfg, int(model.config.num_blocks), int(max_steps))
        implied = {
            "attn_mask_annealing": ("attn_mask_annealing_enabled", cfg.attn_mask_annealing_enabled),
            "annealing_steps": ("the annealing steps", steps),
        }
        # a checkpoint's stored values come back (resume); they must agree with the config
        for name, (setting, value) in implied.items():
            stored = kwargs.pop(name, None)
            if stored is not None and value is not None and _plain(stored) != _plain(value):
                raise ValueError(
                    f"EomtOEModule: {name}={stored!r} is set by the OEConfig ({setting}, "
                    f"here {value!r}); set it in the OEConfig only (one place for every "
                    "Outlier Exposure setting)."
                )
        super().__init__(
            model,
            trainable=cfg.trainable,
            weight_decay=cfg.weight_decay,
            max_steps=max_steps,
            lr=lr,
            llrd=llrd,
            poly_power=poly_power,
            warmup_steps=warmup_steps,
            seed=seed,
            attn_mask_annealing=cfg.attn_mask_annealing_enabled,
            annealing_steps=steps,
            **kwargs,
        )
        # Lightning collected this __init__'s arguments too (None for settings not given): the
        # settings live once, in hparams["oe"] (plain values: checkpoints load with weights_only).
        for name in _MODULE_SETTINGS + ("recipe",):
            self.hparams.pop(name, None)
        self.hparams.update(
            trainable=cfg.trainable, weight_decay=cfg.weight_decay, oe=cfg.to_dict()
        )
        self.oe_config = cfg

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data_side = getattr(getattr(self.trainer, "datamodule", None), "oe_settings", None)
        if data_side is not None:
            self.oe_config = self.oe_config.replace(**data_side)
            self.hparams["oe"] = self.oe_config.to_dict()

    def export_weights(self, ckpt: str | Path, out_dir: str | Path) -> Path:
        """``EomtModule.export_weights`` plus ``oe_config.json`` (the run's settings) in it."""
        folder = super().export_weights(ckpt, out_dir)
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
        hp = obj["hyper_parameters"]
        record = {
            "oe": hp["oe"],
            "max_steps": int(hp["max_steps"]),
            "lr": hp["lr"],
            "seed": hp["seed"],
            "global_step": int(obj["global_step"]),
        }
        (folder / OE_CONFIG_FILE).write_text(json.dumps(record, indent=1))
        return folder

    def compute_loss(self, batch: dict, outputs) -> dict[str, torch.Tensor]:
        """``EomtModule``'s terms plus ``loss_outlier`` =
        ``outlier_weight * outlier_loss(L, outlier_mask)`` when ``outlier_loss_enabled``, with
        ``L`` the per-pixel class map of the final prediction at mask resolution (S/4);
        ``outlier_loss`` upsamples its score to the mask's size."""
        losses = super().compute_loss(batch, outputs)
        cfg = self.oe_config
        if not cfg.outlier_loss_enabled:
            return losses
        if "outlier_mask" not in batch:
            raise KeyError(
                "EomtOEModule: outlier_loss_enabled is set but the batch has no 'outlier_mask'. "
                "Build the training data with oe_sample_transform(config, coco_root) as "
                "CityscapesDataModule's sample_transform (finetune_oe does), which adds one to "
                "every item, 0 / 255 where nothing was pasted."
            )
        pixel_logits = per_pixel_logits(outputs.masks_queries_logits, outputs.class_queries_logits)
        term = outlier_loss(pixel_logits, batch["outlier_mask"], **cfg.outlier_loss_kwargs())
        losses["loss_outlier"] = cfg.outlier_weight * term
        return losses


# ----------------------------------------------------------------------------- data
def ensure_ood_objects(
    coco_root: str | Path,
    max_images: int | None = 400,
    seed: int = 0,
    progress: bool = True,
    split: str = "train",
    **prepare_kwargs,
) -> dict:
    """The COCO objects for pasting, prepared once: ``prepare_coco_ood(coco_root, split=split,
    max_images=..., seed=...)`` (``split``: ``OEConfig.coco_split``, 2017) unless its manifest
    shows a complete preparation that already holds exactly that selection (same settings, or every
    candidate kept and ``max_images`` not below their number), in which case the full COCO json is
    not read again. Returns the summary (``kept``...)."""
    from ..data.coco import prepare_coco_ood

    manifest_path = Path(coco_root) / "annotations" / f"ood_seg_{split}2017.json"
    if manifest_path.is_file() and not prepare_kwargs:
        try:
            manifest = json.loads(manifest_path.read_text())
            done, settings, summary = (
                manifest.get("complete"),
                manifest["settings"],
                manifest["summary"],
            )
        except (ValueError, KeyError, TypeError):
            done = False
        if (
            done
            and settings.get("seed") == seed
            and settings.get("min_area") == 1000
            and settings.get("max_area_fraction") == 0.4
        ):
            same = settings.get("max_images") == max_images
            all_kept = summary.get("unused") == 0 and (
                max_images is None or max_images >= summary.get("kept", 0)
            )
            if same or all_kept:
                if progress:
                    print(
                        f"COCO OOD objects: reusing the {summary['kept']} prepared in "
                        f"{manifest_path.parent}"
                    )
                return {
                    **summary,
                    "masks": str(manifest_path.with_suffix("")),
                    "images": str(Path(coco_root) / f"{split}2017_ood_subset"),
                }
    return prepare_coco_ood(
        coco_root,
        split=split,
        max_images=max_images,
        seed=seed,
        progress=progress,
        **prepare_kwargs,
    )


def oe_sample_transform(
    config: OEConfig | dict | None,
    coco_root: str | Path | None,
    object_scale: float = 1.0,
    **overrides,
) -> PasteOutliers:
    """The data side of Outlier Exposure: with ``oe_enabled``, paste objects of
    ``OODObjects(coco_root, config.coco_split)`` (resized by ``object_scale``) with
    ``config.mix_ood_kwargs()`` (``overrides`` replace some, e.g. ``ood_prob=1.0`` to show pastes);
    without, nothing is pasted but every item still gets its ``outlier_mask`` (0, 255 on void), so
    the inlier side of the outlier loss keeps training."""
    cfg = as_oe_config(config)
    if not cfg.oe_enabled:
        return paste_outliers(None)
    if coco_root is None:
        raise ValueError(
            "Outlier Exposure with oe_enabled=True pastes COCO objects, so it needs coco_root: "
            "the folder prepared by prepare_coco_ood (`anomalyseg prepare-coco`). Pass it, or set "
            "oe_enabled=False to train without pasting."
        )
    return paste_outliers(
        coco_root, object_scale, cfg.coco_split, **{**cfg.mix_ood_kwargs(), **overrides}
    )


class EomtOEDataModule(EomtDataModule):
    """``EomtDataModule`` whose training items get COCO objects pasted (``oe_sample_transform``)
    and an ``outlier_mask``: the data of Outlier Exposure and of the anomaly head.

    Args (``data.init_args`` of a YAML config, seed 000's names):
        root: Cityscapes-layout folder; image_size: the EoMT's input size S (S x S crops, jitter
            relative to the frame at evaluation scale); coco_root: the folder prepared by
            ``anomalyseg prepare-coco`` (None only with ``oe_enabled: false``).
        oe_enabled, ood_prob, oe_road_only, oe_perspective_scale, coco_split: the data side of
            ``OEConfig`` (``oe_settings`` hands them to ``EomtOEModule``'s stored record).
        object_scale: resize of the COCO objects; None scales them with the frames
            (``eval_scale``): 1 for EoMT at 1024 on Cityscapes, where objects keep their COCO size
            as in seed 000 and RbA.
        with_val: validate on the ``val`` split when there is one (the head has no validation).
        base_size: the frame size ``(H, W)`` scale jitter is relative to; None: ``eval_scale``.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        coco_root: str | Path | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.5, 2.0),
        oe_enabled: bool = True,
        ood_prob: float = 0.2,
        oe_road_only: bool = False,
        oe_perspective_scale: bool = False,
        coco_split: str = "train",
        object_scale: float | None = None,
        with_val: bool = True,
        base_size: tuple[int, int] | None = None,
    ):
        root = Path(root)
        cfg = OEConfig(
            oe_enabled=oe_enabled,
            ood_prob=ood_prob,
            oe_road_only=oe_road_only,
            oe_perspective_scale=oe_perspective_scale,
            coco_split=coco_split,
        )
        self.oe_settings = {name: getattr(cfg, name) for name in DATA_SETTINGS}
        base_size, frames_scale = eval_scale(root, int(image_size), base_size)
        has_val = with_val and (root / "leftImg8bit" / "val").is_dir()
        scale = frames_scale if object_scale is None else object_scale
        super().__init__(
            root,
            batch_size=batch_size,
            num_workers=num_workers,
            scale_range=scale_range,
            base_size=base_size,
            val_batch_size=1,
            val_split="val" if has_val else None,
            image_size=image_size,
            seed=seed,
            sample_transform=oe_sample_transform(cfg, coco_root, scale),
        )


def oe_datamodule(
    data_root: str | Path,
    coco_root: str | Path | None,
    config: OEConfig | dict | None,
    image_size: int,
    batch_size: int = 16,
    seed: int = 0,
    num_workers: int = 0,
    scale_range: tuple[float, float] = (0.5, 2.0),
    object_scale: float | None = None,
    with_val: bool = True,
    base_size: tuple[int, int] | None = None,
    **paste_overrides,
) -> EomtDataModule:
    """``EomtDataModule`` (resumable step-indexed stream) with ``image_size`` square crops and the
    Outlier Exposure ``sample_transform``.

    As in ``train_eomt``, scale jitter (``scale_range``) is relative to the frame at evaluation
    scale, short side = ``image_size`` (or to ``base_size`` when given). ``object_scale`` resizes
    the COCO objects; None scales them with the frames (``image_size / frame short side``), so that
    an object keeps its size relative to the street scene whatever the model's input resolution: 1
    for EoMT at 1024 on Cityscapes, where objects are pasted at their COCO size as seed 000 and RbA
    do.
    """
    cfg = as_oe_config(config)
    renamed = {"road_only": "oe_road_only", "perspective_scale": "oe_perspective_scale"}
    settings = {name: getattr(cfg, name) for name in DATA_SETTINGS}
    settings.update({renamed.get(k, k): v for k, v in paste_overrides.items()})
    return EomtOEDataModule(
        data_root,
        image_size,
        coco_root,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        scale_range=scale_range,
        object_scale=object_scale,
        with_val=with_val,
        base_size=base_size,
        **settings,
    )


def pasted_samples(
    data_root: str | Path,
    coco_root: str | Path,
    config: OEConfig | dict | None,
    image_size: int,
    n: int = 4,
    seed: int = 0,
    object_scale: float | None = None,
    max_draws: int = 200,
) -> list[dict]:
    """``n`` training items as fine-tuning sees them, each with a pasted object: the config's
    placement rules (road only, perspective) with ``ood_prob`` forced to 1 so that every frame
    tries. Items: ``image`` uint8 [3, S, S], ``target`` (254 = pasted), ``outlier_mask``,
    ``stem``."""
    cfg = as_oe_config(config)
    if not cfg.oe_enabled:
        return []
    data = oe_datamodule(
        data_root,
        coco_root,
        cfg,
        image_size,
        seed=seed,
        object_scale=object_scale,
        with_val=False,
        ood_prob=1.0,
    )
    data.setup("fit")
    g = torch.Generator().manual_seed(seed)
    found = []
    for _ in range(max_draws):
        index = int(torch.randint(len(data.train_set), (1,), generator=g))
        torch.manual_seed(
            int(torch.randint(2**62, (1,), generator=g))
        )  # augmentations draw from the global RNG
        item = data.train_set[index]
        if (item["outlier_mask"] == 1).any():
            found.append(item)
            if len(found) == n:
                break
    return found


# ----------------------------------------------------------------------------- entry point
def _base_model(source) -> EomtForUniversalSegmentation:
    """A private copy of the model to fine-tune (the caller's model, e.g. the 'before' segmenter
    of a notebook, must not change under it)."""
    if isinstance(source, EomtSegmenter):
        source = source.model
    if isinstance(source, EomtForUniversalSegmentation):
        return copy.deepcopy(source).train()
    if isinstance(source, (str, Path)):
        return build_eomt(
            source, for_eval=False
        ).train()  # from_pretrained hands models over in eval mode
    raise TypeError(
        "finetune_oe: eomt must be an EomtForUniversalSegmentation, an EomtSegmenter, or a folder "
        "/ checkpoint file / hub id that build_eomt reads (notebook 02 exports "
        f"<checkpoints>/eomt/model); got {type(source).__name__}."
    )


def _check_resumable(last: Path, config: OEConfig) -> None:
    obj = torch.load(last, map_location="cpu", weights_only=True)
    stored = obj.get("hyper_parameters", {}).get("oe")
    if stored is None:
        raise ValueError(
            f"{last} was not written by finetune_oe (its hyper-parameters hold no Outlier Exposure "
            "settings). Use an empty out_dir for Outlier Exposure fine-tuning, or resume=False to "
            "overwrite it."
        )
    stored = OEConfig.from_dict(
        stored
    ).to_dict()  # a checkpoint of an earlier version may use older names
    if stored != config.to_dict():
        diff = {k: (stored.get(k), v) for k, v in config.to_dict().items() if stored.get(k) != v}
        raise ValueError(
            f"{last} was fine-tuned with other Outlier Exposure settings (checkpoint vs now: "
            f"{diff}); resuming would mix two experiments. Use another out_dir for these settings "
            "(oe_run_dir gives one per setting), or resume=False to start this folder over."
        )


def oe_run_dir(root: str | Path, config: OEConfig | dict | None, **settings) -> Path:
    """``<root>/<8 hex digits>``: one folder per combination of Outlier Exposure settings and
    run ``settings`` (base model, steps, batch...), so changing a parameter never resumes or
    overwrites another experiment, and re-running the same one resumes it."""
    import hashlib

    key = json.dumps(
        {"oe": as_oe_config(config).to_dict(), **{k: str(v) for k, v in settings.items()}},
        sort_keys=True,
    )
    return Path(root) / hashlib.sha1(key.encode()).hexdigest()[:8]


def finetune_oe(
    eomt: EomtForUniversalSegmentation | EomtSegmenter | str | Path,
    data_root: str | Path,
    coco_root: str | Path | None,
    out_dir: str | Path,
    train: TrainSettings | None = None,
    config: OEConfig | dict | None = None,
    *,
    object_scale: float | None = None,
    benchmarks_root: str | Path | None = None,
) -> Path:
    """Fine-tune a trained EoMT with Outlier Exposure; returns the exported ``save_pretrained``
    folder.

    ``eomt``: the EoMT to start from (a model or ``EomtSegmenter``, copied so that the caller's
    stays as it is, or a ``build_eomt`` source). ``train``: the shared settings
    (``TrainSettings``; fields left at None take RbA's recipe, ``RECIPE_DEFAULTS["oe"]``: AdamW
    lr 1e-4 with a poly schedule, 2000 steps at batch 16); ``config``: every Outlier Exposure
    setting (``OEConfig``: by default only the heads train, one COCO object pasted with
    probability ``config.ood_prob``). ``train.crop_size`` may only restate the model's
    ``image_size`` (transformers' EoMT has fixed position embeddings). Objects are resized by
    ``object_scale`` (None: with the frames, see ``oe_datamodule``). ``train.accelerator`` None
    trains on the device of a given ``EomtSegmenter`` (else ``"auto"``).

    Writes into ``out_dir``: ``last.ckpt`` (every ``checkpoint_every_n_steps`` steps, by default
    every 5% of ``max_steps``, and at the end; with ``resume`` a later call continues it up to
    ``max_steps``, drawing exactly the batches, pastes and loss points an uninterrupted run would;
    refused when it was fine-tuned with another ``OEConfig``), logs (``"csv"``:
    ``logs/version_*/metrics.csv`` with ``train_loss_outlier`` beside the mask-classification
    terms; ``"wandb"``: Weights & Biases), and ``model/``, the final weights with
    ``oe_config.json``, which is returned (``load_eomt(path)`` evaluates it). Validation
    (Cityscapes-val mIoU of windowed inference) runs every ``val_every_n_steps`` steps and at the
    end when set; None skips it (evaluate the exported model instead).
    ``benchmarks_root``: the benchmarks the model will be evaluated on; training refuses to start
    (``LeakageError`` naming the files) when the Cityscapes train frames or the COCO images hold
    one of their frames (``data.leakage``; hashes cached in ``out_dir/leakage_check.json``).
    None skips the check. Seed 000's recipe: ``OEConfig.recipe("seed000")``, ``max_steps`` >= 7000.
    """
    cfg = as_oe_config(config)
    data_root, out_dir = Path(data_root), Path(out_dir)
    train = (train or TrainSettings()).with_defaults(RECIPE_DEFAULTS["oe"]).checked("finetune_oe")
    L.seed_everything(train.seed, workers=True, verbose=False)
    model = _base_model(eomt)
    size = model.config.image_size
    train.square_crop(size, "finetune_oe")
    out_dir.mkdir(parents=True, exist_ok=True)
    guard_training_data(
        data_root,
        coco_root if cfg.oe_enabled else None,
        benchmarks_root,
        "finetune_oe's training data",
        out_dir / LEAKAGE_CACHE,
        cfg.coco_split,
    )
    last = out_dir / "last.ckpt"
    if train.resume and last.is_file():
        _check_resumable(last, cfg)
    data = oe_datamodule(
        data_root,
        coco_root,
        cfg,
        size,
        object_scale=object_scale,
        with_val=train.val_every_n_steps is not None,
        **train.stream_settings(),
    )
    module = EomtOEModule(model, oe=cfg, max_steps=train.max_steps, lr=train.lr, seed=train.seed)
    trainer, exported = fit_and_export(
        module,
        data,
        out_dir,
        train,
        export_eomt,
        out_dir / "model",
        name="eomt_oe",
        has_val=data.val_split is not None,
        follow_device=eomt.device if isinstance(eomt, EomtSegmenter) else None,
        run_config={"oe": cfg.to_dict()},
    )
    if trainer.is_global_zero:
        (exported / OE_CONFIG_FILE).write_text(
            json.dumps(
                {
                    "oe": cfg.to_dict(),
                    "max_steps": train.max_steps,
                    "batch_size": train.batch_size,
                    "lr": train.lr,
                    "seed": train.seed,
                    "global_step": int(trainer.global_step),
                },
                indent=1,
            )
        )
    trainer.strategy.barrier()
    return exported
