"""Per-image rows and calibration bins kept by each DDP process are merged for the whole split (2 real gloo
processes on the CPU)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import torch
from torch import distributed as dist
from torch import multiprocessing as mp

from nucseg.metrics.calibration import CalibrationError
from nucseg.utils.distributed import gather_rows, sum_states


def _worker(rank: int, port: int, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = SimpleNamespace(world_size=2)
    # rank 1 got a padded repeat of image "b" (DistributedSampler evens out the ranks)
    rows = [{"id": "a", "dice": 0.9}, {"id": "b", "dice": 0.5}] if rank == 0 else [{"id": "c", "dice": 0.7},
                                                                                     {"id": "b", "dice": 0.5}]
    merged = gather_rows(trainer, rows)
    cal = CalibrationError(2, sync_on_compute=False)
    if rank == 0:  # probabilities 0.2 (no nucleus) and 0.8 (nucleus): perfectly confident bins
        cal.update(torch.tensor([0.2, 0.8]), torch.tensor([0.0, 1.0]))
    else:  # one 0.8 pixel that is background
        cal.update(torch.tensor([0.8]), torch.tensor([0.0]))
    sum_states(trainer, cal, ("count", "prob_sum", "pos_sum"))
    queue.put((rank, [r["id"] for r in merged], cal.count.tolist(), float(cal.compute())))
    dist.destroy_process_group()


def test_rows_and_calibration_bins_are_merged_across_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_worker, args=(port, queue), nprocs=2, start_method="spawn", join=True)
    results = sorted(queue.get(timeout=60) for _ in range(2))
    # 3 pixels: |0.2 - 0| in bin 0, |0.8 + 0.8 - 1| in bin 1 -> ECE = (0.2 + 0.6) / 3
    for rank, ids, count, ece in results:
        assert ids == ["a", "b", "c"], rank  # every process sees each image once
        assert count == [1.0, 2.0]
        assert abs(ece - 0.8 / 3) < 1e-6


def test_outside_ddp_rows_pass_through():
    rows = [{"id": "a"}, {"id": "a"}]
    assert gather_rows(None, rows) is rows
    assert gather_rows(SimpleNamespace(world_size=1), rows) is rows
