"""The `augment=` presets instantiate and run on a real image + mask; CLAHE reaches val, test and predict."""

from __future__ import annotations

import albumentations as A
import hydra
import numpy as np
import pytest

from nucseg.data.datamodule import SegDataModule
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.isbi2012 import ISBI2012Source
from nucseg.data.transforms import train_transform


@pytest.fixture(scope="module")
def square_sample(dsb_root):
    """A real 256x256 image with its instance labels."""
    src = DSB2018Source(dsb_root)
    for rid in sorted(p.name for p in dsb_root.iterdir()):
        image, labels = src.load(rid)
        if image.shape[:2] == (256, 256) and labels.max() > 5:
            return image, labels
    raise AssertionError("no 256x256 sample in stage1_train")


def _dihedral(a: np.ndarray) -> list[np.ndarray]:
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, r[:, ::-1]]
    return out


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_each_preset_instantiates_and_runs(preset, make_cfg, square_sample):
    cfg = make_cfg([f"augment={preset}"])
    transforms = hydra.utils.instantiate(cfg.augment.transforms)
    assert all(isinstance(t, A.BasicTransform) for t in transforms)
    assert len(transforms) == {"none": 0, "light": 3, "strong": 9}[preset]
    image, labels = square_sample
    # crop = whole image, so what remains is the augmentation itself
    pipeline = train_transform(256, transforms)
    rng_outputs = [pipeline(image=image, mask=labels) for _ in range(8)]
    for out in rng_outputs:
        assert out["image"].shape == (256, 256, 3) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (256, 256)
        assert set(np.unique(out["mask"]).tolist()) <= set(np.unique(labels).tolist())  # labels never blended
    if preset == "none":
        assert all(np.array_equal(o["image"], image) and np.array_equal(o["mask"], labels) for o in rng_outputs)
    if preset == "light":  # flips and 90-degree turns are exact: image and mask move together
        for o in rng_outputs:
            hits = [k for k, (im, m) in enumerate(zip(_dihedral(image), _dihedral(labels), strict=True))
                    if np.array_equal(o["image"], im) and np.array_equal(o["mask"], m)]
            assert hits, "output is not a flip/rotation of the input"
    if preset == "strong":  # photometric changes happen, geometry keeps nuclei
        assert any(not np.array_equal(o["image"], image) for o in rng_outputs)
        assert all((o["mask"] > 0).sum() > 0.5 * (labels > 0).sum() for o in rng_outputs)


def test_clahe_applies_to_val_test_and_predict(data_dir, cache_dir):
    # deterministic: the clip limit is pinned (a bare 2.0 means "sample from (1, 2)" to albumentations)
    clahe = A.CLAHE(clip_limit=(2.0, 2.0), tile_grid_size=(8, 8), p=1.0)
    src = ISBI2012Source(data_dir / "isbi2012")
    kw = {"cache_dir": str(cache_dir), "val_fraction": 0.2, "test_fraction": 0.2, "crop_size": 64,
          "batch_size": 2, "num_workers": 0}
    on, off = SegDataModule(src, clahe=True, **kw), SegDataModule(src, clahe=False, **kw)
    for loader in ("val_dataloader", "test_dataloader", "predict_dataloader"):
        a = next(iter(getattr(on, loader)()))
        b = next(iter(getattr(off, loader)()))
        assert a["id"] == b["id"]
        raw, _ = src.load(a["id"][0])
        expected = clahe(image=raw)["image"]
        got = (a["image"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, expected), loader
        plain = (b["image"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(plain, raw) and not np.array_equal(got, plain), loader
        again = (next(iter(getattr(on, loader)()))["image"][0].permute(1, 2, 0).numpy() * 255).round()
        assert np.array_equal(again.astype(np.uint8), got), loader  # the same input every epoch
