"""Timing helpers shared by ``python -m bench`` and the pytest-benchmark cases.

``interleaved`` times several callables that do the same work in one loop:
each round runs every contender once (one *sample*), in an order that changes from
round to round (``round_order``: the position and the contender just before vary),
so that slow drifts (clock, thermal state, other load) and what the previous call
left behind (freed temporaries, caches) spread over all contenders instead of
favouring one.  The result of a
contender is the median of its samples, taken after warm-up.

CPU: a sample is ``time.perf_counter`` around ``inner`` back-to-back calls (``clock="cpu"``:
``time.process_time``, the process's CPU time over all its threads: with one thread it does not count
the time other processes take the core away, which wall time does on a shared machine).
CUDA: a sample is CUDA events around ``inner`` back-to-back calls; the L2 cache
is flushed before each sample (outside the timed region) and the device is
synchronised after it.  ``inner`` is chosen per contender from its warm-up
calls so that one sample lasts at least ``min_sample_s`` (it is 1 for calls
that take longer than that).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class Timing:
    """Per-call times of one contender, in milliseconds."""

    median_ms: float
    min_ms: float
    samples_ms: List[float] = field(default_factory=list)
    inner: int = 1

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples: a rough noise figure."""
        if not self.samples_ms or self.median_ms <= 0:
            return 0.0
        return (max(self.samples_ms) - min(self.samples_ms)) / self.median_ms

    def as_dict(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "inner": self.inner,
                "samples_ms": [round(s, 6) for s in self.samples_ms]}


class ContenderError(RuntimeError):
    """What ``interleaved`` raises when a contender's call raises: ``name`` is the contender, ``error`` (also the
    ``__cause__``) what it raised."""

    def __init__(self, name: str, error: BaseException):
        super().__init__(f"{name}: {type(error).__name__}: {error}")
        self.name, self.error = name, error


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_flush_buffers: Dict[str, torch.Tensor] = {}


def flush_cache(device: torch.device) -> None:
    """Evict the GPU's L2 cache (writes a 256 MiB buffer); no-op on CPU.

    On CPU the benchmark tensors (tens of MiB and up) exceed the last-level
    cache anyway, and a flush would cost more than it buys.
    """
    if device.type != "cuda":
        return
    key = str(device)
    buf = _flush_buffers.get(key)
    if buf is None:
        buf = _flush_buffers[key] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    buf.zero_()


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in seconds, the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def _sample(fn: Callable[[], object], device: torch.device, inner: int, clock: str = "wall") -> float:
    """Mean time of one call over `inner` back-to-back calls, in seconds."""
    if device.type == "cuda":
        flush_cache(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner
    now = time.process_time if clock == "cpu" else time.perf_counter
    t0 = now()
    for _ in range(inner):
        fn()
    return (now() - t0) / inner


def round_order(names: List[str], r: int) -> List[str]:
    """The order of round `r`: a Williams design (the rows of a balanced Latin square, 0, 1, n-1, 2, n-2, ...
    shifted by r), so that both the position in the round and the contender that runs just before vary from
    round to round (a plain rotation keeps each one's predecessor fixed); for an odd count every other round is
    reversed as well."""
    n = len(names)
    seq, lo, hi = [0], 1, n - 1
    while len(seq) < n:
        seq.append(lo)
        lo += 1
        if len(seq) < n:
            seq.append(hi)
            hi -= 1
    order = [names[(r + s) % n] for s in seq]
    return order[::-1] if n % 2 and r % 2 else order


def interleaved(
    fns: Dict[str, Callable[[], object]],
    device: torch.device,
    *,
    repeats: int = 5,
    warmup: int = 2,
    min_sample_s: Optional[float] = None,
    max_inner: int = 1000,
    clock: str = "wall",
) -> Dict[str, Timing]:
    """Time every callable of `fns` (name -> zero-argument callable), interleaved.

    Returns name -> Timing (median over `repeats` samples).  The callables
    must already be "prepared" (first call, JIT or torch.compile done): the
    `warmup` calls here are only there to settle caches, allocators and
    profiling executors, and to size `inner`.  A call that raises ends it with
    a ContenderError naming the contender.  `clock`: "wall" (default) or
    "cpu" (process CPU time; CPU device only).
    """
    if min_sample_s is None:
        min_sample_s = 0.01 if device.type == "cuda" else 0.1
    names = list(fns)
    est = {}
    for name in names:
        try:
            ts = [time_call(fns[name], device) for _ in range(max(1, warmup))]
        except Exception as e:
            raise ContenderError(name, e) from e
        est[name] = min(ts)
    inner = {n: int(min(max_inner, max(1, math.ceil(min_sample_s / max(est[n], 1e-9))))) for n in names}
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in round_order(names, r):
            try:
                samples[name].append(_sample(fns[name], device, inner[name], clock))
            except Exception as e:
                raise ContenderError(name, e) from e
    out = {}
    for name in names:
        ms = [s * 1e3 for s in samples[name]]
        out[name] = Timing(median_ms=statistics.median(ms), min_ms=min(ms), samples_ms=ms, inner=inner[name])
    return out


def copy_bandwidth(device: torch.device, mib: int = 64, repeats: int = 20) -> dict:
    """``y.copy_(x)`` on a `mib` MiB float32 tensor: median GB/s (bytes read + written)."""
    n = mib * 1024 * 1024 // 4
    x = torch.rand(n, device=device)
    y = torch.empty_like(x)
    t = interleaved({"copy": lambda: y.copy_(x)}, device, repeats=repeats, warmup=3)["copy"]
    nbytes = 2 * x.numel() * x.element_size()
    return {"mib": mib, "median_ms": t.median_ms, "gbps": nbytes / (t.median_ms * 1e-3) / 1e9}
