"""Cost of one training step of the CPU presets' networks, side by side: the Bayesian U-Net of
`experiment=cpu` and the U-Net++ of `experiment=cpu_unetpp` (ResNet-18 at depth 4, decoder 128-64-32-16,
3 output channels, a batch of 16 crops of 128 px). It is why the U-Net++ preset trains fewer steps.

    python experiments/bench_step_cost.py [--threads 1] [--repeats 4]

Prints the median forward + backward + optimizer step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nucseg.models.factory import build_model


def step_time(arch: str, repeats: int) -> float:
    torch.manual_seed(0)
    net = build_model(arch, "resnet18", encoder_depth=4, decoder_channels=[128, 64, 32, 16], classes=3,
                      mc_dropout={"rate": 0.1, "where": "decoder"} if arch == "unet" else None)
    opt = torch.optim.Adam(net.parameters())
    x = torch.rand(16, 3, 128, 128)
    times = []
    for _ in range(repeats + 1):  # the first step warms up allocators and is dropped
        t = time.perf_counter()
        net(x).mean().backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    unet, unetpp = step_time("unet", args.repeats), step_time("unetpp", args.repeats)
    print(f"{args.threads} thread(s), batch 16 x 128 px, median of {args.repeats}: Bayesian U-Net {unet:.2f} s, "
          f"U-Net++ {unetpp:.2f} s per step; U-Net++ / U-Net {unetpp / unet:.2f}x")


if __name__ == "__main__":
    main()
