"""Collect what each DDP process kept for its own test images, so rank 0 writes tables, figures and
uncertainty figures for the whole split rather than for its share of it."""

from __future__ import annotations

from typing import Any

import torch
from torch import distributed as dist


def _world(trainer: Any) -> int:
    world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
    return world if world > 1 and dist.is_available() and dist.is_initialized() else 1


def gather_objects(trainer: Any, obj: Any) -> list[Any]:
    """`[obj of rank 0, obj of rank 1, ...]`; `[obj]` outside DDP. Every process must call it."""
    world = _world(trainer)
    if world == 1:
        return [obj]
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, obj)
    return parts


def gather_rows(trainer: Any, rows: list[dict[str, Any]], key: str = "id") -> list[dict[str, Any]]:
    """All processes' rows, one per `key`: DistributedSampler repeats a few samples so that every process
    gets the same number, and those copies must not count twice."""
    parts = gather_objects(trainer, rows)
    if len(parts) == 1:
        return rows
    seen: set[Any] = set()
    merged = []
    for part in parts:
        for row in part:
            if row[key] not in seen:
                seen.add(row[key])
                merged.append(row)
    return merged


def sum_states(trainer: Any, metric: Any, names: tuple[str, ...]) -> None:
    """Replace a metric's tensor states by their sum over processes, gathered on the host (works with CPU
    states under NCCL, where torchmetrics' own device collective would not)."""
    if _world(trainer) == 1:
        return
    for name in names:
        parts = gather_objects(trainer, getattr(metric, name).detach().cpu())
        setattr(metric, name, torch.stack(parts).sum(0))
