"""Uncertainty: pixel maps and image certainty on hand-computed samples, the certainty-vs-quality statistics on
known inputs, reproducible and encoder-once MC sampling, TTA / ensemble sampling, configs, and an end-to-end
Bayesian U-Net run that writes the metrics and the W&B heatmaps."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from nucseg.models.factory import build_model
from nucseg.models.mc_dropout import has_mc_dropout
from nucseg.models.module import load_module
from nucseg.models.padding import pad_to_multiple
from nucseg.settings import CertaintyScore
from nucseg.uncertainty.ood import FeatureDensity
from nucseg.uncertainty.review import choose_review_threshold, review_reason
from nucseg.uncertainty.sampling import (
    encoder_once_passes,
    encoder_once_supported,
    eval_mode,
    full_passes,
    resolve_settings,
    sample_probs,
)
from nucseg.uncertainty.scores import (
    budget_threshold,
    failure_auroc,
    image_certainty,
    image_scores,
    pixel_uncertainty,
    spearman,
    youden_threshold,
)
from tests.helpers.marks import LONG_RUN


def _samples(values) -> torch.Tensor:
    """(T, W) foreground probabilities of one 1-row image -> (T, B=1, K=1, H=1, W)."""
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None, :]


def _mc_net(where: str = "decoder", arch: str = "unet", rate: float = 0.5):
    torch.manual_seed(0)
    return build_model(arch, "resnet18", encoder_depth=3, mc_dropout={"rate": rate, "where": where}).eval()


# --------------------------------------------------------------------------- pixel maps / image certainty
def test_pixel_uncertainty_hand_computed():
    # pixels: agree at 0.5 (aleatoric only) | disagree 0 vs 1 (epistemic) | agree at 0.2
    maps = pixel_uncertainty(_samples([[0.5, 0.0, 0.2], [0.5, 1.0, 0.2]]))
    h02 = -(0.2 * math.log2(0.2) + 0.8 * math.log2(0.8))  # 0.7219 bits
    assert maps["mean"][0, 0].tolist() == pytest.approx([0.5, 0.5, 0.2])
    assert maps["entropy"][0, 0].tolist() == pytest.approx([1.0, 1.0, h02], abs=1e-5)
    assert maps["mutual_info"][0, 0].tolist() == pytest.approx([0.0, 1.0, 0.0], abs=1e-5)
    assert maps["variance"][0, 0].tolist() == pytest.approx([0.0, 0.25, 0.0], abs=1e-7)
    assert all(v.shape == (1, 1, 3) for v in maps.values())
    # population variance over T = 4: mean 0.4, squared deviations 0.09, 0.01, 0.01, 0.09
    var = pixel_uncertainty(_samples([[0.1], [0.3], [0.5], [0.7]]))["variance"]
    assert var.item() == pytest.approx(0.05, abs=1e-6)


def test_pixel_uncertainty_uses_foreground_channel_only():
    s = torch.zeros(3, 2, 3, 4, 4)
    s[:, :, 1:] = 0.5  # contour channels must not matter
    maps = pixel_uncertainty(s)
    assert maps["entropy"].abs().max() == 0 and maps["mean"].shape == (2, 4, 4)
    with pytest.raises(ValueError, match=r"\(T,B,K,H,W\)"):
        pixel_uncertainty(torch.zeros(3, 4, 4))


def test_image_certainty_is_mean_dice_agreement_with_the_mean_mask():
    # mean = [0.9, 0.5, 0.1, 0.1] -> mean mask [1, 0, 0, 0] (0.5 is not above the threshold)
    # sample masks [1,1,0,0]: Dice 2*1/(2+1) = 2/3; [1,0,0,0]: Dice 1 -> certainty 5/6
    s = _samples([[0.9, 0.9, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]])
    assert image_certainty(s).item() == pytest.approx(5 / 6)
    # all samples empty: they agree perfectly
    assert image_certainty(_samples([[0.1, 0.2], [0.3, 0.0]])).item() == 1.0
    # batch of two images keeps the batch axis
    two = torch.cat([s, _samples([[0.9, 0.9, 0.9, 0.9]] * 2)], dim=1)
    assert image_certainty(two).tolist() == pytest.approx([5 / 6, 1.0])
    scores = image_scores(s)
    assert scores["dice_agreement"].item() == pytest.approx(5 / 6)
    mean_entropy = pixel_uncertainty(s)["entropy"].mean().item()
    assert scores["entropy"].item() == pytest.approx(1 - mean_entropy)


def test_heatmap_colours_run_from_blue_to_red_on_a_fixed_scale():
    from nucseg.viz.plots import heat_colors, pad_to_common_size

    low, mid, high = heat_colors(np.array([[0.0, 0.5, 1.0]]))[0].astype(int)
    assert low[2] > 100 and low[0] < 50  # blue = least uncertain
    assert high[0] > 100 and high[2] < 50  # red = most uncertain
    assert heat_colors(np.array([[2.0]]))[0, 0].tolist() == high.tolist()  # clipped to the scale
    a, b = pad_to_common_size([np.zeros((2, 3, 3), np.uint8), np.zeros((4, 1, 3), np.uint8)])
    assert a.shape == b.shape == (4, 3, 3) and a[3, 0, 0] == 255


# --------------------------------------------------------------------------- does certainty predict quality?
def test_spearman_on_known_inputs():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: y ranks [1, 2, 3.5, 5, 3.5] -> Pearson of ranks with [1..5]
    rx, ry = np.arange(1, 6.0), np.array([1, 2, 3.5, 5, 3.5])
    expected = np.corrcoef(rx, ry)[0, 1]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(expected)
    assert math.isnan(spearman([1, 2], [1, 2])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_failure_auroc_on_known_inputs():
    dice = [0.9, 0.8, 0.5, 0.3]  # failures (< 0.7): images 2 and 3
    assert failure_auroc([0.9, 0.8, 0.3, 0.2], dice, 0.7) == 1.0  # failures are the least certain
    assert failure_auroc([0.2, 0.3, 0.8, 0.9], dice, 0.7) == 0.0
    # pairs (failure, good) with lower failure certainty: (.6,.9) (.2,.9) (.2,.4) of 4 -> 0.75
    assert failure_auroc([0.9, 0.4, 0.6, 0.2], dice, 0.7) == pytest.approx(0.75)
    assert failure_auroc([0.5, 0.5, 0.5, 0.5], dice, 0.7) == pytest.approx(0.5)  # ties count half
    assert math.isnan(failure_auroc([0.1, 0.2], [0.9, 0.95], 0.7))  # no failures: undefined


def test_youden_review_threshold():
    dice = [0.9, 0.8, 0.5, 0.3]
    # perfect separation: midway between the most certain failure (0.3) and the least certain success (0.8)
    assert youden_threshold([0.9, 0.8, 0.3, 0.2], dice, 0.7) == pytest.approx(0.55)
    # J = 0.5 at t = 0.3 and at t = 0.75: the lower one (fewer reviews) wins
    assert youden_threshold([0.9, 0.4, 0.6, 0.2], dice, 0.7) == pytest.approx(0.3)
    assert youden_threshold([0.9, 0.8], [0.9, 0.9], 0.7) == pytest.approx(0.8)  # no failures: flag none seen
    t = youden_threshold([0.9, 0.8], [0.1, 0.2], 0.7)  # all failed: flag all
    assert t > 0.9 and all(c < t for c in (0.9, 0.8))


def test_budget_review_threshold_flags_the_least_certain_share():
    cert = [0.9, 0.8, 0.3, 0.2, 0.5]  # sorted: 0.2 0.3 | 0.5 0.8 0.9
    assert budget_threshold(cert, 0.4) == pytest.approx(0.4)  # ceil(0.4 * 5) = 2 flagged
    assert budget_threshold(cert, 0.1) == pytest.approx(0.25)  # ceil(0.5) = 1 flagged
    assert budget_threshold(cert, 0.0) == pytest.approx(0.2)  # none below the lowest
    assert budget_threshold(cert, 1.0) > 0.9  # all


def test_auto_review_threshold_falls_back_to_the_budget_with_few_validation_failures():
    cert = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.91, 0.90]
    dice = [0.9] * 9 + [0.5]  # one failure, the least certain image
    s = resolve_settings({"method": "mc_dropout", "review_budget": 0.2}, _mc_net())
    chosen = choose_review_threshold(cert, dice, s.failure_dice, s.min_val_failures, s.review_budget)
    assert chosen.value == pytest.approx(0.915) and chosen.rule == "budget"
    assert (chosen.n_images, chosen.n_failures) == (10, 1)
    # enough failures: Youden's J, between 0.90 and 0.91
    chosen = choose_review_threshold(cert, dice, s.failure_dice, 1, s.review_budget)
    assert chosen.value == pytest.approx(0.905) and chosen.rule == "youden_j"
    with pytest.raises(ValueError, match="no labelled validation images"):
        choose_review_threshold([], [], 0.7, 5, 0.1)
    with pytest.raises(ValueError, match="uncertainty.review_budget"):
        resolve_settings({"method": "mc_dropout", "review_budget": 2}, _mc_net())


# --------------------------------------------------------------------------- sampling
def test_mc_sampling_is_reproducible_with_a_seed_and_leaves_the_global_rng_alone():
    net = _mc_net()
    x = torch.rand(2, 3, 40, 56)
    torch.manual_seed(123)
    a = sample_probs(net, x, samples=4, seed=7)
    after = torch.rand(3)
    torch.manual_seed(123)
    b = sample_probs(net, x, samples=4, seed=7)
    assert torch.equal(after, torch.rand(3))  # the caller's RNG stream is unchanged by the seeded call
    assert a.shape == (4, 2, 1, 40, 56) and torch.equal(a, b)
    assert (a - sample_probs(net, x, samples=4, seed=8)).abs().max() > 1e-3  # other masks, other samples
    assert (a[0] - a[1]).abs().max() > 1e-3  # the samples differ from each other
    assert not net.training


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_encoder_once_equals_full_passes_under_the_same_seed(arch):
    net = _mc_net(arch=arch)
    assert encoder_once_supported(net)
    x, _ = pad_to_multiple(torch.rand(2, 3, 40, 40), 32)
    with eval_mode(net, mc_dropout=True), torch.no_grad():
        torch.manual_seed(5)
        naive = full_passes(net, x, samples=3, batch_size=4)  # chunks of 4 of the 6 stacked copies
        torch.manual_seed(5)
        fast = encoder_once_passes(net, x, samples=3, batch_size=4)
    assert naive.shape == (3, 2, 1, 64, 64)
    torch.testing.assert_close(fast, naive, rtol=1e-4, atol=1e-5)
    assert (naive[0] - naive[1]).abs().max() > 1e-3  # dropout was active


def test_encoder_dropout_falls_back_to_full_passes():
    net = _mc_net(where="both")
    assert has_mc_dropout(net) and not encoder_once_supported(net)
    with pytest.raises(ValueError, match="decoder"):
        encoder_once_passes(net, torch.rand(1, 3, 32, 32), 2)
    x = torch.rand(1, 3, 32, 32)
    with eval_mode(net, mc_dropout=True), torch.no_grad():
        torch.manual_seed(3)
        naive = full_passes(net, x, 3)
    torch.testing.assert_close(sample_probs(net, x, samples=3, seed=3), naive)


def test_tta_and_ensemble_give_T_B_K_H_W():
    torch.manual_seed(0)
    a = build_model("unet", "resnet18", encoder_depth=3, classes=3).eval()
    b = build_model("unet", "resnet18", encoder_depth=3, classes=3).eval()
    x = torch.rand(2, 3, 36, 44)
    tta = sample_probs(a, x, method="tta")
    assert tta.shape == (8, 2, 3, 36, 44)
    assert sample_probs(a, x, method="tta", tta_ops="flips").shape == (3, 2, 3, 36, 44)
    padded, _ = pad_to_multiple(x, 32)
    with torch.no_grad():
        det = torch.sigmoid(a(padded))[..., :36, :44]
        det_b = torch.sigmoid(b(padded))[..., :36, :44]
    torch.testing.assert_close(tta[0], det)  # identity op = the deterministic pass
    ens = sample_probs(None, x, method="ensemble", models=[a, b])
    assert ens.shape == (2, 2, 3, 36, 44)
    torch.testing.assert_close(ens[0], det)
    torch.testing.assert_close(ens[1], det_b)
    # TTA on a model with MC dropout switches the dropout off (deterministic per op)
    net = _mc_net()
    torch.testing.assert_close(sample_probs(net, x, method="tta", seed=1), sample_probs(net, x, method="tta", seed=2))


def test_configuration_errors_name_the_keys():
    plain = build_model("unet", "resnet18", encoder_depth=3)
    with pytest.raises(ValueError, match=r"uncertainty.method=mc_dropout.*model.mc_dropout"):
        sample_probs(plain, torch.rand(1, 3, 32, 32), samples=2)
    with pytest.raises(ValueError, match="model.mc_dropout"):
        resolve_settings({"method": "mc_dropout"}, plain)
    with pytest.raises(ValueError, match="uncertainty.method"):
        sample_probs(plain, torch.rand(1, 3, 32, 32), method="bootstrap")
    with pytest.raises(ValueError, match="uncertainty.checkpoints"):
        sample_probs(plain, torch.rand(1, 3, 32, 32), method="ensemble")
    with pytest.raises(ValueError, match="review_threshold"):
        resolve_settings({"method": "tta", "review_threshold": "often"}, plain)
    assert resolve_settings({"method": "none"}, plain) is None
    assert resolve_settings(None, _mc_net()).method == "mc_dropout"  # MC dropout is evaluated by default
    with pytest.raises(ValueError, match="uncertainty.score"):
        resolve_settings({"method": "tta", "score": "vibes"}, plain)


def test_a_checkpoint_without_a_score_keeps_the_score_its_review_threshold_was_chosen_on():
    plain = build_model("unet", "resnet18", encoder_depth=3)
    # written before uncertainty.score existed: its threshold is a Dice agreement, whatever the default now
    assert resolve_settings({"method": "tta", "review_threshold": 0.9}, plain).score == "dice_agreement"
    assert resolve_settings({"method": "tta", "score": "fg_entropy"}, plain).score == "fg_entropy"


def test_bayes_unet_config_selects_mc_dropout(make_cfg):
    cfg = make_cfg(["model=bayes_unet"], fast=False)
    assert cfg.model.mc_dropout.where == "decoder" and cfg.model.arch == "unet"
    assert cfg.uncertainty.method == "mc_dropout" and cfg.module.uncertainty.samples == 20
    assert make_cfg(["model=bayes_unet", "uncertainty=tta"], fast=False).uncertainty.method == "tta"
    assert make_cfg(["model=unet"], fast=False).uncertainty.method == "none"
    cfg = make_cfg(["model=unetpp", "model.encoder_name=resnet18", "model.encoder_depth=3",
                    "model.mc_dropout={rate: 0.3, where: decoder}", "uncertainty=mc_dropout"], fast=False)
    import hydra

    net = hydra.utils.instantiate(cfg.model)
    assert has_mc_dropout(net) and encoder_once_supported(net)
    assert make_cfg(["uncertainty=ensemble"], fast=False).uncertainty.include_self is True


def test_uncertainty_callbacks_are_no_ops_for_a_plain_model():
    from nucseg.callbacks.uncertainty import UncertaintyEvaluation
    from nucseg.callbacks.wandb_uncertainty import WandbUncertaintyHeatmaps
    from nucseg.models.module import SegmentationModule

    module = SegmentationModule(net={"_target_": "nucseg.models.factory.build_model", "arch": "unet",
                                     "encoder_name": "resnet18", "encoder_depth": 3},
                                uncertainty={"method": "none"})
    cb, heat = UncertaintyEvaluation(), WandbUncertaintyHeatmaps()
    cb.setup(None, module, "fit")
    heat.setup(None, module, "fit")
    cb.on_test_start(None, module)  # no trainer needed: nothing is sampled, read or written
    batch = {"image": torch.rand(1, 3, 32, 32), "target": torch.zeros(1, 1, 32, 32), "labelled": [True], "id": ["a"]}
    cb.on_test_batch_end(None, module, {"probs": torch.rand(1, 1, 32, 32)}, batch, 0)
    cb.on_test_epoch_end(None, module)
    assert cb.settings is None and cb.rows == [] and heat._settings is None
    bad = SegmentationModule(net=dict(module.hparams.net), uncertainty={"method": "mc_dropout"})
    with pytest.raises(ValueError, match="model.mc_dropout"):  # fails at setup, before any training
        cb.setup(None, bad, "fit")


def test_validation_and_test_passes_are_deterministic_for_an_mc_dropout_model():
    """Checkpoint selection must not rank one random dropout sample: outside training, predict_logits
    switches MC dropout off (and restores it), while training steps and the uncertainty sampler keep it."""
    from nucseg.models.module import SegmentationModule

    module = SegmentationModule(net={"_target_": "nucseg.models.factory.build_model", "arch": "unet",
                                     "encoder_name": "resnet18", "encoder_depth": 3,
                                     "mc_dropout": {"rate": 0.5, "where": "decoder"}})
    x = torch.rand(1, 3, 40, 56)
    module.eval()
    with torch.no_grad():
        a, b = module.predict_logits(x), module.predict_logits(x)
        with eval_mode(module.net, mc_dropout=False):
            reference = module.net(pad_to_multiple(x)[0])[..., :40, :56]
        sampled = sample_probs(module.net, x, method="mc_dropout", samples=2, seed=0)
    assert a.shape == (1, 1, 40, 56) and torch.equal(a, b) and torch.allclose(a, reference)
    assert all(m.enabled for m in module.net.mc_dropouts)  # restored after the deterministic pass
    assert not torch.equal(sampled[0], sampled[1])  # the sampler still draws different masks
    module.train()
    with torch.no_grad():
        assert not torch.equal(module.predict_logits(x), module.predict_logits(x))


# --------------------------------------------------------------------------- end to end
@LONG_RUN
def test_bayes_unet_run_logs_uncertainty_metrics_and_wandb_heatmaps(make_cfg, tmp_path, monkeypatch, dsb_root,
                                                                    cache_dir):
    from nucseg.train import train
    from nucseg.utils.run_lifecycle import finish_wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(["model=bayes_unet", "logger=wandb", "uncertainty.samples=4", "trainer.limit_test_batches=4",
                    "callbacks.uncertainty.num_heatmaps=2", "callbacks.wandb_uncertainty.num_images=1",
                    "callbacks.wandb_uncertainty.samples=2", "callbacks.progress_snapshots.steps=[1]",
                    "callbacks.progress_snapshots.num_images=2", "callbacks.instance_metrics=null"])
    try:
        train(cfg)
    finally:
        finish_wandb()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/certainty_spearman", "test/failure_auroc", "test/ece", "test/dice_mc", "test/dice",
                "test/dice_deterministic", "test/ece_deterministic", "val/review_threshold"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/ece"] <= 1.0 and 0.0 <= metrics["test/dice_mc"] <= 1.0

    # the logged statistics are those of the per-image table
    out = tmp_path / "uncertainty"
    rows = list(csv.DictReader((out / "test_images.csv").open()))
    assert len(rows) == 4
    cert = [float(r["certainty"]) for r in rows]
    dice = [float(r["dice_mc"]) for r in rows]
    assert all(0.0 <= c <= 1.0 for c in cert)
    assert metrics["test/dice_mc"] == pytest.approx(np.mean(dice), abs=1e-6)
    dice_det = [float(r["dice_det"]) for r in rows]
    assert metrics["test/dice_deterministic"] == pytest.approx(np.mean(dice_det), abs=1e-6)
    rho = spearman(cert, dice)
    assert (metrics["test/certainty_spearman"] is None) == math.isnan(rho)
    if not math.isnan(rho):
        assert metrics["test/certainty_spearman"] == pytest.approx(rho, abs=1e-6)
    auroc = failure_auroc(cert, dice, cfg.uncertainty.failure_dice)
    assert (metrics["test/failure_auroc"] is None) == math.isnan(auroc)
    if not math.isnan(auroc):
        assert metrics["test/failure_auroc"] == pytest.approx(auroc, abs=1e-6)
    threshold = metrics["val/review_threshold"]
    unlike = [r["unlike_training"] == "True" for r in rows]
    assert [r["needs_review"] == "True" for r in rows] == [c < threshold or u for c, u in zip(cert, unlike,
                                                                                              strict=True)]
    trust = json.loads((out / "trust.json").read_text())
    assert unlike == [float(r["ood_score"]) > trust["ood_threshold"] for r in rows]
    assert [r["review_reason"] for r in rows] == [review_reason(c < threshold, u) for c, u in zip(cert, unlike,
                                                                                                  strict=True)]
    cal = trust["calibration"]
    assert metrics["val/temperature"] == pytest.approx(cal["temperature"]) and cal["temperature"] != 1.0
    assert 0.0 <= metrics["test/ece_calibrated"] <= 1.0 and metrics["test/ece_calibrated_val"] != metrics["test/ece"]
    # shift calibration: images unlike the training data get the temperature of the perturbed copies
    assert cal["temperature_unlike"] != pytest.approx(cal["temperature"], abs=1e-3)
    assert metrics["val/temperature_unlike"] == pytest.approx(cal["temperature_unlike"])
    assert "val/temperature_pooled" in metrics and "test/ece_calibrated_pooled" in metrics
    if any(unlike):
        assert metrics["test/ece_calibrated"] != metrics["test/ece_calibrated_val"]
    else:
        assert metrics["test/ece_calibrated"] == metrics["test/ece_calibrated_val"]
    # the run's per_image.csv joins the uncertainty rows (every candidate score) on the image id
    per_image = {r["id"]: r for r in csv.DictReader((tmp_path / "per_image.csv").open())}
    assert set(per_image) == {r["id"] for r in rows}
    assert all(f"score_{s}" in next(iter(per_image.values())) for s in CertaintyScore.values())

    # the run's own figures carry the certainty of each image and its heatmap
    fig_rows = {r["id"]: r for r in csv.DictReader((tmp_path / "figures" / "per_image.csv").open())}
    assert {r["id"]: pytest.approx(float(r["certainty"]), abs=1e-6) for r in rows} == \
        {k: float(v["certainty"]) for k, v in fig_rows.items()}
    assert (tmp_path / "figures" / "certainty_vs_dice.png").is_file()
    chosen = json.loads((out / "review_threshold.json").read_text())
    assert chosen["review_threshold"] == pytest.approx(threshold)
    assert chosen["score"] == "fg_entropy"  # the default the trust protocol's table chose
    assert [float(r["certainty"]) for r in rows] == pytest.approx([float(r["score_fg_entropy"]) for r in rows])
    assert (out / "reliability.png").stat().st_size > 5000
    assert len(list((out / "heatmaps").glob("*.png"))) == 2
    assert (tmp_path / "progress" / "progress_grid.png").is_file()
    steps = [s["step"] for s in json.loads((tmp_path / "progress" / "progress.json").read_text())["snapshots"]]
    assert steps == [1, 2]  # the chosen step and the end of training (2 batches)
    from nucseg.data.dsb2018 import DSB2018Source

    group = {r.id: r.group for r in DSB2018Source(dsb_root, index_dir=cache_dir).records()}
    ids = json.loads((tmp_path / "progress" / "progress.json").read_text())["ids"]
    assert [group[i] for i in ids] == ["fluorescence", "stained"]  # one image per imaging type, commonest first

    # the tested checkpoint now carries the review threshold chosen on the validation split
    module = load_module(metrics["best_model_path"])
    assert module.hparams.uncertainty["review_threshold"] == pytest.approx(threshold)
    # ... and the temperature and the OOD density fitted with the tested weights
    assert module.hparams.calibration == pytest.approx(cal)
    assert module.hparams.ood["threshold"] == pytest.approx(trust["ood_threshold"])
    density = FeatureDensity.from_dict(module.hparams.ood["density"])
    assert density.mean.size == 3 + 64 + 64 + 128  # resnet18 at depth 3, the input stage included
    assert has_mc_dropout(module.net)

    # W&B offline run: the heatmap, reliability and progress images were logged
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    media = runs[0] / "files" / "media" / "images"
    assert len(list((media / "test").glob("uncertainty_heatmaps_*.png"))) == 2
    assert len(list((media / "test").glob("reliability_diagram_*.png"))) == 1
    assert len(list((media / "val").glob("uncertainty_heatmaps_*.png"))) >= 1
    assert len(list((media / "train").glob("progress_*.png"))) == 2


def test_ensemble_members_load_from_checkpoint_globs(tmp_path):
    from nucseg.models.module import SegmentationModule
    from nucseg.uncertainty.sampling import checkpoint_paths, load_ensemble

    for seed in (1, 2):
        torch.manual_seed(seed)
        module = SegmentationModule(net={"_target_": "nucseg.models.factory.build_model", "arch": "unet",
                                         "encoder_name": "resnet18", "encoder_depth": 3})
        torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
                   tmp_path / f"seed{seed}.ckpt")
    members = load_ensemble([str(tmp_path / "seed*.ckpt")])
    assert len(members) == 2 and all(not m.training for m in members)
    samples = sample_probs(None, torch.rand(1, 3, 40, 40), method="ensemble", models=members)
    assert samples.shape == (2, 1, 1, 40, 40) and (samples[0] - samples[1]).abs().max() > 1e-4
    with pytest.raises(FileNotFoundError, match="uncertainty.checkpoints"):
        checkpoint_paths([str(tmp_path / "missing*.ckpt")])


@LONG_RUN
def test_plain_model_is_a_no_op_and_tta_and_ensemble_run_through_the_test_callback(tmp_path, data_dir, cache_dir):
    from nucseg.train import train
    from tests.helpers.config import FAST_OVERRIDES, compose_cfg

    base = FAST_OVERRIDES + ["logger=csv", "callbacks.instance_metrics=null", "trainer.limit_test_batches=3"]
    for seed in (1, 2):  # two members with different initialisations
        train(compose_cfg(base + [f"seed={seed}"], tmp_path / f"seed{seed}", data_dir=data_dir, cache_dir=cache_dir))
    plain = json.loads((tmp_path / "seed1" / "metrics.json").read_text())
    assert "test/dice" in plain and "test/certainty_spearman" not in plain  # no uncertainty for a plain U-Net
    assert not (tmp_path / "seed1" / "uncertainty").exists()
    ckpt = tmp_path / "seed1" / "checkpoints" / "last.ckpt"
    for method, extra in [("tta", ["uncertainty.tta_ops=flips"]),
                          ("ensemble", [f"uncertainty.checkpoints=[{tmp_path}/seed2/checkpoints/last.ckpt]"])]:
        out = tmp_path / method
        train(compose_cfg(base + ["train=false", f"ckpt_path={ckpt}", f"uncertainty={method}",
                                  "uncertainty.review_threshold=0.9", *extra], out,
                          data_dir=data_dir, cache_dir=cache_dir))
        metrics = json.loads((out / "metrics.json").read_text())
        assert 0.0 <= metrics["test/ece"] <= 1.0 and metrics["val/review_threshold"] == pytest.approx(0.9)
        rows = list(csv.DictReader((out / "uncertainty" / "test_images.csv").open()))
        assert len(rows) == 3
        assert [r["needs_review"] == "True" for r in rows] == [float(r["certainty"]) < 0.9 for r in rows]


@pytest.mark.parametrize(("ood", "key"), [({"quantile": 1.5}, "ood.quantile"), ({"components": 0}, "ood.components"),
                                          ({"neighbors": 5}, "unknown key")])
def test_a_bad_ood_setting_is_named_before_training(ood, key):
    from nucseg.callbacks.uncertainty import UncertaintyEvaluation

    with pytest.raises(ValueError, match=key):
        UncertaintyEvaluation(ood=ood)
    assert UncertaintyEvaluation(ood={"max_train_images": None}).ood_cfg["max_train_images"] is None
