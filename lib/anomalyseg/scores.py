"""Pixel anomaly scores. Higher means more anomalous, everywhere.

Every score takes a per-pixel class map ``x`` of shape ``[C, H, W]`` or ``[B, C, H, W]`` (ERFNet
logits ``z`` or EoMT's fused map ``L``, REFERENCE §3-4) and returns ``[H, W]`` or ``[B, H, W]``.
Scores built on a softmax take a ``temperature`` T: ``p = softmax(x / T)``.

``SCORE_TABLE`` is the one list of the project's scores (name, title, function, the models it
applies to, order), as ``labels.BENCHMARKS`` is of the benchmarks: the CLI, the evaluation, the
store's tables, the figures and the notebooks read their score lists and titles from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

# torch is imported where a score is computed: the score table (names, titles) serves the report,
# which reads the store and never needs torch (notebook 06 starts 2-3 s sooner without it).
if TYPE_CHECKING:
    import torch

CLASS_DIM = -3


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise ValueError(
            f"expected a class map of shape [C, H, W] or [B, C, H, W], got {tuple(x.shape)}"
        )
    return x.float()


def msp(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability, as an anomaly score: ``1 - max_c softmax(x / T)_c``."""
    return softmax_scores(x, ("msp",), temperature)["msp"]


def max_logit(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative maximum logit ``-max_c x_c``. The temperature does not change the ranking and is
    ignored, so that a sweep over T can call every score the same way."""
    return -_check(x).amax(dim=CLASS_DIM)


def max_entropy(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax entropy ``-sum_c p_c log p_c`` with ``p = softmax(x / T)``."""
    return softmax_scores(x, ("max_entropy",), temperature)["max_entropy"]


def energy(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``-T logsumexp(x / T)`` (Liu et al. 2020)."""
    return softmax_scores(x, ("energy",), temperature)["energy"]


def softmax_scores(
    x: torch.Tensor,
    names=("msp", "max_entropy", "energy"),
    temperature: float = 1.0,
    msp_form: str = "expm1",
) -> dict[str, torch.Tensor]:
    """MSP, MaxEntropy and Energy from a single ``log_softmax(x / T)`` (the scores of a sweep).

    ``msp_form``: ``"expm1"`` computes MSP as ``-expm1(max_c log p_c)``, exact where p is near 1;
    ``"course"`` as the course does, ``1 - max_c softmax(x / T)_c`` in float32, which rounds
    confident pixels onto a grid of 6e-8 and so ties some of them (its FPR95 moves by ~1e-5).

    ``logsumexp(x / T) = x_c / T - log p_c`` for any class c, so with c the argmax,
    ``energy = -(max_c x_c - T max_c log p_c)``: one softmax per temperature serves all three.
    Returns ``{name: [H, W] or [B, H, W]}`` for the requested ``names``.
    """
    if msp_form not in ("expm1", "course"):
        raise ValueError(f"msp_form must be 'expm1' or 'course', got {msp_form!r}.")
    unknown = set(names) - SOFTMAX_SCORES
    if unknown:
        raise ValueError(
            f"softmax_scores computes {sorted(SOFTMAX_SCORES)}, not {sorted(unknown)}."
        )
    import torch

    x = _check(x)
    logp = torch.log_softmax(x / temperature, dim=CLASS_DIM)
    out = {}
    if "msp" in names or "energy" in names:
        top = logp.amax(dim=CLASS_DIM)
        if "msp" in names and msp_form == "course":
            out["msp"] = 1.0 - torch.softmax(x / temperature, dim=CLASS_DIM).amax(dim=CLASS_DIM)
        elif "msp" in names:
            out["msp"] = -torch.expm1(top)
        if "energy" in names:
            out["energy"] = temperature * top - x.amax(dim=CLASS_DIM)
    if "max_entropy" in names:
        out["max_entropy"] = -(logp.exp() * logp).sum(dim=CLASS_DIM)
    return out


def rba(x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Rejected by All (Nayal et al. 2023): ``-sum_c tanh(L_c)``, meant for mask-classification
    maps ``L`` in [0, 1]; high where no class claims the pixel. T is ignored (no softmax)."""
    return -_check(x).tanh().sum(dim=CLASS_DIM)


def void_prob(z: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ERFNet void classifier: softmax over all 20 channels, probability of the last (void) one."""
    z = _check(z)
    if z.shape[CLASS_DIM] != 20:
        raise ValueError(
            f"void_prob needs ERFNet's 20 channels (19 classes + void), got {z.shape[CLASS_DIM]}"
        )
    return (z / temperature).softmax(dim=CLASS_DIM).select(CLASS_DIM, 19)


Score = Callable[..., "torch.Tensor"]
# The model families a score may apply to, as the CLI names them: ERFNet's per-pixel classification
# and EoMT's mask classification (every EoMT-based segmenter: fine-tuned, with anomaly heads).
MODEL_KINDS = ("erfnet", "eomt")


@dataclass(frozen=True)
class ScoreSpec:
    """One anomaly score of the project, the way ``labels.BenchmarkSpec`` describes a benchmark.

    ``name`` is the field's term, stored in the results' ``score`` column; ``title`` is how tables
    and figures show it. ``function`` maps a class map ``[C, H, W]`` or ``[B, C, H, W]`` to
    ``[H, W]`` or ``[B, H, W]`` (None: a learned score, which the segmenter computes itself through
    ``extra_scores``). ``models``: the ``MODEL_KINDS`` it applies to. ``standard``: evaluated when
    no score list is given (``default_scores``); ``baseline``: one of the course's two baseline
    scores, what a side-by-side of protocols or a figure of maps shows by default.
    ``temperature_sensitive``: its ranking changes with a per-pixel T; ``softmax``: served by
    ``softmax_scores``; ``needs_void``: read from all 20 ERFNet channels, not the 19 classes.
    """

    name: str
    title: str
    function: Score | None
    models: frozenset[str]
    standard: bool = True
    baseline: bool = False
    temperature_sensitive: bool = False
    softmax: bool = False
    needs_void: bool = False

    @property
    def learned(self) -> bool:
        return self.function is None


_BOTH, _EOMT, _ERFNET = frozenset(MODEL_KINDS), frozenset({"eomt"}), frozenset({"erfnet"})
# The one score table, in the course's order (REFERENCE §4), learned scores after the post-hoc ones.
SCORE_TABLE: dict[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec(
            "msp", "MSP", msp, _BOTH, baseline=True, temperature_sensitive=True, softmax=True
        ),
        ScoreSpec("max_logit", "MaxLogit", max_logit, _BOTH, baseline=True),
        ScoreSpec(
            "max_entropy",
            "MaxEntropy",
            max_entropy,
            _BOTH,
            temperature_sensitive=True,
            softmax=True,
        ),
        ScoreSpec("energy", "Energy", energy, _BOTH, temperature_sensitive=True, softmax=True),
        ScoreSpec("rba", "RbA", rba, _EOMT),
        # an option of ERFNet with a trained void channel (REFERENCE §4), not in its default set
        ScoreSpec(
            "void_prob",
            "Void classifier",
            void_prob,
            _ERFNET,
            standard=False,
            temperature_sensitive=True,
            needs_void=True,
        ),
        # the anomaly heads of ``models.anomaly_head`` (``VARIANT_SCORES``) on a frozen EoMT
        ScoreSpec("anomaly_head", "Anomaly head", None, _EOMT, standard=False),
        ScoreSpec("anomaly_head_hybrid", "Anomaly head (hybrid)", None, _EOMT, standard=False),
    )
}
# Views of the table, for the code that reads one property.
SCORE_ORDER = tuple(SCORE_TABLE)
SCORE_TITLES = {name: spec.title for name, spec in SCORE_TABLE.items()}
SCORES: dict[str, Score] = {n: spec.function for n, spec in SCORE_TABLE.items() if not spec.learned}
LEARNED_SCORES = tuple(name for name, spec in SCORE_TABLE.items() if spec.learned)
SOFTMAX_SCORES = frozenset(name for name, spec in SCORE_TABLE.items() if spec.softmax)
TEMPERATURE_SENSITIVE = frozenset(n for n, s in SCORE_TABLE.items() if s.temperature_sensitive)
NEEDS_VOID_CHANNEL = frozenset(name for name, spec in SCORE_TABLE.items() if spec.needs_void)


def model_kind(model) -> str:
    """The ``MODEL_KINDS`` entry of ``model``: ``"erfnet"`` or ``"eomt"`` as given, or a segmenter
    (mask classification, ``supports_class_temperature``, is ``eomt``)."""
    if isinstance(model, str):
        if model not in MODEL_KINDS:
            raise ValueError(
                f"unknown model kind {model!r}; expected one of {list(MODEL_KINDS)} or a segmenter."
            )
        return model
    return "eomt" if getattr(model, "supports_class_temperature", False) else "erfnet"


def applies(score: str, model) -> bool:
    """True when ``score`` is meant for ``model`` (a ``MODEL_KINDS`` name or a segmenter); names
    outside the table (a head under another name) are left to the segmenter."""
    spec = SCORE_TABLE.get(score)
    return spec is None or model_kind(model) in spec.models


def default_scores(model=None) -> tuple[str, ...]:
    """The standard post-hoc scores of ``model`` (a ``MODEL_KINDS`` name or a segmenter), in table
    order: ``msp``, ``max_logit``, ``max_entropy``, ``energy`` and, for EoMT, ``rba``. None: the
    scores that apply to every model (the four without ``rba``)."""
    kinds = set(MODEL_KINDS) if model is None else {model_kind(model)}
    return tuple(
        s.name for s in SCORE_TABLE.values() if s.standard and not s.learned and kinds <= s.models
    )


def baseline_scores() -> tuple[str, ...]:
    """The course's two baseline scores, ``msp`` and ``max_logit`` (REFERENCE §8's first rows)."""
    return tuple(name for name, spec in SCORE_TABLE.items() if spec.baseline)


def score_title(name: str) -> str:
    """How tables and figures show a score (``MSP``, ``RbA``); a name outside the table as it is."""
    spec = SCORE_TABLE.get(name)
    return spec.title if spec is not None else name


def get_score(name: str) -> Score:
    """Look a post-hoc score up by its field name (``msp``, ``max_logit``, ``max_entropy``,
    ``energy``, ``rba``, ``void_prob``); ValueError for any other name."""
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(
            f"unknown anomaly score {name!r}; expected one of {sorted(SCORES)}"
        ) from None
