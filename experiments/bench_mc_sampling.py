"""Benchmark: the cost of T Monte-Carlo dropout samples, naive vs nucseg's sampler, side by side in one run.

- naive loop: T separate full passes of the network (what a plain implementation does);
- batched full pass: the T copies stacked along the batch axis, whole network (isolates the batching gain);
- nucseg (`sample_probs`): batched, with the encoder run once and only the decoder + head repeated (MC dropout
  sits only in the decoder, so the encoder's features are the same for every sample).

It also checks that the encoder-once sampler gives the same outputs as a full pass under the same dropout
masks: both are seeded identically and stack / chunk the copies identically, so the masks are drawn in the
same order. Example (the figures quoted in the report):

    python experiments/bench_mc_sampling.py --samples 20 --size 256 --encoder resnet34
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nucseg.models.factory import build_model
from nucseg.uncertainty.sampling import chunk_size, eval_mode, full_passes, sample_probs


def timed(fn, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", "-T", type=int, default=20)
    p.add_argument("--size", type=int, default=256, help="square image side")
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--chunk", type=int, default=None, help="image copies per forward pass (default: auto)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = build_model(args.arch, args.encoder, args.depth, mc_dropout={"rate": args.rate, "where": "decoder"})
    net = net.to(device).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    T = args.samples
    chunk = chunk_size(T * args.batch, args.size, args.size, device, args.chunk)
    print(f"{args.arch}/{args.encoder} depth {args.depth}, MC dropout {args.rate} in the decoder; "
          f"T={T}, {args.batch}x3x{args.size}x{args.size}, image copies per forward pass: {chunk}, device {device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")

    @torch.no_grad()
    def naive_loop() -> torch.Tensor:
        with eval_mode(net, mc_dropout=True):
            return torch.stack([torch.sigmoid(net(x)) for _ in range(T)])

    @torch.no_grad()
    def batched_full(seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            torch.manual_seed(seed)
        with eval_mode(net, mc_dropout=True):
            return full_passes(net, x, T, args.chunk)

    def ours(seed: int | None = None) -> torch.Tensor:
        return sample_probs(net, x, samples=T, seed=seed, batch_size=args.chunk)

    ours()  # warm-up (allocator, cuDNN autotuning)
    naive_loop()
    t_naive, _ = timed(naive_loop, args.repeats, device)
    t_batched, _ = timed(batched_full, args.repeats, device)
    t_ours, _ = timed(ours, args.repeats, device)
    print(f"naive: {T} full passes (loop)       {t_naive * 1000:9.1f} ms")
    print(f"batched full passes                {t_batched * 1000:9.1f} ms   ({t_naive / t_batched:.2f}x vs naive)")
    print(f"nucseg: batched, encoder once      {t_ours * 1000:9.1f} ms   ({t_naive / t_ours:.2f}x vs naive, "
          f"{t_batched / t_ours:.2f}x vs batched full)")
    print(f"speed-up ratio naive / nucseg: {t_naive / t_ours:.2f}")

    # same dropout masks -> same outputs
    reference = batched_full(seed=1234)
    fast = ours(seed=1234)
    diff = (reference - fast).abs().max().item()
    spread = (fast[0] - fast[1]).abs().max().item() if T > 1 else float("nan")
    ok = torch.allclose(reference, fast, rtol=1e-4, atol=1e-5)
    print(f"same masks, full pass vs encoder-once: max |diff| = {diff:.2e} ({'equal' if ok else 'DIFFERENT'} "
          f"to float tolerance); spread between two samples = {spread:.3f}")
    if not ok:
        raise SystemExit("encoder-once outputs differ from full passes under the same dropout masks")


if __name__ == "__main__":
    main()
