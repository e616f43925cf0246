"""The documentation of an exported model: the package README, its cover image, its conda environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.instances.watershed import probs_to_instances
from nucseg.viz.overlays import outline_overlay

__all__ = ["checkpoint_metrics", "environment_yaml", "readme", "write_cover"]


def checkpoint_metrics(ckpt_path: Path, ckpt: dict[str, Any]) -> dict[str, float]:
    """Validation scores the checkpoint keeps (best monitored score, tuned DSB score) and, when the run
    directory beside it has one, its metrics.json (test scores)."""
    out: dict[str, float] = {}
    for state in (ckpt.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
            out[f"{state['monitor']} (best checkpoint)"] = float(state["best_model_score"])
    tuned = ((ckpt.get("hyper_parameters") or {}).get("postprocess") or {}).get("tuned") or {}
    for key in tuned:  # val_<objective>, val_<objective>_base
        if key.startswith("val_") and isinstance(tuned.get(key), int | float):
            out[f"postprocess.tuned.{key}"] = float(tuned[key])
    run_metrics = ckpt_path.resolve().parent.parent / "metrics.json"
    if run_metrics.is_file():
        try:
            for k, v in json.loads(run_metrics.read_text()).items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k.startswith(("test/", "val/")):
                    out[k] = float(v)
        except (OSError, ValueError):
            pass
    return out


def _training_data(meta: dict[str, Any], ckpt_path: Path) -> str:
    if meta.get("training_data"):
        return str(meta["training_data"])
    run_cfg = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if run_cfg.is_file():
        from omegaconf import OmegaConf

        run = OmegaConf.to_container(OmegaConf.load(run_cfg), resolve=False)
        data = run.get("data") if isinstance(run, dict) else None
        if isinstance(data, dict):
            found = data.get("source")
            source: dict[Any, Any] = found if isinstance(found, dict) else {}
            split = {k: data[k] for k in ("split_by", "val_fraction", "test_fraction", "split_seed", "holdout_types")
                     if k in data}
            return (f"From the training run's config: source `{source.get('_target_', '?')}` at "
                    f"`{source.get('root', '?')}`; split {json.dumps(split, default=str)} (validation and test "
                    "images are held out from training; `test/*` scores below are on the test part).")
    return ("Not recorded in the checkpoint (nucseg's default is the Kaggle Data Science Bowl 2018 stage1_train "
            "set, split by acquisition group); set `training_data=...` when exporting")


def _table(rows: dict[str, Any]) -> str:
    return "\n".join(["| key | value |", "|---|---|", *(f"| `{k}` | `{v}` |" for k, v in rows.items())])


def readme(hp: dict[str, Any], names: list[str], meta: dict[str, Any], ckpt_path: Path, ckpt: dict[str, Any]
           ) -> str:
    """The package README: input, outputs, instances, training data, validation, uncertainty, citation."""
    norm = {"low": 0.5, "high": 99.8, **(hp.get("normalization") or {})}
    post = {k: v for k, v in (hp.get("postprocess") or {}).items() if k not in ("tune", "tuned")}
    net = hp.get("net") or {}
    metrics = checkpoint_metrics(ckpt_path, ckpt)
    method = (hp.get("uncertainty") or {}).get("method") or "none"
    bayes = bool(net.get("mc_dropout")) or method == "mc_dropout"
    cites = "\n".join(f"- {c.get('text')}" + (f" doi:{c['doi']}" if c.get("doi") else "")
                      + (f" {c['url']}" if c.get("url") else "") for c in meta.get("cite") or [])
    channels = "\n".join(f"{i}. `{n}`" for i, n in enumerate(names))
    lines = [
        f"# {meta['name']}", "", meta["description"], "",
        f"Exported by nucseg from `{ckpt_path.name}`: {net.get('arch', '?')} with a {net.get('encoder_name', '?')} "
        f"encoder (depth {net.get('encoder_depth', '?')}), targets `{hp.get('targets', 'binary')}`.", "",
        "## Input", "",
        "One image, RGB float32 in its own intensity units (8-bit, 16-bit or float); replicate a gray image "
        "to three channels. Height and width: multiples of "
        f"{hp.get('pad_multiple', 32)} (pad, e.g. by reflection, and crop the output back).", "",
        f"Pre-processing (as in nucseg): stretch between the {norm['low']} and {norm['high']} percentiles of "
        "the image, computed jointly over the three channels, and clip to [0, 1]. The network itself rounds "
        "this to 256 levels, as nucseg's uint8 normalisation does."
        + (" The model was trained with CLAHE: apply it before the network." if hp.get("clahe") else ""), "",
        "## Outputs", "", "Sigmoid probabilities, one channel each:", "", channels, "",
        "## From probabilities to nuclei", "",
        "nucseg turns the channels into instance labels with these settings (the checkpoint's `postprocess`):",
        "", _table(post), "",
        "- `cc`: connected components of `foreground > threshold`.",
        "- `watershed` (3- or 4-channel models; `auto` picks it): seeds are the foreground pixels (`> threshold`) "
        "whose contour and touching probabilities are `<= contour_threshold`; seeds under `seed_min_size` "
        "pixels are ignored; seeds grow over the foreground along the border probability; objects under "
        "`min_size` pixels are dropped; holes are filled when `fill_holes`. A 4-channel model (the fourth "
        "channel each nucleus's inner distance, 1 at its centre) also requires seeds to reach "
        "`distance_threshold` and floods the mean of the border probability and 1 - distance.", "",
        "With nucseg installed (`pip install -e <nucseg checkout>`):", "", "```python",
        "from nucseg.instances.watershed import probs_to_instances",
        f"labels = probs_to_instances(probs[0], **{post!r})  # probs: (1, K, H, W)", "```", "",
        "or predict with nucseg directly: `python -m nucseg.predict ckpt_path=<this zip> input=... output=...`.",
        "",
        "## Training data", "", _training_data(meta, ckpt_path), "",
        "## Validation", "",
        (_table({k: round(v, 4) for k, v in metrics.items()}) if metrics
         else "The checkpoint holds no scores; evaluate with `python -m nucseg.evaluate ckpt_path=...`."), "",
        "`val/*` are pixel scores on the validation images; `val_dsb_score` is the Data Science Bowl 2018 "
        "object score (mean precision over IoU thresholds 0.5-0.95) after post-processing.", "",
        "## Uncertainty", "",
        ("The model has Monte-Carlo dropout. This package holds the deterministic pass (dropout off): it gives "
         "the mean prediction, not the uncertainty maps. For those, run nucseg on this package or on the "
         "checkpoint (`nucseg.predict`), which samples the dropout masks." if bayes else
         f"Uncertainty method of the checkpoint: `{method}`. "
         + ("The exported network is one deterministic pass; an ensemble's other members and test-time "
            "augmentation are not part of the package." if method != "none" else "None (one deterministic pass).")),
        "",
        "## License and citation", "", f"License: {meta.get('license') or 'MIT'}.", "", cites or "-", "",
    ]
    return "\n".join(lines)


def write_cover(path: Path, prepared: np.ndarray, probs: np.ndarray, hp: dict[str, Any]) -> None:
    """A 2:1 cover: the normalised input beside its probabilities (foreground red, contour green, touching
    blue) with the instance outlines."""
    from PIL import Image

    post = {k: v for k, v in (hp.get("postprocess") or {}).items() if k not in ("tune", "tuned")}
    labels = probs_to_instances(probs, **post)
    rgb = np.zeros((*probs.shape[1:], 3), np.uint8)
    for c in range(min(3, probs.shape[0])):
        rgb[..., c] = (probs[c] * 255).astype(np.uint8)
    right = outline_overlay(rgb, labels)
    side = min(prepared.shape[:2])
    pair = np.concatenate([prepared[:side, :side], right[:side, :side]], axis=1)
    Image.fromarray(pair).resize((512, 256), Image.Resampling.NEAREST).save(path)


def environment_yaml(pytorch_version: Any) -> str:
    """Conda environment of the state-dict weights: pytorch plus nucseg (its architecture) from pip."""
    return ("name: nucseg-export\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n"
            f"  - pytorch=={pytorch_version}\n  - pip\n  - pip:\n      - nucseg  # pip install -e <nucseg checkout>\n")
