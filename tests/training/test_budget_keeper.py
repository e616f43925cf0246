"""Re-planning a budgeted run while it trains: the pure maths and the callback in a small Lightning fit."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from nucseg.callbacks.budget_keeper import BudgetKeeper
from nucseg.training.budget import BudgetPlan, replan_epochs, respan_schedule, reuse_budget, validations_between


def test_validations_between_counts_the_interval_and_a_final_one() -> None:
    assert validations_between(0, 20, 5) == 4
    assert validations_between(5, 20, 5) == 3
    assert validations_between(5, 22, 5) == 4  # 10, 15, 20 and the end of epoch 22
    assert validations_between(20, 21, 5) == 1


def test_replan_epochs_follows_the_pace_both_ways_within_its_bounds() -> None:
    # 100 steps per epoch, 20 s validations every 5 epochs, 100 s of test, 10 epochs done
    base = dict(val_s=20.0, test_s=100.0, steps_per_epoch=100, done_epochs=10, every=5)
    assert replan_epochs(600, 0.5, **base) == 19  # (600 - 100 - 2 * 20) / 50 = 9.2 epochs more
    assert replan_epochs(600, 0.4, **base) == 21  # faster: 21 epochs need 440 + 3 * 20 + 100 = 600 s
    assert replan_epochs(300, 0.5, **base) == 13  # slower machine or less time: shrink
    assert replan_epochs(0, 0.5, **base) == 11  # out of time: still one more epoch (never below done + 1)
    assert replan_epochs(600, 0.1, **base, max_epochs=15) == 15


def _onecycle(total: int) -> torch.optim.lr_scheduler.OneCycleLR:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=total, pct_start=0.3)


def _run_to_end(sched: torch.optim.lr_scheduler.LRScheduler, upto: int) -> list[float]:
    lrs = []
    while sched.last_epoch < upto - 1:
        sched.optimizer.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    return lrs


def test_respan_onecycle_in_warmup_keeps_the_warmup_share_and_ends_at_the_new_total() -> None:
    sched = _onecycle(100)
    _run_to_end(sched, 11)  # step 10 of the warmup (30 steps)
    assert respan_schedule(sched, 200)
    lrs = _run_to_end(sched, 200)
    peak = 10 + lrs.index(max(lrs)) + 1
    assert peak == pytest.approx(59, abs=1)  # 30 % of 200 steps
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-3)  # OneCycle's min lr, at the new last step


def test_respan_onecycle_in_annealing_moves_only_the_end() -> None:
    sched = _onecycle(100)
    _run_to_end(sched, 61)
    before = sched.get_last_lr()[0]
    assert respan_schedule(sched, 110)
    assert sched._schedule_phases[0]["end_step"] == pytest.approx(29)
    lrs = _run_to_end(sched, 110)
    assert lrs[0] > before * 0.95  # a small step, not a restart
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:], strict=False))  # still annealing down
    assert lrs[-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-3)


def test_respan_leaves_schedules_that_do_not_depend_on_the_length() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert not respan_schedule(torch.optim.lr_scheduler.StepLR(opt, 10), 100)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    assert respan_schedule(cosine, 40) and cosine.T_max == 40


STEPS_PER_EPOCH = 5


class _Tiny(L.LightningModule):
    def __init__(self, total_steps: int):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.total_steps = total_steps
        self.validated_after: list[int] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_after.append(self.current_epoch + 1)

    def configure_optimizers(self) -> dict:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _fit(tmp_path: Path, started_at: float, max_steps: int | None) -> tuple[_Tiny, L.Trainer, BudgetKeeper]:
    """4 planned epochs of 5 steps, validating every 2; each step takes 0.5 s of a fake clock."""
    plan = BudgetPlan(minutes=10, elapsed_s=started_at, step_s=1.0, val_s=1.0, test_s=10.0, reserve_s=0.0,
                      forward_s_per_mp=0.0, mc_s_per_mp=0.0, postprocess_s_per_image=0.0, val_megapixels=0.0,
                      test_megapixels=0.0, steps_per_epoch=STEPS_PER_EPOCH, epochs=4, check_val_every_n_epoch=2,
                      steps=20, estimated_total_s=0.0)
    budget_json = tmp_path / "budget.json"
    budget_json.write_text(json.dumps({"epochs": 4}))
    module = _Tiny(total_steps=4 * STEPS_PER_EPOCH)
    clock = lambda: module.global_step * 0.5  # noqa: E731
    keeper = BudgetKeeper(plan, elapsed=lambda: started_at + clock(), budget_json=budget_json, max_steps=max_steps,
                          clock=clock)
    data = DataLoader(TensorDataset(torch.rand(STEPS_PER_EPOCH * 2, 2)), batch_size=2)
    trainer = L.Trainer(max_epochs=4, check_val_every_n_epoch=2, callbacks=[keeper], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    return module, trainer, keeper


def test_keeper_lengthens_a_run_that_goes_faster_than_planned(tmp_path: Path) -> None:
    # 2.5 s epochs against 5 s planned and 500 s left: as long as max_steps allows (45 steps = 9 epochs)
    module, trainer, keeper = _fit(tmp_path, started_at=100.0, max_steps=45)
    assert trainer.current_epoch == 9 and trainer.global_step == 45
    assert module.validated_after == [2, 4, 6, 8, 9]  # the last epoch validates although 9 is not even
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.total_steps == 45 and sched.last_epoch == 45
    assert keeper.replans[0] == {"after_epoch": 1, "step_s": 0.5, "val_s": 1.0, "remaining_s": 497.5,
                                 "epochs_before": 4, "epochs_after": 9}
    assert json.loads((tmp_path / "budget.json").read_text())["replans"] == keeper.replans


def test_keeper_shortens_a_run_that_is_late(tmp_path: Path) -> None:
    # 585 s of 600 used at the start: after epoch 1, 12.5 s remain, less than the 10 s test and two epochs
    module, trainer, keeper = _fit(tmp_path, started_at=585.0, max_steps=None)
    assert trainer.current_epoch == 2 and trainer.global_step == 10
    assert module.validated_after == [2]
    assert [r["epochs_after"] for r in keeper.replans] == [2]


def test_a_resumed_run_trains_the_replanned_length(tmp_path: Path) -> None:
    """A re-queued job resumes with the schedule of its budget.json: the keeper's last length, which its
    checkpointed OneCycle already spans (the first plan's length would stop it early or step past its end)."""
    plan = {"epochs": 20, "check_val_every_n_epoch": 5, "steps_per_epoch": 108, "train_precision": "32",
            "replans": [{"after_epoch": 3, "epochs_after": 22}, {"after_epoch": 9, "epochs_after": 21}]}
    (tmp_path / "budget.json").write_text(json.dumps(plan))
    cfg = OmegaConf.create({"trainer": {"max_epochs": 1}, "data": {"samples_per_epoch": 16}})
    datamodule = SimpleNamespace(batch_size=16, samples_per_epoch=16)
    module = SimpleNamespace(train_precision="32")
    assert reuse_budget(cfg, module, datamodule, tmp_path / "budget.json")
    assert cfg.trainer.max_epochs == 21 and cfg.trainer.check_val_every_n_epoch == 5
    assert datamodule.samples_per_epoch == 108 * 16
    del plan["replans"]
    (tmp_path / "budget.json").write_text(json.dumps(plan))
    assert reuse_budget(cfg, module, datamodule, tmp_path / "budget.json") and cfg.trainer.max_epochs == 20
