"""One LightningDataModule for every source: deterministic stratified split (`nucseg.data.splits`), random
crops for training, whole images (padded to a multiple of 32 by the model wrapper) for validation and test.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from nucseg.data.dataset import SegmentationDataset, collate, resolve_targets
from nucseg.data.source import CachedSource, Source
from nucseg.data.splits import SPLIT_BY, check_group_balance, group_weights, split_records
from nucseg.data.transforms import eval_transform, train_transform
from nucseg.utils.errors import ConfigError, ImageReadError

log = logging.getLogger(__name__)


class SegDataModule(L.LightningDataModule):
    """Split a Source, cache decoded samples, and serve crops (train) or whole images (val/test/predict)."""

    def __init__(
        self,
        source: Source,
        cache_dir: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        crop_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        augment: Sequence | None = None,
        clahe: bool = False,
        targets: str | Callable = "binary",
        pin_memory: bool = False,
        validate: bool = True,
        large_image_mp: float = 16.0,
        root: str | None = None,
        group_balance: float = 0.0,
        split_by: str = "acquisition",
        holdout_types: Sequence[str] = (),
        memory_cache_mb: float = 0,
    ):
        """`validate` checks every record's files up front (see `Source.check`). Images above
        `large_image_mp` megapixels are logged by name: training crops them like any other, but whole-image
        validation/test/prediction memory grows with the area. `root` is informational: configs whose
        source root is a mandatory user setting (`data=folder data.root=...`) keep it here and pass it on to
        the source by interpolation. `group_balance` (0..1) oversamples rare imaging types in training
        (see `group_weights`); validation and test are never reweighted. `split_by` and `holdout_types`: see
        `split_records`. `memory_cache_mb`: decoded records kept in memory per process (`CachedSource`)."""
        super().__init__()
        self.source = source
        self.cached = CachedSource(source, cache_dir, memory_mb=memory_cache_mb)
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.crop_size, self.batch_size, self.num_workers = crop_size, batch_size, num_workers
        self.samples_per_epoch, self.augment, self.clahe = samples_per_epoch, list(augment or []), clahe
        self.pin_memory = pin_memory
        self.target_fn = resolve_targets(targets)
        self.validate, self.large_image_mp, self.root = validate, large_image_mp, root
        self.group_balance = check_group_balance(group_balance)  # fail at instantiation, not at setup
        if split_by not in SPLIT_BY:
            raise ConfigError(f"data.split_by: expected one of {SPLIT_BY}, got {split_by!r}")
        self.split_by, self.holdout_types = split_by, list(holdout_types or [])
        self.splits: dict[str, list[str]] | None = None
        self.groups: dict[str, str] = {}
        if cache_dir:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None:
            records = self.source.records()
            self.groups = {r.id: r.group for r in records}
            splits = split_records(records, self.val_fraction, self.test_fraction, self.split_seed,
                                   self.split_by, self.holdout_types)
            if self.validate:
                self._validate(splits)
            self.splits = splits
            log.info("split of %s by %s: %s", self.source.name, self.split_by,
                     {k: len(v) for k, v in self.splits.items()})
            if self.group_balance and splits.get("train"):
                shares: dict[str, float] = defaultdict(float)
                train = splits["train"]
                for rid, w in zip(train, self.train_weights(), strict=True):
                    shares[self.groups[rid]] += float(w)
                log.info("data.group_balance=%g: training draws per imaging type %s", self.group_balance,
                         {g: f"{v:.1%}" for g, v in sorted(shares.items())})

    def train_weights(self) -> np.ndarray:
        """Sampling weight of each training image, in the order of `splits['train']`."""
        assert self.splits is not None
        return group_weights([self.groups.get(rid, "all") for rid in self.splits["train"]], self.group_balance)

    def _validate(self, splits: dict[str, list[str]]) -> None:
        """Check every record's files before any worker starts; report all bad files at once."""
        errors: list[str] = []
        sizes: dict[str, tuple[int, int]] = {}
        ids = [rid for v in splits.values() for rid in v]
        for rid in ids:
            try:
                size = self.source.check(rid)
            except Exception as exc:
                msg = str(exc)
                where = self.source.location(rid)
                errors.append(msg if where in msg else f"{where}: {type(exc).__name__}: {msg}")
                continue
            if size is not None:
                sizes[rid] = size
        if errors:
            shown = "\n  - ".join(errors[:20])
            more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
            raise ImageReadError(f"{len(errors)} of {len(ids)} samples of {self.source.name} failed validation "
                                 f"(fix or remove them, or set data.validate=false to skip this check):"
                                 f"\n  - {shown}{more}")
        small = [rid for rid in splits.get("train", []) if rid in sizes and min(sizes[rid]) < self.crop_size]
        if small:
            log.warning("%d training image(s) are smaller than data.crop_size=%d and are reflect-padded to it, "
                        "e.g. %s", len(small), self.crop_size,
                        ", ".join(f"{self.source.location(r)} ({sizes[r][0]}x{sizes[r][1]})" for r in small[:5]))
        large = [rid for rid, (h, w) in sizes.items() if h * w > self.large_image_mp * 1e6]
        for rid in large[:20]:
            h, w = sizes[rid]
            log.warning("%s is %dx%d (%.1f megapixels, above data.large_image_mp=%g): training uses random crops, "
                        "but validation/test/prediction run on the whole image and their memory grows with its area",
                        self.source.location(rid), h, w, h * w / 1e6, self.large_image_mp)
        if len(large) > 20:
            log.warning("... and %d more images above %g megapixels", len(large) - 20, self.large_image_mp)

    def dataset(self, split: str) -> SegmentationDataset:
        self.setup()
        assert self.splits is not None
        ids = self.splits.get(split, [])
        if not ids:
            raise ValueError(f"split '{split}' of {self.source.name} is empty; check data.val_fraction / "
                             "data.test_fraction")
        if split == "train":
            return SegmentationDataset(self.cached, ids, train_transform(self.crop_size, self.augment, self.clahe),
                                       self.target_fn, self.samples_per_epoch)
        return SegmentationDataset(self.cached, ids, eval_transform(self.clahe), self.target_fn)

    def whole_image_loader(self, split: str, max_images: int | None = None) -> DataLoader:
        """Whole images of `split` as validation sees them (no augmentation, batches of 1), at most
        `max_images` of them spread evenly over the split (e.g. training images for the OOD density)."""
        self.setup()
        assert self.splits is not None
        ids = list(self.splits.get(split, []))
        if not ids:
            raise ValueError(f"split '{split}' of {self.source.name} is empty")
        if max_images is not None and len(ids) > int(max_images):
            ids = [ids[i] for i in np.linspace(0, len(ids) - 1, int(max_images)).round().astype(int)]
        dataset = SegmentationDataset(self.cached, ids, eval_transform(self.clahe), self.target_fn)
        return DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0, collate_fn=collate)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        train = split == "train"
        dataset = self.dataset(split)
        sampler = None
        if train and self.group_balance:
            # draws image indices (the dataset maps index i to image i % n); Lightning wraps it for DDP
            weights = torch.from_numpy(self.train_weights())
            sampler = WeightedRandomSampler(weights, num_samples=len(dataset), replacement=True)  # type: ignore[arg-type]
            shuffle = False
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else 1,  # whole images differ in size
            shuffle=shuffle,
            sampler=sampler,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The unlabelled images a dataset sets aside for prediction (e.g. ISBI's test slices), else the test split."""
        self.setup()
        assert self.splits is not None
        return self._loader("predict" if self.splits.get("predict") else "test", shuffle=False)
