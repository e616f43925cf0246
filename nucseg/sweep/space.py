"""The search space: Hydra's sweep overrides (`hydra.sweeper.params` and the command line) as optuna
distributions.

    choice(a, b, c)          -> CategoricalDistribution
    range(1, 10, step=2)     -> IntDistribution (FloatDistribution with a float bound or step)
    interval(1e-4, 1e-2)     -> FloatDistribution (IntDistribution for int bounds); tag(log, interval(...)) -> log

Overrides that are not sweeps (`model=unetpp`) are fixed: every trial gets them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nucseg.utils.errors import ConfigError

if TYPE_CHECKING:
    import optuna

__all__ = ["parse_space", "suggest"]


def parse_space(arguments: Sequence[str]) -> tuple[dict[str, optuna.distributions.BaseDistribution], list[str]]:
    """(search space by key, fixed overrides) from override strings; a later override of a key wins."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(arguments))
    except HydraException as exc:
        raise ConfigError(f"hydra.sweeper.params: {exc}") from exc
    space: dict[str, Any] = {}
    fixed: dict[str, str] = {}
    for override in parsed:
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = _distribution(override)
        else:
            fixed[key] = override.input_line or f"{key}={override.get_value_element_as_str()}"
    return space, list(fixed.values())


def _distribution(override: Any) -> optuna.distributions.BaseDistribution:
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep, Transformer
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    value = override.value()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        start, stop, step = float(value.start or 0), float(value.stop or 0), float(value.step or 1)
        ints = not any(isinstance(x, float) for x in (value.start, value.stop, value.step))
        if not ints:
            # Hydra's range excludes `stop`; optuna's high is inclusive
            n = int((stop - start) / step - 1e-9)
            return FloatDistribution(start, start + n * step, step=step)
        n = (int(stop) - int(start) - 1) // int(step)
        return IntDistribution(int(start), int(start) + n * int(step), step=int(step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(float(value.start or 0), float(value.end or 0), log=log)
    raise ConfigError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a sweep optuna can sample; "
                      "expected choice(...), range(...) or interval(...)")


def suggest(trial: optuna.trial.Trial, space: dict[str, optuna.distributions.BaseDistribution]) -> list[str]:
    """Sample every key of `space` for `trial`; the overrides `key=value` that launch it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    overrides = []
    for key, dist in space.items():
        value: Any
        if isinstance(dist, CategoricalDistribution):
            value = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            value = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, FloatDistribution):
            value = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:  # pragma: no cover - parse_space makes only the three
            raise TypeError(f"{key}: unsupported distribution {dist!r}")
        overrides.append(f"{key}={value}")
    return overrides
