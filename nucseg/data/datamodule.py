"""One LightningDataModule for every source: deterministic stratified split, random crops for training,
whole images (padded to a multiple of 32 by the model wrapper) for validation and test.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from nucseg.data.acquisitions import grouped_split
from nucseg.data.io import ImageReadError
from nucseg.data.source import CachedSource, Record, Source
from nucseg.data.transforms import eval_transform, train_transform
from nucseg.utils.errors import ConfigError

log = logging.getLogger(__name__)


def stratified_split(records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int
                     ) -> dict[str, list[str]]:
    """Split ids into train/val/test per imaging group, so each split keeps the groups' proportions.

    Deterministic for a seed and a set of ids (independent of file-system order). Records that carry a
    fixed split (e.g. unlabelled test slices) keep it.
    """
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_group: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.split:
            out.setdefault(r.split, []).append(r.id)
        else:
            by_group[r.group].append(r.id)
    rng = np.random.default_rng(seed)
    for group in sorted(by_group):
        ids = sorted(by_group[group])
        rng.shuffle(ids)
        n = len(ids)
        n_test = int(math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
        n_val = int(math.floor(n * val_fraction + 0.5)) if val_fraction > 0 else 0
        if n >= 3:  # a group big enough to split is represented in each requested split
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test, n_val = min(n_test, n), min(n_val, max(n - n_test, 0))
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test:n_test + n_val]
        out["train"] += ids[n_test + n_val:]
    return {k: sorted(v) for k, v in out.items()}


SPLIT_BY = ("acquisition", "image")


def split_records(records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int,
                  split_by: str = "acquisition", holdout_types: Sequence[str] = ()) -> dict[str, list[str]]:
    """train / val / test ids. `split_by=acquisition` keeps each acquisition group (near-copies) in one split
    (sources without acquisition groups fall back to images); `image` splits images independently. Images of
    an imaging type in `holdout_types` all go to test (leave-one-type-out: the model never sees the type)."""
    if split_by not in SPLIT_BY:
        raise ConfigError(f"data.split_by: expected one of {SPLIT_BY}, got {split_by!r}")
    holdout = set(holdout_types or ())
    unknown = holdout - {r.group for r in records}
    if unknown:
        raise ConfigError(f"data.holdout_types: {sorted(unknown)} not among the imaging types "
                         f"{sorted({r.group for r in records})}")
    held = sorted(r.id for r in records if r.group in holdout and not r.split)
    rest = [r for r in records if r.id not in set(held)]
    free = [r for r in rest if not r.split]
    if split_by == "acquisition" and free and all(r.acquisition for r in free):
        out = grouped_split([r.id for r in free], [r.group for r in free], [str(r.acquisition) for r in free],
                            val_fraction, test_fraction, seed)
        for r in rest:
            if r.split:
                out.setdefault(r.split, []).append(r.id)
    else:
        out = stratified_split(rest, val_fraction, test_fraction, seed)
    out["test"] = sorted(out.get("test", []) + held)
    return {k: sorted(v) for k, v in out.items()}


def check_group_balance(balance: float) -> float:
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"data.group_balance: expected a number in [0, 1], got {balance}")
    return float(balance)


def group_weights(groups: Sequence[str], balance: float) -> np.ndarray:
    """Per-image sampling weights that rebalance imaging types: an image of a group of n images gets
    n ** -balance (normalised to sum 1). balance=0 draws images uniformly (groups in proportion to their
    size), 1 draws every group equally often, 0.5 in proportion to sqrt(n): rare types are seen more often
    without repeating their few images as often as full balance would."""
    check_group_balance(balance)
    counts: dict[str, int] = defaultdict(int)
    for g in groups:
        counts[g] += 1
    w = np.array([counts[g] ** -balance for g in groups], dtype=np.float64)
    return w / w.sum()


def binary_targets(labels: np.ndarray) -> np.ndarray:
    """Foreground target (1, H, W) from an instance label map."""
    return (labels > 0)[None].astype(np.float32)


class SegmentationDataset(Dataset):
    """Samples as dicts: image (3,H,W) float in [0,1], target (K,H,W), labels (H,W) int32, id."""

    def __init__(self, source: CachedSource, ids: Sequence[str], transform, target_fn: Callable,
                 length: int | None = None):
        self.source, self.ids, self.transform, self.target_fn = source, list(ids), transform, target_fn
        self.length = length or len(self.ids)
        self._seed: int | None = None

    def __len__(self) -> int:
        return self.length

    def _seed_transform(self) -> None:
        """Albumentations draws from its own RNG, which `seed_everything` does not touch and which DataLoader
        workers would each inherit as the same copy: seed it from torch's per-process seed (set by
        `seed_everything`, different in each worker), so runs repeat and workers differ."""
        seed = torch.initial_seed() % 2**32
        if seed != self._seed and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
            self._seed = seed

    def __getitem__(self, index: int) -> dict:
        self._seed_transform()
        rid = self.ids[index % len(self.ids)]
        try:
            image, labels = self.source.load(rid)
            labelled = labels is not None
            if labels is None:
                labels = np.zeros(image.shape[:2], np.int32)
            if labels.shape != image.shape[:2]:
                raise ImageReadError(f"labels of shape {labels.shape} differ from the image's {image.shape[:2]}")
            out = self.transform(image=image, mask=labels.astype(np.int32))
        except Exception as exc:  # name the sample even when the error comes from inside a worker
            inner = getattr(self.source, "source", self.source)  # CachedSource -> the Source it wraps
            where = inner.location(rid)
            if isinstance(exc, ImageReadError) and where in str(exc):
                raise
            raise ImageReadError(f"{where} (record {rid!r} of {inner.name}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        image, labels = out["image"], out["mask"].astype(np.int32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
            "target": torch.from_numpy(self.target_fn(labels)),
            "labels": torch.from_numpy(labels),
            "labelled": labelled,
            "id": rid,
        }


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
    ):
        """`validate` checks every record's files up front (see `Source.check`). Images above
        `large_image_mp` megapixels are logged by name: training crops them like any other, but whole-image
        validation/test/prediction memory grows with the area. `root` is informational: configs whose
        source root is a mandatory user setting (`data=folder data.root=...`) keep it here and pass it on to
        the source by interpolation. `group_balance` (0..1) oversamples rare imaging types in training
        (see `group_weights`); validation and test are never reweighted. `split_by` and `holdout_types`: see
        `split_records`."""
        super().__init__()
        self.source = source
        self.cached = CachedSource(source, cache_dir)
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

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        train = split == "train"
        dataset = self.dataset(split)
        sampler = None
        if train and self.group_balance:
            # draws image indices (the dataset maps index i to image i % n); Lightning wraps it for DDP
            sampler = WeightedRandomSampler(torch.from_numpy(self.train_weights()), num_samples=len(dataset),
                                            replacement=True)
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


def collate(samples: list[dict]) -> dict:
    out: dict = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def resolve_targets(targets: str | Callable) -> Callable:
    """'binary' -> foreground only; 'instance' -> foreground + contour channels (nucseg.instances.targets)."""
    if callable(targets):
        return targets
    if targets == "binary":
        return binary_targets
    if targets == "instance":
        from nucseg.instances.targets import instance_targets

        return instance_targets
    raise ValueError(f"data.targets: expected 'binary' or 'instance', got {targets!r}")
