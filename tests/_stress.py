"""Shared stress helpers for the determinism tests: heap churn, buffers at odd element offsets, 1 / 2 threads.

Backward kernels must give the same bits for identical inputs whatever the buffer alignment, the heap state and the
thread count; these helpers vary all three between calls of the same kernel (imported by the tests as a plain module:
pytest puts tests/ on sys.path)."""
from __future__ import annotations

import contextlib

import torch

# malloc sizes of heap_churn: the next std::vector a kernel allocates lands at another 16-byte offset of a 64-byte line
CHURN_SIZES = (8, 16, 24, 32, 40, 48, 64, 96, 128, 200, 1000)


def heap_churn(rng, held, sizes=CHURN_SIZES):
    """malloc / free 0..30 blocks of the given sizes (kept ones appended to `held`, never freed)."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    for _ in range(rng.randint(0, 30)):
        p = libc.malloc(rng.choice(sizes))
        held.append(p) if rng.random() < 0.5 else libc.free(p)


def offset_copies(off, *tensors):
    """Copies of the tensors (same shape) starting `off` elements into fresh buffers of numel + 8 elements: with off
    = 0..3, rows at 4-byte (fp32) / 8-byte (fp64) offsets of an aligned allocation.  The buffers are all allocated
    before the copies."""
    bufs = [torch.empty(t.numel() + 8, dtype=t.dtype) for t in tensors]
    views = [b[off:off + t.numel()].view(t.shape) for b, t in zip(bufs, tensors)]
    for v, t in zip(views, tensors):
        v.copy_(t)
    return views


def assert_bitwise_repeatable(run, tensors, reps, rng, held, tag=()):
    """Call run(*copies) `reps` times, rep r with 1 + r % 2 threads, on offset_copies(r % 4, *tensors), after
    heap_churn(rng, held): every output of every call equals the first call's bit for bit (the thread count is
    restored afterwards).  `tag` goes into the assertion message ahead of (rep, output index)."""
    nth = torch.get_num_threads()
    try:
        ref_out = None
        for rep in range(reps):
            torch.set_num_threads(1 + rep % 2)
            copies = offset_copies(rep % 4, *tensors)
            heap_churn(rng, held)
            out = list(run(*copies))
            if ref_out is None:
                ref_out = out
            assert len(out) == len(ref_out), (*tag, rep)
            for i, (a, r) in enumerate(zip(out, ref_out)):
                assert torch.equal(a, r), (*tag, rep, i)
    finally:
        torch.set_num_threads(nth)


@contextlib.contextmanager
def num_threads(n):
    """torch's intra-op thread count set to n inside the block, restored afterwards."""
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
