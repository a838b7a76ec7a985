"""Outlier Exposure settings, with seed 000's names (``eomt_base_640_oe.yaml``; REFERENCE §6)."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields

from ..labels import NUM_CLASSES
from ..losses import LOSS_TYPES, OUTLIER_SCORES

TRAINABLE = ("heads", "all")
# s = -sum_c tanh(L_c) with L in [0, 1] (EoMT's fused map) can only take these values.
NLS_RANGE = (-NUM_CLASSES * math.tanh(1.0), 0.0)


@dataclass
class OEConfig:
    """Every Outlier Exposure setting in one place.

    Loss side (``model.init_args`` in seed 000): ``outlier_loss_enabled``, ``outlier_weight``
    (weight of ``outlier_loss`` in the total), ``inlier_upper_threshold`` / ``outlier_lower_threshold``
    (t_in / t_out of the squared hinge), ``loss_type``, ``score`` and ``margin`` (``max_logit`` only).
    Data side (``data.init_args``): ``oe_enabled``, ``ood_prob``, ``oe_road_only``,
    ``oe_perspective_scale`` (passed to ``MixOOD``). ``trainable``: ``heads`` fine-tunes the class
    and mask heads only (RbA's recipe), ``all`` the whole network.
    """

    outlier_loss_enabled: bool = True
    outlier_weight: float = 1.0
    inlier_upper_threshold: float = -0.75
    outlier_lower_threshold: float = -0.10
    loss_type: str = "squared_hinge"
    score: str = "nls"
    margin: float = 1.0
    oe_enabled: bool = True
    ood_prob: float = 0.2
    oe_road_only: bool = False
    oe_perspective_scale: bool = False
    trainable: str = "heads"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"OEConfig.{f.name} must be true or false, got {value!r}.")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"OEConfig.{f.name} must be a finite number, got {value!r}.")
                setattr(self, f.name, float(value))
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"OEConfig.loss_type={self.loss_type!r} is unknown; expected one of {list(LOSS_TYPES)}.")
        if self.score not in OUTLIER_SCORES:
            raise ValueError(f"OEConfig.score={self.score!r} is unknown; expected one of {list(OUTLIER_SCORES)}.")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"OEConfig.trainable={self.trainable!r} is unknown; expected one of {list(TRAINABLE)}.")
        if not 0.0 <= self.ood_prob <= 1.0:
            raise ValueError(f"OEConfig.ood_prob={self.ood_prob} is a probability per frame; expected a value in [0, 1] (seed 000: 0.2).")
        if self.outlier_weight < 0:
            raise ValueError(f"OEConfig.outlier_weight={self.outlier_weight} must be >= 0 (seed 000: 1.0).")
        lo, hi = NLS_RANGE
        if self.score == "nls" and self.loss_type == "squared_hinge":
            outside = [f"{name}={getattr(self, name)}" for name in ("inlier_upper_threshold", "outlier_lower_threshold")
                       if not lo <= getattr(self, name) <= hi]
            if outside:
                warnings.warn(
                    f"OEConfig: {', '.join(outside)} lies outside [{lo:.2f}, 0], the only values the nls score "
                    f"-sum_c tanh(L_c) can take for EoMT's L in [0, 1] ({NUM_CLASSES} classes), so that hinge never "
                    "reaches zero. RbA's released thresholds 0 / 5 cannot be met there: the outlier term then just "
                    "pushes all class mass off outlier pixels (REFERENCE §6). Seed 000 uses -0.75 / -0.10.",
                    UserWarning,
                    stacklevel=3,
                )

    @classmethod
    def from_dict(cls, settings: dict) -> OEConfig:
        """Build from a plain dict (a YAML section, notebook parameters); unknown keys are an error."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise ValueError(f"OEConfig: unknown setting(s) {unknown}; valid settings are {valid}.")
        return cls(**settings)

    def to_dict(self) -> dict:
        return asdict(self)

    def outlier_loss_kwargs(self) -> dict:
        """Keyword arguments for ``anomalyseg.losses.outlier_loss``."""
        return dict(loss_type=self.loss_type, inlier_upper_threshold=self.inlier_upper_threshold,
                    outlier_lower_threshold=self.outlier_lower_threshold, score=self.score, margin=self.margin)

    def mix_ood_kwargs(self) -> dict:
        """Keyword arguments for ``anomalyseg.data.mix_ood.MixOOD`` (besides the objects)."""
        return dict(ood_prob=self.ood_prob, road_only=self.oe_road_only, perspective_scale=self.oe_perspective_scale)
