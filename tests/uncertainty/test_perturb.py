"""nucseg.uncertainty.perturb: the perturbed validation copies of shift calibration."""

from __future__ import annotations

import pytest
import torch

from nucseg.uncertainty.perturb import PERTURBATIONS, perturb, perturbed_copy


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand((1, 3, 32, 40), generator=g)


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_each_family_changes_the_image_more_at_a_higher_strength(image, kind):
    weak = perturb(image, kind, 0.3, torch.Generator().manual_seed(3))
    strong = perturb(image, kind, 1.0, torch.Generator().manual_seed(3))
    assert weak.shape == image.shape and float(strong.min()) >= 0.0 and float(strong.max()) <= 1.0
    d_weak, d_strong = float((weak - image).abs().mean()), float((strong - image).abs().mean())
    assert d_strong > 0.01
    if kind == "invert":
        assert torch.allclose(strong, 1 - image) and d_weak == d_strong
    else:
        assert d_strong > d_weak
        assert torch.allclose(perturb(image, kind, 0.0, torch.Generator().manual_seed(3)), image, atol=0.02)


def test_copies_take_the_families_in_turn_reproducibly(image):
    def copies(seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [perturbed_copy(image, i, g) for i in range(len(PERTURBATIONS) + 1)]

    a, b = copies(1), copies(1)
    assert [k for _, k, _ in a] == [*PERTURBATIONS, PERTURBATIONS[0]]
    assert all(torch.equal(x, y) and s == t for (x, _, s), (y, _, t) in zip(a, b, strict=True))
    assert all(0.25 <= s <= 1.0 for _, _, s in a)
    with pytest.raises(ValueError, match="kind 'fog'"):
        perturb(image, "fog", 0.5)
