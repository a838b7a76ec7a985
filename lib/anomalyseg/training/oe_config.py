"""Outlier Exposure settings, with seed 000's names (``eomt_base_640_oe.yaml``; REFERENCE §6).

Two named recipes (``OE_RECIPES``, ``OEConfig.recipe``): ``rba``, the default (RbA: only the class
and mask heads fine-tune, masked attention stays off), and ``seed000`` (seed 000's
``eomt_base_640_oe.yaml``: the whole network fine-tunes while masked attention is annealed block
by block over steps 1401-2801, 3501-4902 and 5602-7000, AdamW weight decay 0.05, COCO objects
from val2017). Both use lr 1e-4 (``finetune_oe``'s ``lr``); RbA trains about 2000 steps at batch
16, seed 000 10 epochs (its annealing ends at step 7000, so ``max_steps`` >= 7000).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields, replace

from ..labels import NUM_CLASSES
from ..losses import (
    OUTLIER_LOSS_FUNCS,
    OUTLIER_TARGETS,
    SCORE_NORMS,
    outlier_score_landmarks,
    outlier_score_range,
)

TRAINABLE = ("heads", "all")
COCO_SPLITS = ("train", "val")
# Targets whose squared hinge reads the two thresholds (max_logit uses its margin instead).
THRESHOLD_TARGETS = ("rba", "energy", "softmax_entropy")
# Names of earlier versions, read from stored checkpoints and oe_config.json files.
LEGACY_NAMES = {"loss_type": "outlier_loss_func", "score": "outlier_loss_target"}
# Seed 000's name of RbA's score, accepted where a config is read (the package calls it ``rba``).
TARGET_ALIASES = {"nls": "rba"}

OE_RECIPES: dict[str, dict] = {
    "rba": {},
    "seed000": dict(
        trainable="all",
        attn_mask_annealing_enabled=True,
        attn_mask_annealing_start_steps=(1401, 3501, 5602),
        attn_mask_annealing_end_steps=(2801, 4902, 7000),
        weight_decay=0.05,
        coco_split="val",
    ),
}


def threshold_range_text(target: str, score_norm: str, num_classes: int = NUM_CLASSES) -> str:
    """One sentence: where ``target``'s score lies and where two reference pixels fall in it."""
    lo, hi = outlier_score_range(target, score_norm, num_classes)
    marks = outlier_score_landmarks(target, score_norm, num_classes)
    name = f"{target}" + (f" with score_norm={score_norm!r}" if target == "rba" else "")
    return (
        f"the {name} score lies in [{lo:.4g}, {hi:.4g}] for EoMT's class map (L_c >= 0, "
        f"{num_classes} classes); a pixel one class claims fully (L_c = 1) scores "
        f"{marks['claimed']:.4g}, an unclaimed one (L = 0) {marks['unclaimed']:.4g}"
    )


@dataclass
class OEConfig:
    """Every Outlier Exposure setting of a run, with seed 000's names.

    Loss side (``model.init_args`` in seed 000): ``outlier_loss_enabled``; ``outlier_weight``
    (weight of ``outlier_loss`` in the total); ``outlier_loss_target`` (the score the loss shapes:
    ``rba``, which seed 000 calls ``nls`` and which is accepted here, ``energy``,
    ``softmax_entropy``, or Mask2Anomaly's ``max_logit``); ``score_norm`` (``rba`` only: ``tanh``
    is RbA, ``sigmoid``, ``none``); ``outlier_loss_func`` (``squared_hinge`` or
    ``binary_cross_entropy``); ``inlier_upper_threshold`` / ``outlier_lower_threshold`` (t_in /
    t_out of the squared hinge; each must lie in the target's range, see below); ``margin``
    (``max_logit`` only). Formulas: ``anomalyseg.losses.outlier_loss``.

    Threshold ranges (``losses.outlier_score_range``, 19 classes, ``L_c >= 0``): ``rba``+``tanh``
    [-19, 0] (in practice [-19 tanh 1, 0] = [-14.47, 0]: seed 000's -0.75 / -0.10);
    ``rba``+``sigmoid`` [-19, -9.5]; ``rba``+``none`` and ``max_logit`` (-inf, 0]; ``energy``
    (-inf, -log 19 = -2.944], unbounded below; ``softmax_entropy`` [0, log 19 = 2.944]. A
    threshold outside its target's range is an error: that hinge could never be met.

    Data side (``data.init_args``): ``oe_enabled``, ``ood_prob``, ``oe_road_only``,
    ``oe_perspective_scale`` (passed to ``MixOOD``), ``coco_split`` (the COCO split the objects
    come from: ``train`` 2017, RbA; ``val`` 2017, seed 000).

    Optimisation: ``trainable`` (``heads``: class and mask heads only, RbA's recipe; ``all``: the
    whole network), ``weight_decay`` (AdamW), ``attn_mask_annealing_enabled`` with
    ``attn_mask_annealing_start_steps`` / ``_end_steps`` (one step per query block; None: the
    upstream schedule scaled to the run, see ``training.oe.oe_annealing_steps``).

    Raises ``ValueError`` with the setting's name for any value out of range.
    """

    outlier_loss_enabled: bool = True
    outlier_weight: float = 1.0
    outlier_loss_target: str = "rba"
    score_norm: str = "tanh"
    outlier_loss_func: str = "squared_hinge"
    inlier_upper_threshold: float = -0.75
    outlier_lower_threshold: float = -0.10
    margin: float = 1.0
    oe_enabled: bool = True
    ood_prob: float = 0.2
    oe_road_only: bool = False
    oe_perspective_scale: bool = False
    coco_split: str = "train"
    trainable: str = "heads"
    weight_decay: float = 0.05
    attn_mask_annealing_enabled: bool = False
    attn_mask_annealing_start_steps: tuple[int, ...] | None = None
    attn_mask_annealing_end_steps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"OEConfig.{f.name} must be true or false, got {value!r}.")
            if f.type == "float":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                ):
                    raise ValueError(f"OEConfig.{f.name} must be a finite number, got {value!r}.")
                setattr(self, f.name, float(value))
        self.outlier_loss_target = TARGET_ALIASES.get(
            self.outlier_loss_target, self.outlier_loss_target
        )
        for name, valid in (
            ("outlier_loss_func", OUTLIER_LOSS_FUNCS),
            ("outlier_loss_target", OUTLIER_TARGETS),
            ("score_norm", SCORE_NORMS),
            ("trainable", TRAINABLE),
            ("coco_split", COCO_SPLITS),
        ):
            if getattr(self, name) not in valid:
                extra = (
                    " (seed 000's 'nls' is read as 'rba')" if name == "outlier_loss_target" else ""
                )
                raise ValueError(
                    f"OEConfig.{name}={getattr(self, name)!r} is unknown; expected one of "
                    f"{list(valid)}{extra}."
                )
        if self.outlier_loss_target != "rba" and self.score_norm != "tanh":
            raise ValueError(
                f"OEConfig.score_norm={self.score_norm!r} applies only to "
                f"outlier_loss_target='rba' (seed 000's nls), not to {self.outlier_loss_target!r}; "
                "leave it at 'tanh'."
            )
        if not 0.0 <= self.ood_prob <= 1.0:
            raise ValueError(
                f"OEConfig.ood_prob={self.ood_prob} is a probability per frame; expected a value "
                "in [0, 1] (seed 000: 0.2)."
            )
        if self.outlier_weight < 0:
            raise ValueError(
                f"OEConfig.outlier_weight={self.outlier_weight} must be >= 0 (seed 000: 1.0)."
            )
        if self.weight_decay < 0:
            raise ValueError(
                f"OEConfig.weight_decay={self.weight_decay} must be >= 0 (seed 000 and RbA: 0.05)."
            )
        self._check_thresholds()
        self._check_annealing()

    def _check_thresholds(self) -> None:
        target, norm = self.outlier_loss_target, self.score_norm
        if self.outlier_loss_func != "squared_hinge" or target not in THRESHOLD_TARGETS:
            return  # the thresholds are not read
        lo, hi = outlier_score_range(target, norm, NUM_CLASSES)
        outside = [
            f"{name}={getattr(self, name)}"
            for name in ("inlier_upper_threshold", "outlier_lower_threshold")
            if not lo <= getattr(self, name) <= hi
        ]
        if outside:
            rba_note = (
                " RbA's released thresholds 0 / 5 lie outside it: t_out = 0 gives the same push "
                "(all class mass off pasted pixels), seed 000 uses -0.75 / -0.10."
                if (target, norm) == ("rba", "tanh")
                else ""
            )
            raise ValueError(
                f"OEConfig: {' and '.join(outside)} is out of range for "
                f"outlier_loss_target={target!r}: {threshold_range_text(target, norm)}. A "
                "squared-hinge threshold outside that interval can never be met (the hinge never "
                f"reaches zero, or its term is always zero).{rba_note} Choose thresholds inside "
                f"[{lo:.4g}, {hi:.4g}], inlier_upper_threshold below outlier_lower_threshold."
            )
        typical_lo = -NUM_CLASSES * math.tanh(1.0)
        low = [
            f"{name}={getattr(self, name)}"
            for name in ("inlier_upper_threshold", "outlier_lower_threshold")
            if getattr(self, name) < typical_lo
        ]
        if (target, norm) == ("rba", "tanh") and low:
            warnings.warn(
                f"OEConfig: {', '.join(low)} lies below -{NUM_CLASSES} tanh(1) = {typical_lo:.2f}, "
                "which the rba score reaches only where several queries claim the same class "
                "(some L_c > 1); with one query per class the score stays in [-14.47, 0].",
                UserWarning,
                stacklevel=3,
            )

    def _check_annealing(self) -> None:
        starts, ends = self.attn_mask_annealing_start_steps, self.attn_mask_annealing_end_steps
        if (starts is None) != (ends is None):
            raise ValueError(
                "OEConfig: give both attn_mask_annealing_start_steps and "
                "attn_mask_annealing_end_steps (one step per query block each, seed 000: (1401, "
                "3501, 5602) and (2801, 4902, 7000)), or neither."
            )
        if starts is None:
            return
        try:
            starts, ends = tuple(int(s) for s in starts), tuple(int(e) for e in ends)
        except (TypeError, ValueError):
            raise ValueError(
                f"OEConfig: the annealing steps must be sequences of integers, got {starts!r} and "
                f"{ends!r}."
            ) from None
        if (
            len(starts) != len(ends)
            or not starts
            or any(s < 0 or e < s for s, e in zip(starts, ends))
        ):
            raise ValueError(
                f"OEConfig: attn_mask_annealing_start_steps={list(starts)} and "
                f"_end_steps={list(ends)} must have one step per query block each (same length), "
                "starts >= 0 and every end >= its start."
            )
        self.attn_mask_annealing_start_steps, self.attn_mask_annealing_end_steps = starts, ends

    @classmethod
    def recipe(cls, name: str, **overrides) -> OEConfig:
        """A named recipe of ``OE_RECIPES`` (``rba``, the default; ``seed000``), with ``overrides``
        (settings by name) on top."""
        if name not in OE_RECIPES:
            raise ValueError(
                f"OEConfig.recipe: unknown recipe {name!r}; expected one of {list(OE_RECIPES)}."
            )
        return cls.from_dict({**OE_RECIPES[name], **overrides})

    @classmethod
    def from_dict(cls, settings: dict) -> OEConfig:
        """Build from a plain dict (a YAML section, notebook parameters, a stored checkpoint);
        unknown keys are an error. Names of earlier versions (``loss_type``, ``score``) are read."""
        settings = {LEGACY_NAMES.get(k, k): v for k, v in settings.items()}
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"OEConfig: unknown setting(s) {unknown}; valid settings are {valid}.")
        return cls(**settings)

    def to_dict(self) -> dict:
        """Plain values only (lists for the annealing steps): JSON and ``weights_only``
        checkpoints read it."""
        out = asdict(self)
        for key in ("attn_mask_annealing_start_steps", "attn_mask_annealing_end_steps"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def replace(self, **changes) -> OEConfig:
        """A copy with ``changes``, validated again."""
        return replace(self, **changes)

    def outlier_loss_kwargs(self) -> dict:
        """Keyword arguments for ``anomalyseg.losses.outlier_loss``."""
        return dict(
            outlier_loss_func=self.outlier_loss_func,
            inlier_upper_threshold=self.inlier_upper_threshold,
            outlier_lower_threshold=self.outlier_lower_threshold,
            outlier_loss_target=self.outlier_loss_target,
            score_norm=self.score_norm,
            margin=self.margin,
        )

    def mix_ood_kwargs(self) -> dict:
        """Keyword arguments for ``anomalyseg.data.mix_ood.MixOOD`` (besides the objects)."""
        return dict(
            ood_prob=self.ood_prob,
            road_only=self.oe_road_only,
            perspective_scale=self.oe_perspective_scale,
        )
