"""Typed settings: the string options as enums, and the settings that travel from a config into a checkpoint
and back as frozen dataclasses whose defaults and checks are written once, here.

    config (entry point) ──> UncertaintySettings.from_mapping ──> module hparams ──> checkpoint
    checkpoint (load)    ──> UncertaintySettings.from_mapping ──> sampling, calibrate, Predictor

Each field carries its `Rule` (`nucseg.utils.rules`): the dataclass checks itself with it, and
`nucseg.checks` reads the same rules to check a composed config before any work. The YAML files under
`conf/uncertainty/` state the same defaults for users to read and override (a test keeps them equal); the
library never reads them.

Example:
    >>> s = UncertaintySettings.from_mapping({"method": "mc_dropout", "samples": 8}, has_mc_dropout=True)
    >>> s.method is UncertaintyMethod.MC_DROPOUT, s.samples, s.seed
    (True, 8, 0)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, ClassVar, Literal, TypeVar

from nucseg.utils.rules import UNIT, Rule, either, integer, number, one_of

__all__ = [
    "Blend",
    "CertaintyScore",
    "LEGACY_SCORE",
    "PostprocessMethod",
    "TuneObjective",
    "UncertaintyMethod",
    "UncertaintySettings",
    "WindowSettings",
    "setting_rules",
]

log = logging.getLogger(__name__)

STRIDE = 32  # the networks' input stride (SegmentationModule.pad_multiple): tiles are multiples of it


class _Choice(str, Enum):
    """A string option: compares equal to its value (`UncertaintyMethod.TTA == "tta"`), prints as it."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(m.value) for m in cls)

    @classmethod
    def parse(cls: type[E], value: Any, key: str) -> E:
        """The member named `value`, or a ValueError naming `key` and the choices."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"{key}: expected one of {', '.join(cls.values())}, got {value!r}") from None


E = TypeVar("E", bound=_Choice)


class UncertaintyMethod(_Choice):
    """How `T` probability samples per image are drawn (`nucseg.uncertainty.sampling.sample_probs`)."""

    NONE = "none"
    MC_DROPOUT = "mc_dropout"
    TTA = "tta"
    ENSEMBLE = "ensemble"


class CertaintyScore(_Choice):
    """The per-image certainties of `nucseg.uncertainty.scores.image_scores`; `uncertainty.score` picks the one
    reported as `certainty` and thresholded for review."""

    DICE_AGREEMENT = "dice_agreement"
    ENTROPY = "entropy"
    FG_ENTROPY = "fg_entropy"
    FG_MUTUAL_INFO = "fg_mutual_info"


# what a checkpoint written before `uncertainty.score` existed used (its review threshold is on this scale)
LEGACY_SCORE = CertaintyScore.DICE_AGREEMENT


class PostprocessMethod(_Choice):
    """Probabilities -> instances (`nucseg.instances.watershed.probs_to_instances`): connected components,
    contour-seeded watershed, or whichever the model's outputs allow (`auto`)."""

    AUTO = "auto"
    CC = "cc"
    WATERSHED = "watershed"


class TuneObjective(_Choice):
    """What the post-processing search maximises on the validation images."""

    DSB_SCORE = "dsb_score"
    RAND_F = "rand_f"


class Blend(_Choice):
    """How overlapping sliding-window tiles are blended (`nucseg.inference.sliding_window`)."""

    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


def _rule(ok: Any, expected: str) -> dict[str, Rule]:
    return {"rule": Rule(ok, expected)}


def _check(obj: Any, prefix: str) -> None:
    """Raise one ValueError naming the first field of `obj` that breaks its rule."""
    for f in fields(obj):
        rule = f.metadata.get("rule")
        value = getattr(obj, f.name)
        if rule is not None and value is not None and not rule.ok(value):
            raise ValueError(f"{prefix}{f.name}={value!r}: expected {rule.expected}")


T = TypeVar("T")


def _known(cls: type[Any], values: Mapping[str, Any], prefix: str, strict: bool) -> dict[str, Any]:
    """`values` restricted to the fields of `cls`; an unknown key is an error (`strict`) or a logged warning
    (a checkpoint written by another nucseg version)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and strict:
        raise ValueError(f"{prefix}{unknown[0]}: unknown setting; expected one of {', '.join(sorted(names))}")
    if unknown:
        log.warning("ignoring unknown settings %s", ", ".join(prefix + k for k in unknown))
    return {k: v for k, v in values.items() if k in names}


@dataclass(frozen=True)
class UncertaintySettings:
    """The effective uncertainty settings of a model (`uncertainty.*` in the config and the checkpoint).

    `samples` is `T` for mc_dropout (tta draws one sample per op of `tta_ops`, ensemble one per member).
    `review_threshold` is a certainty below which an image needs review, or "auto" until the calibrate stage
    chooses it on validation (Youden's J with at least `min_val_failures` failures, else the `review_budget`
    share of least certain images).
    """

    method: UncertaintyMethod
    samples: int = field(default=20, metadata=_rule(integer(1), "an integer >= 1"))
    # fixed seed of the random draws, so uncertainty maps are reproducible; None = fresh draws each call
    seed: int | None = field(default=None, metadata=_rule(integer(0), "an integer >= 0, or null"))
    # image copies per forward pass; None = as many as fit a pixel budget (nucseg.uncertainty.sampling)
    batch_size: int | None = field(default=None, metadata=_rule(integer(1), "an integer >= 1"))
    score: CertaintyScore = CertaintyScore.FG_ENTROPY
    failure_dice: float = field(default=0.7, metadata=_rule(number(0, 1), UNIT))
    review_threshold: float | Literal["auto"] = field(
        default="auto", metadata=_rule(either(number(0, 1), one_of("auto")), f"{UNIT}, or auto"))
    min_val_failures: int = field(default=5, metadata=_rule(integer(1), "an integer >= 1"))
    review_budget: float = field(default=0.1, metadata=_rule(number(0, 1), f"a fraction, {UNIT}"))
    ece_bins: int = field(default=15, metadata=_rule(integer(2), "an integer >= 2"))
    # tta: all (8 ops), flips, or a list of op names (nucseg.inference.tta)
    tta_ops: str | tuple[str, ...] = "all"
    # ensemble: checkpoint paths or glob patterns, and whether the model itself is a member
    checkpoints: tuple[str, ...] = ()
    include_self: bool = field(default=True, metadata=_rule(one_of(True, False), "true or false"))

    # per-method defaults over the field defaults (conf/uncertainty/<method>.yaml says the same)
    METHOD_DEFAULTS: ClassVar[dict[UncertaintyMethod, dict[str, Any]]] = {UncertaintyMethod.MC_DROPOUT: {"seed": 0}}

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", UncertaintyMethod.parse(self.method, "uncertainty.method"))
        if self.method is UncertaintyMethod.NONE:
            raise ValueError("uncertainty.method=none has no settings: use None for 'no uncertainty'")
        object.__setattr__(self, "score", CertaintyScore.parse(self.score, "uncertainty.score"))
        if not isinstance(self.tta_ops, str):
            object.__setattr__(self, "tta_ops", tuple(str(o) for o in self.tta_ops))
        paths = [self.checkpoints] if isinstance(self.checkpoints, str) else list(self.checkpoints or ())
        object.__setattr__(self, "checkpoints", tuple(str(p) for p in paths))
        _check(self, "uncertainty.")

    @classmethod
    def for_method(cls, method: UncertaintyMethod | str, **values: Any) -> UncertaintySettings:
        """The defaults of `method`, with `values` over them."""
        m = UncertaintyMethod.parse(method, "uncertainty.method")
        return cls(method=m, **{**cls.METHOD_DEFAULTS.get(m, {}), **values})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None, *, has_mc_dropout: bool = False,
                     strict: bool = False) -> UncertaintySettings | None:
        """The settings `values` (a config's or a checkpoint's `uncertainty` block) give, filled from the
        defaults; None when there is nothing to estimate.

        A model with MC dropout is evaluated with it even when `method` was left at `none` (its dropout is on
        at inference anyway); `mc_dropout` on a model without MC dropout is a configuration error. A block
        without `score` was stored before the key existed: its review threshold is on the `LEGACY_SCORE` scale.
        `strict`: an unknown key is an error (a user's config), else a logged warning (an older checkpoint).
        """
        given = dict(values or {})
        method = UncertaintyMethod.parse(given.pop("method", None) or "none", "uncertainty.method")
        if method is UncertaintyMethod.NONE:
            if not has_mc_dropout:
                return None
            log.info("the model has MC dropout and uncertainty.method=none: evaluating it with mc_dropout")
            method = UncertaintyMethod.MC_DROPOUT
        if method is UncertaintyMethod.MC_DROPOUT and not has_mc_dropout:
            raise ValueError("uncertainty.method=mc_dropout, but the model has no MC dropout: use "
                             "model=bayes_unet or add a model.mc_dropout block ({rate: 0.2, where: decoder}), "
                             "or choose uncertainty.method=tta|ensemble")
        if "score" not in given:
            given["score"] = LEGACY_SCORE
        known = _known(cls, given, "uncertainty.", strict)
        return cls.for_method(method, **{k: v for k, v in known.items() if v is not None or k in _NULLABLE})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (enums as strings, tuples as lists): what a checkpoint and a JSON record store."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = str(v) if isinstance(v, Enum) else list(v) if isinstance(v, tuple) else v
        return out


# keys whose null means something (fresh draws, the pixel budget) rather than "the default"
_NULLABLE = frozenset({"seed", "batch_size"})


@dataclass(frozen=True)
class WindowSettings:
    """Sliding-window prediction of images of any size: square tiles of `tile` pixels overlapping by `overlap`
    (a fraction of a tile), blended by `blend`, `tile_batch_size` tiles per forward pass."""

    tile: int = field(default=512, metadata=_rule(integer(STRIDE, STRIDE),
                                                  f"a positive multiple of {STRIDE} (e.g. 512)"))
    overlap: float = field(default=0.25, metadata=_rule(number(0, 1, hi_open=True),
                                                        "a fraction of a tile, 0 <= overlap < 1 (e.g. 0.25)"))
    blend: Blend = Blend.GAUSSIAN
    tile_batch_size: int = field(default=1, metadata=_rule(integer(1), "an integer >= 1"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "blend", Blend.parse(self.blend, "blend"))
        _check(self, "")

    @classmethod
    def from_values(cls, **values: Any) -> WindowSettings:
        """The defaults with the values that are not None over them."""
        return cls(**{k: v for k, v in values.items() if v is not None})


def _enum_rule(choice: type[_Choice]) -> Rule:
    *head, last = choice.values()
    return Rule(one_of(*choice.values()), f"{', '.join(head)} or {last}")


@functools.cache
def setting_rules() -> dict[str, Rule]:
    """The config keys of the typed settings and their rules (for `nucseg.checks.RULES`; one
    table, built once)."""
    rules = {f"uncertainty.{f.name}": f.metadata["rule"] for f in fields(UncertaintySettings) if "rule" in f.metadata}
    rules["uncertainty.method"] = _enum_rule(UncertaintyMethod)
    rules["uncertainty.score"] = _enum_rule(CertaintyScore)
    rules.update({f.name: f.metadata["rule"] for f in fields(WindowSettings) if "rule" in f.metadata})
    rules["blend"] = _enum_rule(Blend)
    rules["postprocess.method"] = _enum_rule(PostprocessMethod)
    rules["postprocess.objective"] = _enum_rule(TuneObjective)
    return rules
