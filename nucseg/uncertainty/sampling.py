"""Draw `T` probability maps per image from a model's approximate posterior, by one of three methods behind
one interface (`sample_probs`):

- `mc_dropout`: `T` stochastic passes with the model's always-on Monte-Carlo dropout. The passes are batched
  (the image is repeated along the batch axis) and, when dropout sits only in the decoder, the encoder runs
  once per image and only the decoder + head are repeated: the encoder is deterministic, so its features are
  the same for every sample.
- `tta`: the deterministic model under the test-time augmentations of `nucseg.inference.tta` (one sample per op).
- `ensemble`: one deterministic pass of each member network.
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nucseg.inference.tta import get_ops
from nucseg.models.mc_dropout import has_mc_dropout, mc_dropout_enabled
from nucseg.models.module import load_module
from nucseg.models.padding import pad_to_multiple
from nucseg.settings import UncertaintyMethod, UncertaintySettings

__all__ = ["SAMPLING_METHODS", "checkpoint_paths", "eval_mode", "load_ensemble", "resolve_settings",
           "sample_probs", "seeded"]

log = logging.getLogger(__name__)

# the methods that draw samples (`none` draws none)
SAMPLING_METHODS = tuple(m for m in UncertaintyMethod.values() if m != UncertaintyMethod.NONE)
# Auto chunking: image copies per forward pass are capped so one chunk holds about this many pixels. On a GPU
# big batches fill the device (activations of the decoder at full resolution bound memory); on a CPU big
# batches only thrash the caches: experiments/bench_mc_sampling.py measured one 256x256 copy per pass fastest.
PIXEL_BUDGET = {"cpu": 2**16, "cuda": 2**23}


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG seeded to `seed`, restoring the caller's RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def eval_mode(net: nn.Module, mc_dropout: bool | None = None) -> Iterator[nn.Module]:
    """Batch-norm in eval mode (statistics must not depend on the T copies), MC dropout set as asked;
    both restored afterwards."""
    was_training = net.training
    net.eval()
    try:
        if mc_dropout is None:
            yield net
        else:
            with mc_dropout_enabled(net, mc_dropout):
                yield net
    finally:
        net.train(was_training)


def encoder_once_supported(net: nn.Module) -> bool:
    """True for an smp model whose MC dropout sits only downstream of the encoder."""
    return (all(hasattr(net, a) for a in ("encoder", "decoder", "segmentation_head"))
            and getattr(net, "mc_dropout_where", None) == "decoder")


def chunk_size(total: int, height: int, width: int, device: torch.device, batch_size: int | None) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"uncertainty.batch_size: expected a positive integer or null, got {batch_size}")
        return min(total, int(batch_size))
    budget = PIXEL_BUDGET.get(device.type, PIXEL_BUDGET["cuda"])
    size = max(1, min(total, budget // max(1, height * width)))
    n_chunks = -(-total // size)
    return -(-total // n_chunks)  # balanced: 20 copies in chunks of 10 + 10, not 16 + 4


def _chunks(total: int, size: int) -> Iterator[Tensor]:
    for start in range(0, total, size):
        yield torch.arange(start, min(start + size, total))


def full_passes(net: nn.Module, x: Tensor, samples: int, batch_size: int | None = None) -> Tensor:
    """`samples` whole-network passes of the batch-stacked copies of `x` (B,C,H,W) -> (T,B,K,H,W)."""
    b = x.shape[0]
    total = samples * b
    size = chunk_size(total, x.shape[-2], x.shape[-1], x.device, batch_size)
    outs = [torch.sigmoid(net(x[idx % b])) for idx in _chunks(total, size)]
    out = torch.cat(outs)
    return out.view(samples, b, *out.shape[1:])


def encoder_once_passes(net: nn.Module, x: Tensor, samples: int, batch_size: int | None = None) -> Tensor:
    """Encoder once on `x`, then `samples` decoder + head passes on the repeated features -> (T,B,K,H,W).

    The copies are stacked and chunked exactly as in `full_passes`, so under the same seed both draw the same
    dropout masks in the same order and give the same output.
    """
    if not encoder_once_supported(net):
        raise ValueError("encoder-once sampling needs an smp model with MC dropout in the decoder only "
                         "(model.mc_dropout.where=decoder)")
    smp: Any = net  # an smp model: encoder, decoder, segmentation_head
    b = x.shape[0]
    total = samples * b
    features = smp.encoder(x)
    size = chunk_size(total, x.shape[-2], x.shape[-1], x.device, batch_size)
    outs = []
    for idx in _chunks(total, size):
        rows = (idx % b).to(x.device)
        feats = [f.index_select(0, rows) for f in features]
        outs.append(torch.sigmoid(smp.segmentation_head(smp.decoder(feats))))
    out = torch.cat(outs)
    return out.view(samples, b, *out.shape[1:])


@torch.no_grad()
def sample_probs(
    net: nn.Module | None,
    x: Tensor,
    method: str = "mc_dropout",
    samples: int = 20,
    seed: int | None = None,
    models: list | None = None,
    batch_size: int | None = None,
    tta_ops: Sequence[str] | str = "all",
    pad_multiple: int = 32,
) -> Tensor:
    """`T` sigmoid probability samples per image from the model's approximate posterior.

    Networks run in eval mode (MC dropout on for mc_dropout only); inputs are reflect-padded to a multiple of
    `pad_multiple` and the outputs cropped back.

    Args:
        net: the network (logits out); not used by ensemble (may be None).
        x: (B, C, H, W) images, any H and W.
        method: mc_dropout, tta or ensemble (`nucseg.settings.UncertaintyMethod`).
        samples: T for mc_dropout; tta draws one sample per op of `tta_ops`, ensemble one per member.
        seed: fixes the dropout masks, leaving the caller's RNG state as it was: the same seed, `batch_size`
            and device give the same samples; another chunking draws other (equally valid) masks.
        models: the ensemble's member networks.
        batch_size: image copies per forward pass (None: as many as fit a pixel budget).
        tta_ops: "all", "flips" or op names of `nucseg.inference.tta`.
        pad_multiple: the network's input stride (`SegmentationModule.pad_multiple`).

    Returns:
        (T, B, K, H, W) probabilities.

    Example:
        >>> import torch
        >>> from nucseg.models.factory import build_model
        >>> net = build_model(arch="unet", encoder_name="resnet18", encoder_depth=3, classes=1,
        ...                   mc_dropout={"rate": 0.2, "where": "decoder"})
        >>> sample_probs(net, torch.rand(2, 3, 40, 50), samples=4, seed=0).shape
        torch.Size([4, 2, 1, 40, 50])
    """
    if x.ndim != 4:
        raise ValueError(f"sample_probs: expected x of shape (B,C,H,W), got {tuple(x.shape)}")
    if method not in SAMPLING_METHODS:
        raise ValueError(f"uncertainty.method: expected one of {', '.join(SAMPLING_METHODS)}, got {method!r}")
    padded, (h, w) = pad_to_multiple(x, pad_multiple)
    with seeded(seed, x.device):
        if method == "mc_dropout":
            out = _mc_dropout(net, padded, samples, batch_size)
        elif method == "tta":
            out = _tta(net, padded, tta_ops, batch_size)
        else:
            out = _ensemble(models, padded, batch_size)
    return out[..., :h, :w]


def _mc_dropout(net: nn.Module | None, x: Tensor, samples: int, batch_size: int | None) -> Tensor:
    if net is None:
        raise ValueError("uncertainty.method=mc_dropout needs a network")
    if not has_mc_dropout(net):
        raise ValueError("uncertainty.method=mc_dropout, but the model has no MC dropout: use model=bayes_unet "
                         "or set model.mc_dropout={rate: 0.2, where: decoder} (or choose another "
                         "uncertainty.method: tta, ensemble)")
    if samples < 1:
        raise ValueError(f"uncertainty.samples: expected a positive integer, got {samples}")
    with eval_mode(net, mc_dropout=True):
        if encoder_once_supported(net):
            return encoder_once_passes(net, x, samples, batch_size)
        return full_passes(net, x, samples, batch_size)


def _tta(net: nn.Module | None, x: Tensor, ops: Sequence[str] | str, batch_size: int | None) -> Tensor:
    if net is None:
        raise ValueError("uncertainty.method=tta needs a network")
    ops_list = get_ops(list(ops) if not isinstance(ops, str) else ops)
    with eval_mode(net, mc_dropout=False):
        outs = []
        for _, fwd, inv in ops_list:
            outs.append(inv(_chunked_forward(net, fwd(x), batch_size)))
    return torch.stack(outs)


def _ensemble(models: list | None, x: Tensor, batch_size: int | None) -> Tensor:
    if not models:
        raise ValueError("uncertainty.method=ensemble needs `models`: a non-empty list of networks "
                         "(set uncertainty.checkpoints)")
    outs = []
    for m in models:
        with eval_mode(m, mc_dropout=False):
            outs.append(_chunked_forward(m, x, batch_size))
    return torch.stack(outs)


def _chunked_forward(net: nn.Module, x: Tensor, batch_size: int | None) -> Tensor:
    size = chunk_size(x.shape[0], x.shape[-2], x.shape[-1], x.device, batch_size)
    return torch.cat([torch.sigmoid(net(x[i:i + size])) for i in range(0, x.shape[0], size)])


# --------------------------------------------------------------------------- configuration
def resolve_settings(cfg: Mapping[str, Any] | None, net: nn.Module, strict: bool = False) -> UncertaintySettings | None:
    """The effective uncertainty settings for `net`, or None when there is nothing to estimate: `cfg` (a
    config's or a checkpoint's `uncertainty` block) over the defaults of `UncertaintySettings`. See
    `UncertaintySettings.from_mapping`; `net` decides whether the model has MC dropout."""
    return UncertaintySettings.from_mapping(cfg, has_mc_dropout=has_mc_dropout(net), strict=strict)


def checkpoint_paths(patterns: Sequence[str]) -> list[Path]:
    """Expand `uncertainty.checkpoints` (paths or glob patterns) to sorted, existing files."""
    paths: list[Path] = []
    for pattern in patterns or []:
        matches = sorted(glob.glob(str(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"uncertainty.checkpoints: no checkpoint matches {pattern!r}")
        paths += [Path(m) for m in matches]
    return paths


def load_ensemble(patterns: Sequence[str], device: torch.device | str = "cpu") -> list[nn.Module]:
    """The member networks of a deep ensemble, rebuilt from their checkpoints alone."""
    return [load_module(p).net.to(device).eval() for p in checkpoint_paths(patterns)]
