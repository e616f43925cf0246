"""The optimizer and schedule a SegmentationModule builds: one group, or the encoder at its own share of the LR."""

from __future__ import annotations

import functools

import pytest
import torch

from nucseg.models.module import SegmentationModule, encoder_param_groups

NET = {"_target_": "nucseg.models.factory.build_model", "arch": "unet", "encoder_name": "resnet18",
       "encoder_depth": 3, "classes": 1, "decoder_channels": [16, 8, 4]}


class _Trainer:
    estimated_stepping_batches = 100


def _optimizers(scale: float, scheduler: bool = True) -> tuple[torch.optim.Optimizer, object]:
    module = SegmentationModule(
        NET,
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3, amsgrad=True),
        scheduler=functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=1e-3) if scheduler else None,
        scheduler_config={"interval": "step", "needs_total_steps": True} if scheduler else None,
        encoder_lr_scale=scale,
    )
    module.trainer = _Trainer()  # type: ignore[assignment]
    out = module.configure_optimizers()
    if not scheduler:
        return out, None
    return out["optimizer"], out["lr_scheduler"]["scheduler"]


def test_scale_one_keeps_a_single_group_of_every_parameter() -> None:
    opt, _ = _optimizers(1.0)
    assert len(opt.param_groups) == 1
    assert [g["max_lr"] for g in opt.param_groups] == [pytest.approx(1e-3)]


def test_encoder_group_peaks_at_its_share_under_onecycle() -> None:
    opt, _ = _optimizers(0.1)
    enc, rest = opt.param_groups
    assert [g["max_lr"] for g in opt.param_groups] == [pytest.approx(1e-4), pytest.approx(1e-3)]
    # OneCycle starts each group at its own peak / div_factor (25)
    assert enc["lr"] == pytest.approx(1e-4 / 25) and rest["lr"] == pytest.approx(1e-3 / 25)
    n_enc = sum(p.numel() for p in enc["params"])
    n_rest = sum(p.numel() for p in rest["params"])
    net = SegmentationModule(NET).net
    assert n_enc == sum(p.numel() for p in net.encoder.parameters())  # type: ignore[union-attr]
    assert n_enc + n_rest == sum(p.numel() for p in net.parameters())


def test_encoder_group_without_a_scheduler_keeps_its_lr() -> None:
    opt, _ = _optimizers(0.5, scheduler=False)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(5e-4), pytest.approx(1e-3)]


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan")])
def test_bad_scale_names_the_key(scale: float) -> None:
    net = SegmentationModule(NET).net
    with pytest.raises(ValueError, match="module.encoder_lr_scale"):
        encoder_param_groups(net, scale, 1e-3)


def test_network_without_encoder_is_refused() -> None:
    with pytest.raises(ValueError, match="no `encoder`"):
        encoder_param_groups(torch.nn.Conv2d(3, 1, 3), 0.1, 1e-3)
