"""Sliding-window inference: tiles cover the image without gaps, blending is normalised, sizes come back."""

from __future__ import annotations

import pytest
import torch

from nucseg.inference.sliding_window import blend_weights, sliding_window_inference, tile_starts


def test_tile_starts_cover_without_gaps():
    assert tile_starts(100, 128, 0.25) == [0]
    assert tile_starts(128, 128, 0.25) == [0]
    assert tile_starts(300, 128, 0.25) == [0, 96, 172]  # stride 96, last tile flush with the end
    assert tile_starts(256, 128, 0.0) == [0, 128]
    for size, tile, ov in [(1000, 256, 0.1), (513, 512, 0.5), (2049, 512, 0.25)]:
        starts = tile_starts(size, tile, ov)
        covered = torch.zeros(size, dtype=torch.bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all() and starts[-1] + tile == size and starts == sorted(set(starts))


def test_gaussian_weights_peak_in_centre_and_stay_positive():
    w = blend_weights(64, 96)
    assert w.shape == (64, 96) and w.max() == 1.0 and w.min() >= 1e-6
    assert w[32, 48] > w[32, 10] > w[32, 0] and w[0, 0] < w[0, 48]
    assert torch.equal(blend_weights(8, 8, "constant"), torch.ones(8, 8))
    with pytest.raises(ValueError, match="blend"):
        blend_weights(8, 8, "cosine")


@pytest.mark.parametrize("shape", [(1, 3, 300, 257), (2, 3, 97, 1100), (1, 1, 512, 512), (1, 3, 385, 449)])
def test_pointwise_fn_equals_whole_image_pass(shape):
    """For a pointwise fn every tile sees the same values as the whole image: the blend reproduces it."""
    torch.manual_seed(0)
    x = torch.rand(shape)
    out = sliding_window_inference(lambda t: torch.cat([t * 2, t[:, :1] - 1], 1), x, tile=128, overlap=0.25)
    assert out.shape == (shape[0], shape[1] + 1, *shape[2:]) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, :-1], x * 2, rtol=0, atol=2e-6)
    torch.testing.assert_close(out[:, -1:], x[:, :1] - 1, rtol=0, atol=2e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_weight_normalisation_is_exact(blend):
    """A constant prediction stays exactly constant: the weights are divided by their own sum."""
    x = torch.zeros(1, 3, 333, 401)
    out = sliding_window_inference(lambda t: torch.ones(t.shape[0], 2, *t.shape[-2:]), x, tile=64,
                                   overlap=0.5, blend=blend, tile_batch_size=3)
    assert torch.equal(out, torch.ones(1, 2, 333, 401))


def test_blending_averages_tiles_with_their_weights():
    """fn returns a tile-dependent constant: with constant blending an overlap pixel gets the plain mean."""
    calls = []

    def fn(t):
        calls.append(t.shape)
        return torch.full((t.shape[0], 1, *t.shape[-2:]), float(len(calls)))

    out = sliding_window_inference(fn, torch.zeros(1, 1, 64, 96), tile=64, overlap=0.5, blend="constant")
    assert tile_starts(96, 64, 0.5) == [0, 32] and len(calls) == 2
    assert torch.equal(out[0, 0, :, :32], torch.full((64, 32), 1.0))
    assert torch.equal(out[0, 0, :, 32:64], torch.full((64, 32), 1.5))
    assert torch.equal(out[0, 0, :, 64:], torch.full((64, 32), 2.0))


def test_small_image_is_one_padded_pass():
    """An image smaller than a tile goes through fn once, padded to the stride, and is cropped back."""
    seen = []

    def fn(t):
        seen.append(tuple(t.shape))
        return t[:, :1] + 1

    x = torch.rand(1, 3, 37, 50)
    out = sliding_window_inference(fn, x, tile=256, pad_multiple=32)
    assert seen == [(1, 3, 64, 64)]
    assert torch.equal(out, x[:, :1] + 1)


def test_long_thin_image_pads_only_the_short_side():
    seen = []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        return t

    x = torch.rand(1, 1, 20, 300)
    out = sliding_window_inference(fn, x, tile=128, overlap=0.0, pad_multiple=32)
    assert set(seen) == {(32, 128)} and len(seen) == 3
    torch.testing.assert_close(out, x, rtol=0, atol=2e-6)


def test_gaussian_blend_hides_tile_seams_of_a_conv_model():
    """A real convolution (zero padding at tile borders): the Gaussian blend down-weights the wrong border
    pixels of each tile, so it is far closer to the whole-image pass than plain averaging."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.rand(1, 3, 200, 200)
    whole = conv(x).detach()
    errs = {}
    for blend in ("gaussian", "constant"):
        tiled = sliding_window_inference(conv, x, tile=64, overlap=0.5, pad_multiple=32, blend=blend)
        assert tiled.shape == whole.shape
        errs[blend] = (tiled - whole).abs()[..., 1:-1, 1:-1]  # the image's own border is padded either way
    assert errs["gaussian"].mean() < 2e-4 and errs["gaussian"].max() < 0.05
    assert errs["constant"].mean() > 20 * errs["gaussian"].mean()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="tile"):
        sliding_window_inference(lambda t: t, torch.zeros(1, 1, 8, 8), tile=100, pad_multiple=32)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(lambda t: t, torch.zeros(1, 1, 8, 8), tile=64, overlap=1.0)
    with pytest.raises(ValueError, match="fn must map"):
        sliding_window_inference(lambda t: t[..., :10], torch.zeros(1, 1, 300, 300), tile=64)


def test_half_precision_outputs_are_blended_in_float32_on_the_output_device():
    x = torch.rand(1, 1, 150, 150)
    out = sliding_window_inference(lambda t: t.bfloat16(), x, tile=64, overlap=0.25, output_device="cpu")
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, x, rtol=0, atol=4e-3)  # bfloat16 keeps ~3 significant digits
