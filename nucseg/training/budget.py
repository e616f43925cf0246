"""`budget.minutes=N`: size the training schedule so the whole run (setup, training, validation, test with
its uncertainty sampling and post-processing tuning) ends within N minutes on the machine that runs it.

Machines of one kind differ several-fold in speed (the same CPU preset took 23 minutes on one 2-core machine
and 62 on another), so a step count is not a time budget. Before training, the plan warms the decode cache,
times real training steps and whole-image evaluation on this machine, and sets `trainer.max_epochs` and
`trainer.check_val_every_n_epoch`; the schedule (e.g. OneCycle) then spans exactly the planned steps. The
plan is logged and written to `<run dir>/budget.json`; `budget.minutes=null trainer.max_epochs=<its epochs>`
repeats the same schedule anywhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.dsb_score import dsb_score_image
from nucseg.models.train_precision import settle_train_precision
from nucseg.settings import UncertaintyMethod
from nucseg.uncertainty.estimate import module_settings
from nucseg.uncertainty.sampling import has_mc_dropout, sample_probs
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.errors import ConfigError

__all__ = ["BudgetPlan", "apply_budget", "plan_schedule", "process_elapsed", "replan_epochs", "respan_schedule",
           "reuse_budget", "run_elapsed", "validations_between"]

log = logging.getLogger(__name__)


@dataclass
class BudgetPlan:
    minutes: float
    elapsed_s: float  # since the process started, when the plan was made (imports, setup, cache, timing)
    step_s: float  # one training step, measured on real batches
    val_s: float  # one validation pass over the whole validation split
    test_s: float  # the test stage: tuning, uncertainty on validation and test, scoring
    reserve_s: float  # safety margin
    forward_s_per_mp: float  # deterministic forward, per megapixel
    mc_s_per_mp: float  # one MC-dropout sampling (uncertainty.samples passes), per megapixel
    postprocess_s_per_image: float
    val_megapixels: float
    test_megapixels: float
    steps_per_epoch: int
    epochs: int
    check_val_every_n_epoch: int
    steps: int
    estimated_total_s: float
    train_precision: str = "32"  # what module.train_precision=auto chose (nucseg.models.train_precision)
    step_s_by_precision: dict[str, float] | None = None


_LOADED = time.monotonic()


def process_elapsed() -> float:
    """Seconds since this process started (imports included); since this module was imported where /proc
    cannot tell."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _LOADED


_STARTUP_S = process_elapsed()  # process start until this import: the interpreter and torch's import


def plan_schedule(available_s: float, step_s: float, val_s: float, test_s: float, steps_per_epoch: int,
                  validations: int, max_steps: int | None = None) -> tuple[int, int, int]:
    """(epochs, check_val_every_n_epoch, steps per epoch) that fill `available_s` seconds: `validations` evenly
    spaced validations (the last at the end of training) plus the test, and the training steps that remain.
    Epochs are whole multiples of the validation interval, at least `steps_per_epoch` long; the steps a
    rounding to whole epochs would drop lengthen every epoch instead (random crops: an epoch is a length).

    Raises ConfigError when not even one epoch fits.
    """
    if min(step_s, steps_per_epoch) <= 0:
        raise ConfigError(f"budget: expected positive step time and steps per epoch, got {step_s}, {steps_per_epoch}")
    validations = max(1, int(validations))

    def fit(train_s: float) -> int:
        steps = int(train_s // step_s)
        return min(steps, int(max_steps)) if max_steps else steps

    steps = fit(available_s - validations * val_s - test_s)
    epochs_possible = steps // steps_per_epoch
    if epochs_possible < 1:
        raise ConfigError(
            f"budget: {available_s / 60:.1f} minutes left after setup leave no time for one epoch of "
            f"{steps_per_epoch} steps "
            f"({step_s:.2f} s/step measured, {validations} validations of {val_s:.0f} s and a test of "
            f"{test_s:.0f} s): raise budget.minutes or lower data.samples_per_epoch")
    if epochs_possible < validations:
        # fewer epochs than validations: validate after each, and spend the validations not run on training
        per_epoch = steps_per_epoch * step_s + val_s
        epochs = max(1, int((available_s - test_s) // per_epoch))
        if max_steps:
            epochs = min(epochs, max(1, int(max_steps) // steps_per_epoch))
        epochs = min(epochs, validations)
        steps = max(fit(available_s - test_s - epochs * val_s), epochs * steps_per_epoch)
        return epochs, 1, steps // epochs
    every = epochs_possible // validations
    epochs = every * validations
    return epochs, every, steps // epochs


def _best_of_two(fn: Any, *args: Any, **kwargs: Any) -> float:
    """Seconds of the faster of two calls of `fn(*args, **kwargs)`."""
    times = []
    for _ in range(2):
        t = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - t)
    return min(times)


@torch.no_grad()
def _time_eval(module: Any, datamodule: Any, n_images: int, samples: int) -> tuple[float, float, float, float]:
    """(seconds per megapixel of a deterministic forward, of one MC-dropout sampling of `samples` passes; seconds
    per image of one post-processing, of one post-processing plus its DSB score) on `n_images` validation
    images spread over the split's sizes (per-megapixel costs grow with the image: the smallest images alone
    underestimate a split with large ones)."""
    dataset = datamodule.dataset("val")
    ids = list(datamodule.splits.get("val", []))
    sizes = [math.prod(datamodule.cached.load(rid)[0].shape[:2]) for rid in ids]
    order = sorted(range(len(ids)), key=sizes.__getitem__)
    n = min(n_images, len(ids))
    picks = sorted({order[round(q * (len(order) - 1) / max(n - 1, 1))] for q in range(n)})
    fwd = mc = post = trial = mp = 0.0
    module.eval()
    settings = {k: v for k, v in dict(module.hparams.get("postprocess") or {}).items() if k not in ("tune", "tuned")}
    for i in picks:
        sample = dataset[i]
        x = sample["image"][None]
        mp += x.shape[-1] * x.shape[-2] / 1e6
        # best of two: the first pass of a new image size also builds the kernels for that size (oneDNN), a
        # one-off cost that made the estimate vary 2x between runs of the same preset on the same machine
        fwd += _best_of_two(module.predict_logits, x)
        # timed on the targets: an untrained network's noisy maps cost the watershed far more than a trained one's
        target = sample["target"].numpy()
        t = time.perf_counter()
        labels = probs_to_instances(target, **settings)
        post += time.perf_counter() - t
        dsb_score_image(labels, labels)
        trial += time.perf_counter() - t
        if samples and has_mc_dropout(module.net):
            mc += _best_of_two(sample_probs, module.net, x, "mc_dropout", samples=samples, seed=0,
                               pad_multiple=int(module.pad_multiple))
    module.train()
    k = max(len(picks), 1)
    return fwd / max(mp, 1e-9), mc / max(mp, 1e-9), post / k, trial / k


def _megapixels(datamodule: Any, split: str, limit: Any = None) -> tuple[float, int]:
    """Megapixels and number of the images of a split, after `trainer.limit_*_batches` (one image a batch);
    loads (and so caches) each image."""
    ids = list(datamodule.splits.get(split, []))
    if isinstance(limit, int):
        ids = ids[:limit]
    elif isinstance(limit, float) and limit < 1.0:
        ids = ids[:max(1, int(len(ids) * limit))]
    total = 0.0
    for rid in ids:
        image, _ = datamodule.cached.load(rid)
        total += image.shape[0] * image.shape[1] / 1e6
    return total, len(ids)


def _cap(callbacks: Any, name: str, limit: Any) -> Any:
    """The smaller of callback `name`'s `max_val_images` and `trainer.limit_val_batches` (one image a batch)."""
    conf = callbacks.get(name) if hasattr(callbacks, "get") else None
    cap = conf.get("max_val_images") if conf is not None and hasattr(conf, "get") else None
    if cap is None:
        return limit
    if isinstance(limit, int):
        return min(int(cap), limit)
    return int(cap) if limit is None or limit >= 1.0 else limit  # a fraction of the split: keep it (upper bound)


def _set_schedule(cfg: DictConfig, datamodule: Any, epochs: int, every: int, steps_per_epoch: int) -> None:
    samples = steps_per_epoch * int(datamodule.batch_size)
    datamodule.samples_per_epoch = samples
    with open_dict(cfg):
        cfg.trainer.max_epochs = epochs
        cfg.trainer.min_epochs = min(int(cfg.trainer.get("min_epochs") or 1), epochs)
        cfg.trainer.check_val_every_n_epoch = every
        cfg.trainer.max_steps = -1
        cfg.data.samples_per_epoch = samples


def reuse_budget(cfg: DictConfig, module: Any, datamodule: Any, plan_path: str | Path,
                 output_dir: str | Path | None = None) -> bool:
    """Apply the schedule (and the training precision `auto` chose) of an earlier plan (a resumed run's own
    `budget.json`, or `budget.plan=<file>` to rerun a budgeted run exactly, on any machine) instead of
    measuring; False when the file is not there. With `output_dir`, the plan is copied there as this run's
    budget.json."""
    path = Path(plan_path)
    if not path.is_file():
        return False
    plan = json.loads(path.read_text())
    # a run the keeper re-planned (nucseg.callbacks.budget_keeper) trains its last length: a resumed run's LR
    # schedule comes back from its checkpoint already stretched or shrunk to it
    replans = plan.get("replans") or []
    epochs = int(replans[-1]["epochs_after"]) if replans else int(plan["epochs"])
    _set_schedule(cfg, datamodule, epochs, int(plan["check_val_every_n_epoch"]), int(plan["steps_per_epoch"]))
    if module.train_precision == "auto":
        module.set_train_precision(plan.get("train_precision", "32"))
    log.info("budget: the schedule planned in %s (%d epochs of %d steps, validating every %d; training precision "
             "%s), not measured", path, epochs, plan["steps_per_epoch"], plan["check_val_every_n_epoch"],
             module.train_precision)
    if output_dir is not None and Path(output_dir).resolve() != path.parent.resolve():
        atomic_write_text(Path(output_dir) / "budget.json", path.read_text())
    return True


def run_elapsed(started: float | None) -> float:
    """Seconds this run has used: the process's start-up until this module was imported (interpreter, torch)
    plus the time since `started` (time.monotonic() at the start of `train`). None: since the process started.
    A notebook or a test session that trains after an hour does not count that hour."""
    return process_elapsed() if started is None else _STARTUP_S + time.monotonic() - started


def apply_budget(cfg: DictConfig, module: Any, datamodule: Any, output_dir: str | Path | None = None,
                 started: float | None = None) -> BudgetPlan:
    """Measure this machine, plan the schedule for `cfg.budget`, and write it into `cfg.trainer`. `started`:
    time.monotonic() when the run began (see `run_elapsed`)."""
    b = cfg.budget
    minutes = float(b.minutes)
    if minutes <= 0:
        raise ConfigError(f"budget.minutes: expected a positive number of minutes, got {b.minutes}")
    spent = run_elapsed(started)
    if spent >= minutes * 60 * (1 - float(b.margin)):  # no need to measure anything to know it cannot fit
        raise ConfigError(f"budget.minutes={b.minutes}: {spent:.0f} s were spent starting the run already; raise "
                          "budget.minutes")
    datamodule.setup("fit")
    t = time.perf_counter()
    _megapixels(datamodule, "train")  # decodes and caches every image once, now rather than in the first epoch
    val_mp, n_val = _megapixels(datamodule, "val", cfg.trainer.get("limit_val_batches"))
    test_mp, n_test = _megapixels(datamodule, "test", cfg.trainer.get("limit_test_batches"))
    log.info("budget: decode cache ready in %.0f s", time.perf_counter() - t)
    step_s, step_times = settle_train_precision(module, datamodule, int(b.timing_steps), int(b.warmup_steps))
    unc = module_settings(module)
    # forward passes per image of the MC test (tta / ensemble uncertainty is not planned for)
    samples = unc.samples if unc is not None and unc.method is UncertaintyMethod.MC_DROPOUT else 0
    fwd_mp, mc_mp, post_img, trial_img = _time_eval(module, datamodule, int(b.timing_images), samples)
    overhead = float(b.eval_overhead)  # metrics, loaders and logging around the measured forward passes
    instance = str(module.hparams.get("targets")).startswith("instance")  # instance, instance_distance
    val_s = overhead * (fwd_mp * val_mp + (post_img * n_val if instance else 0.0))
    # the review threshold (MC sampling) and the tuning (one forward, then watershed + score per candidate)
    # read at most their callbacks' `max_val_images` validation images
    callbacks = cfg.get("callbacks") or {}
    review_mp, _ = _megapixels(datamodule, "val", _cap(callbacks, "uncertainty", cfg.trainer.get("limit_val_batches")))
    tune_mp, n_tune = _megapixels(datamodule, "val",
                                  _cap(callbacks, "postprocess_tuning", cfg.trainer.get("limit_val_batches")))
    review = unc is not None and unc.review_threshold == "auto" and mc_mp > 0
    tune = bool((module.hparams.get("postprocess") or {}).get("tune"))
    test_s = overhead * (
        fwd_mp * test_mp + post_img * n_test * (2 if instance else 0)  # watershed + connected components
        + mc_mp * test_mp
        + ((fwd_mp + mc_mp) * review_mp if review else 0.0)
        + (fwd_mp * tune_mp + trial_img * n_tune * int(b.tune_trials) if tune else 0.0)
    ) + float(b.figures_s)
    elapsed = run_elapsed(started)
    reserve = float(b.margin) * minutes * 60
    spe = int(datamodule.samples_per_epoch or len(datamodule.splits["train"])) // int(datamodule.batch_size)
    epochs, every, spe = plan_schedule(minutes * 60 - elapsed - reserve, step_s * float(b.step_overhead), val_s,
                                       test_s, spe, int(b.validations), b.get("max_steps"))
    steps = epochs * spe
    n_vals = epochs // every
    total = elapsed + steps * step_s * float(b.step_overhead) + n_vals * val_s + test_s
    plan = BudgetPlan(minutes, elapsed, step_s, val_s, test_s, reserve, fwd_mp, mc_mp, post_img, val_mp, test_mp,
                      spe, epochs, every, steps, total, module.train_precision, step_times)
    _set_schedule(cfg, datamodule, epochs, every, spe)
    log.info("budget %.1f min: %.0f s spent before training, %.3f s/step measured (%s), validation %.0f s, test "
             "%.0f s -> %d steps (%d epochs of %d), validating every %d epochs; estimated end at %.1f min",
             minutes, elapsed, step_s, module.train_precision, val_s, test_s, steps, epochs, spe, every, total / 60)
    if output_dir is not None:
        atomic_write_text(Path(output_dir) / "budget.json", json.dumps(asdict(plan), indent=2) + "\n")
    if not math.isfinite(total):
        raise ConfigError("budget: the measured times are not finite")
    return plan


def validations_between(done_epochs: int, epochs: int, every: int) -> int:
    """Validations still to run after `done_epochs` of `epochs`: every `every` epochs, and one at the end of
    training when `epochs` is not a multiple of `every` (`BudgetKeeper` adds it)."""
    every = max(1, int(every))
    return epochs // every - done_epochs // every + (1 if epochs % every else 0)


def replan_epochs(remaining_s: float, step_s: float, val_s: float, test_s: float, steps_per_epoch: int,
                  done_epochs: int, every: int, max_epochs: int | None = None) -> int:
    """The most epochs in all (at least `done_epochs` + 1, at most `max_epochs`) whose remaining training steps,
    validations (`validations_between`) and test fit in `remaining_s` seconds at the pace measured so far.

    Example:
        >>> replan_epochs(600, 0.5, 20, 100, 100, done_epochs=10, every=5)  # (600 - 100 - 2 * 20) / 50 s
        19
    """
    epoch_s = step_s * steps_per_epoch
    best = done_epochs + 1
    n = best
    while max_epochs is None or n <= max_epochs:
        need = (n - done_epochs) * epoch_s + validations_between(done_epochs, n, every) * val_s + test_s
        if need > remaining_s:
            break
        best, n = n, n + 1
    return best if max_epochs is None else min(best, max(int(max_epochs), done_epochs + 1))


def respan_schedule(scheduler: Any, total_steps: int) -> bool:
    """Stretch (or shrink) a running LR schedule to end at `total_steps` optimizer steps: OneCycleLR (the phases
    not yet reached keep their share of the run; a phase under way ends later or sooner) and CosineAnnealingLR
    (`T_max`). False for other schedulers, which do not depend on the run's length."""
    total_steps = int(total_steps)
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        step, old = int(scheduler.last_epoch), int(scheduler.total_steps)
        total_steps = max(total_steps, step + 1)
        ends = [float(p["end_step"]) for p in scheduler._schedule_phases]
        for phase, end in zip(scheduler._schedule_phases[:-1], ends[:-1], strict=True):
            if end >= step:  # not finished: keep its share of the run
                phase["end_step"] = max((end + 1) * total_steps / old - 1, float(step))
        scheduler._schedule_phases[-1]["end_step"] = float(total_steps - 1)
        scheduler.total_steps = total_steps
        return True
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        scheduler.T_max = max(total_steps, int(scheduler.last_epoch) + 1)
        return True
    return False
