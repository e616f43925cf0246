"""`python -m nucseg.tune ckpt_path=... [data=...]`: choose the post-processing on the validation split and
store it in the checkpoint. The same search runs at the end of training with `postprocess=auto`."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.callbacks.postprocess_tuning import validation_probabilities
from nucseg.data.io import atomic_write_text
from nucseg.instances.tuning import OBJECTIVE_TITLES, TUNED_KEYS, tune_postprocess
from nucseg.models.module import load_module
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.config import CONF_DIR, align_data_with_checkpoint
from nucseg.utils.errors import friendly_errors
from nucseg.utils.validate import check_config

log = logging.getLogger(__name__)


def tune(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg, "tune")
    module = load_module(cfg.ckpt_path)
    align_data_with_checkpoint(cfg, module.hparams)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    loader = datamodule.val_dataloader()
    n = cfg.get("max_val_images")
    probs, labels = validation_probabilities(module, itertools.islice(loader, n) if n else loader)
    if not probs:
        raise ValueError(f"nucseg.tune: the validation split of {cfg.data.source.get('_target_')} has no "
                         "labelled images (check data.val_fraction)")
    settings = {k: v for k, v in dict(module.hparams.get("postprocess") or {}).items() if k != "tuned"}
    base = {**settings, **((module.hparams.get("postprocess") or {}).get("tuned") or {}).get("base", {})}
    grid = OmegaConf.to_container(cfg.grid) if cfg.get("grid") else None
    result = tune_postprocess(probs, labels, base, grid)  # type: ignore[arg-type]
    tuned = {**{k: result.settings[k] for k in TUNED_KEYS if k in result.settings}, "tuned": result.summary()}
    out = Path(cfg.paths.output_dir)
    atomic_write_text(out / "tune.json", json.dumps({"ckpt_path": str(cfg.ckpt_path), "postprocess": tuned,
                                                     "trials": result.trials}, indent=2) + "\n")
    if cfg.get("store", True):
        update_checkpoint_hparams(cfg.ckpt_path, {"postprocess": tuned})
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
    main()
