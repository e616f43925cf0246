"""Every option of every config group composes into the train config and instantiates."""

from __future__ import annotations

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from nucseg.checks import violations
from nucseg.train import build_module
from nucseg.utils.instantiate import instantiate_callbacks, instantiate_loggers
from tests.helpers.datasets import write_kaggle_test_set, write_user_folder
from tests.helpers.paths import CONF_DIR


def options(group: str) -> list[str]:
    """The options of a config group; `_`-prefixed files (`_base`, `_gpu`) are what options inherit."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def preset_values(group: str, name: str) -> dict:
    """The literal values a config file sets, as dotted keys, with those of the `_` files it lists first
    (interpolations left out: they are checked by resolving)."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=False)
    values: dict = {}
    for d in raw.pop("defaults", []):
        if isinstance(d, str) and d.startswith("_"):
            values.update(preset_values(group, d))

    def leaves(node: dict, prefix: str = "") -> None:
        for k, v in node.items():
            if isinstance(v, dict) and "_target_" not in v and v:
                leaves(v, f"{prefix}{k}.")
            elif not (isinstance(v, str) and "${" in v):
                values[f"{prefix}{k}"] = v

    leaves(raw)
    return values


def test_groups_have_the_documented_options():
    assert {"unet", "unetpp"} <= set(options("model"))
    assert {"bce_dice", "dice", "focal", "lovasz"} <= set(options("loss"))
    assert {"amsgrad", "adamw", "sgd"} <= set(options("optimizer"))
    assert {"cosine", "plateau", "step", "onecycle", "none"} <= set(options("scheduler"))
    assert {"default", "cpu", "gpu", "ddp"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "none"} <= set(options("logger"))
    assert {"strong", "light", "none"} <= set(options("augment"))
    assert {"fast_dev_run", "limit", "overfit"} <= set(options("debug"))


def test_default_optimizer_is_amsgrad(make_cfg):
    cfg = make_cfg(fast=False)
    opt = hydra.utils.instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["amsgrad"] is True
    assert cfg.model.encoder_weights is None


@pytest.mark.parametrize("option", options("model"))
def test_model_options_build_and_run(make_cfg, option):
    cfg = make_cfg([f"model={option}", "model.encoder_name=resnet18", "model.encoder_depth=3"], fast=False)
    net = hydra.utils.instantiate(cfg.model)
    out = net(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, cfg.model.classes, 64, 64)


@pytest.mark.parametrize("option", options("loss"))
def test_loss_options(make_cfg, option):
    cfg = make_cfg([f"loss={option}"], fast=False)
    loss = hydra.utils.instantiate(cfg.loss)
    value = loss(torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float())
    assert value.ndim == 0 and torch.isfinite(value)


# what each option must build: the optimizer's exact class and learning rate, the scheduler's exact class
OPTIMIZERS = {"adamw": (torch.optim.AdamW, 1e-3), "amsgrad": (torch.optim.Adam, 1e-3), "sgd": (torch.optim.SGD, 1e-2)}
SCHEDULERS = {"cosine": torch.optim.lr_scheduler.CosineAnnealingLR, "none": None,
              "onecycle": torch.optim.lr_scheduler.OneCycleLR, "plateau": torch.optim.lr_scheduler.ReduceLROnPlateau,
              "step": torch.optim.lr_scheduler.StepLR}


def configured_optimizer(cfg) -> tuple[torch.optim.Optimizer, object]:
    """(optimizer, scheduler or None) as Lightning gets them from the module built from `cfg`."""
    module = build_module(cfg)
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()  # what configure_optimizers reads
    out = module.configure_optimizers()
    if isinstance(out, dict):
        return out["optimizer"], out["lr_scheduler"]["scheduler"]
    return out, None


def test_every_optimizer_and_scheduler_option_has_its_expected_build():
    assert set(options("optimizer")) == set(OPTIMIZERS) and set(options("scheduler")) == set(SCHEDULERS)


@pytest.mark.parametrize("option", options("optimizer"))
@pytest.mark.parametrize("sched", options("scheduler"))
def test_optimizer_and_scheduler_options(make_cfg, option, sched):
    cfg = make_cfg([f"optimizer={option}", f"scheduler={sched}"], fast=False)
    optimizer, scheduler = configured_optimizer(cfg)
    cls, lr = OPTIMIZERS[option]
    assert type(optimizer) is cls and optimizer.defaults["lr"] == pytest.approx(lr)
    assert optimizer.defaults.get("amsgrad", False) is (option == "amsgrad")
    assert (type(scheduler) if scheduler is not None else None) is SCHEDULERS[sched]


# the run's callbacks in order: evaluation callbacks read what tuning stored, the report reads what they add;
# the plain progress lines for log files (ProgressLog) beside the rich bar
DEFAULT_CALLBACKS = ["ModelCheckpoint", "ModelCheckpoint", "EarlyStopping", "LearningRateMonitor", "RichProgressBar",
                     "ProgressLog", "WandbSegmentationImages", "PostprocessTuning", "InstanceMetrics", "RegionScores",
                     "UncertaintyEvaluation", "WandbUncertaintyHeatmaps", "ProgressSnapshots", "ReportFigures",
                     "WandbRunOutputs"]
PRESET_CALLBACKS = [c for c in DEFAULT_CALLBACKS if c != "EarlyStopping"]  # budgeted presets stop on time


@pytest.mark.parametrize(("overrides", "callbacks", "optimizer", "lr", "scheduler"), [
    ([], DEFAULT_CALLBACKS, torch.optim.Adam, 1e-3, torch.optim.lr_scheduler.CosineAnnealingLR),
    (["experiment=cpu"], PRESET_CALLBACKS, torch.optim.Adam, 3e-3, torch.optim.lr_scheduler.OneCycleLR),
    (["experiment=isbi_cpu"], PRESET_CALLBACKS, torch.optim.Adam, 3e-3, torch.optim.lr_scheduler.OneCycleLR),
])
def test_default_and_preset_callback_order_optimizer_lr_and_scheduler(make_cfg, overrides, callbacks, optimizer,
                                                                       lr, scheduler):
    cfg = make_cfg(overrides, fast=False)
    assert [type(c).__name__ for c in instantiate_callbacks(cfg.callbacks, has_logger=True)] == callbacks
    opt, sched = configured_optimizer(cfg)
    assert type(opt) is optimizer and opt.defaults["amsgrad"] is True and opt.defaults["lr"] == pytest.approx(lr)
    assert type(sched) is scheduler


# the strategy each trainer option must give (accelerator and devices are forced to one CPU here)
STRATEGY = {"ddp": "DDPStrategy", "ddp_cpu": "DDPStrategy"}


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(make_cfg, option):
    cfg = make_cfg([f"trainer={option}", "trainer.accelerator=cpu", "trainer.devices=1"], fast=False)
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer.strategy).__name__ == STRATEGY.get(option, "SingleDeviceStrategy")
    file = preset_values("trainer", option)
    assert trainer.max_epochs == file.get("max_epochs", preset_values("trainer", "default")["max_epochs"])
    # the atomic checkpoint writer of default.yaml reaches every option
    assert type(trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(make_cfg, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg([f"logger={option}"], fast=False)
    loggers = instantiate_loggers(cfg.get("logger"))
    assert len(loggers) == (0 if option == "none" else 1)


def test_loggers_compose_as_a_list(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_cfg(["logger=[csv,tensorboard]"], fast=False)
    assert {type(lg).__name__ for lg in instantiate_loggers(cfg.logger)} == {"CSVLogger", "TensorBoardLogger"}


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options(make_cfg, option):
    cfg = make_cfg([f"callbacks={option}"], fast=False)
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=True)
    assert len(callbacks) == len([v for v in (cfg.get("callbacks") or {}).values() if v is not None])


@pytest.mark.parametrize("option", options("augment"))
def test_augment_options_instantiate(make_cfg, option):
    cfg = make_cfg([f"augment={option}"], fast=False)
    transforms = hydra.utils.instantiate(cfg.augment.transforms)
    assert len(transforms) == len(cfg.augment.transforms)


@pytest.mark.parametrize("option", [f"debug={d}" for d in options("debug")]
                         + [f"experiment={e}" for e in options("experiment")])
def test_debug_and_experiment_presets_set_their_values(make_cfg, option):
    """Every value a preset file sets (and the `_` files it inherits) lands at its global key."""
    group, name = option.split("=")
    cfg = make_cfg([option], fast=False)
    OmegaConf.resolve(cfg)  # every interpolation resolves
    expected = preset_values(group, name)
    assert expected or name == "default", f"{option} sets nothing"
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, f"{option}: {key}"


@pytest.fixture(scope="module")
def user_paths(dsb_root, tmp_path_factory):
    """The paths the data options without a default need, filled with three real images."""
    out = tmp_path_factory.mktemp("data_options")
    ids = sorted(p.name for p in dsb_root.iterdir() if (p / "masks").is_dir())[:3]
    kaggle, csv_path, _ = write_kaggle_test_set(dsb_root, ids, out / "kaggle")
    folder = write_user_folder(dsb_root, ids, out / "folder")
    return {"folder": [f"data.root={folder}"],
            "dsb2018_test": [f"data.source.root={kaggle}"],
            "dsb2018_solution": [f"data.source.images_root={kaggle}", f"data.source.csv_path={csv_path}"]}


def _present(data_dir, option):
    """How many labelled images the option's default root holds, counted on disk (not a constant)."""
    if option == "dsb2018":
        return sum((p / "masks").is_dir() for p in (data_dir / "dsb2018" / "stage1_train").iterdir())
    return len(list((data_dir / "isbi2012" / "train" / "images").glob("*.png")))


@pytest.mark.parametrize("option", options("data"))
def test_data_options_set_up_their_splits(make_cfg, option, user_paths, data_dir):
    cfg = make_cfg([f"data={option}", *user_paths.get(option, [])], fast=False)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    sizes = {k: len(dm.splits.get(k, [])) for k in ("train", "val", "test")}
    if option == "isbi2012":  # the unlabelled test slices, served for prediction only
        assert len(dm.splits["predict"]) == len(list((data_dir / "isbi2012" / "test" / "images").glob("*.png")))
    if option in user_paths:  # the three images given; evaluation sets are all test
        assert sum(sizes.values()) == 3
        if option != "folder":
            assert sizes == {"train": 0, "val": 0, "test": 3}
    else:
        assert sum(sizes.values()) == _present(data_dir, option)
        assert min(sizes["train"], sizes["val"], sizes["test"]) > 0


def test_data_options_without_a_default_path_are_named(make_cfg):
    """Each option with a `???` path fails before any data is read, naming the key (a `???` merged over an
    inherited root would silently keep the inherited one: dsb2018_test once tested on stage1_train)."""
    for option, keys in (("folder", ["data.root"]), ("dsb2018_test", ["data.source.root"]),
                         ("dsb2018_solution", ["data.source.images_root", "data.source.csv_path"])):
        bad = violations(make_cfg([f"data={option}"], fast=False), "train")
        assert [m.split(":")[0] for m in bad] == keys, option


def test_one_callback_per_file():
    for path in sorted((CONF_DIR / "callbacks").glob("*.yaml")):
        if path.stem in ("default", "none"):  # the lists of callbacks
            continue
        assert [k for k in OmegaConf.load(path) if k != "defaults"] == [path.stem], path.name


@pytest.mark.parametrize("method", ["mc_dropout", "tta", "ensemble"])
def test_uncertainty_yaml_states_the_typed_defaults(make_cfg, method):
    """The composed `uncertainty` config (conf/uncertainty/_base.yaml + <method>.yaml, what users read and
    override) holds exactly the defaults of `UncertaintySettings`, which fill an old checkpoint's missing keys:
    the two cannot drift apart."""
    from nucseg.settings import UncertaintySettings

    composed = OmegaConf.to_container(make_cfg([f"uncertainty={method}"], fast=False).uncertainty)
    typed = UncertaintySettings.for_method(method).to_dict()
    assert isinstance(composed, dict)
    assert set(composed) <= set(typed), set(composed) - set(typed)
    assert composed == {k: typed[k] for k in composed}
    # a checkpoint written before the other keys existed resolves to the same defaults (score aside: legacy)
    old = UncertaintySettings.from_mapping({"method": method}, has_mc_dropout=method == "mc_dropout")
    assert old is not None and old.review_budget == composed["review_budget"] == 0.1
    assert old.min_val_failures == composed["min_val_failures"] and old.failure_dice == composed["failure_dice"]
    assert old.score == "dice_agreement" != composed["score"]
