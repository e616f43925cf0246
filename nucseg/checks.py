"""Check the composed config of an entry point before any work: one table of key -> rule for train, evaluate,
tune and predict.

A value out of range (`tile=100`, `overlap=1.5`) or a path that is not there (`ckpt_path`, `input`) fails
with one `ConfigError` line naming the key, the value and what is expected, before a model is built or an
image read; `friendly_errors` turns it into exit status 2. A key absent from an entry point's config, or null
(= "the default" / "as stored in the checkpoint"), is not checked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nucseg.inference.shards import parse_shard
from nucseg.settings import STRIDE, setting_rules
from nucseg.utils.errors import ConfigError
from nucseg.utils.rules import UNIT, Rule, either, integer, is_int, number, one_of

__all__ = ["RULES", "Rule", "check_config", "violations"]

def _devices(v: Any) -> bool:
    """Lightning's `devices`: a count >= 1, -1 or "auto" (all), a list of device indices or "0,1"."""
    if isinstance(v, str):
        indices = [p.strip() for p in v.split(",") if p.strip()]
        return v in ("auto", "-1") or (bool(indices) and all(p.isdigit() for p in indices))
    if isinstance(v, list | tuple):
        return bool(v) and all(is_int(i) and i >= 0 for i in v)
    return is_int(v) and (v >= 1 or v == -1)


def _device(v: Any) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu", "cuda", "mps") or
                                   (v.startswith("cuda:") and v[5:].isdigit()))


def _file(v: Any) -> bool:
    return isinstance(v, str | Path) and Path(v).is_file()


def _shard(v: Any) -> bool:
    return parse_shard(v) is not None


def _exists(v: Any) -> bool:
    return isinstance(v, str | Path) and Path(v).exists()


# entry points whose ckpt_path is a file to read ("predictor": nucseg.Predictor.from_checkpoint)
_LOADS = frozenset({"predict", "evaluate", "tune", "predictor"})
RULES: dict[str, Rule] = {
    # paths
    "ckpt_path": Rule(_file, "an existing checkpoint file (e.g. <run dir>/checkpoints/model.ckpt)", _LOADS, True),
    "input": Rule(_exists, "an existing image file or folder", frozenset({"predict"}), True),
    "output": Rule(lambda v: not Path(str(v)).is_file(), "a folder (created if missing), not a file",
                   frozenset({"predict", "predict_merge"})),
    "shard": Rule(_shard, "i/n with 0 <= i < n (part i of n of the inputs, e.g. 0/4)", frozenset({"predict"})),
    "overwrite": Rule(one_of(True, False), "true or false", frozenset({"predict"})),
    "merge": Rule(one_of(True, False), "true or false", frozenset({"predict", "predict_merge"})),
    "stack": Rule(one_of(True, False), "true or false", frozenset({"predict"})),
    # sliding-window prediction
    "device": Rule(_device, "auto, cpu, cuda, cuda:<index> or mps"),
    # post-processing and uncertainty
    "postprocess.threshold": Rule(number(0, 1, True, True), f"{UNIT} (exclusive)"),
    "postprocess.contour_threshold": Rule(number(0, 1, True, True), f"{UNIT} (exclusive)"),
    "postprocess.min_size": Rule(integer(0), "an integer >= 0 (pixels)"),
    "postprocess.grow": Rule(one_of(True, False), "true or false"),
    "postprocess.distance_threshold": Rule(number(0, 1), UNIT),
    "ood_threshold": Rule(either(number(0, math.inf, lo_open=True), one_of("off")),
                          "a positive OOD score above which an image is flagged, or off",
                          frozenset({"predict", "predictor"})),
    "module.threshold": Rule(number(0, 1, True, True), f"{UNIT} (exclusive)"),
    "module.train_precision": Rule(lambda v: str(v) in ("32", "bf16", "auto"), "32, bf16 or auto"),
    "module.channels_last": Rule(one_of(True, False), "true or false"),
    "module.encoder_lr_scale": Rule(number(0, math.inf, True, True), "a positive number"),
    # data
    "data.crop_size": Rule(integer(STRIDE, STRIDE), f"a positive multiple of {STRIDE} (e.g. 256)"),
    "data.batch_size": Rule(integer(1), "an integer >= 1"),
    "data.num_workers": Rule(integer(0), "an integer >= 0"),
    "data.val_fraction": Rule(number(0, 1, hi_open=True), "a fraction, 0 <= value < 1"),
    "data.test_fraction": Rule(number(0, 1), "a fraction, 0 <= value <= 1"),
    # trainer and run
    "trainer.devices": Rule(_devices, "a number of devices >= 1, -1 or auto (all), or a list of device indices"),
    "trainer.max_epochs": Rule(either(integer(1), one_of(-1)), "an integer >= 1, or -1 (no limit)"),
    "budget.minutes": Rule(number(0, math.inf, lo_open=True), "a positive number of minutes"),
    "budget.plan": Rule(_file, "an existing budget.json of an earlier run", frozenset({"train"})),
    "budget.replan": Rule(one_of(True, False), "true or false"),
    "overlays.max_images": Rule(integer(0), "an integer >= 0"),
    "overlays.alpha": Rule(number(0, 1), UNIT),
    "overlays.level": Rule(one_of("pixel", "object", "membrane"), "pixel, object or membrane"),
    # the typed settings' own rules (sliding window, uncertainty, option names), written once in nucseg.settings
    **setting_rules(),
}


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, value); a missing value (`???`) reads as (True, '???')."""
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    if not isinstance(node, DictConfig) or leaf not in list(node.keys()):  # `in node` is False for ???
        return False, None
    if OmegaConf.is_missing(node, leaf):
        return True, "???"
    value = node[leaf]
    return True, OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# config groups an entry point instantiates whole: any `???` left in them is a path or value the user must give
# (data=folder's data.root, data=dsb2018_test's data.source.root), named before anything is built
_MANDATORY_GROUPS = {"train": ("data",), "evaluate": ("data",), "tune": ("data",)}


def _missing(node: Any, prefix: str) -> list[str]:
    """Dotted keys of `???` values below `node`."""
    if not isinstance(node, DictConfig):
        return []
    out = []
    for k in map(str, node):
        key = f"{prefix}.{k}"
        if OmegaConf.is_missing(node, k):
            out.append(key)
        elif not OmegaConf.is_interpolation(node, k):
            out += _missing(node[k], key)
    return out


def violations(cfg: DictConfig, entry: str, rules: dict[str, Rule] | None = None) -> list[str]:
    """One message per key of `cfg` whose value breaks its rule, in table order, then one per mandatory
    value left missing in the groups the entry point instantiates."""
    out = []
    for key, rule in (RULES if rules is None else rules).items():
        if rule.entries is not None and entry not in rule.entries:
            continue
        present, value = _select(cfg, key)
        if not present or (value is None and not rule.required):
            continue
        if value == "???" or value is None:
            out.append(f"{key}: missing; expected {rule.expected} (pass {key}=...)")
        elif not rule.ok(value):
            out.append(f"{key}={value!r}: expected {rule.expected}")
    for group in _MANDATORY_GROUPS.get(entry, ()):
        out += [f"{key}: missing; expected a value for this data option (pass {key}=...)"
                for key in _missing(cfg.get(group), group) if key not in (rules or RULES)]
    return out


def check_config(cfg: DictConfig, entry: str) -> None:
    """Raise one `ConfigError` listing every value of `cfg` that breaks its rule (`entry`: train, evaluate,
    tune, predict or predict_merge)."""
    bad = violations(cfg, entry)
    if bad:
        raise ConfigError("; ".join(bad))
