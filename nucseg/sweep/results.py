"""What a sweep leaves behind: `optimization_results.yaml` and the best trial as a preset to train again.

`<sweep dir>/best/optuna_best.yaml` is a `# @package _global_` config with the best trial's searched values
(config groups as `override /group: choice` defaults); the sweep's other overrides stay on the command line:

    python -m nucseg.train --config-dir <sweep dir> +best=optuna_best <the sweep's other overrides>
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nucseg.sweep.worker import OUTPUT_DIR, OVERRIDES

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = ["PRESET_GROUP", "PRESET_NAME", "preset_text", "train_again_command", "write_results"]

PRESET_GROUP = "best"
PRESET_NAME = "optuna_best"
# overrides of the sweep itself, not of the trained config
SWEEP_ONLY = ("hparams_search=", "hydra.", "hydra/")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def preset_text(params: dict[str, Any], groups: Iterable[str], header: Sequence[str]) -> str:
    """A `_global_` preset: config groups among `params` as defaults overrides, the rest as nested values."""
    groups = set(groups)
    defaults = [{f"override /{key}": value} for key, value in params.items() if key in groups]
    values = _nest({k: v for k, v in params.items() if k not in groups})
    body: dict[str, Any] = {}
    if defaults:
        body["defaults"] = defaults
    body.update(values)
    lines = ["# @package _global_", *(f"# {line}" if line else "#" for line in header)]
    return "\n".join(lines) + "\n" + (yaml.safe_dump(body, sort_keys=False) if body else "{}\n")


def train_again_command(task: str, fixed: Sequence[str], sweep_dir: str | Path) -> str:
    kept = [o for o in fixed if not o.lstrip("+~").startswith(SWEEP_ONLY)]
    return shlex.join(["python", "-m", task, "--config-dir", str(sweep_dir), f"+{PRESET_GROUP}={PRESET_NAME}",
                       *kept])


def write_results(study: optuna.Study, sweep_dir: str | Path, *, storage: str, fixed: Sequence[str],
                  groups: Iterable[str], task: str = "nucseg.train", metric: str | None = None) -> dict[str, Any]:
    """Write `optimization_results.yaml` (and the preset, when a trial completed) into `sweep_dir`; return the
    results."""
    from optuna.trial import TrialState

    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name, "storage": storage,
                               "direction": study.direction.name.lower(), "metric": metric,
                               "trials": {k: n for k, n in counts.items() if n}}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        log.warning("study %r has no complete trial yet: no best parameters", study.study_name)
        results.update(best_trial=None, best_value=None, best_params={})
    else:
        best = study.best_trial
        overrides = list(best.user_attrs.get(OVERRIDES, []))
        preset = sweep_dir / PRESET_GROUP / f"{PRESET_NAME}.yaml"
        command = train_again_command(task, fixed, sweep_dir)
        plain = shlex.join(["python", "-m", task,
                            *[o for o in fixed if not o.lstrip("+~").startswith(SWEEP_ONLY)], *overrides])
        header = [f"The best trial of Optuna study {study.study_name!r}: trial {best.number}, "
                  f"{metric or 'objective'} = {best.value:.6g} ({storage}).", "Train it again:",
                  f"  {command}", "or, without this file:", f"  {plain}"]
        preset.parent.mkdir(parents=True, exist_ok=True)
        preset.write_text(preset_text(dict(best.params), groups, header))
        results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_overrides=overrides, best_output_dir=best.user_attrs.get(OUTPUT_DIR),
                       preset=str(preset), command=command)
        log.info("best trial %d: %s = %s, %s", best.number, metric or "objective", best.value, " ".join(overrides))
        log.info("preset %s; train it again with:\n  %s", preset, command)
    (sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(results, sort_keys=False))
    return results
