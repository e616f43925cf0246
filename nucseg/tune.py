"""`python -m nucseg.tune ckpt_path=... [data=...]`: choose the post-processing on the validation split and
store it in the checkpoint: the calibrate stage (`nucseg.calibrate`) with the search alone. The same search runs
between fit and test with `postprocess=auto`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.calibrate import CalibrationSettings, calibrate
from nucseg.checks import check_config
from nucseg.instances.tuning import OBJECTIVE_TITLES, TUNED_KEYS
from nucseg.models.module import load_module
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.config import CONF_DIR, align_data_with_checkpoint
from nucseg.utils.errors import friendly_errors
from nucseg.utils.extras import check_overrides

log = logging.getLogger(__name__)


def tune(cfg: DictConfig) -> dict[str, Any]:
    """The calibrate stage with the post-processing search alone (`cfg.grid`: the candidates, else the search's
    own), from the values the checkpoint had before any earlier tuning; writes tune.json."""
    check_config(cfg, "tune")
    module = load_module(cfg.ckpt_path)
    align_data_with_checkpoint(cfg, module.hparams)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    out = Path(cfg.paths.output_dir)
    grid = OmegaConf.to_container(cfg.grid) if cfg.get("grid") else None
    settings = CalibrationSettings(run_dir=out, tune=True, tune_max_images=cfg.get("max_val_images"),
                                   tune_grid=grid, tune_from_base=True, uncertainty=False,  # type: ignore[arg-type]
                                   store_tuning=bool(cfg.get("store", True)))
    try:
        result = calibrate(module, datamodule, settings, cfg.ckpt_path)
    except ValueError as exc:
        raise ValueError(f"nucseg.tune: {exc} of {cfg.data.source.get('_target_')} (check data.val_fraction)"
                         ) from exc
    assert result.tuning is not None
    tuned = result.updates["postprocess"]
    atomic_write_text(out / "tune.json", json.dumps({"ckpt_path": str(cfg.ckpt_path), "postprocess": tuned,
                                                     "trials": result.tuning.trials}, indent=2) + "\n")
    return tuned


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="tune")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        tuned = tune(cfg)
    s = tuned["tuned"]
    name = next(k for k in s if k.startswith("val_") and not k.endswith("_base"))  # val_<objective>
    title = OBJECTIVE_TITLES.get(name[4:], name[4:])
    print(f"validation {title} {s[name + '_base']:.4f} -> {s[name]:.4f} on {s['n_val_images']} images with "
          + ", ".join(f"{k}={tuned[k]}" for k in TUNED_KEYS if k in tuned))


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # one line, not a Hydra traceback, when an override needs a missing extra
    main()
