"""Wall-clock timing of a call, with the device's queued work counted."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from .device import synchronize


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    """Median of ``repeats`` calls after one warm-up call."""
    fn()
    return statistics.median(seconds(fn, device) for _ in range(repeats))
