"""The inference engine as a library: a checkpoint in, nuclei out, for one image or many.

    import nucseg
    p = nucseg.Predictor.from_checkpoint("runs/x/checkpoints/model.ckpt")
    r = p.predict(image)          # any (H, W) or (H, W, C) array, 8/16-bit or float
    r.labels, r.probability, r.nuclei, r.certainty, r.needs_review, r.review_reason, r.ood_score

Everything about the model (network, input normalisation, CLAHE, post-processing, uncertainty method and
review threshold, the calibration temperature and the out-of-distribution density) comes from the
checkpoint; arguments left None keep the checkpoint's settings. `python -m nucseg.predict` is a loop over
`Predictor.predict_files` plus the writers of `nucseg.inference.writers`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nucseg.checks import check_config
from nucseg.data.io import read_raw, to_rgb
from nucseg.data.normalize import IntensityCheck, normalize_checked
from nucseg.inference.prediction import Prediction
from nucseg.inference.sliding_window import sliding_window_inference
from nucseg.inference.tta import tta_mean
from nucseg.instances.measure import measure_instances
from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.calibration import image_temperature
from nucseg.models.bioimageio_reader import is_package, load_package_module
from nucseg.models.mc_dropout import set_mc_dropout
from nucseg.models.module import SegmentationModule, load_module
from nucseg.settings import LEGACY_SCORE, Blend, UncertaintyMethod, UncertaintySettings, WindowSettings
from nucseg.uncertainty.ood import FeatureDensity, FeatureTap
from nucseg.uncertainty.review import needs_review
from nucseg.uncertainty.sampling import load_ensemble, resolve_settings, sample_probs
from nucseg.uncertainty.scores import image_scores, pixel_uncertainty
from nucseg.utils.errors import CheckpointError

__all__ = ["Prediction", "Predictor", "resolve_device"]

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch.device understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _merge(base: dict | None, overrides: dict | None) -> dict:
    """The checkpoint's settings with the non-null overrides on top."""
    out = dict(base or {})
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return out


def _drop_alpha(raw: np.ndarray) -> np.ndarray:
    """Intensities for measurement: (H, W) or (H, W, C) without an alpha channel."""
    if raw.ndim == 3 and raw.shape[-1] in (2, 4):
        return raw[..., : 1 if raw.shape[-1] == 2 else 3]
    return raw


class Predictor:
    """A loaded model plus the inference settings: an image of any size and bit depth -> nuclei.

    Build it with `Predictor.from_checkpoint(path)`; the constructor takes an already loaded module. The
    settings stored with the model (tuned post-processing, uncertainty method, review threshold, temperatures,
    OOD density) are used unless overridden.

    Example:
        >>> from nucseg import Predictor
        >>> predictor = Predictor.from_checkpoint("outputs/train/runs/<run>/checkpoints/model.ckpt")  # doctest: +SKIP
        >>> result = predictor.predict_file("cells.png")  # doctest: +SKIP
        >>> result.count, result.needs_review, result.nuclei.head()  # doctest: +SKIP
    """

    def __init__(self, module: SegmentationModule, device: str | torch.device = "cpu",
                 tile: int = WindowSettings.tile, overlap: float = WindowSettings.overlap,
                 blend: str = WindowSettings.blend, tile_batch_size: int = WindowSettings.tile_batch_size,
                 tta: bool | str | Sequence[str] | None = False, postprocess: dict | None = None,
                 uncertainty: dict | None = None, ood_threshold: float | str | None = None):
        check_settings(device=str(device), tile=tile, overlap=overlap, blend=blend, tile_batch_size=tile_batch_size,
                       postprocess=postprocess, uncertainty=uncertainty)
        self.module = module.eval()
        self.device = resolve_device(device)
        self.module.to(self.device)
        hp = module.hparams
        self.clahe = bool(hp.get("clahe", False))
        self.normalization = dict(hp.get("normalization") or {})
        self.postprocess = _merge(hp.get("postprocess"), postprocess)
        self.uncertainty, self.members = self._uncertainty_settings(uncertainty)
        self.calibration = dict(hp.get("calibration") or {})
        self.density, self.ood_threshold = _ood_settings(hp.get("ood"), ood_threshold)
        self.method = str(self.uncertainty.method) if self.uncertainty else "none"
        self.window = WindowSettings(tile=tile, overlap=overlap, blend=Blend.parse(blend, "blend"),
                                     tile_batch_size=tile_batch_size)
        self.tta = None if tta in (False, None, "none", "false") else ("all" if tta is True else tta)
        if isinstance(self.tta, str) and self.tta not in ("flips", "all"):
            raise ValueError(f"tta: expected false, flips, all or a list of op names, got {tta!r}")
        if self.method != "none" and self.review_threshold() is None:
            log.warning("uncertainty.review_threshold of the checkpoint is %r, not a number: needs_review is left "
                        "empty; pass uncertainty.review_threshold=<value>, or use the run's checkpoints/model.ckpt "
                        "(last.ckpt is for resuming training)",
                        self.uncertainty.review_threshold if self.uncertainty else None)
        if self.postprocess.get("tune") and not self.postprocess.get("tuned") and not postprocess:
            log.warning("the checkpoint's post-processing was to be tuned on validation but holds no tuned values: "
                        "predicting with the defaults; use the run's checkpoints/model.ckpt (last.ckpt is for "
                        "resuming training) or `python -m nucseg.tune ckpt_path=...`")
        if self.tta and self.method != "none":
            log.info("tta=%s ignored: the model's uncertainty method (%s) already averages its samples",
                     self.tta, self.method)
        from nucseg.data.transforms import preprocessing  # albumentations + cv2: not at `import nucseg.predict`

        pre = preprocessing(self.clahe)
        self._preprocess: Callable[[np.ndarray], np.ndarray] = (
            (lambda img: pre[0](image=img)["image"]) if pre else (lambda img: img))

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", tile: int | None = None,
                        overlap: float | None = None, tta: bool | str | Sequence[str] | None = None,
                        uncertainty: dict | None = None, postprocess: dict | None = None,
                        blend: str | None = None, tile_batch_size: int | None = None,
                        ood_threshold: float | str | None = None) -> Predictor:
        """Load a checkpoint written by `python -m nucseg.train` (weights only, strictly), or a bioimage.io
        package (.zip) written from one by `nucseg.export_model`.

        Args:
            path: the checkpoint or package.
            device: "cpu", "cuda", "cuda:1" or "auto".
            tile: sliding-window tile side in pixels, a multiple of 32 (None: `WindowSettings.tile`, 512).
            overlap: fraction of a tile that neighbours share (None: 0.25).
            tta: "flips" or "all" averages flipped / rotated passes for models without an uncertainty method
                (None / False: off).
            uncertainty: keys of the stored uncertainty settings to change (e.g. `{"method": "none"}`,
                `{"samples": 8}`); absent or None keys keep the checkpoint's values.
            postprocess: keys of the stored post-processing to change (e.g. `{"min_size": 30}`).
            blend: "gaussian" or "constant" tile blending (None: gaussian).
            tile_batch_size: tiles per forward pass (None: 1).
            ood_threshold: the OOD score above which an image is "unlike the training data" (None: the
                checkpoint's; "off": no OOD flag).

        Returns:
            A Predictor on `device`.

        Raises:
            ConfigError: a bad argument, named with what was expected.
            CheckpointError: a file that is not a nucseg checkpoint or package, or that does not fit.
        """
        given = {"tile": tile, "overlap": overlap, "blend": blend, "tile_batch_size": tile_batch_size}
        check_settings(ckpt_path=str(path), device=str(device), postprocess=postprocess, uncertainty=uncertainty,
                       ood_threshold=ood_threshold, **{k: v for k, v in given.items() if v is not None})
        window = WindowSettings.from_values(**given)
        return cls(_load_model(path), device=device, postprocess=postprocess, uncertainty=uncertainty,
                   tile=window.tile, overlap=window.overlap, blend=window.blend,
                   tile_batch_size=window.tile_batch_size, tta=tta or False, ood_threshold=ood_threshold)

    def _uncertainty_settings(self, overrides: dict | None) -> tuple[UncertaintySettings | None, list]:
        """The checkpoint's uncertainty settings with the overrides; None for one deterministic pass
        (then a model's MC dropout is switched off)."""
        net = self.module.net
        merged = _merge(self.module.hparams.get("uncertainty"), overrides)
        # method=none asked for explicitly: no sampling, even for a model with MC dropout
        off = (overrides or {}).get("method") == "none"
        settings = None if off else resolve_settings(merged, net)
        set_mc_dropout(net, settings is not None and settings.method is UncertaintyMethod.MC_DROPOUT)
        members: list = []
        if settings and settings.method is UncertaintyMethod.ENSEMBLE:
            members = load_ensemble(settings.checkpoints, device=self.device)
            if settings.include_self:
                members = [net, *members]
        return settings, members

    # ------------------------------------------------------------------------------------------- input
    def prepare(self, image: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, C) array, C in 1-4 (alpha ignored), any dtype -> (H, W, 3) uint8 as the model saw
        images in training (percentile normalisation, optional CLAHE)."""
        return self.prepare_checked(image)[0]

    def prepare_checked(self, image: np.ndarray) -> tuple[np.ndarray, IntensityCheck]:
        """`prepare`, and what the normalisation found (non-finite pixels, a constant image)."""
        image = np.asarray(image)
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 2, 3, 4)):
            raise ValueError(f"image: expected an (H, W) or (H, W, C) array with 1-4 channels, got shape "
                             f"{image.shape}")
        normalized, check = normalize_checked(to_rgb(image), **self.normalization)
        return self._preprocess(normalized), check

    # ------------------------------------------------------------------------------------------- network
    def _probs_fn(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.module.predict_logits(x))

    def _window(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """`fn` over the tiles of the (1, 3, H, W) uint8 image `x`, each tile scaled to [0, 1] floats on its own:
        a float copy of a whole 8192-px image would cost 0.8 GB."""
        return sliding_window_inference(lambda t: fn(t.float().div(255.0)), x, tile=self.window.tile,
                                        overlap=self.window.overlap, blend=self.window.blend,
                                        pad_multiple=int(self.module.pad_multiple),
                                        tile_batch_size=self.window.tile_batch_size, output_device="cpu")

    def probabilities(self, image: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """A prepared (H, W, 3) uint8 image (see `prepare`) -> the (1, K, H, W) float32 probabilities on the
        CPU (uncalibrated: what the post-processing was tuned on), and the (T, 1, K, H, W) uncertainty samples
        (None without an uncertainty method)."""
        return self._probabilities(image)

    @torch.no_grad()
    def _probabilities(self, image: np.ndarray) -> tuple[Tensor, Tensor | None]:
        # a (1, 3, H, W) view of the (H, W, 3) array: tiles are copied out of it, the image is not
        x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1)[None].to(self.device)
        if self.method == "none":
            ops: Any = self.tta  # "flips", "all" or a list of op names
            fn = self._probs_fn if not ops else (lambda t: tta_mean(self._probs_fn, t, ops))
            return self._window(fn, x), None
        samples = self._window_samples(x)
        return samples.mean(0), samples

    def _window_samples(self, x: Tensor) -> Tensor:
        """Uncertainty samples tile by tile: the T samples are stacked on the channel axis so that the
        sliding window blends each sample like any other output channel. Each tile is sampled alone under the
        same seed, so sample t uses the same dropout masks in every tile (one coherent model draw per sample)."""
        assert self.uncertainty is not None
        u = self.uncertainty
        shape: dict[str, int] = {}

        def fn(tiles: Tensor) -> Tensor:
            outs = []
            for tile in tiles.split(1):
                s = sample_probs(self.module.net, tile, u.method, u.samples,
                                 seed=u.seed, models=self.members, batch_size=u.batch_size, tta_ops=u.tta_ops,
                                 pad_multiple=int(self.module.pad_multiple))  # (T, 1, K, h, w)
                shape["T"], shape["K"] = s.shape[0], s.shape[2]
                outs.append(s.transpose(0, 1).reshape(1, -1, *s.shape[-2:]))
            return torch.cat(outs)

        out = self._window(fn, x)  # (B, T*K, H, W)
        return out.reshape(x.shape[0], shape["T"], shape["K"], *x.shape[-2:]).transpose(0, 1)

    def review_threshold(self) -> float | None:
        """needs_review = certainty < this; None when the settings hold no numeric threshold."""
        value = self.uncertainty.review_threshold if self.uncertainty else None
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    # ------------------------------------------------------------------------------------------- results
    def predict(self, image: np.ndarray) -> Prediction:
        """Segment, count and measure the nuclei of one image.

        Args:
            image: (H, W) or (H, W, C) array, C in 1-4 (an alpha channel is ignored), uint8, uint16 or float;
                normalised here as in training. Nucleus intensities are measured in the array's own units.

        Returns:
            A `Prediction`: (H, W) int32 `labels`, (K, H, W) `probs`, the `nuclei` table, and with an
            uncertainty method the `certainty`, its maps, `needs_review` and `review_reason`.
        """
        raw = np.asarray(image)
        prepared, check = self.prepare_checked(raw)
        if self.density is not None:  # the encoder features come with the prediction's own passes
            with FeatureTap(self.module.net) as tap:
                probs, samples = self._probabilities(prepared)
            feats = tap.features()
        else:
            probs, samples, feats = *self._probabilities(prepared), None
        probs_np = probs[0].float().cpu().numpy()
        labels = probs_to_instances(probs_np, **self.postprocess)
        pred = Prediction(labels=labels, probs=probs_np, image=prepared,
                          nuclei=measure_instances(labels, _drop_alpha(raw)),
                          nonfinite_pixels=check.nonfinite_pixels, warning=check.warning)
        thr = None
        if samples is not None:
            maps = pixel_uncertainty(samples)
            pred.uncertainty = {k: _foreground_map(v) for k, v in maps.items() if k != "mean"}
            score = str(self.uncertainty.score) if self.uncertainty else str(LEGACY_SCORE)
            pred.certainty = float(image_scores(samples, float(self.module.threshold))[score][0])
            thr = self.review_threshold()
            pred.review_threshold = thr
        if self.density is not None and feats is not None:
            pred.ood_score = float(self.density.score(feats)[0])
            pred.unlike_training = pred.ood_score > self.ood_threshold
            pred.ood_threshold = float(self.ood_threshold)
        pred.temperature = image_temperature(self.calibration, pred.unlike_training)
        flagged, pred.review_reason = needs_review(pred.certainty, thr, bool(pred.unlike_training), pred.warning)
        if thr is not None or pred.unlike_training is not None or pred.warning:  # else nothing to judge by: None
            pred.needs_review = flagged
        return pred

    def predict_file(self, path: str | Path) -> Prediction:
        """`predict` on an image file (PNG, TIFF, JPEG, BMP); ImageReadError names a file that cannot be read."""
        return self.predict(read_raw(path))

    def predict_files(self, paths: Iterable[str | Path]) -> Iterator[tuple[Path, Prediction | Exception]]:
        """(path, Prediction) per file, or (path, the exception) for a file that could not be read or
        processed: one bad file does not stop the rest. Lazy: each file is processed when it is asked for."""
        for path in map(Path, paths):
            try:
                result: Prediction | Exception = self.predict_file(path)
            except Exception as exc:  # one bad file must not stop a folder of hundreds
                result = exc
            yield path, result


def check_settings(**settings: Any) -> None:
    """The library's arguments against the rules of `python -m nucseg.predict` (nucseg.checks): a bad
    value raises one ConfigError naming it, before a checkpoint is read or an image touched."""
    from omegaconf import OmegaConf

    check_config(OmegaConf.create({k: v for k, v in settings.items() if v is not None}), "predictor")


def _load_model(path: str | Path) -> SegmentationModule:
    """A checkpoint, or a bioimage.io package exported by nucseg."""
    return load_package_module(path) if is_package(path) else load_module(path)


def _ood_settings(stored: dict | None, threshold: float | str | None) -> tuple[FeatureDensity | None, float]:
    """The checkpoint's OOD density and threshold, the threshold overridden by `threshold` ("off": none)."""
    if threshold == "off" or not (stored or {}).get("density"):
        return None, math.inf
    try:
        density = FeatureDensity.from_dict(stored["density"])  # type: ignore[index]
    except ValueError as exc:  # a checkpoint edited or truncated by hand: one clear line, not a traceback
        raise CheckpointError(f"the checkpoint's hyper-parameters: {exc}") from exc
    return density, float(threshold if threshold is not None else stored.get("threshold", math.inf))  # type: ignore[union-attr]


def _foreground_map(t: Tensor) -> np.ndarray:
    """A (1, K, H, W) / (1, H, W) / (H, W) map -> the (H, W) foreground map as float32."""
    a = t.detach().float().cpu().numpy()
    while a.ndim > 2:
        a = a[0]
    return a.astype(np.float32)
