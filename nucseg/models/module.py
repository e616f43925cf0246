"""The LightningModule: trains on crops, validates and tests on whole images at their original size.

It keeps in its hyper-parameters everything prediction needs (the network config, the input normalisation,
the threshold, the target layout), so a checkpoint alone rebuilds the model: see `load_module`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from nucseg.metrics.pixel import BinnedAUROC, MeanDice, MeanIoU
from nucseg.models.allowlist import disallowed_entries
from nucseg.models.mc_dropout import mc_dropout_enabled
from nucseg.models.padding import pad_to_multiple
from nucseg.models.train_precision import check_train_precision, settle_train_precision, train_autocast
from nucseg.utils.cluster import rank_zero_decides
from nucseg.utils.errors import CheckpointError

__all__ = ["SegmentationModule", "encoder_param_groups", "load_module", "pad_multiple", "pad_to_multiple",
           "pixel_threshold"]

log = logging.getLogger(__name__)


def pad_multiple(module: L.LightningModule) -> int:
    """The stride a `SegmentationModule`'s inputs are padded to (its encoder's)."""
    pad = module.pad_multiple
    if not isinstance(pad, int):
        raise TypeError(f"{type(module).__name__}.pad_multiple: expected an int, got {pad!r}")
    return pad


def pixel_threshold(module: L.LightningModule) -> float:
    """The foreground probability threshold of a `SegmentationModule`'s binary masks."""
    threshold = module.threshold
    if not isinstance(threshold, int | float):
        raise TypeError(f"{type(module).__name__}.threshold: expected a number, got {threshold!r}")
    return float(threshold)


class SegmentationModule(L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        loss: dict[str, Any] | None = None,
        optimizer: Callable | None = None,
        scheduler: Callable | None = None,
        scheduler_config: dict[str, Any] | None = None,
        threshold: float = 0.5,
        pad_multiple: int = 32,
        auroc_thresholds: int = 200,
        targets: str = "binary",
        normalization: dict[str, float] | None = None,
        clahe: bool = False,
        postprocess: dict[str, Any] | None = None,
        uncertainty: dict[str, Any] | None = None,
        channels_last: bool = False,
        train_precision: str = "32",
        calibration: dict[str, Any] | None = None,
        ood: dict[str, Any] | None = None,
        encoder_lr_scale: float = 1.0,
    ):
        """`net` and `loss` are configs (dicts with `_target_`), stored in the checkpoint; `optimizer` and
        `scheduler` are partials that receive the parameters / the optimizer. `channels_last`: NHWC weights
        (oneDNN then runs the convolutions NHWC: 1.3x faster training steps on a 2-core CPU, same maths).
        `train_precision`: 32, bf16 (autocast in training steps only) or auto (`nucseg.models.train_precision`).
        `calibration` ({temperature}) and `ood` ({density, threshold}) are fitted at test start
        (`nucseg.callbacks.uncertainty`) and stored here, so prediction reads them from the checkpoint.
        `encoder_lr_scale`: the encoder's learning rate as a share of the optimizer's (a pretrained encoder may
        want less than the new decoder; `encoder_param_groups`)."""
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net: nn.Module = hydra.utils.instantiate(net)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.train_precision = check_train_precision(train_precision)
        self.criterion: nn.Module | None = hydra.utils.instantiate(loss) if loss else None
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_config = dict(scheduler_config or {})
        self.threshold, self.pad_multiple = threshold, pad_multiple
        self.encoder_lr_scale = float(encoder_lr_scale)
        # no NaN check: it reads the value on the host (a GPU sync) every training step; a NaN loss shows as NaN
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_dice, self.test_dice = MeanDice(threshold), MeanDice(threshold)
        self.val_iou, self.test_iou = MeanIoU(threshold), MeanIoU(threshold)
        self.val_auroc = BinnedAUROC(bins=auroc_thresholds)
        self.test_auroc = BinnedAUROC(bins=auroc_thresholds)

    def set_train_precision(self, precision: str) -> None:
        """Train at `precision` from now on, and store it in the checkpoint (replacing 'auto')."""
        self.train_precision = self.hparams["train_precision"] = check_train_precision(precision)

    def on_fit_start(self) -> None:
        # not settled by a time budget: measure now; in DDP rank 0 measures and every rank trains as it chose
        if self.train_precision == "auto" and self.trainer.is_global_zero:
            settle_train_precision(self, self.trainer.datamodule)  # type: ignore[attr-defined]
        if self.trainer.world_size > 1:
            chosen = rank_zero_decides(self.train_precision)
            if chosen != self.train_precision or not self.trainer.is_global_zero:
                log.info("module.train_precision: %s, as rank 0 chose (this rank had %s)", chosen,
                         self.train_precision)
            self.set_train_precision(chosen)

    # ----------------------------------------------------------------- inference helpers
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def predict_logits(self, image: Tensor) -> Tensor:
        """Logits at the input's size for whole images of any size (pads to the encoder's stride).

        Outside training MC dropout is off: validation (which picks the best checkpoint), test and predict
        see the deterministic network, not one random dropout sample; uncertainty sampling calls the net."""
        padded, (h, w) = pad_to_multiple(image, self.pad_multiple)
        if self.training:
            return self.net(padded)[..., :h, :w]
        with mc_dropout_enabled(self.net, False):
            return self.net(padded)[..., :h, :w]

    # ----------------------------------------------------------------- steps
    def _check_targets(self, logits: Tensor, target: Tensor) -> None:
        if logits.shape[1] != target.shape[1]:
            raise ValueError(
                f"model.classes={logits.shape[1]} but data.targets gives {target.shape[1]} channel(s); "
                "use model.classes=1 with data.targets=binary, 3 with instance or 4 with instance_distance"
            )

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        with train_autocast(batch["image"], self.train_precision):
            logits = self.net(batch["image"])
        self._check_targets(logits, batch["target"])
        assert self.criterion is not None, "training needs a loss (cfg.loss)"
        loss = self.criterion(logits.float(), batch["target"])
        self.train_loss(loss.detach())
        # not on the progress bar: Lightning turns progress-bar values into Python numbers after every batch,
        # a host-device sync per step; loggers get it every `trainer.log_every_n_steps` steps
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=False,
                 batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> dict:
        logits = self.predict_logits(batch["image"])
        self._check_targets(logits, batch["target"])
        target = batch["target"]
        loss = self.criterion(logits, target) if self.criterion is not None else logits.new_zeros(())
        probs = torch.sigmoid(logits)
        fg_prob, fg_true = probs[:, 0], target[:, 0]
        getattr(self, f"{stage}_loss").update(loss.detach())
        getattr(self, f"{stage}_dice").update(fg_prob, fg_true)
        getattr(self, f"{stage}_iou").update(fg_prob, fg_true)
        getattr(self, f"{stage}_auroc").update(fg_prob, fg_true)
        for name in ("loss", "dice", "iou", "auroc"):
            self.log(f"{stage}/{name}", getattr(self, f"{stage}_{name}"), on_step=False, on_epoch=True,
                     prog_bar=name == "dice", batch_size=1, sync_dist=True)
        return {"probs": probs.detach(), "loss": loss.detach()}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step(batch, "test")

    # ----------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("optimizer: no optimizer configured (set optimizer=amsgrad|adamw|sgd)")
        groups: list[dict[str, Any]] = []
        if self.encoder_lr_scale != 1.0:
            groups = encoder_param_groups(self.net, self.encoder_lr_scale,
                                          _factory_kwarg(self.optimizer_factory, "lr"))
        optimizer = self.optimizer_factory(params=groups or self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        cfg = dict(self.scheduler_config)
        kwargs: dict[str, Any] = {}
        max_lr = _factory_kwarg(self.scheduler_factory, "max_lr")
        if max_lr is not None and len(groups) > 1:  # OneCycle / Cyclic: one peak per group, in the same ratio
            kwargs["max_lr"] = [float(max_lr) * g["lr"] / groups[-1]["lr"] for g in groups]
        if cfg.pop("needs_total_steps", False):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **cfg}}


def _factory_kwarg(factory: Any, name: str) -> Any:
    """A keyword bound in a `functools.partial` (Hydra `_partial_: true`), else None."""
    return (getattr(factory, "keywords", None) or {}).get(name)


def encoder_param_groups(net: nn.Module, scale: float, lr: float | None) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one group with every parameter (`scale` 1), or the encoder's
    parameters at `scale * lr` and then the rest at `lr` (an smp network's `encoder` attribute).

    Example:
        >>> from nucseg.models.factory import build_model
        >>> net = build_model(arch="unet", encoder_name="resnet18", encoder_depth=3, classes=1,
        ...                   decoder_channels=[16, 8, 4])
        >>> [g["lr"] for g in encoder_param_groups(net, 0.1, 1e-3)]
        [0.0001, 0.001]
    """
    scale = float(scale)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"module.encoder_lr_scale: expected a positive number, got {scale}")
    if scale == 1.0:
        return [{"params": list(net.parameters())}]
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"module.encoder_lr_scale={scale}: the network ({type(net).__name__}) has no `encoder` "
                         "submodule; use 1.0")
    if lr is None:
        raise ValueError(f"module.encoder_lr_scale={scale}: the optimizer config sets no `lr` to scale")
    enc_ids = {id(p) for p in encoder.parameters()}
    return [{"params": list(encoder.parameters()), "lr": scale * float(lr)},
            {"params": [p for p in net.parameters() if id(p) not in enc_ids], "lr": float(lr)}]


def load_module(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild a trained module from its checkpoint alone (no training config needed).

    Loads with `weights_only=True`: the checkpoint holds tensors and plain containers only, so no code from
    the file is executed; the `_target_`s of its configs must pass `nucseg.models.allowlist` (an allow-list)
    before anything is instantiated. The weights are loaded strictly: a checkpoint whose weights do not fit
    the network its hyper-parameters describe raises `CheckpointError` naming the missing and unexpected
    keys, instead of predicting with random weights. Every refusal is one `CheckpointError` line naming the
    file.
    """
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise CheckpointError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    try:
        ckpt = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle, zip and torch raise many types for a file that is not a checkpoint
        raise CheckpointError(f"{ckpt_path}: cannot be read as a checkpoint ({_load_error(exc)})") from exc
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "net" not in hp or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{ckpt_path}: not a nucseg checkpoint (no 'net' in its hyper_parameters or no "
                              "state_dict)")
    accepted = set(inspect.signature(SegmentationModule.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hp.items() if k in accepted}
    if not isinstance(kwargs["net"], dict) or not isinstance(kwargs.get("loss") or {}, dict):
        raise CheckpointError(f"{ckpt_path}: hyper_parameters.net / .loss: expected configs with a `_target_`, "
                              f"got {type(kwargs['net']).__name__} / {type(kwargs.get('loss')).__name__}")
    refused = disallowed_entries(kwargs)  # before anything from the file is instantiated
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise CheckpointError(f"{ckpt_path}: refused: hyper_parameters.{refused[0]}{more}")
    stored_net = kwargs["net"]
    # the checkpoint holds the trained weights: the network is built without (re)loading pretrained ones, which
    # would cost time and need the weights' package or a hub; the hyper-parameters still say where it started
    kwargs["net"] = {**stored_net, **({"encoder_weights": None} if "encoder_weights" in stored_net else {})}
    try:
        module = SegmentationModule(**kwargs)
        module.hparams["net"] = stored_net
    except Exception as exc:  # e.g. an unknown encoder name or argument: name the file, not Hydra's internals
        raise CheckpointError(f"{ckpt_path}: cannot build the network its hyper-parameters describe "
                              f"({_shorten(' '.join(str(exc).split()))})") from exc
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:  # missing / unexpected keys or shapes that differ
        raise CheckpointError(_mismatch(ckpt_path, module.state_dict().keys(), ckpt["state_dict"].keys(), exc)
                              ) from exc
    module.eval()
    return module


def _load_error(exc: Exception) -> str:
    """The informative line of torch.load's error (its weights_only message opens with advice to turn the
    protection off, which is not ours to give)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    return next((ln for ln in lines if not ln.startswith(boilerplate)), type(exc).__name__)


def _shorten(text: str, limit: int = 300) -> str:
    """`text` cut to `limit` characters (an unknown encoder lists every known one)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mismatch(ckpt_path: Path, expected: Iterable[str], found: Iterable[str], exc: Exception) -> str:
    """One line: the first few missing and unexpected state-dict keys with their counts (or the first shape
    that differs)."""
    exp, got = list(expected), list(found)
    exp_set, got_set = set(exp), set(got)
    missing = [k for k in exp if k not in got_set]
    unexpected = [k for k in got if k not in exp_set]
    if not missing and not unexpected:
        shapes = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        return f"{ckpt_path}: its weights do not fit its network: {(shapes or [str(exc)])[0]}"
    return (f"{ckpt_path}: its weights do not fit the network its hyper-parameters describe: "
            f"{_key_list('missing', missing)}; {_key_list('unexpected', unexpected)}")


def _key_list(kind: str, keys: list[str], shown: int = 3) -> str:
    """'2 missing keys (a, b)': the first few names and the count."""
    head = ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
    return f"{len(keys)} {kind} key{'s' if len(keys) != 1 else ''}" + (f" ({head})" if keys else "")
